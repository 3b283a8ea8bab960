"""Population-level structure: dimensionality, output-null/potent variance, tangling, similarity.

- Dimensionality: PCA variance spectrum λ and participation ratio (Σλ)² / Σλ².
- Output-null vs output-potent (Kaufman et al. 2014): the potent space is the row space of the
  readout W (activity there moves the output), the null space its orthogonal complement.
  Preparatory (delay) activity that stays out of the potent space cannot move the output.
- Tangling (Russo et al. 2018): Q(t) = max_t' ‖ẋ_t − ẋ_t'‖² / (‖x_t − x_t'‖² + ε), over all
  times and conditions, ε = 0.1 × the summed variance of x, in the top PCs.
- Similarity of two sets of condition-averaged trajectories: canonical correlations after
  PCA to k dimensions each (SVCCA-style), and orthogonal Procrustes similarity
  ‖AᵀB‖_* of the centred, unit-norm responses (1 = identical up to rotation; the angular
  shape distance of Williams et al. 2021 is its arccos).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pydantic
import scipy.linalg
import scipy.spatial.distance
from jaxtyping import Float

import mechscope
from mechscope_population.data import NeuralData
from mechscope_population.preprocessing import pca, soft_normalize_factors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PopulationConfig",
    "PopulationResult",
    "canonical_correlations",
    "compare_trajectories",
    "match_times",
    "null_potent_variance",
    "participation_ratio",
    "population_analysis",
    "procrustes_similarity",
    "tangling",
]


class PopulationConfig(mechscope.Config):
    """Population structure: dimensionality, null/potent variance, tangling, similarity."""

    align_event: str = pydantic.Field(
        default="movement_onset",
        description="event the analysis and movement windows are relative to",
    )
    window: tuple[float, float] = pydantic.Field(
        default=(-0.3, 0.5), description="window (s) for dimensionality, tangling and similarity"
    )
    movement_epoch: tuple[float, float] = pydantic.Field(
        default=(-0.05, 0.25),
        description="movement epoch (s) relative to align_event (null/potent)",
    )
    delay_event: str = pydantic.Field(
        default="target_on", description="event the delay epoch follows"
    )
    delay_epoch: tuple[float, float] = pydantic.Field(
        default=(0.1, 0.3), description="delay epoch (s) relative to delay_event (null/potent)"
    )
    group_by: str | None = pydantic.Field(
        default=None,
        description="label to average trials over before analysis; None keeps each condition trial",
    )
    soften_norm: float | None = pydantic.Field(
        default=None,
        description="if set, soft-normalise each neuron by range + soften_norm first "
        "(Russo et al. used 5 spikes/s on recorded data); None analyses raw rates",
    )
    variance_threshold: float = pydantic.Field(
        default=0.9, description="report how many PCs reach this fraction of variance"
    )
    tangling_n_pcs: int = pydantic.Field(
        default=12,
        description="tangling is computed in this many top PCs (fewer if the data have fewer)",
    )
    tangling_epsilon: float = pydantic.Field(
        default=0.1, description="ε of tangling as a fraction of the summed variance of the states"
    )
    cca_n_components: int = pydantic.Field(
        default=10, description="PCA dimensions kept on each side before canonical correlations"
    )
    reference_path: str | None = pydantic.Field(
        default=None,
        description="recorded data (.npz/.mat/.nwb) to compare the model with by CCA and "
        "Procrustes; conditions must correspond in order after group_by",
    )
    reference_time_scale: float = pydantic.Field(
        default=1.0,
        description="multiply the reference's times by this to get seconds (1e-3 for ms)",
    )

    @pydantic.field_validator("window", "movement_epoch", "delay_epoch")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] <= value[0]:
            raise ValueError("a window must be (start, end) with end > start")
        return value

    @pydantic.field_validator("variance_threshold", "tangling_epsilon")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError("must be in (0, 1]")
        return value

    @pydantic.field_validator("tangling_n_pcs", "cca_n_components")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value


def participation_ratio(variances: Float[np.ndarray, " k"]) -> float:
    """(Σλ)² / Σλ²: the effective number of dimensions of a variance spectrum λ."""
    variances = np.asarray(variances, dtype=np.float64)
    return float(np.sum(variances) ** 2 / np.sum(variances**2))


def tangling(
    states: Float[np.ndarray, "condition time k"],
    dt: float,
    *,
    epsilon: float = 0.1,
    chunk: int = 2048,
) -> Float[np.ndarray, "condition time"]:
    """Trajectory tangling Q(t) of Russo et al. 2018 for every condition and time.

    Derivatives are forward differences within each condition (the last sample of each
    condition has none and gets NaN); the comparison runs over all times and conditions.

    Args:
        states: trajectories (e.g. top PCs).
        dt: sample interval (s).
        epsilon: ε as a fraction of the summed variance of `states`.
        chunk: rows processed at once (bounds memory).
    """
    states = np.asarray(states, dtype=np.float64)
    n_conditions, n_times, k = states.shape
    x = states[:, :-1].reshape(-1, k)
    v = (np.diff(states, axis=1) / dt).reshape(-1, k)
    eps = epsilon * float(np.sum(np.var(states.reshape(-1, k), axis=0)))
    q = np.empty(x.shape[0])
    for start in range(0, x.shape[0], chunk):
        rows = slice(start, start + chunk)
        dv = scipy.spatial.distance.cdist(v[rows], v, "sqeuclidean")
        dx = scipy.spatial.distance.cdist(x[rows], x, "sqeuclidean")
        q[rows] = np.max(dv / (dx + eps), axis=1)
    out = np.full((n_conditions, n_times), np.nan)
    out[:, :-1] = q.reshape(n_conditions, n_times - 1)
    return out


def _samples(data: Float[np.ndarray, "condition time neuron"] | NeuralData) -> np.ndarray:
    rates = data.rates if isinstance(data, NeuralData) else np.asarray(data, dtype=np.float64)
    return rates.reshape(-1, rates.shape[-1])


def canonical_correlations(
    a: Float[np.ndarray, "condition time n_a"] | NeuralData,
    b: Float[np.ndarray, "condition time n_b"] | NeuralData,
    n_components: int | None = 10,
) -> Float[np.ndarray, " k"]:
    """Canonical correlations between two sets of trajectories sampled at the same points.

    Each side is first reduced to its top `n_components` PCs (None: no reduction), so that
    CCA does not overfit when there are many neurons.
    """
    x, y = _samples(a), _samples(b)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"the two sets have {x.shape[0]} and {y.shape[0]} samples; they must "
            "have the same conditions and times"
        )
    bases = []
    for samples in (x, y):
        keep = min(samples.shape[1], samples.shape[0] - 1)
        if n_components is not None:
            keep = min(keep, n_components)
        reduced = pca(samples, keep).transform(samples)
        basis, upper = np.linalg.qr(reduced)
        # Drop directions without variance (rank-deficient sides).
        good = np.abs(np.diag(upper)) > 1e-10 * max(np.abs(np.diag(upper)).max(), 1e-300)
        bases.append(basis[:, good])
    return np.clip(np.linalg.svd(bases[0].T @ bases[1], compute_uv=False), 0.0, 1.0)


def procrustes_similarity(
    a: Float[np.ndarray, "condition time n_a"] | NeuralData,
    b: Float[np.ndarray, "condition time n_b"] | NeuralData,
) -> float:
    """Orthogonal Procrustes similarity max_Q ⟨A, BQ⟩ = ‖AᵀB‖_* of centred, unit-norm responses.

    1 means identical up to a rotation/reflection (and overall scale and offset); the
    number of neurons may differ (the narrower side is padded with zeros implicitly).
    """
    x, y = _samples(a), _samples(b)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"the two sets have {x.shape[0]} and {y.shape[0]} samples")
    # The Procrustes shape metric (α = 1) of mechscope.shape_distance; its angle's cosine.
    angle = mechscope.shape_distance(
        mechscope.shape_represent(x[None]), mechscope.shape_represent(y[None])
    )["angular"]
    return float(np.clip(np.cos(angle), 0.0, 1.0))


def match_times(reference: NeuralData, target_times: np.ndarray) -> NeuralData:
    """Resample `reference` onto `target_times` by linear interpolation.

    Raises:
        ValueError: if the target times reach outside the reference's times.
    """
    times = reference.times
    half = 0.5 * abs(reference.dt) if reference.n_times > 1 else 0.0
    if target_times[0] < times[0] - half or target_times[-1] > times[-1] + half:
        raise ValueError(
            f"reference covers {times[0]:.3f}–{times[-1]:.3f} s but "
            f"{target_times[0]:.3f}–{target_times[-1]:.3f} s is needed"
        )
    flat = reference.rates.transpose(1, 0, 2).reshape(reference.n_times, -1)
    resampled = np.stack([np.interp(target_times, times, column) for column in flat.T], axis=1)
    rates = resampled.reshape(len(target_times), reference.n_conditions, -1).transpose(1, 0, 2)
    return reference.replace(rates=rates, times=np.asarray(target_times, dtype=np.float64))


def compare_trajectories(
    a: NeuralData,
    b: NeuralData,
    *,
    n_components: int | None = 10,
) -> dict[str, float]:
    """CCA and Procrustes similarity of two aligned sets of condition-averaged trajectories.

    `b` is resampled onto `a`'s times; conditions must correspond in order.

    Returns:
        ``cca_mean`` (mean canonical correlation), ``cca_first`` (the largest one),
        ``procrustes`` (similarity) and ``procrustes_angle`` (arccos, radians).
    """
    if a.n_conditions != b.n_conditions:
        raise ValueError(
            f"cannot compare {a.n_conditions} conditions with {b.n_conditions}; average both "
            "to the same conditions first (e.g. by reach angle)"
        )
    if b.n_times != a.n_times or not np.allclose(b.times, a.times):
        b = match_times(b, a.times)
    correlations = canonical_correlations(a, b, n_components)
    similarity = procrustes_similarity(a, b)
    return {
        "cca_mean": float(np.mean(correlations)),
        "cca_first": float(correlations[0]),
        "procrustes": similarity,
        "procrustes_angle": float(np.arccos(similarity)),
    }


def null_potent_variance(
    rates: Float[np.ndarray, "sample neuron"], readout: Float[np.ndarray, "output neuron"]
) -> tuple[float, float]:
    """Variance of centred `rates` in the readout's potent space and in its null space.

    Returns:
        (potent, null) summed variances; they add up to the total variance.
    """
    rates = np.asarray(rates, dtype=np.float64)
    centred = rates - rates.mean(axis=0)
    potent_basis = scipy.linalg.orth(np.asarray(readout, dtype=np.float64).T)
    scale = max(rates.shape[0] - 1, 1)
    total = float(np.sum(centred**2)) / scale
    potent = float(np.sum((centred @ potent_basis) ** 2)) / scale
    return potent, total - potent


@dataclasses.dataclass(frozen=True)
class PopulationResult:
    """Population-structure results.

    Attributes:
        explained: fraction of variance along each PC, shape ``[k]``.
        participation_ratio: (Σλ)² / Σλ².
        n_pcs_threshold: PCs needed to reach the variance threshold.
        variance_threshold: that threshold.
        delay_potent, delay_null, movement_potent, movement_null: variances (NaN without a
            readout).
        tangling: Q per condition and time of the rates, ``[condition, time]``.
        output_tangling: the same for the outputs (None without outputs).
        pcs: the trajectories in their top PCs ``[condition, time, k]`` (for figures).
        times: times of the analysis window.
        comparison: CCA/Procrustes similarity to a reference (empty without one).
    """

    explained: np.ndarray
    participation_ratio: float
    n_pcs_threshold: int
    variance_threshold: float
    delay_potent: float
    delay_null: float
    movement_potent: float
    movement_null: float
    tangling: np.ndarray
    output_tangling: np.ndarray | None
    pcs: np.ndarray
    times: np.ndarray
    comparison: dict[str, float] = dataclasses.field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat metrics (the same names whether or not a readout/outputs/reference exist)."""
        nan = float("nan")
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            delay_total = self.delay_potent + self.delay_null
            move_total = self.movement_potent + self.movement_null
            potent_ratio = self.delay_potent / self.movement_potent
            null_ratio = self.delay_null / self.movement_null
            q = self.tangling[np.isfinite(self.tangling)]
            out_q = (
                self.output_tangling[np.isfinite(self.output_tangling)]
                if self.output_tangling is not None
                else np.array([])
            )
            metrics = {
                "participation_ratio": self.participation_ratio,
                "n_pcs_variance": float(self.n_pcs_threshold),
                "var_pc1": float(self.explained[0]),
                "var_top3": float(np.sum(self.explained[:3])),
                "delay_potent_fraction": self.delay_potent / delay_total,
                "movement_potent_fraction": self.movement_potent / move_total,
                "potent_prep_move_ratio": potent_ratio,
                "null_prep_move_ratio": null_ratio,
                "null_potent_index": float(np.log(null_ratio / potent_ratio)),
                "tangling_median": float(np.median(q)),
                "tangling_p90": float(np.percentile(q, 90)),
                "output_tangling_p90": float(np.percentile(out_q, 90)) if out_q.size else nan,
            }
        metrics["tangling_ratio_p90"] = (
            metrics["tangling_p90"] / metrics["output_tangling_p90"] if out_q.size else nan
        )
        for name in ("cca_mean", "cca_first", "procrustes", "procrustes_angle"):
            metrics[f"{name}_reference"] = self.comparison.get(name, nan)
        return metrics

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays worth saving (the PC trajectories let suites compare networks later)."""
        out = {
            "explained": self.explained,
            "tangling": self.tangling,
            "pcs": self.pcs,
            "times": self.times,
        }
        if self.output_tangling is not None:
            out["output_tangling"] = self.output_tangling
        return out

    def variance_figure(self) -> Figure:
        """Scree plot with the cumulative fraction of variance."""
        import matplotlib.pyplot as plt

        shown = self.explained[:20]
        figure, axes = plt.subplots(figsize=(3.8, 3.0))
        index = np.arange(1, len(shown) + 1)
        axes.bar(index, shown, color="0.6")
        axes.plot(index, np.cumsum(shown), "k.-", lw=1)
        axes.axhline(self.variance_threshold, color="tab:red", lw=0.6, ls="--")
        axes.set_xlabel("PC")
        axes.set_ylabel("fraction of variance")
        axes.set_title(f"participation ratio {self.participation_ratio:.1f}", fontsize=9)
        figure.tight_layout()
        return figure

    def tangling_figure(self) -> Figure:
        """Tangling of the rates against that of the outputs (Russo et al. Fig. 3 style)."""
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(3.4, 3.4))
        if self.output_tangling is not None:
            both = np.isfinite(self.tangling) & np.isfinite(self.output_tangling)
            axes.scatter(self.output_tangling[both], self.tangling[both], s=3, color="k", alpha=0.4)
            top = max(np.max(self.output_tangling[both]), np.max(self.tangling[both]))
            axes.plot([0, top], [0, top], color="0.7", lw=0.6)
            axes.set_xlabel("output tangling")
        else:
            axes.hist(self.tangling[np.isfinite(self.tangling)], bins=30, color="0.5")
            axes.set_xlabel("tangling")
        axes.set_ylabel("neural tangling" if self.output_tangling is not None else "count")
        figure.tight_layout()
        return figure

    def figures(self) -> dict[str, Callable[[], Figure]]:
        """Lazily drawn figures."""
        return {
            "population_variance": self.variance_figure,
            "population_tangling": self.tangling_figure,
        }


def _epoch_samples(data: NeuralData, event: str, window: tuple[float, float]) -> np.ndarray:
    aligned = data.align(event, window)
    samples = aligned.rates.reshape(-1, aligned.n_neurons)
    samples = samples[np.all(np.isfinite(samples), axis=1)]
    if samples.shape[0] < 2:
        raise ValueError(f"the epoch {window} around '{event}' holds fewer than 2 samples")
    return samples


def population_analysis(
    data: NeuralData,
    config: PopulationConfig | None = None,
    *,
    readout: Float[np.ndarray, "output neuron"] | None = None,
    outputs: NeuralData | None = None,
    reference: NeuralData | None = None,
) -> PopulationResult:
    """Dimensionality, null/potent variance, tangling and similarity to a reference.

    Args:
        data: per-condition rates (with the events named in `config`, or pre-aligned).
        config: settings; defaults to :class:`PopulationConfig()`.
        readout: the linear map from rates to outputs (a model's W_out, or a regression of
            recorded EMG/kinematics on rates); without it null/potent variances are NaN.
        outputs: outputs (or EMG) on the same conditions, for output tangling.
        reference: another set of trajectories (recorded or another network's) compared by
            CCA and Procrustes after the same alignment and grouping.
    """
    config = config or PopulationConfig()
    if config.soften_norm is not None:
        data = data.replace(
            rates=data.rates / soft_normalize_factors(data.rates, config.soften_norm)
        )
    if readout is not None:
        delay_potent, delay_null = null_potent_variance(
            _epoch_samples(data, config.delay_event, config.delay_epoch), readout
        )
        movement_potent, movement_null = null_potent_variance(
            _epoch_samples(data, config.align_event, config.movement_epoch), readout
        )
    else:
        delay_potent = delay_null = movement_potent = movement_null = float("nan")

    def prepare(values: NeuralData) -> NeuralData:
        aligned = values.align(config.align_event, config.window).average_by(config.group_by)
        if not np.all(np.isfinite(aligned.rates)):
            raise ValueError(
                f"the window {config.window} around '{config.align_event}' leaves "
                "some trials; shorten it"
            )
        return aligned

    main = prepare(data)
    samples = main.rates.reshape(-1, main.n_neurons)
    spectrum = pca(samples)
    explained = spectrum.explained_ratio
    needed = int(np.searchsorted(np.cumsum(explained), config.variance_threshold - 1e-12) + 1)
    k = min(config.tangling_n_pcs, spectrum.components.shape[1])
    top = spectrum.transform(main.rates)[..., :k]
    q = tangling(top, main.dt, epsilon=config.tangling_epsilon)
    output_q = None
    if outputs is not None:
        out = prepare(outputs)
        output_q = tangling(out.rates, out.dt, epsilon=config.tangling_epsilon)
    comparison = {}
    if reference is not None:
        ref = reference.replace(rates=reference.rates)
        if config.align_event in ref.events:
            ref = ref.align(config.align_event, config.window)
        ref = ref.average_by(config.group_by) if config.group_by in ref.labels else ref
        comparison = compare_trajectories(main, ref, n_components=config.cca_n_components)
    return PopulationResult(
        explained=explained,
        participation_ratio=participation_ratio(spectrum.variances),
        n_pcs_threshold=needed,
        variance_threshold=config.variance_threshold,
        delay_potent=delay_potent,
        delay_null=delay_null,
        movement_potent=movement_potent,
        movement_null=movement_null,
        tangling=q,
        output_tangling=output_q,
        pcs=top,
        times=main.times,
        comparison=comparison,
    )
