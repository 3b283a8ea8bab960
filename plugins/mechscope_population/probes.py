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

__all__ = ["JPCAProbe", "PopulationProbe", "TuningProbe"]


class JPCAProbe(mechscope.AbstractProbe):
    """jPCA of the model's condition responses around movement onset."""

    config: JPCAConfig = eqx.field(static=True)

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
