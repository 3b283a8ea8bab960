"""The ``generalization`` probe: a delayed-reach network on target-switch/relocation trials."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import equinox as eqx
import numpy as np
import pydantic
from jaxtyping import PRNGKeyArray
from pydantic import Field

import mechscope
from mechscope_dynamics._common import (
    condition_run,
    endpoint_error,
    event_index,
    final_targets,
    last_masked_index,
    reach_success,
)

TaskName = Literal["target_switch", "target_relocation"]


class GeneralizationConfig(mechscope.Config):
    """Endpoint error, success rate, reaction time and re-preparation of a reach network on target-switch and target-relocation trials."""  # noqa: E501

    tasks: tuple[TaskName, ...] = Field(
        ("target_switch", "target_relocation"),
        description="Registered tasks to evaluate on; built with the trained task's shared "
        "geometry and timing.",
    )
    task_params: tuple[tuple[str, Any], ...] = Field(
        (),
        description="Extra (field, value) overrides applied to every evaluation task, e.g. "
        "(('switch_epoch', 'after_go'),).",
    )
    position_channels: tuple[int, int] = Field(
        (2, 3), description="Output channels of hand position x, y."
    )
    success_radius: float = Field(
        0.2,
        gt=0,
        description="A trial succeeds when the final hand position is within this × the "
        "final target's distance from the origin of it.",
    )
    onset_speed_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Reaction time: first time after go when hand speed exceeds this × its peak.",
    )

    @pydantic.field_validator("tasks")
    @classmethod
    def _check_tasks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) == 0 or len(set(value)) != len(value):
            raise ValueError("tasks must name target_switch and/or target_relocation, each once")
        return value

    @pydantic.field_validator("task_params", mode="before")
    @classmethod
    def _freeze(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple(sorted(value.items()))
        if isinstance(value, list):  # strict validation takes tuples from a validator, not lists
            return tuple(tuple(item) if isinstance(item, list) else item for item in value)
        return value


def matching_task(
    trained_task: mechscope.AbstractTask,
    name: str,
    overrides: Mapping[str, Any] = {},
    *,
    registry: mechscope.Registry,
) -> mechscope.AbstractTask:
    """Build registered task `name` with the trained task's shared config fields.

    Args:
        trained_task: the task the network was trained on (its geometry is copied).
        name: the registered task to build (e.g. ``"target_switch"``).
        overrides: config fields to set on top.
        registry: where `name` is registered (the experiment's, never a process-wide one).
    """
    entry = registry.get("task", name)
    fields = entry.config_class.model_fields
    shared = {k: v for k, v in trained_task.config.model_dump().items() if k in fields}
    return entry.build(entry.validate({**shared, **dict(overrides)}))


def reach_metrics(
    outputs: np.ndarray,
    trials: mechscope.Trials,
    *,
    position_channels: tuple[int, int],
    success_radius: float,
    onset_speed_fraction: float,
) -> dict[str, np.ndarray]:
    """Per trial: endpoint error to the final target, success, reaction time (s)."""
    position = outputs[..., list(position_channels)]
    last = last_masked_index(trials)
    batch = np.arange(len(last))
    final_target = final_targets(trials, position_channels)
    error = endpoint_error(outputs, trials, position_channels)
    success = reach_success(error, trials, position_channels, success_radius)
    times = np.asarray(trials.times)
    dt = times[1] - times[0]
    speed = np.linalg.norm(np.gradient(position, dt, axis=1), axis=-1)
    go = event_index(trials, "go")
    reaction = np.full(len(batch), np.nan)
    if go is not None:
        for b in batch:
            after = speed[b, go[b] : last[b] + 1]
            if after.size and after.max() > 0:
                crossed = np.flatnonzero(after >= onset_speed_fraction * after.max())
                reaction[b] = crossed[0] * dt
    return {
        "error": error,
        "success": success,
        "reaction_time": reaction,
        "positions": position,
        "final_targets": final_target,
    }


def preparation_index(
    states: np.ndarray,
    trials: mechscope.Trials,
    prep: np.ndarray,
    prep_targets: np.ndarray,
) -> np.ndarray:
    """Per switched trial: (d_first − d_final)/(d_first + d_final) at movement onset.

    d_first and d_final are distances of the state at movement onset to the preparatory
    (end-of-delay) states of the first and the final target on delayed-reach trials; 1 means
    the state sits at the final target's preparatory state, −1 at the first one's. NaN where
    the trial did not switch or a target has no preparatory state.
    """
    onset = event_index(trials, "movement_onset")
    first = np.asarray(trials.labels.get("switched_from", np.full((states.shape[0], 2), np.nan)))
    final = np.asarray(trials.labels["target"])
    index = np.full(states.shape[0], np.nan)
    if onset is None:
        return index

    def lookup(position):
        gaps = np.linalg.norm(prep_targets - position, axis=1)
        j = int(np.argmin(gaps))
        return prep[j] if gaps[j] < 1e-6 else None

    for b in range(states.shape[0]):
        if not np.all(np.isfinite(first[b])):
            continue
        p_first, p_final = lookup(first[b]), lookup(final[b])
        if p_first is None or p_final is None:
            continue
        x = states[b, onset[b]]
        d_first, d_final = np.linalg.norm(x - p_first), np.linalg.norm(x - p_final)
        index[b] = (d_first - d_final) / max(d_first + d_final, 1e-12)
    return index


_TAGS = {"target_switch": "switch", "target_relocation": "relocation"}


def generalization_metrics(config: GeneralizationConfig) -> tuple[mechscope.Metric, ...]:
    """What :class:`GeneralizationProbe` reports: five metrics per configured task."""
    metric = mechscope.Metric
    declared = []
    for name in config.tasks:
        tag = _TAGS[name]
        trials = f"{name} condition trials"
        declared += [
            metric(
                f"{tag}_endpoint_error",
                f"mean distance of the final hand position from the final target on {trials}",
                unit="output units",
                direction="lower = better generalisation",
            ),
            metric(
                f"{tag}_success_rate",
                f"fraction of {trials} ending within {config.success_radius:g} × the final "
                "target's distance of it",
                direction="higher = better generalisation",
            ),
            metric(
                f"{tag}_reaction_time",
                f"mean time from go until hand speed first exceeds "
                f"{config.onset_speed_fraction:g} × its peak, on {trials}",
                unit="s",
            ),
            metric(
                f"{tag}_preparation_index",
                "mean over moved-target trials of (d_first − d_final)/(d_first + d_final), the "
                "state's distances at movement onset to the two targets' preparatory states "
                "(1 = re-prepared for the final target; NaN if a target was never trained)",
                direction="higher = more re-preparation",
            ),
            metric(
                f"{tag}_reprepared_fraction",
                "fraction of moved-target trials whose state at movement onset is nearer the "
                "final target's preparatory state than the first target's",
                direction="higher = more re-preparation",
            ),
        ]
    return tuple(declared)


class GeneralizationProbe(mechscope.AbstractProbe):
    """A network trained on delayed reach, run on target-switch and target-relocation trials."""

    config: GeneralizationConfig = eqx.field(static=True)

    def metrics(self) -> tuple[mechscope.Metric, ...]:
        """Endpoint error, success, reaction time and re-preparation on each evaluation task."""
        return generalization_metrics(self.config)

    def run(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, mechscope.ProbeResult] | None = None,
        conditions: mechscope.ConditionRun | None = None,
        registry: mechscope.Registry | None = None,
    ) -> mechscope.ProbeResult:
        """Evaluate on each configured task (noise-free; the key is unused).

        Raises:
            mechscope.ConfigError: without `registry` (an experiment always passes its own),
                since the other tasks are built from it.
        """
        del key, dependencies
        if registry is None:
            raise mechscope.ConfigError(
                "generalization builds other registered tasks: pass registry= (experiments "
                "pass their plugin registry)"
            )
        config = self.config
        model = trained.model
        base = conditions or condition_run(model, task)
        go = event_index(base.trials, "go")
        prep = base.states[np.arange(base.states.shape[0]), go] if go is not None else None
        prep_targets = np.asarray(base.trials.labels.get("target", np.zeros((0, 2))))
        short = _TAGS
        metrics: dict[str, float] = {}
        arrays: dict[str, np.ndarray] = {}
        panels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in config.tasks:
            other = matching_task(task, name, dict(config.task_params), registry=registry)
            run = condition_run(model, other)
            result = reach_metrics(
                run.outputs,
                run.trials,
                position_channels=config.position_channels,
                success_radius=config.success_radius,
                onset_speed_fraction=config.onset_speed_fraction,
            )
            tag = short[name]
            metrics[f"{tag}_endpoint_error"] = float(np.mean(result["error"]))
            metrics[f"{tag}_success_rate"] = float(np.mean(result["success"]))
            metrics[f"{tag}_reaction_time"] = (
                float(np.nanmean(result["reaction_time"]))
                if (np.isfinite(result["reaction_time"]).any())
                else float("nan")
            )
            if prep is not None:
                index = preparation_index(run.states, run.trials, prep, prep_targets)
                measured = np.isfinite(index)
                metrics[f"{tag}_preparation_index"] = (
                    float(np.mean(index[measured])) if measured.any() else float("nan")
                )
                metrics[f"{tag}_reprepared_fraction"] = (
                    float(np.mean(index[measured] > 0)) if measured.any() else float("nan")
                )
                arrays[f"{tag}_preparation_index"] = index
            else:  # no go event: no preparatory states to compare with
                metrics[f"{tag}_preparation_index"] = float("nan")
                metrics[f"{tag}_reprepared_fraction"] = float("nan")
            arrays[f"{tag}_endpoint_error"] = result["error"]
            arrays[f"{tag}_reaction_time"] = result["reaction_time"]
            arrays[f"{tag}_positions"] = result["positions"]
            panels[name] = (result["positions"], result["final_targets"])
        from mechscope_dynamics._plot import hands_figure

        return mechscope.ProbeResult(
            metrics=metrics, arrays=arrays, figures={"hand_paths": lambda: hands_figure(panels)}
        )
