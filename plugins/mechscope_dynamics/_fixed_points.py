"""The ``fixed_points`` probe: fixed/slow points per constant input and the attractor verdict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
from jaxtyping import PRNGKeyArray
from pydantic import Field

import mechscope
from mechscope_dynamics._common import ConditionRun, condition_run, event_index
from mechscope_dynamics._fp_config import MatrixFreeLMConfig, SearchConfig, SolverConfig
from mechscope_dynamics._solver import FixedPoints, find_fixed_points

InputKind = Literal["delay", "go", "zero"]


class FixedPointsConfig(SolverConfig):
    """Fixed and slow points of the vector field for constant inputs, and whether delay states sit on attractors."""  # noqa: E501

    inputs: tuple[InputKind, ...] = Field(
        default=("delay", "go", "zero"),
        description="Constant inputs to analyse: 'delay' (each condition's input just before "
        "go), 'go' (each condition's input just after go), 'zero' (all inputs 0).",
    )
    n_starts: int = Field(
        default=256,
        ge=1,
        description="Initial states per input, sampled from condition trajectories.",
    )
    start_noise: float = Field(
        default=0.5,
        ge=0,
        description="Std of Gaussian noise added to sampled starts (state units).",
    )
    search: SearchConfig = Field(
        default=MatrixFreeLMConfig(),
        description="How candidates are brought to zeros, a table with a 'kind': "
        "'lm' (default: relax along the flow, merge, matrix-free Levenberg–Marquardt, then "
        "dense Newton with merging and an optimistix polish in float64), 'dense_lm' (the same "
        "with exact dense LM steps, for accelerators), 'newton' (dense Newton on every "
        "candidate) or 'golub' (FixedPointFinder compatibility: discrete map, Adam on q, "
        "|λ| < 1); its other keys are that search's settings.",
    )
    attractor_radius: float = Field(
        default=0.1,
        gt=0,
        description="Verdict 'attractor' when the end-of-delay state is within this × "
        "trajectory scale of a stable fixed point of its delay input.",
    )
    flow_grid: int = Field(
        default=25, ge=3, description="Grid points per side of the flow-field figure."
    )

    def peak_memory_bytes(self, shape: mechscope.RunShape) -> float:
        """The dense stages: an N × N float64 Jacobian and its eigenvectors per candidate."""
        candidates = self.n_starts * len(self.inputs)
        return 16.0 * candidates * (shape.n_units or 0) ** 2

    @pydantic.field_validator("inputs")
    @classmethod
    def _check_inputs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) == 0 or len(set(value)) != len(value):
            raise ValueError("inputs must name at least one of delay, go, zero, each once")
        return value


def sample_starts(
    states: np.ndarray, n_starts: int, noise: float, *, key: PRNGKeyArray
) -> np.ndarray:
    """`n_starts` states drawn from `states` ``[..., n]`` plus N(0, noise²) per coordinate."""
    flat = np.asarray(states).reshape(-1, states.shape[-1])
    pick_key, noise_key = jax.random.split(key)
    index = np.asarray(jax.random.randint(pick_key, (n_starts,), 0, len(flat)))
    kick = np.asarray(jax.random.normal(noise_key, (n_starts, flat.shape[1])), np.float64)
    return flat[index] + noise * kick


def trajectory_flow_starts(run: ConditionRun, most: int) -> np.ndarray:
    """At most about `most` noise-free trajectory states, evenly strided, plus every end-of-delay state.

    The flow is followed from these (besides the starts) so that every attractor the
    trajectories themselves fall into is found; the end-of-delay states are the ones the
    attractor verdict is about.
    """  # noqa: E501
    states = np.asarray(run.states, np.float64)
    flat = states.reshape(-1, states.shape[-1])
    stride = max(1, -(-len(flat) // max(most, 1)))
    chosen = [flat[::stride]]
    go = event_index(run.trials, "go")
    if go is not None:
        chosen.append(states[np.arange(states.shape[0]), go])
    return np.concatenate(chosen)


def constant_inputs(
    run: ConditionRun, kinds: tuple[str, ...]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The constant inputs to analyse, their kind, and each condition's delay-input row.

    Returns:
        inputs ``[k, n_inputs]`` (unique per kind), kind of each row, and for each condition
        the row of its delay input (``-1`` when 'delay' is not analysed or there is no go).
    """
    trials_inputs = np.asarray(run.trials.inputs, np.float64)
    n_conditions = trials_inputs.shape[0]
    go = event_index(run.trials, "go")
    rows: list[np.ndarray] = []
    kinds_out: list[str] = []
    delay_row = np.full(n_conditions, -1)
    for kind in kinds:
        if kind == "zero":
            candidates = np.zeros((1, trials_inputs.shape[-1]))
        elif go is None:
            continue
        elif kind == "delay":
            candidates = trials_inputs[np.arange(n_conditions), np.maximum(go - 1, 0)]
        else:
            candidates = trials_inputs[np.arange(n_conditions), go]
        unique, inverse = np.unique(np.round(candidates, 9), axis=0, return_inverse=True)
        if kind == "delay":
            delay_row = len(rows) + inverse.reshape(-1)
        rows.extend(unique)
        kinds_out.extend([kind] * len(unique))
    if not rows:
        return np.zeros((0, trials_inputs.shape[-1])), [], delay_row
    return np.asarray(rows), kinds_out, delay_row


def attractor_summary(
    run: ConditionRun, fps: FixedPoints, delay_row: np.ndarray, radius: float
) -> dict[str, np.ndarray]:
    """Per condition: distance from the end-of-delay state to its delay input's attractor.

    The distance (to the nearest stable fixed point of the condition's delay input) is divided
    by the trajectory scale; the verdict is "attractor" when it is at most `radius`.
    """
    go = event_index(run.trials, "go")
    n = run.states.shape[0]
    distance = np.full(n, np.nan)
    speed = np.full(n, np.nan)
    if go is None:
        return {"distance": distance, "attractor": np.zeros(n, bool), "speed": speed}
    ends = run.states[np.arange(n), go]
    for c in range(n):
        row = delay_row[c]
        if row < 0:
            continue
        members = fps.for_input(row)
        stable = members[fps.stable[members]]
        if len(stable):
            gaps = np.linalg.norm(fps.points[stable] - ends[c], axis=1)
            distance[c] = gaps.min() / run.scale
    inputs = np.asarray(run.trials.inputs, np.float64)[np.arange(n), np.maximum(go - 1, 0)]
    return {
        "distance": distance,
        "attractor": distance <= radius,
        "speed": speed,
        "ends": ends,
        "end_inputs": inputs,
    }


class FixedPointsProbe(mechscope.AbstractProbe):
    """Fixed and slow points of the model for constant inputs, with stability and the delay-attractor verdict."""  # noqa: E501

    config: FixedPointsConfig = eqx.field(static=True)

    def metrics(self) -> tuple[mechscope.Metric, ...]:
        """Fixed-point counts per input, the delay-attractor verdict and its measurements."""
        return fixed_point_metrics(self.config)

    def run(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, mechscope.ProbeResult] | None = None,
        conditions: mechscope.ConditionRun | None = None,
    ) -> mechscope.ProbeResult:
        """Find fixed points for the configured inputs and summarise the mechanism."""
        del dependencies
        model = trained.model
        run = conditions or condition_run(model, task)
        inputs, kinds, delay_row = constant_inputs(run, self.config.inputs)
        starts = sample_starts(run.states, self.config.n_starts, self.config.start_noise, key=key)
        fps = find_fixed_points(
            model,
            inputs,
            starts,
            scale=run.scale,
            speed_scale=run.speed_scale,
            center=run.center,
            flow_starts=trajectory_flow_starts(run, max(self.config.n_starts // 4, 1)),
            search=self.config.search.build(task.dt),
            settings=self.config,
        )
        summary = attractor_summary(run, fps, delay_row, self.config.attractor_radius)
        if "end_inputs" in summary:
            velocity = jax.vmap(lambda x, u: model.vector_field(0.0, x, u))(
                jnp.asarray(summary["ends"], jnp.float32),
                jnp.asarray(summary["end_inputs"], jnp.float32),
            )
            summary["speed"] = np.linalg.norm(np.asarray(velocity), axis=1) / run.speed_scale
        metrics = _metrics(fps, kinds, summary)
        arrays = {
            "inputs": fps.inputs,
            "input_kind": np.asarray([_KIND_CODE[k] for k in kinds], dtype=int),
            "points": fps.points,
            "input_index": fps.input_index,
            "speed": fps.speed,
            "stable": fps.stable,
            "eigenvalues_real": np.real(fps.eigenvalues),
            "eigenvalues_imag": np.imag(fps.eigenvalues),
            "slow_points": fps.slow_points,
            "slow_input_index": fps.slow_input_index,
            "slow_speed": fps.slow_speed,
            "attractor_distance": summary["distance"],
            "attractor": summary["attractor"],
            "end_of_delay_speed": summary["speed"],
        }
        from mechscope_dynamics._plot import fixed_points_figure, flow_field_figure

        figures = {
            "fixed_points": lambda: fixed_points_figure(run, fps, delay_row),
            "flow_field": lambda: flow_field_figure(
                model, run, fps, delay_row, grid=self.config.flow_grid
            ),
        }
        return mechscope.ProbeResult(metrics=metrics, arrays=arrays, figures=figures)


_KIND_CODE = {"delay": 0, "go": 1, "zero": 2}


def fixed_point_metrics(config: FixedPointsConfig) -> tuple[mechscope.Metric, ...]:
    """What :class:`FixedPointsProbe` reports (counts of every input kind, NaN if not analysed)."""
    metric = mechscope.Metric
    per_kind = {
        "delay": "each condition's input just before go",
        "go": "each condition's input just after go",
        "zero": "zero input",
    }
    declared = [
        metric(
            "n_inputs",
            "number of distinct constant inputs analysed (from the configured input kinds and "
            "the task's conditions)",
            kind="setting",
        ),
        metric("n_fixed_per_input", "mean number of fixed points found per constant input"),
        metric(
            "n_stable_per_input",
            "mean number of stable fixed points (every Re λ < 0; |λ| < 1 in golub mode) per input",
        ),
        metric("n_unstable_per_input", "mean number of unstable fixed points per input"),
        metric(
            "n_slow_per_input",
            "mean number of slow points (local minima of ½‖f‖² that are not zeros) per input",
        ),
    ]
    for kind, meaning in per_kind.items():
        declared += [
            metric(
                f"n_stable_{kind}",
                f"mean number of stable fixed points for {meaning} (NaN if not analysed)",
            ),
            metric(
                f"n_unstable_{kind}",
                f"mean number of unstable fixed points for {meaning} (NaN if not analysed)",
            ),
        ]
    declared += [
        metric(
            "attractor_fraction",
            "fraction of conditions whose end-of-delay state lies within "
            f"{config.attractor_radius:g} × the trajectory scale of a stable fixed point of "
            "its delay input",
            direction="higher = more attractor-like preparation",
        ),
        metric(
            "mean_attractor_distance",
            "mean distance from the end-of-delay state to the nearest stable fixed point of "
            "its delay input, in trajectory scales",
            direction="lower = preparation closer to an attractor",
        ),
        metric(
            "fraction_without_stable_point",
            "fraction of conditions whose delay input has no stable fixed point",
        ),
        metric(
            "mean_end_of_delay_speed",
            "mean speed ‖f(x, u)‖ of the end-of-delay state under its delay input, relative to "
            "the trajectories' typical speed",
            direction="lower = preparatory state held more still",
        ),
        metric(
            "slowest_time_constant_delay",
            "mean over the delay inputs' stable fixed points of their slowest decay time "
            "constant −1/Re λ (continuous-time searches)",
            unit="s",
            direction="higher = slower forgetting",
        ),
    ]
    return tuple(declared)


def _metrics(
    fps: FixedPoints, kinds: list[str], summary: Mapping[str, np.ndarray]
) -> dict[str, float]:
    k = len(kinds)
    n_fixed = np.bincount(fps.input_index, minlength=k)[:k]
    n_stable = np.bincount(fps.input_index[fps.stable], minlength=k)[:k]
    n_slow = np.bincount(fps.slow_input_index, minlength=k)[:k]

    def mean(values: np.ndarray) -> float:
        return float(np.mean(values)) if len(values) else float("nan")

    metrics = {
        "n_inputs": float(k),
        "n_fixed_per_input": mean(n_fixed),
        "n_stable_per_input": mean(n_stable),
        "n_unstable_per_input": mean(n_fixed - n_stable),
        "n_slow_per_input": mean(n_slow),
    }
    kind_array = np.asarray(kinds)
    for kind in ("delay", "go", "zero"):
        chosen = kind_array == kind
        metrics[f"n_stable_{kind}"] = mean(n_stable[chosen]) if chosen.any() else float("nan")
        metrics[f"n_unstable_{kind}"] = (
            mean((n_fixed - n_stable)[chosen]) if chosen.any() else float("nan")
        )
    distance = summary["distance"]
    measured = np.isfinite(distance)
    metrics["attractor_fraction"] = float(np.mean(summary["attractor"]))
    metrics["mean_attractor_distance"] = mean(distance[measured])
    metrics["fraction_without_stable_point"] = float(np.mean(~measured))
    metrics["mean_end_of_delay_speed"] = mean(summary["speed"][np.isfinite(summary["speed"])])
    stable_delay = fps.stable & np.isin(fps.input_index, np.flatnonzero(kind_array == "delay"))
    if stable_delay.any():
        slowest = np.nanmax(
            np.where(
                np.isfinite(fps.time_constants[stable_delay]),
                fps.time_constants[stable_delay],
                np.nan,
            ),
            axis=1,
        )
        metrics["slowest_time_constant_delay"] = float(np.nanmean(slowest))
    else:
        metrics["slowest_time_constant_delay"] = float("nan")
    return metrics
