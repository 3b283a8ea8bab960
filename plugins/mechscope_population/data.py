"""Condition × time × neuron data: one container for model rates and recorded neural data.

Every analysis in this plugin takes a :class:`NeuralData`, so the probes (which build one from
a model's responses on the task's conditions) and users with recordings run the same code.
The alignment and condition-averaging helpers here are shared by every probe.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

import mechscope

__all__ = [
    "NeuralData",
    "align_to_event",
    "condition_average",
    "load_neural_data",
    "model_neural_data",
]


def _as_float(array: Any) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class NeuralData:
    """Firing rates of neurons over time for a set of conditions (or trials).

    Attributes:
        rates: rates, shape ``[condition, time, neuron]``; NaN marks samples outside a trial.
        times: sample times in seconds, shape ``[time]``, evenly spaced.
        labels: per-condition labels with a leading ``[condition]`` axis (``"angle"`` in
            radians, ``"target"`` positions, condition ids, ...).
        events: per-condition event times in seconds on the clock of `times`, each of shape
            ``[condition]``; NaN where a condition has no such event. An event a dataset does
            not carry is taken to be time 0, i.e. the data are already aligned to it.
        neuron_ids: optional identifier per neuron, shape ``[neuron]``.
    """

    rates: Float[np.ndarray, "condition time neuron"]
    times: Float[np.ndarray, " time"]
    labels: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    events: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    neuron_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        rates = _as_float(self.rates)
        times = _as_float(self.times)
        if rates.ndim != 3:
            raise ValueError(
                f"rates must have shape [condition, time, neuron], got shape {rates.shape}"
            )
        if times.shape != (rates.shape[1],):
            raise ValueError(
                f"times has shape {times.shape} but rates have {rates.shape[1]} time samples"
            )
        if times.size > 1 and not np.allclose(np.diff(times), times[1] - times[0], rtol=1e-4):
            raise ValueError("times must be evenly spaced")
        labels = {str(k): np.asarray(v) for k, v in self.labels.items()}
        events = {str(k): _as_float(v).reshape(-1) for k, v in self.events.items()}
        for name, value in [*labels.items(), *events.items()]:
            if value.shape[:1] != (rates.shape[0],):
                raise ValueError(
                    f"label/event '{name}' has leading size {value.shape[:1]}, expected "
                    f"{rates.shape[0]} (one per condition)"
                )
        if self.neuron_ids is not None and len(self.neuron_ids) != rates.shape[2]:
            raise ValueError("neuron_ids must have one entry per neuron")
        object.__setattr__(self, "rates", rates)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "events", events)

    @property
    def n_conditions(self) -> int:
        """Number of conditions (or trials)."""
        return self.rates.shape[0]

    @property
    def n_times(self) -> int:
        """Number of time samples."""
        return self.rates.shape[1]

    @property
    def n_neurons(self) -> int:
        """Number of neurons (units)."""
        return self.rates.shape[2]

    @property
    def dt(self) -> float:
        """Sample interval in seconds."""
        if self.n_times < 2:
            raise ValueError("need at least two time samples to know the sample interval")
        return float(self.times[1] - self.times[0])

    def replace(self, **changes: Any) -> NeuralData:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def event_times(self, event: str) -> np.ndarray:
        """Per-condition times of `event`; zeros when the data do not carry it (pre-aligned)."""
        if event in self.events:
            return self.events[event]
        return np.zeros(self.n_conditions)

    def align(self, event: str, window: tuple[float, float]) -> NeuralData:
        """Cut `window` (seconds, relative to `event`) out of every condition.

        Conditions without the event (NaN, e.g. catch trials) are dropped; samples of the
        window that fall outside the recording are NaN. Times and events become relative
        to the event.
        """
        onsets = self.event_times(event)
        keep = np.isfinite(onsets)
        data = self if keep.all() else self.select(keep)
        rates, times = align_to_event(data.rates, data.times, onsets[keep], window)
        events = {k: v - onsets[keep] for k, v in data.events.items()}
        return data.replace(rates=rates, times=times, events=events)

    def window(self, start: float, end: float) -> NeuralData:
        """The samples with ``start <= time <= end`` (up to half a sample of rounding)."""
        tolerance = 0.5 * self.dt if self.n_times > 1 else 0.0
        index = (self.times >= start - tolerance) & (self.times <= end + tolerance)
        return self.replace(rates=self.rates[:, index], times=self.times[index])

    def select(self, index: Any) -> NeuralData:
        """The conditions at `index` (integers, boolean mask or slice)."""
        return self.replace(
            rates=self.rates[index],
            labels={k: v[index] for k, v in self.labels.items()},
            events={k: v[index] for k, v in self.events.items()},
        )

    def select_neurons(self, index: Any) -> NeuralData:
        """The neurons at `index` (integers, boolean mask or slice)."""
        ids = None if self.neuron_ids is None else np.asarray(self.neuron_ids)[index]
        return self.replace(rates=self.rates[:, :, index], neuron_ids=ids)

    def average_by(self, label: str | None) -> NeuralData:
        """Average conditions that share a value of `label` (None: unchanged)."""
        if label is None:
            return self
        if label not in self.labels:
            raise ValueError(
                f"no label '{label}' to average by; available labels: "
                f"{', '.join(sorted(self.labels)) or 'none'}"
            )
        rates, groups = condition_average(self.rates, self.labels[label])
        labels, events = {label: groups[0]}, {}
        for name, values in self.labels.items():
            if name == label:
                continue
            firsts = values[groups[1]]
            # Keep a label only if it is constant within every group, else it is meaningless.
            if all(
                np.array_equal(values[m], np.broadcast_to(f, values[m].shape))
                for m, f in zip(groups[2], firsts, strict=True)
            ):
                labels[name] = firsts
        for name, values in self.events.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                events[name] = np.array([np.nanmean(values[m]) for m in groups[2]])
        return self.replace(rates=rates, labels=labels, events=events)

    def save_npz(self, path: str | Path) -> None:
        """Write the ``.npz`` layout :func:`load_neural_data` reads (no pickle)."""
        # Any, not ndarray: to a type checker `**arrays` could also fill savez's bool
        # allow_pickle (numpy >= 2.1); every key here is an array name.
        arrays: dict[str, Any] = {"rates": self.rates, "times": self.times}
        arrays |= {f"label_{k}": v for k, v in self.labels.items()}
        arrays |= {f"event_{k}": v for k, v in self.events.items()}
        if self.neuron_ids is not None:
            arrays["neuron_ids"] = np.asarray(self.neuron_ids)
        np.savez(path, **arrays)

    def save_nwb(self, path: str | Path, *, name: str = "condition_averages") -> None:
        """Write an NWB file holding these arrays (needs the optional ``pynwb``)."""
        from mechscope_population import _nwb

        _nwb.write(self, path, name=name)

    @classmethod
    def from_trials(
        cls,
        trials: mechscope.Trials,
        values: Float[Any, "batch time neuron"],
        neuron_ids: np.ndarray | None = None,
    ) -> NeuralData:
        """Wrap per-trial responses (e.g. model rates on ``task.conditions()``)."""
        return cls(
            rates=np.asarray(values),
            times=np.asarray(trials.times),
            labels={k: np.asarray(v) for k, v in trials.labels.items()},
            events={k: np.asarray(v) for k, v in trials.events.items()},
            neuron_ids=neuron_ids,
        )


def align_to_event(
    values: Float[np.ndarray, "batch time ..."],
    times: Float[np.ndarray, " time"],
    event_times: Float[np.ndarray, " batch"],
    window: tuple[float, float],
) -> tuple[Float[np.ndarray, "batch window ..."], Float[np.ndarray, " window"]]:
    """Cut a window around a per-trial event out of each trial, on the nearest samples.

    Args:
        values: per-trial samples on the shared grid `times`.
        times: evenly spaced sample times in seconds.
        event_times: the event's time in each trial (finite).
        window: (start, end) in seconds relative to the event, both included.

    Returns:
        The aligned values (NaN where the window leaves the trial) and the relative times.
    """
    start, end = window
    if end < start:
        raise ValueError(f"window end {end} is before its start {start}")
    values = _as_float(values)
    dt = float(times[1] - times[0])
    offsets = np.arange(round(start / dt), round(end / dt) + 1)
    shifts = np.round((np.asarray(event_times) - times[0]) / dt).astype(int)
    index = shifts[:, None] + offsets[None, :]
    inside = (index >= 0) & (index < values.shape[1])
    taken = np.take_along_axis(
        values,
        np.clip(index, 0, values.shape[1] - 1).reshape(index.shape + (1,) * (values.ndim - 2)),
        axis=1,
    )
    taken = np.where(inside.reshape(inside.shape + (1,) * (values.ndim - 2)), taken, np.nan)
    return taken, offsets * dt


def condition_average(
    values: Float[np.ndarray, "batch ..."], labels: np.ndarray
) -> tuple[Float[np.ndarray, "group ..."], tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
    """Average trials that share a label value (NaN samples ignored).

    Args:
        values: per-trial values with a leading batch axis.
        labels: per-trial labels, shape ``[batch]`` or ``[batch, ...]`` (rows are compared).

    Returns:
        The group means (groups sorted by label value) and ``(unique labels, index of the
        first trial of each group, boolean member mask of each group)``.
    """
    labels = np.asarray(labels)
    flat = labels.reshape(labels.shape[0], -1)
    unique, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    members = [inverse == g for g in range(len(unique))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.stack([np.nanmean(values[m], axis=0) for m in members])
    return means, (labels[first], first, members)


def model_neural_data(
    trained: mechscope.TrainedRun,
    task: mechscope.AbstractTask,
    conditions: mechscope.ConditionRun | None = None,
) -> tuple[NeuralData, NeuralData, np.ndarray]:
    """A model's noiseless rates and outputs on the task's conditions, and its readout matrix.

    Args:
        trained: the trained run.
        task: the task whose ``conditions()`` the model runs.
        conditions: ``mechscope.condition_run(trained.model, task)`` if already computed
            (e.g. handed to a probe by the experiment); computed here when None.

    Returns:
        (rates, outputs, readout) where `readout` is the ``[n_outputs, n_units]`` Jacobian of
        the model's (linear) readout, i.e. W_out.
    """
    import jax
    import jax.numpy as jnp

    run = conditions or mechscope.condition_run(trained.model, task)
    model = trained.model
    readout = jax.jacfwd(model.readout)(jnp.zeros(model.n_units))
    rates = NeuralData.from_trials(run.trials, run.rates)
    outputs = NeuralData.from_trials(run.trials, run.outputs)
    return rates, outputs, np.asarray(readout)


def load_neural_data(
    path: str | Path,
    *,
    time_scale: float | None = None,
    struct: str = "Data",
    name: str = "condition_averages",
) -> NeuralData:
    """Load condition × time × neuron rates from ``.npz``, ``.mat`` or ``.nwb``.

    Layouts: ``.npz`` and ``.mat`` hold ``rates`` ``[condition, time, neuron]``, ``times``
    ``[time]`` and optional ``label_<name>``, ``event_<name>`` and ``neuron_ids`` variables;
    a ``.mat`` file may instead hold the struct array of Churchland et al.'s jPCA code
    (``Data(c).A`` ``[time, neuron]`` and ``Data(c).times``, in milliseconds as that code's
    format has them). ``.nwb`` files are those written by :meth:`NeuralData.save_nwb` (needs
    ``pynwb``). Times come back in seconds.

    Args:
        path: the file.
        time_scale: multiply the file's times and events by this to get seconds (1e-3 for
            ms, 1.0 for s). None: the layout's unit, milliseconds for the jPCA struct array
            and seconds for every other layout.
        struct: name of the struct array in a jPCA-style ``.mat`` file.
        name: name of the NWB processing module holding the arrays.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if time_scale is not None and not (np.isfinite(time_scale) and time_scale > 0):
        raise mechscope.ConfigError(f"time_scale must be a positive number, got {time_scale}")
    unit = 1.0  # the layout's time unit in seconds
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            data = _from_flat({k: archive[k] for k in archive.files}, path)
    elif suffix == ".mat":
        from scipy.io import loadmat

        raw = {k: v for k, v in loadmat(path, squeeze_me=True).items() if not k.startswith("__")}
        if "rates" not in raw and struct in raw:
            data, unit = _from_jpca_struct(raw[struct], path), 1e-3
        else:
            data = _from_flat(raw, path)
    elif suffix == ".nwb":
        from mechscope_population import _nwb

        data = _nwb.read(path, name=name)
    else:
        raise ValueError(f"cannot load {path}: expected a .npz, .mat or .nwb file")
    time_scale = unit if time_scale is None else time_scale
    if time_scale != 1.0:
        data = data.replace(
            times=data.times * time_scale,
            events={k: v * time_scale for k, v in data.events.items()},
        )
    return data


def _from_flat(raw: Mapping[str, np.ndarray], path: Path) -> NeuralData:
    missing = [k for k in ("rates", "times") if k not in raw]
    if missing:
        raise ValueError(f"{path} has no {' or '.join(missing)} variable; found {sorted(raw)}")
    rates = np.asarray(raw["rates"], dtype=np.float64)
    if rates.ndim == 2:  # scipy.io squeezes a single condition away
        rates = rates[None]
    n = rates.shape[0]
    labels = {k[6:]: np.atleast_1d(v) for k, v in raw.items() if k.startswith("label_")}
    events = {
        k[6:]: np.asarray(v, dtype=np.float64).reshape(n)
        for k, v in raw.items()
        if k.startswith("event_")
    }
    ids = raw.get("neuron_ids")
    return NeuralData(
        rates=rates,
        times=np.asarray(raw["times"], dtype=np.float64).reshape(-1),
        labels=labels,
        events=events,
        neuron_ids=None if ids is None else np.asarray(ids).reshape(-1),
    )


def _from_jpca_struct(struct: np.ndarray, path: Path) -> NeuralData:
    entries = np.atleast_1d(struct)
    try:
        rates = np.stack([np.asarray(entry["A"], dtype=np.float64) for entry in entries])
        times = np.asarray(entries[0]["times"], dtype=np.float64).reshape(-1)
    except (ValueError, KeyError, IndexError) as error:
        raise ValueError(
            f"{path}: the struct array needs fields A [time, neuron] and times ({error})"
        ) from None
    return NeuralData(rates=rates, times=times, labels={"condition": np.arange(len(entries))})
