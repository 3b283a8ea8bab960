"""The ``jpca``, ``tuning`` and ``population`` probes: the analyses run on a model's rates.

Each probe takes the trained model's noise-free run on ``task.conditions()`` (the shared
``conditions`` an experiment hands every probe, or its own simulation when called directly),
wraps the rates in a :class:`~mechscope_population.data.NeuralData` and calls the same public
analysis function users call on recorded data.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import numpy as np
from jaxtyping import PRNGKeyArray

import mechscope
from mechscope_population.data import load_neural_data, model_neural_data
from mechscope_population.jpca import JPCAConfig, jpca_analysis
from mechscope_population.population import PopulationConfig, population_analysis
from mechscope_population.tuning import TuningConfig, tuning_analysis

__all__ = [
    "JPCAProbe",
    "PopulationProbe",
    "TuningProbe",
    "jpca_metrics",
    "population_metrics",
    "tuning_metrics",
]


class JPCAProbe(mechscope.AbstractProbe):
    """jPCA of the model's condition responses around movement onset."""

    config: JPCAConfig = eqx.field(static=True)

    def metrics(self) -> tuple[mechscope.Metric, ...]:
        """The jPCA fits' R², variance and frequency per plane, and plane 1's phase statistics."""
        return jpca_metrics(self.config)

    def run(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, mechscope.ProbeResult] | None = None,
        conditions: mechscope.ConditionRun | None = None,
    ) -> mechscope.ProbeResult:
        """Run jPCA on the model's noiseless rates on ``task.conditions()``."""
        del key, dependencies  # deterministic; needs no other probe
        rates, _, _ = model_neural_data(trained, task, conditions)
        flat = rates.rates.reshape(-1, rates.n_neurons)
        span = np.nanmax(flat, axis=0) - np.nanmin(flat, axis=0)
        # Model rates have arbitrary units: scale the softening to the units' typical range.
        soften = self.config.model_soften_fraction * float(np.median(span))
        config = self.config.model_copy(update={"soften_norm": soften})
        result = jpca_analysis(rates, config)
        metrics = result.metrics() | {"soften_norm_used": soften}
        return mechscope.ProbeResult(
            metrics=metrics, arrays=result.arrays(), figures=result.figures()
        )


class TuningProbe(mechscope.AbstractProbe):
    """Cosine tuning and PSTHs of the model's units."""

    config: TuningConfig = eqx.field(static=True)

    def metrics(self) -> tuple[mechscope.Metric, ...]:
        """Fractions of tuned units, fit quality, preferred-direction change, multiphasic units."""
        return tuning_metrics(self.config)

    def run(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, mechscope.ProbeResult] | None = None,
        conditions: mechscope.ConditionRun | None = None,
    ) -> mechscope.ProbeResult:
        """Fit cosine tuning per epoch to the model's noiseless rates."""
        del key, dependencies
        rates, _, _ = model_neural_data(trained, task, conditions)
        result = tuning_analysis(rates, self.config)
        return mechscope.ProbeResult(
            metrics=result.metrics(), arrays=result.arrays(), figures=result.figures()
        )


class PopulationProbe(mechscope.AbstractProbe):
    """Dimensionality, output-null/potent variance, tangling and similarity to data."""

    config: PopulationConfig = eqx.field(static=True)

    def metrics(self) -> tuple[mechscope.Metric, ...]:
        """Dimensionality, null/potent variance, tangling and similarity to the reference."""
        return population_metrics(self.config)

    def run(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, mechscope.ProbeResult] | None = None,
        conditions: mechscope.ConditionRun | None = None,
    ) -> mechscope.ProbeResult:
        """Population analyses of the model's noiseless rates and outputs."""
        del key, dependencies
        rates, outputs, readout = model_neural_data(trained, task, conditions)
        reference = None
        if self.config.reference_path is not None:
            reference = load_neural_data(
                self.config.reference_path, time_scale=self.config.reference_time_scale
            )
        result = population_analysis(
            rates, self.config, readout=readout, outputs=outputs, reference=reference
        )
        return mechscope.ProbeResult(
            metrics=result.metrics(), arrays=result.arrays(), figures=result.figures()
        )


def jpca_metrics(config: JPCAConfig) -> tuple[mechscope.Metric, ...]:
    """What :class:`JPCAProbe` reports with `config` (one variance and frequency per plane)."""
    metric = mechscope.Metric
    window = f"{config.window[0]:g} to {config.window[1]:g} s around {config.align_event}"
    declared = [
        metric(
            "r2_best",
            f"R² of the population's one-step changes ΔX predicted by the best linear dynamics "
            f"M_best, in all {config.n_pcs} PCs ({window})",
            direction="higher = better linear fit",
        ),
        metric(
            "r2_skew",
            "R² of ΔX predicted by the best skew-symmetric (purely rotational) dynamics "
            f"M_skew, in all {config.n_pcs} PCs",
            direction="higher = more rotational",
        ),
        metric(
            "r2_ratio",
            "r2_skew / r2_best: how much of the linear fit pure rotation accounts for",
            direction="higher = more rotational",
        ),
        metric(
            "r2_best_plane1",
            "R² of ΔX by M_best within the first jPC plane",
            direction="higher = better linear fit",
        ),
        metric(
            "r2_skew_plane1",
            "R² of ΔX by M_skew within the first jPC plane",
            direction="higher = more rotational",
        ),
        metric(
            "var_captured",
            f"fraction of the window's population variance captured by the {config.n_pcs} PCs "
            "(all jPC planes together)",
        ),
    ]
    for plane in range(1, config.n_pcs // 2 + 1):
        declared += [
            metric(
                f"var_plane{plane}",
                f"fraction of the window's population variance in jPC plane {plane}",
            ),
            metric(
                f"freq_hz_plane{plane}",
                f"rotation frequency of jPC plane {plane}: |Im λ| of M_skew per sample / (2π dt)",
                unit="Hz",
            ),
        ]
    declared += [
        metric(
            "phase_mean_plane1",
            "circular mean of the angle from the state to its derivative in jPC plane 1 "
            "(π/2 = counter-clockwise rotation, 0 = expansion from the origin)",
            unit="rad",
        ),
        metric(
            "phase_resultant_plane1",
            "mean resultant length of that angle (0 = spread evenly, 1 = always the same)",
            direction="higher = more consistent flow",
        ),
        metric(
            "phase_rotation_index_plane1",
            "mean cos(angle − π/2) in jPC plane 1: 1 for pure rotation, 0 for none",
            direction="higher = more rotational",
        ),
        metric(
            "phase_fraction_ccw_plane1",
            "fraction of samples in jPC plane 1 whose derivative points counter-clockwise",
            direction="higher = more rotational",
        ),
        metric(
            "soften_norm_used",
            f"softening constant added to each unit's rate range before normalising "
            f"({config.model_soften_fraction:g} × the median unit's range)",
            unit="rate units",
            kind="setting",
        ),
    ]
    return tuple(declared)


def tuning_metrics(config: TuningConfig) -> tuple[mechscope.Metric, ...]:
    """What :class:`TuningProbe` reports with `config`."""
    metric = mechscope.Metric
    tuned = f"whose cosine-tuning fit has R² ≥ {config.tuned_r2:g}"
    delay = f"delay epoch ({config.delay_epoch[0]:g} to {config.delay_epoch[1]:g} s after "
    delay += f"{config.target_event})"
    movement = f"movement epoch ({config.movement_epoch[0]:g} to {config.movement_epoch[1]:g} s "
    movement += f"around {config.movement_event})"
    return (
        metric(
            "fraction_tuned_delay",
            f"fraction of units {tuned} in the {delay}",
            direction="higher = more tuned units",
        ),
        metric(
            "fraction_tuned_movement",
            f"fraction of units {tuned} in the {movement}",
            direction="higher = more tuned units",
        ),
        metric(
            "fraction_tuned_both",
            f"fraction of units {tuned} in both epochs",
            direction="higher = more tuned units",
        ),
        metric(
            "median_r2_delay",
            "median R² of the units' cosine-tuning fits in the delay epoch",
            direction="higher = better cosine tuning",
        ),
        metric(
            "median_r2_movement",
            "median R² of the units' cosine-tuning fits in the movement epoch",
            direction="higher = better cosine tuning",
        ),
        metric(
            "pd_change_mean_abs_deg",
            "mean |change of preferred direction| from delay to movement epoch, over units "
            "tuned in both",
            unit="deg",
            direction="higher = tuning changes more",
        ),
        metric(
            "pd_change_median_abs_deg",
            "median |change of preferred direction| from delay to movement epoch, over units "
            "tuned in both",
            unit="deg",
            direction="higher = tuning changes more",
        ),
        metric(
            "fraction_multiphasic",
            "fraction of units whose movement-aligned PSTH (in their most modulated "
            f"direction) has ≥ 2 extrema of prominence ≥ {config.multiphasic_prominence:g} × "
            "its range",
            direction="higher = more multiphasic responses",
        ),
    )


def population_metrics(config: PopulationConfig) -> tuple[mechscope.Metric, ...]:
    """What :class:`PopulationProbe` reports with `config` (similarity NaN without a reference)."""
    metric = mechscope.Metric
    window = f"{config.window[0]:g} to {config.window[1]:g} s around {config.align_event}"
    tangling = "trajectory tangling Q(t) (Russo 2018) of the rates in their top "
    tangling += f"{config.tangling_n_pcs} PCs"
    reference = "to the reference data (NaN without reference_path)"
    return (
        metric(
            "participation_ratio",
            f"(Σλ)² / Σλ² of the rates' PCA variance spectrum ({window}): the effective "
            "number of dimensions",
            direction="higher = higher-dimensional",
        ),
        metric(
            "n_pcs_variance",
            f"number of PCs needed to reach {config.variance_threshold:g} of the variance",
            direction="higher = higher-dimensional",
        ),
        metric("var_pc1", "fraction of the variance along the first PC"),
        metric("var_top3", "fraction of the variance in the top three PCs"),
        metric(
            "delay_potent_fraction",
            "fraction of the delay epoch's rate variance in the readout's output-potent space "
            "(row space of W_out; Kaufman 2014)",
            direction="lower = preparation more output-null",
        ),
        metric(
            "movement_potent_fraction",
            "fraction of the movement epoch's rate variance in the output-potent space",
        ),
        metric(
            "potent_prep_move_ratio",
            "output-potent variance in the delay epoch / in the movement epoch",
            direction="lower = preparation moves the output less",
        ),
        metric(
            "null_prep_move_ratio",
            "output-null variance in the delay epoch / in the movement epoch",
        ),
        metric(
            "null_potent_index",
            "log(null_prep_move_ratio / potent_prep_move_ratio): how much more preparation "
            "uses the output-null space than the potent space, relative to movement",
            direction="higher = preparation more output-null",
        ),
        metric(
            "tangling_median",
            f"median {tangling}",
            unit="1/s²",
            direction="higher = more tangled",
        ),
        metric(
            "tangling_p90",
            f"90th percentile of the {tangling}",
            unit="1/s²",
            direction="higher = more tangled",
        ),
        metric(
            "output_tangling_p90",
            "90th percentile of the outputs' trajectory tangling",
            unit="1/s²",
            direction="higher = more tangled",
        ),
        metric(
            "tangling_ratio_p90",
            "tangling_p90 / output_tangling_p90: neural relative to output tangling",
            direction="lower = neural trajectories less tangled than the output",
        ),
        metric(
            "cca_mean_reference",
            f"mean canonical correlation {reference}",
            direction="higher = more similar",
        ),
        metric(
            "cca_first_reference",
            f"largest canonical correlation {reference}",
            direction="higher = more similar",
        ),
        metric(
            "procrustes_reference",
            f"orthogonal Procrustes similarity {reference} (1 = the same up to rotation)",
            direction="higher = more similar",
        ),
        metric(
            "procrustes_angle_reference",
            f"angular Procrustes shape distance {reference} (arccos of the similarity)",
            unit="rad",
            direction="lower = more similar",
        ),
    )
