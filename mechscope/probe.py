"""The probe interface, the result every probe returns and the shared noise-free condition run."""

from __future__ import annotations

import abc
import dataclasses
import inspect
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from mechscope.config import Config
from mechscope.errors import StoreError
from mechscope.model import AbstractModel, simulate
from mechscope.task import AbstractTask, Trials
from mechscope.training import TrainedRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclasses.dataclass
class ProbeResult:
    """What a probe measured.

    Attributes:
        metrics: scalar results; each becomes a column of a suite's table.
        arrays: array results, saved as ``.npz`` (no pickle).
        figures: figure name → a function drawing a matplotlib Figure. Drawing is lazy so a
            suite that only wants the table never pays for plotting.
        figure_files: figure name → saved image path; filled when a result is loaded.
    """

    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    figures: dict[str, Callable[[], Figure]] = dataclasses.field(default_factory=dict)
    figure_files: dict[str, Path] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = {str(k): float(v) for k, v in self.metrics.items()}
        self.arrays = {str(k): np.asarray(v) for k, v in self.arrays.items()}

    def save(self, directory: str | Path, *, formats: tuple[str, ...] = ("png", "svg")) -> None:
        """Write ``metrics.json``, ``arrays.npz`` and each figure in each of `formats`."""
        import matplotlib.pyplot as plt

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # NaN is a legitimate "not measurable" value; JSON has no NaN, so store it as null.
        metrics = {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()}
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        # Typed Any: pyright matches **arrays against savez's keyword `allow_pickle`.
        arrays: dict[str, Any] = dict(self.arrays)
        np.savez(directory / "arrays.npz", **arrays)
        for name, draw in self.figures.items():
            figure = draw()
            try:
                for extension in formats:
                    figure.savefig(directory / f"{name}.{extension}", dpi=110, bbox_inches="tight")
            finally:
                plt.close(figure)

    @classmethod
    def load(cls, directory: str | Path) -> ProbeResult:
        """Load a result written by :meth:`save` (figures come back as files)."""
        directory = Path(directory)
        try:
            raw = json.loads((directory / "metrics.json").read_text())
            with np.load(directory / "arrays.npz", allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot load probe result from {directory}: {error}") from None
        metrics = {k: (math.nan if v is None else float(v)) for k, v in raw.items()}
        files = {path.stem: path for path in sorted(directory.glob("*.png"))}
        return cls(metrics=metrics, arrays=arrays, figure_files=files)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A scalar a probe reports, declared before it runs.

    Suites check the metric names a config uses (``compare``, ``correlate``, claims) against
    these declarations before any training, and the report shows ``meaning`` beside every row.

    Attributes:
        name: the metric's key in :attr:`ProbeResult.metrics` (without the probe prefix).
        meaning: one line saying what it measures, for a reader who has not seen the code.
        unit: its unit (``"s"``, ``"rad"``, ``"1/s"``); ``""`` when dimensionless.
        direction: what a larger value means, e.g. ``"higher = more rotational"``; ``""`` when
            neither direction is better or more of anything.
        kind: ``"metric"`` for a measurement; ``"setting"`` for a value the probe used (a
            resolved default, a count of inputs) that is recorded but is not a finding and is
            kept out of comparisons and the report's findings.
    """

    name: str
    meaning: str
    unit: str = ""
    direction: str = ""
    kind: Literal["metric", "setting"] = "metric"


TRAINING_METRICS: tuple[Metric, ...] = (
    Metric(
        "loss", "the trainer's objective at the last evaluation", direction="lower = better fit"
    ),
    Metric(
        "r2",
        "R² of the outputs against the targets at the last evaluation",
        direction="higher = better fit",
    ),
)
"""The training columns every run has (``train.loss``, ``train.r2``), declared like a probe's."""


def declared_columns(probes: Mapping[str, AbstractProbe]) -> dict[str, Metric]:
    """Every declared table column of a run with these probes: ``train.*`` and ``<probe>.<metric>``.

    Args:
        probes: probe name (as configured) → the configured probe.

    Returns:
        Column name → its declaration. A probe that declares nothing contributes no columns.
    """
    columns = {f"train.{metric.name}": metric for metric in TRAINING_METRICS}
    for name, probe in probes.items():
        columns.update({f"{name}.{metric.name}": metric for metric in probe.metrics()})
    return columns


@dataclasses.dataclass(frozen=True)
class ConditionRun:
    """A model's noise-free response to ``task.conditions()``, on the host in float64.

    Most probes start from this one simulation; :class:`~mechscope.experiment.Experiment`
    computes it once per trained network and hands it to every probe (``conditions=``), so
    it is not recomputed per probe. Build one with :func:`condition_run`.

    Attributes:
        trials: the condition trials.
        states: hidden states x, ``[condition, time, n_units]``.
        rates: firing rates r = φ(x), ``[condition, time, n_units]``.
        outputs: readout z, ``[condition, time, n_outputs]``.
        center: mean state over conditions and times, ``[n_units]``.
        scale: RMS distance of the states from `center` (the trajectories' size; > 0).
        speed_scale: RMS of ‖f(x, u)‖ along the trajectories (their typical speed; > 0).
    """

    trials: Trials
    states: Float[np.ndarray, "condition time n_units"]
    rates: Float[np.ndarray, "condition time n_units"]
    outputs: Float[np.ndarray, "condition time n_outputs"]
    center: Float[np.ndarray, " n_units"]
    scale: float
    speed_scale: float


@eqx.filter_jit
def _simulate_conditions(
    model: AbstractModel, inputs: Float[Array, "b t i"], times: Float[Array, " t"]
) -> tuple[Float[Array, "b t n"], Float[Array, "b t n"], Float[Array, "b t o"], Array]:
    trajectory = simulate(model, inputs, times)
    velocity = jax.vmap(jax.vmap(lambda x, u: model.vector_field(0.0, x, u)))(
        trajectory.states, inputs
    )
    return trajectory.states, trajectory.rates, trajectory.outputs, velocity


def condition_run(model: AbstractModel, task: AbstractTask) -> ConditionRun:
    """Simulate `model` noise-free on ``task.conditions()`` and measure its scales.

    Args:
        model: the (trained) model.
        task: the task whose conditions to run.

    Returns:
        The states, rates and outputs as float64 NumPy arrays, with the trajectories' centre,
        size and typical speed (both floored at 1e-12 so they can divide).
    """
    trials = task.conditions()
    states, rates, outputs, velocity = (
        np.asarray(a, np.float64) for a in _simulate_conditions(model, trials.inputs, trials.times)
    )
    flat = states.reshape(-1, states.shape[-1])
    center = flat.mean(axis=0)
    scale = float(np.sqrt(np.mean(np.sum((flat - center) ** 2, axis=1))))
    speed = float(np.sqrt(np.mean(np.sum(velocity**2, axis=-1))))
    return ConditionRun(
        trials=trials,
        states=states,
        rates=rates,
        outputs=outputs,
        center=center,
        scale=max(scale, 1e-12),
        speed_scale=max(speed, 1e-12),
    )


class AbstractProbe(eqx.Module):
    """An analysis of a trained network on a task.

    Attributes:
        requires: names of probes whose results this probe needs; they run first and arrive
            in ``dependencies``.
    """

    config: eqx.AbstractVar[Config]
    requires: ClassVar[tuple[str, ...]] = ()

    def metrics(self) -> tuple[Metric, ...]:
        """The metrics :meth:`run` reports with this config, declared before it runs.

        Names may depend on the config (one metric per noise level, say), so this is a method
        of the configured probe. Every name ``run`` reports must be declared, and every
        declared name reported (NaN when not measurable); ``mechscope.testing.check_probe``
        holds probes to that. The default, ``()``, means "not declared": suites then cannot
        check metric names before training, and the report shows no meanings.
        """
        return ()

    @abc.abstractmethod
    def run(
        self,
        trained: TrainedRun,
        task: AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, ProbeResult] | None = None,
        conditions: ConditionRun | None = None,
    ) -> ProbeResult:
        """Measure `trained` on `task`.

        Args:
            trained: the trained run (model, history).
            task: the task the network was trained on; probes use ``task.conditions()``.
            key: PRNG key for anything random (noise, initial states).
            dependencies: results of the probes named in ``requires``.
            conditions: ``condition_run(trained.model, task)``, computed once by the caller
                and shared between probes; None when called directly, and a probe that uses
                it then computes it itself (``conditions or condition_run(...)``). Using it
                must not change the result. A probe that never needs it may leave this
                parameter out of its signature: callers pass it only to probes that take it
                (see :func:`accepts_conditions`).
        """


def accepts(probe: AbstractProbe, parameter: str) -> bool:
    """Whether ``probe.run`` takes the optional keyword `parameter`.

    The optional context a runner hands a probe — ``conditions`` (the shared condition run)
    and ``registry`` (the experiment's component registry, for probes that build other
    registered components, e.g. a target-switch task) — is passed only to probes that take
    it, so probes written without it keep working unchanged.
    """
    parameters = inspect.signature(probe.run).parameters
    return parameter in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def accepts_conditions(probe: AbstractProbe) -> bool:
    """Whether ``probe.run`` takes the shared condition run (a ``conditions`` parameter)."""
    return accepts(probe, "conditions")
