"""Single-neuron tuning: PSTHs and cosine tuning per epoch (delay, movement).

Per unit and epoch, the epoch-mean rate is averaged per reach direction θ and fitted by least
squares with r = b0 + b1·cos(θ − PD) (linear in b0, b1·cos PD, b1·sin PD), giving the
preferred direction PD, the depth b1 and R².
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pydantic
import scipy.signal
from jaxtyping import Float

import mechscope
from mechscope_population.data import NeuralData, condition_average

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CosineFit", "TuningConfig", "TuningResult", "fit_cosine_tuning", "tuning_analysis"]


def _window_validator(value: tuple[float, float]) -> tuple[float, float]:
    if value[1] <= value[0]:
        raise ValueError("a window must be (start, end) with end > start")
    return value


class TuningConfig(mechscope.Config):
    """Single-unit tuning: condition-averaged PSTHs and cosine tuning per epoch."""

    target_event: str = pydantic.Field(default="target_on", description="event of target onset")
    movement_event: str = pydantic.Field(
        default="movement_onset", description="event of movement onset"
    )
    target_psth_window: tuple[float, float] = pydantic.Field(
        default=(-0.1, 0.3), description="PSTH window (s) aligned to target onset"
    )
    movement_psth_window: tuple[float, float] = pydantic.Field(
        default=(-0.3, 0.5), description="PSTH window (s) aligned to movement onset"
    )
    delay_epoch: tuple[float, float] = pydantic.Field(
        default=(0.1, 0.3),
        description="delay epoch (s) relative to target onset (inside the shortest "
        "delay of 0.3 s, so no trial's go cue falls in it)",
    )
    movement_epoch: tuple[float, float] = pydantic.Field(
        default=(-0.05, 0.25), description="movement epoch (s) relative to movement onset"
    )
    angle_label: str = pydantic.Field(
        default="angle",
        description="label holding each condition's reach angle (rad); if absent, "
        "the angle of the 'target' label's position is used",
    )
    tuned_r2: float = pydantic.Field(
        default=0.5,
        description="a unit counts as tuned in an epoch when its cosine fit has R² >= this",
    )
    multiphasic_prominence: float = pydantic.Field(
        default=0.2,
        description="an extremum of a movement-aligned PSTH counts toward multiphasic "
        "responses if its prominence is at least this fraction of the unit's range",
    )
    n_units_plot: int = pydantic.Field(default=16, description="units drawn in the PSTH grid")

    _windows = pydantic.field_validator(
        "target_psth_window", "movement_psth_window", "delay_epoch", "movement_epoch"
    )(_window_validator)

    @pydantic.field_validator("tuned_r2", "multiphasic_prominence")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError("must be between 0 and 1")
        return value

    @pydantic.field_validator("n_units_plot")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("n_units_plot must be >= 1")
        return value


@dataclasses.dataclass(frozen=True)
class CosineFit:
    """Per-unit cosine tuning r = b0 + b1·cos(θ − PD).

    Attributes:
        baseline: b0, shape ``[neuron]``.
        depth: b1 >= 0, shape ``[neuron]``.
        preferred: PD in radians in (−π, π], shape ``[neuron]``.
        r2: R² of the fit; NaN for a unit whose rate does not vary with θ.
    """

    baseline: np.ndarray
    depth: np.ndarray
    preferred: np.ndarray
    r2: np.ndarray


def fit_cosine_tuning(
    angles: Float[np.ndarray, " condition"], rates: Float[np.ndarray, "condition neuron"]
) -> CosineFit:
    """Least-squares cosine tuning of every unit (needs >= 3 distinct angles)."""
    angles = np.asarray(angles, dtype=np.float64)
    if np.unique(np.round(np.mod(angles, 2 * np.pi), 9)).size < 3:
        raise ValueError("cosine tuning needs at least 3 distinct reach angles")
    design = np.stack([np.ones_like(angles), np.cos(angles), np.sin(angles)], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, rates, rcond=None)
    residual = rates - design @ coefficients
    total = np.sum((rates - rates.mean(axis=0)) ** 2, axis=0)
    scale = np.maximum(np.max(np.abs(rates), axis=0), 1e-300)
    flat = total <= (1e-12 * scale) ** 2 * len(angles)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(flat, np.nan, 1.0 - np.sum(residual**2, axis=0) / total)
    return CosineFit(
        baseline=coefficients[0],
        depth=np.hypot(coefficients[1], coefficients[2]),
        preferred=np.arctan2(coefficients[2], coefficients[1]),
        r2=r2,
    )


@dataclasses.dataclass(frozen=True)
class TuningResult:
    """Single-unit tuning results.

    Attributes:
        angles: the distinct reach angles, shape ``[direction]``.
        target_times, movement_times: PSTH times relative to each event.
        target_psth, movement_psth: direction-averaged PSTHs ``[direction, time, neuron]``.
        delay, movement: cosine fits in the two epochs.
        pd_change: wrapped PD change movement − delay (rad); NaN unless tuned in both.
        multiphasic: whether each unit's movement PSTHs have >= 2 prominent extrema (in the
            direction where the unit is most modulated).
        tuned_r2: the threshold that was used.
    """

    angles: np.ndarray
    target_times: np.ndarray
    movement_times: np.ndarray
    target_psth: np.ndarray
    movement_psth: np.ndarray
    delay: CosineFit
    movement: CosineFit
    pd_change: np.ndarray
    multiphasic: np.ndarray
    tuned_r2: float
    n_units_plot: int = 16

    def tuned(self, epoch: str) -> np.ndarray:
        """Boolean mask of units tuned in ``"delay"`` or ``"movement"``."""
        fit = self.delay if epoch == "delay" else self.movement
        return np.nan_to_num(fit.r2, nan=0.0) >= self.tuned_r2

    def metrics(self) -> dict[str, float]:
        """Flat metrics."""
        both = np.isfinite(self.pd_change)
        change = np.abs(self.pd_change[both])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {
                "fraction_tuned_delay": float(np.mean(self.tuned("delay"))),
                "fraction_tuned_movement": float(np.mean(self.tuned("movement"))),
                "fraction_tuned_both": float(np.mean(both)),
                "median_r2_delay": float(np.nanmedian(self.delay.r2)),
                "median_r2_movement": float(np.nanmedian(self.movement.r2)),
                "pd_change_mean_abs_deg": float(np.degrees(np.mean(change)))
                if change.size
                else float("nan"),
                "pd_change_median_abs_deg": float(np.degrees(np.median(change)))
                if change.size
                else float("nan"),
                "fraction_multiphasic": float(np.mean(self.multiphasic)),
            }

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays worth saving."""
        out = {
            "angles": self.angles,
            "target_times": self.target_times,
            "movement_times": self.movement_times,
            "target_psth": self.target_psth,
            "movement_psth": self.movement_psth,
            "pd_change": self.pd_change,
            "multiphasic": self.multiphasic,
        }
        for epoch, fit in (("delay", self.delay), ("movement", self.movement)):
            for field in dataclasses.fields(fit):
                out[f"{epoch}_{field.name}"] = getattr(fit, field.name)
        return out

    def psth_figure(self) -> Figure:
        """A grid of PSTHs (target- then movement-aligned) of the most modulated units."""
        import matplotlib.pyplot as plt

        span = np.nanmax(self.movement_psth, axis=(0, 1)) - np.nanmin(
            self.movement_psth, axis=(0, 1)
        )
        units = np.argsort(-np.nan_to_num(span))[: self.n_units_plot]
        columns = int(np.ceil(np.sqrt(len(units))))
        rows = int(np.ceil(len(units) / columns))
        figure, grid = plt.subplots(
            rows, columns, figsize=(1.9 * columns, 1.4 * rows), squeeze=False
        )
        colours = plt.get_cmap("hsv")(np.mod(self.angles, 2 * np.pi) / (2 * np.pi))
        gap = 0.1
        shift = self.target_times[-1] - self.movement_times[0] + gap
        for axes, unit in zip(grid.flat, units, strict=False):
            for d, colour in enumerate(colours):
                axes.plot(self.target_times, self.target_psth[d, :, unit], color=colour, lw=0.8)
                axes.plot(
                    self.movement_times + shift,
                    self.movement_psth[d, :, unit],
                    color=colour,
                    lw=0.8,
                )
            axes.axvline(0, color="0.7", lw=0.5)
            axes.axvline(shift, color="0.7", lw=0.5, ls="--")
            axes.set_title(f"unit {unit}", fontsize=7)
            axes.tick_params(labelsize=6)
            axes.set_xticks([0, shift], ["target", "move"])
        for axes in grid.flat[len(units) :]:
            axes.axis("off")
        figure.tight_layout()
        return figure

    def pd_figure(self) -> Figure:
        """Preferred direction in the movement epoch against the delay epoch."""
        import matplotlib.pyplot as plt

        both = np.isfinite(self.pd_change)
        figure, axes = plt.subplots(figsize=(3.4, 3.4))
        axes.scatter(
            np.degrees(self.delay.preferred[both]),
            np.degrees(self.movement.preferred[both]),
            s=8,
            color="k",
        )
        axes.plot([-180, 180], [-180, 180], color="0.7", lw=0.6)
        axes.set_xlim(-180, 180)
        axes.set_ylim(-180, 180)
        axes.set_xlabel("delay PD (deg)")
        axes.set_ylabel("movement PD (deg)")
        figure.tight_layout()
        return figure

    def figures(self) -> dict[str, Callable[[], Figure]]:
        """Lazily drawn figures."""
        return {"tuning_psth_grid": self.psth_figure, "tuning_pd": self.pd_figure}


def _angles(data: NeuralData, label: str) -> np.ndarray:
    if label in data.labels:
        return np.asarray(data.labels[label], dtype=np.float64).reshape(-1)
    if "target" in data.labels:
        target = np.asarray(data.labels["target"], dtype=np.float64)
        return np.arctan2(target[:, 1], target[:, 0])
    raise ValueError(
        f"tuning needs a '{label}' (or 'target') label; available labels: "
        f"{', '.join(sorted(data.labels)) or 'none'}"
    )


def _multiphasic(psth: np.ndarray, prominence: float) -> np.ndarray:
    """Per unit: >= 2 prominent extrema in the direction of largest modulation."""
    n_neurons = psth.shape[-1]
    out = np.zeros(n_neurons, dtype=bool)
    for unit in range(n_neurons):
        traces = psth[:, :, unit]
        spans = np.nanmax(traces, axis=1) - np.nanmin(traces, axis=1)
        if not np.any(spans > 0):
            continue
        trace = traces[int(np.nanargmax(spans))]
        trace = trace[np.isfinite(trace)]
        threshold = prominence * (trace.max() - trace.min())
        peaks = scipy.signal.find_peaks(trace, prominence=threshold)[0]
        troughs = scipy.signal.find_peaks(-trace, prominence=threshold)[0]
        out[unit] = peaks.size + troughs.size >= 2
    return out


def tuning_analysis(data: NeuralData, config: TuningConfig | None = None) -> TuningResult:
    """PSTHs and cosine tuning of every unit.

    Args:
        data: per-condition rates with the target-onset and movement-onset events (an event
            the data lack is taken to be time 0) and reach angles as a label.
        config: settings; defaults to :class:`TuningConfig()`.
    """
    config = config or TuningConfig()
    angles = _angles(data, config.angle_label)
    data = data.replace(labels={**data.labels, "_angle": np.round(angles, 9)})

    def psth(event: str, window: tuple[float, float]) -> tuple[np.ndarray, ...]:
        aligned = data.align(event, window)
        means, groups = condition_average(aligned.rates, aligned.labels["_angle"])
        return means, aligned.times, groups[0]

    target_psth, target_times, directions = psth(config.target_event, config.target_psth_window)
    movement_psth, movement_times, _ = psth(config.movement_event, config.movement_psth_window)

    def epoch_fit(event: str, window: tuple[float, float]) -> CosineFit:
        aligned = data.align(event, window)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_trial = np.nanmean(aligned.rates, axis=1)
        means, groups = condition_average(per_trial, aligned.labels["_angle"])
        if not np.all(np.isfinite(means)):
            raise ValueError(
                f"the epoch {window} around '{event}' has no samples for some "
                "direction; check the epoch against the trial length"
            )
        return fit_cosine_tuning(groups[0], means)

    delay = epoch_fit(config.target_event, config.delay_epoch)
    movement = epoch_fit(config.movement_event, config.movement_epoch)
    both = (np.nan_to_num(delay.r2) >= config.tuned_r2) & (
        np.nan_to_num(movement.r2) >= config.tuned_r2
    )
    change = np.angle(np.exp(1j * (movement.preferred - delay.preferred)))
    return TuningResult(
        angles=directions,
        target_times=target_times,
        movement_times=movement_times,
        target_psth=target_psth,
        movement_psth=movement_psth,
        delay=delay,
        movement=movement,
        pd_change=np.where(both, change, np.nan),
        multiphasic=_multiphasic(movement_psth, config.multiphasic_prominence),
        tuned_r2=config.tuned_r2,
        n_units_plot=config.n_units_plot,
    )
