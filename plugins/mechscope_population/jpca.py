"""jPCA (Churchland, Cunningham et al. 2012), step for step as their reference code.

Steps (``jPCA.m`` of jPCA_ForDistribution): soft-normalise each neuron by its range over all
times and conditions plus ``softenNorm``; subtract the cross-condition mean at each time; PCA
on the analysed window; differences ΔX and states X within each condition; M_best by least
squares and M_skew by skew-symmetric least squares (solved exactly here, as a Sylvester
equation, instead of the reference code's iterative minimiser); jPC planes from M_skew's
eigenvectors ordered by |eigenvalue|, each oriented so the rotation is counter-clockwise and
aligned as ``getRealVs.m`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np
import pydantic
import scipy.linalg
import scipy.optimize
from jaxtyping import Float
from numpy.typing import NDArray

import mechscope
from mechscope_population.data import NeuralData
from mechscope_population.preprocessing import pca, soft_normalize_factors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "JPCAConfig",
    "JPCAResult",
    "fit_skew_symmetric",
    "fit_skew_symmetric_iterative",
    "jpca_analysis",
    "weighted_circular_mean",
]


class JPCAConfig(mechscope.Config):
    """jPCA: rotational structure of population dynamics (Churchland et al. 2012)."""

    align_event: str = pydantic.Field(
        default="movement_onset",
        description="event the analysis window is relative to; data without this event are "
        "taken to be aligned to it already",
    )
    window: tuple[float, float] = pydantic.Field(
        default=(-0.05, 0.15), description="analysed window (s) relative to the alignment event"
    )
    n_pcs: int = pydantic.Field(
        default=6, description="number of PCs (even); all jPCs live in them"
    )
    normalize: bool = pydantic.Field(
        default=True, description="soft-normalise each neuron by its rate range + soften_norm"
    )
    soften_norm: float = pydantic.Field(
        default=10.0,
        description="added to each neuron's range before normalising, in the data's rate "
        "units (10 spikes/s, as the reference code); used as-is on recorded data",
    )
    model_soften_fraction: float = pydantic.Field(
        default=0.25,
        description="on model rates the softening constant is this fraction of the "
        "median unit's rate range (10 spikes/s is about a quarter of a typical motor-cortex "
        "neuron's range), since model rates have arbitrary units",
    )
    mean_subtract: bool = pydantic.Field(
        default=True, description="subtract the cross-condition mean at each time"
    )
    group_by: str | None = pydantic.Field(
        default=None,
        description="label whose values define conditions to average trials over "
        "(e.g. 'angle'); None analyses each condition trial separately",
    )
    skew_solver: Literal["exact", "iterative"] = pydantic.Field(
        default="exact",
        description="'exact' solves the skew-symmetric least squares as a Sylvester "
        "equation; 'iterative' minimises it with L-BFGS like the reference code (slower)",
    )

    @pydantic.field_validator("n_pcs")
    @classmethod
    def _even(cls, value: int) -> int:
        if value < 2 or value % 2:
            raise ValueError("n_pcs must be an even number >= 2 (jPCs come in planes)")
        return value

    @pydantic.field_validator("window")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] <= value[0]:
            raise ValueError("window must be (start, end) with end > start")
        return value

    @pydantic.field_validator("soften_norm", "model_soften_fraction")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("the softening constant must be >= 0")
        return value


def fit_skew_symmetric(
    states: Float[np.ndarray, "sample k"], derivatives: Float[np.ndarray, "sample k"]
) -> Float[np.ndarray, "k k"]:
    """The skew-symmetric M minimising ‖ΔX − X Mᵀ‖ (dx = M x for column states), exactly.

    The minimiser over skew matrices S (ΔX ≈ X S) satisfies the stationarity condition
    C S + S C = B − Bᵀ with C = XᵀX and B = XᵀΔX, a Sylvester equation whose unique solution
    (C positive definite) is skew-symmetric.
    """
    gram = states.T @ states
    cross = states.T @ derivatives
    rows = scipy.linalg.solve_sylvester(gram, gram, cross - cross.T)
    rows = 0.5 * (rows - rows.T)  # remove round-off asymmetry
    return rows.T


def fit_skew_symmetric_iterative(
    states: Float[np.ndarray, "sample k"], derivatives: Float[np.ndarray, "sample k"]
) -> Float[np.ndarray, "k k"]:
    """The same fit as :func:`fit_skew_symmetric` by iterative descent (the reference's way).

    Minimises ‖ΔX − X S‖² over the k(k−1)/2 free entries of S with L-BFGS and an analytic
    gradient, started from the skew part of the unconstrained solution, as
    ``skewSymRegress.m`` does with ``minimize.m``. Kept as an independent check and baseline.
    """
    k = states.shape[1]
    upper = np.triu_indices(k, 1)

    def to_matrix(vector: np.ndarray) -> np.ndarray:
        matrix = np.zeros((k, k))
        matrix[upper] = vector
        return matrix - matrix.T

    def loss(vector: np.ndarray) -> tuple[float, np.ndarray]:
        residual = derivatives - states @ to_matrix(vector)
        gradient = -2.0 * states.T @ residual
        return float(np.sum(residual**2)), (gradient - gradient.T)[upper]

    unconstrained = np.linalg.lstsq(states, derivatives, rcond=None)[0]
    start = (0.5 * (unconstrained - unconstrained.T))[upper]
    solution = scipy.optimize.minimize(
        loss,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10000, "gtol": 1e-12, "ftol": 1e-15},
    )
    return to_matrix(solution.x).T


@dataclasses.dataclass(frozen=True)
class JPCAResult:
    """Everything jPCA measured (dynamics matrices act on column states: dx = M x per sample).

    Attributes:
        times: analysed times relative to the alignment event, shape ``[time]``.
        projection: data in jPC coordinates, shape ``[condition, time, k]``.
        pc_projection: data in PC coordinates, shape ``[condition, time, k]``.
        jpcs: jPC axes in PC coordinates (orthonormal columns), shape ``[k, k]``.
        pcs: principal axes in neuron space, shape ``[neuron, k]``.
        m_best: unconstrained least-squares dynamics in PC coordinates, ``[k, k]``.
        m_skew: skew-symmetric least-squares dynamics in PC coordinates, ``[k, k]``.
        eigenvalues: |imaginary part| of M_skew's eigenvalue of each plane (rad/sample).
        r2_best, r2_skew: R² of ΔX by M_best / M_skew over all k dimensions.
        r2_best_plane1, r2_skew_plane1: the same within the first jPC plane.
        var_pcs: fraction of the analysed variance captured by each PC.
        var_planes: fraction captured by each jPC plane.
        freq_hz: rotation frequency of each plane in Hz.
        phase_diff: angle between state and its derivative in each plane, wrapped to
            (−π, π], shape ``[plane, condition, time]`` (π/2 = pure counter-clockwise rotation).
        radius: distance of each state from the origin in each plane, the weight of its
            angle in the circular statistics, shape ``[plane, condition, time]``.
        norm_factors: the per-neuron normalisation divisors that were used.
        labels: the analysed conditions' labels.
    """

    times: np.ndarray
    projection: np.ndarray
    pc_projection: np.ndarray
    jpcs: np.ndarray
    pcs: np.ndarray
    m_best: np.ndarray
    m_skew: np.ndarray
    eigenvalues: np.ndarray
    r2_best: float
    r2_skew: float
    r2_best_plane1: float
    r2_skew_plane1: float
    var_pcs: np.ndarray
    var_planes: np.ndarray
    freq_hz: np.ndarray
    phase_diff: np.ndarray
    radius: np.ndarray
    norm_factors: np.ndarray
    labels: dict[str, np.ndarray]

    @property
    def n_planes(self) -> int:
        """Number of jPC planes."""
        return self.jpcs.shape[1] // 2

    def circular_stats(self, plane: int = 0) -> dict[str, float]:
        """Circular statistics of the state–derivative angle in one plane.

        ``mean`` and ``resultant`` are the reference's (``circ_mean`` and ``circ_r`` of
        ``plotPhaseDiff.m``): each sample's angle is weighted by its radius in the plane, so
        states near the origin, whose angle is mostly noise, count little.

        Returns:
            ``mean`` (radius-weighted circular mean, rad), ``resultant`` (radius-weighted mean
            resultant length, 0–1), ``rotation_index`` (unweighted mean of cos(angle − π/2),
            the reference's ``averageDotProduct``: 1 for pure counter-clockwise rotation, 0 for
            no consistent rotation) and ``fraction_ccw`` (fraction of samples with angle in
            (0, π)).
        """
        angles = self.phase_diff[plane].reshape(-1)
        weights = self.radius[plane].reshape(-1)
        mean, resultant = weighted_circular_mean(angles, weights)
        return {
            "mean": mean,
            "resultant": resultant,
            "rotation_index": float(np.mean(np.cos(angles - np.pi / 2))),
            "fraction_ccw": float(np.mean((angles > 0) & (angles < np.pi))),
        }

    def metrics(self) -> dict[str, float]:
        """Flat metrics (names depend only on the number of planes)."""
        out = {
            "r2_best": self.r2_best,
            "r2_skew": self.r2_skew,
            "r2_ratio": self.r2_skew / self.r2_best if self.r2_best > 0 else float("nan"),
            "r2_best_plane1": self.r2_best_plane1,
            "r2_skew_plane1": self.r2_skew_plane1,
            "var_captured": float(np.sum(self.var_planes)),
        }
        for plane in range(self.n_planes):
            out[f"var_plane{plane + 1}"] = float(self.var_planes[plane])
            out[f"freq_hz_plane{plane + 1}"] = float(self.freq_hz[plane])
        for name, value in self.circular_stats(0).items():
            out[f"phase_{name}_plane1"] = value
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays worth saving."""
        return {
            "times": self.times,
            "projection": self.projection,
            "jpcs": self.jpcs,
            "pcs": self.pcs,
            "m_best": self.m_best,
            "m_skew": self.m_skew,
            "var_pcs": self.var_pcs,
            "var_planes": self.var_planes,
            "freq_hz": self.freq_hz,
            "phase_diff": self.phase_diff,
        }

    def rosette_figure(self, plane: int = 0) -> Figure:
        """The rosette: each condition's trajectory in a jPC plane, coloured by its start."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import Normalize

        x = self.projection[:, :, 2 * plane]
        y = self.projection[:, :, 2 * plane + 1]
        colour = plt.get_cmap("RdYlGn_r")(Normalize()(x[:, 0]))
        figure, axes = plt.subplots(figsize=(4.2, 4.2))
        for c in np.argsort(x[:, 0]):
            axes.plot(x[c], y[c], color=colour[c], lw=1.2)
            axes.plot(x[c, 0], y[c, 0], "o", color=colour[c], ms=3)
            if x.shape[1] > 1:
                axes.annotate(
                    "",
                    xy=(x[c, -1], y[c, -1]),
                    xytext=(x[c, -2], y[c, -2]),
                    arrowprops={"arrowstyle": "-|>", "color": colour[c], "lw": 1.2},
                )
        axes.axhline(0, color="0.85", lw=0.6, zorder=0)
        axes.axvline(0, color="0.85", lw=0.6, zorder=0)
        axes.set_aspect("equal", adjustable="datalim")
        axes.set_xlabel(f"jPC{2 * plane + 1}")
        axes.set_ylabel(f"jPC{2 * plane + 2}")
        axes.set_title(
            f"jPC plane {plane + 1}: {100 * self.var_planes[plane]:.0f}% var, "
            f"{self.freq_hz[plane]:.2g} Hz",
            fontsize=9,
        )
        figure.tight_layout()
        return figure

    def r2_figure(self) -> Figure:
        """Bars of R² for M_best and M_skew, in all dimensions and in the first plane."""
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(3.8, 3.0))
        positions = np.arange(2)
        axes.bar(
            positions - 0.18, [self.r2_best, self.r2_best_plane1], 0.34, label="M_best", color="0.6"
        )
        axes.bar(
            positions + 0.18,
            [self.r2_skew, self.r2_skew_plane1],
            0.34,
            label="M_skew",
            color="tab:red",
        )
        axes.set_xticks(positions, [f"all {self.jpcs.shape[0]} dims", "jPC plane 1"])
        axes.set_ylim(0, 1)
        axes.set_ylabel("R² of ΔX")
        axes.legend(frameon=False, fontsize=8)
        figure.tight_layout()
        return figure

    def figures(self) -> dict[str, Callable[[], Figure]]:
        """Lazily drawn figures."""
        return {"jpca_rosette": self.rosette_figure, "jpca_r2": self.r2_figure}


def weighted_circular_mean(
    angles: Float[np.ndarray, " sample"], weights: Float[np.ndarray, " sample"]
) -> tuple[float, float]:
    """Weighted circular mean direction and mean resultant length (``circ_mean``, ``circ_r``).

    The mean direction is the angle of Σ wᵢ e^{iθᵢ}; the resultant length is its modulus over
    Σ wᵢ (1 when every angle agrees, near 0 when they spread evenly).
    """
    total = float(np.sum(weights))
    if total <= 0:
        return float("nan"), float("nan")
    resultant = complex(np.sum(weights * np.exp(1j * angles)))
    return float(np.angle(resultant)), abs(resultant) / total


def _r2(target: np.ndarray, residual: np.ndarray) -> float:
    # Uncentred, as the reference code (ΔX has no mean to speak of after mean subtraction).
    total = float(np.sum(target**2))
    return (total - float(np.sum(residual**2))) / total


def _real_plane(
    vector: NDArray[np.inexact], start_states: np.ndarray, samples: np.ndarray
) -> np.ndarray:
    """Two real orthonormal axes from a complex eigenvector, aligned as ``getRealVs.m``.

    Args:
        vector: the eigenvector of M_skew's positive-frequency eigenvalue of the plane.
        start_states: every condition's first analysed state, ``[condition, k]``.
        samples: every analysed state, ``[sample, k]``, the last time of each condition
            included (the reference orients the plane by all of them, not only by the states
            that precede a step).
    """
    # For M v = iω v (ω > 0): M Re v = −ω Im v and M Im v = ω Re v, so in the axes
    # (Re v, −Im v) the dynamics are [[0, −ω], [ω, 0]]: counter-clockwise.
    basis, upper = np.linalg.qr(np.stack([vector.real, -vector.imag], axis=1))
    basis = basis * np.sign(np.diag(upper))
    # Rotate within the plane so the starting states spread mostly along the first axis.
    start = start_states @ basis
    start = start - start.mean(axis=0)
    _, _, vt = np.linalg.svd(start, full_matrices=False)
    rotation = vt.T
    largest = np.argmax(np.abs(rotation), axis=0)
    rotation = rotation * np.sign(rotation[largest, np.arange(2)])
    if np.linalg.det(rotation) < 0:  # keep a proper rotation so the sense stays CCW
        rotation[:, 1] = -rotation[:, 1]
    basis = basis @ rotation
    # Flip both axes so the largest excursion along the second axis is positive.
    second = samples @ basis[:, 1]
    if np.max(np.abs(second)) > np.max(second):
        basis = -basis
    return basis


def jpca_analysis(data: NeuralData, config: JPCAConfig | None = None) -> JPCAResult:
    """Run jPCA on condition × time × neuron rates.

    Normalisation uses every time and condition in `data`; then the data are aligned to
    ``config.align_event`` (when they carry it) and cut to ``config.window``, averaged by
    ``config.group_by`` if set, and analysed.

    Args:
        data: rates (recorded, or a model's on the task's conditions).
        config: settings; defaults to :class:`JPCAConfig()`.
    """
    config = config or JPCAConfig()
    if config.normalize:
        factors = soft_normalize_factors(data.rates, config.soften_norm)
    else:
        factors = np.ones(data.n_neurons)
    data = data.replace(rates=data.rates / factors)
    _check_window(data, config)
    if config.align_event in data.events:
        data = data.align(config.align_event, config.window)
    else:
        data = data.window(*config.window)
    data = data.average_by(config.group_by)
    rates = data.rates
    n_conditions, n_times, _ = rates.shape
    if n_times < 3:
        raise ValueError(
            f"the analysis window {config.window} holds only {n_times} samples; need >= 3"
        )
    if not np.all(np.isfinite(rates)):
        raise ValueError(
            f"the analysis window {config.window} around '{config.align_event}' leaves some "
            "trials (NaN rates); shorten the window"
        )
    if config.mean_subtract and n_conditions > 1:
        rates = rates - rates.mean(axis=0, keepdims=True)
    flat = rates.reshape(-1, rates.shape[-1])
    k = config.n_pcs
    if k > min(flat.shape):
        raise ValueError(f"n_pcs={k} exceeds the data's dimension {min(flat.shape)}")
    fitted = pca(flat, k)
    reduced = fitted.transform(rates)  # [condition, time, k]
    states = reduced[:, :-1].reshape(-1, k)
    deltas = np.diff(reduced, axis=1).reshape(-1, k)  # within conditions only

    m_best = np.linalg.lstsq(states, deltas, rcond=None)[0].T
    solve = fit_skew_symmetric if config.skew_solver == "exact" else fit_skew_symmetric_iterative
    m_skew = solve(states, deltas)

    # Real when every eigenvalue is (M_skew = 0), complex otherwise.
    eigenvalues: NDArray[np.inexact]
    vectors: NDArray[np.inexact]
    eigenvalues, vectors = np.linalg.eig(m_skew)
    # Pair each +iω with its conjugate: take the positive-frequency member of each pair,
    # ordered by |eigenvalue| (ties broken by index for determinism).
    positive = np.flatnonzero(eigenvalues.imag > 0)
    if positive.size < k // 2:
        # Zero-frequency planes (rank-deficient M_skew) still need real axes.
        positive = np.argsort(-eigenvalues.imag, kind="stable")[: k // 2]
    order = positive[np.argsort(-np.abs(eigenvalues[positive]), kind="stable")][: k // 2]
    planes = []
    for index in order:
        planes.append(_real_plane(vectors[:, index], reduced[:, 0], reduced.reshape(-1, k)))
    jpcs = np.concatenate(planes, axis=1)
    # Re-orthonormalise across planes (eigenvectors of a normal matrix are orthogonal, but a
    # near-degenerate spectrum can leave round-off) without changing any plane's axes much.
    jpcs = _orthonormal_like(jpcs)
    omega = np.abs(eigenvalues[order].imag)

    residual_best = deltas - states @ m_best.T
    residual_skew = deltas - states @ m_skew.T
    plane1 = jpcs[:, :2]
    projection = reduced @ jpcs
    total = float(np.sum((flat - flat.mean(axis=0)) ** 2))
    var_jpcs = np.sum(projection.reshape(-1, k) ** 2, axis=0) / total

    x, y = projection[..., 0::2], projection[..., 1::2]
    phase = np.arctan2(y, x)
    step = np.diff(projection, axis=1)
    phase_delta = np.arctan2(step[..., 1::2], step[..., 0::2])
    phase_delta = np.concatenate([phase_delta[:, :1], phase_delta], axis=1)
    phase_diff = np.angle(np.exp(1j * (phase_delta - phase)))  # wrap to (−π, π]

    return JPCAResult(
        times=data.times,
        projection=projection,
        pc_projection=reduced,
        jpcs=jpcs,
        pcs=fitted.components,
        m_best=m_best,
        m_skew=m_skew,
        eigenvalues=omega,
        r2_best=_r2(deltas, residual_best),
        r2_skew=_r2(deltas, residual_skew),
        r2_best_plane1=_r2(deltas @ plane1, residual_best @ plane1),
        r2_skew_plane1=_r2(deltas @ plane1, residual_skew @ plane1),
        var_pcs=fitted.variances / fitted.total_variance,
        var_planes=var_jpcs.reshape(-1, 2).sum(axis=1),
        freq_hz=omega / (2 * np.pi * data.dt),
        phase_diff=np.moveaxis(phase_diff, -1, 0),
        radius=np.moveaxis(np.hypot(x, y), -1, 0),
        norm_factors=factors,
        labels=dict(data.labels),
    )


def _check_window(data: NeuralData, config: JPCAConfig) -> None:
    """A one-line error when the window lies outside the data's times (e.g. ms against s).

    The range is that of the times relative to the alignment event, over all conditions that
    carry it; a window reaching past it by more than half a sample cannot be analysed.
    """
    event = config.align_event
    onsets = data.event_times(event)
    onsets = onsets[np.isfinite(onsets)]
    if len(onsets) == 0 or data.n_times == 0:
        return
    first, last = float(data.times[0] - onsets.max()), float(data.times[-1] - onsets.min())
    slack = 0.5 * data.dt if data.n_times > 1 else 0.0
    start, end = config.window
    if start < first - slack or end > last + slack:
        relative = f" relative to '{event}'" if event in data.events else ""
        raise mechscope.ConfigError(
            f"the jPCA window ({start:g}, {end:g}) s lies outside the data's time range "
            f"({first:g}, {last:g}) s{relative}; are the data's times or the window in ms?"
        )


def _orthonormal_like(basis: np.ndarray) -> np.ndarray:
    """The orthonormal matrix nearest to `basis` (polar factor)."""
    u, _, vt = np.linalg.svd(basis)
    return u @ vt
