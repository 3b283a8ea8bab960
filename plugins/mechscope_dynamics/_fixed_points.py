"""The ``fixed_points`` probe: fixed/slow points per constant input and the attractor verdict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
from jaxtyping import PRNGKeyArray
from pydantic import Field

import mechscope
from mechscope_dynamics._common import ConditionRun, condition_run, event_index
from mechscope_dynamics._solver import FixedPoints, SolverSettings, find_fixed_points

InputKind = Literal["delay", "go", "zero"]


class FixedPointsConfig(mechscope.Config):
    """Fixed and slow points of the vector field for constant inputs, and whether delay states sit on attractors."""  # noqa: E501

    inputs: tuple[InputKind, ...] = Field(
        ("delay", "go", "zero"),
        description="Constant inputs to analyse: 'delay' (each condition's input just before "
        "go), 'go' (each condition's input just after go), 'zero' (all inputs 0).",
    )
    n_starts: int = Field(
        256, ge=1, description="Initial states per input, sampled from condition trajectories."
    )
    start_noise: float = Field(
        0.5, ge=0, description="Std of Gaussian noise added to sampled starts (state units)."
    )
    mode: Literal["newton", "golub"] = Field(
        "newton",
        description="'newton': relax along the flow, merge, matrix-free Levenberg–Marquardt "
        "and globalised Newton on distinct candidates with merging, optimistix polish in "
        "float64; "
        "'golub': FixedPointFinder compatibility (discrete map, Adam on q, |λ| < 1).",
    )
    relax_steps: int = Field(
        60,
        ge=0,
        description="Euler steps along the flow from every start first. Where an "
        "input's flow collapses the starts (attractors), the search starts from the relaxed "
        "end points and the slowest point of each path (where it passed a saddle); elsewhere "
        "(a chaotic flow) from the raw starts. 0 = always the raw starts.",
    )
    relaxed_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Use an input's relaxed points only if, merged, they "
        "number at most this fraction of the starts.",
    )
    search: Literal["lm", "dense_lm", "newton"] = Field(
        "lm",
        description="'lm': matrix-free Levenberg–Marquardt (conjugate gradients on "
        "JVPs/VJPs) brings every candidate near a zero, then dense Newton finishes; "
        "'dense_lm': the same with exact dense LM steps (follows the exact LM paths; a "
        "factorisation per candidate and iteration, meant for accelerators; candidates run in "
        "chunks of at most 2^26 / n_units² rows to bound memory); "
        "'newton': dense globalised Newton on every candidate (cheaper, finds fewer zeros).",
    )
    lm_steps: int | None = Field(
        None,
        ge=1,
        description="Most Levenberg–Marquardt iterations per candidate ('lm', "
        "'dense_lm'); None = 120 for 'lm', 200 for 'dense_lm'.",
    )
    lm_cg_steps: int = Field(
        20,
        ge=1,
        description="Conjugate-gradient iterations per Levenberg–Marquardt step ('lm' only).",
    )
    handoff_tol: float | None = Field(
        None,
        gt=0,
        description="A candidate leaves Levenberg–Marquardt for dense Newton when "
        "‖f‖ ≤ handoff_tol × typical speed; None = 1e-2 for 'lm', 1e-4 for 'dense_lm' "
        "(exact paths are worth following closer to the zero; inexact ones are not).",
    )
    relax_step: float | None = Field(
        None,
        gt=0,
        description="Length of those steps; None = 1 / spectral radius of the "
        "Jacobian at the trajectories' centroid.",
    )
    newton_steps: int = Field(
        40, ge=1, description="Most float32 Newton iterations per distinct candidate."
    )
    stall_blocks: int = Field(
        2,
        ge=1,
        description="A candidate whose ‖f‖ falls by less than 20 % in this many "
        "consecutive blocks of two Newton iterations becomes a slow-point candidate.",
    )
    newton_tol: float = Field(
        1e-4,
        gt=0,
        description="A candidate has converged (and goes to the float64 polish) "
        "when ‖f‖ ≤ newton_tol × typical speed.",
    )
    merge_tol: float = Field(
        1e-2,
        gt=0,
        description="Merge candidates closer than this × trajectory scale, and "
        "drop candidates this close to a converged point.",
    )
    polish_steps: int = Field(
        40, ge=1, description="Newton iterations when polishing (LM ×4, BFGS ×8)."
    )
    fixed_tol: float = Field(
        1e-7,
        gt=0,
        description="Fixed point: ‖f(x*)‖ ≤ fixed_tol × typical speed along trajectories.",
    )
    slow_tol: float = Field(
        0.05,
        gt=0,
        description="Slow point: a non-zero local minimum of q with ‖f‖ ≤ slow_tol × typical "
        "speed.",
    )
    unique_tol: float = Field(
        1e-4, gt=0, description="Fixed points closer than this × trajectory scale are one."
    )
    outlier_scale: float = Field(
        10.0,
        gt=0,
        description="Drop points farther than this × trajectory scale from the "
        "trajectories' centroid.",
    )
    float64: bool = Field(True, description="Polish and classify in float64.")
    attractor_radius: float = Field(
        0.1,
        gt=0,
        description="Verdict 'attractor' when the end-of-delay state is within this × "
        "trajectory scale of a stable fixed point of its delay input.",
    )
    golub_dt: float | None = Field(
        None, gt=0, description="Step of the discrete map in 'golub' mode; None = task dt."
    )
    golub_max_iters: int = Field(5000, ge=1, description="Adam iterations ('golub' mode).")
    golub_tol_q: float = Field(1e-12, gt=0, description="Stop when all q < this ('golub').")
    golub_tol_dq: float = Field(
        1e-20, ge=0, description="Stop when mean q changes less than this ('golub')."
    )
    golub_learning_rate: float = Field(1.0, gt=0, description="Initial Adam rate ('golub').")
    golub_unique_tol: float = Field(
        1e-3, gt=0, description="Absolute distance of identical points ('golub')."
    )
    flow_grid: int = Field(25, ge=3, description="Grid points per side of the flow-field figure.")

    @pydantic.field_validator("inputs")
    @classmethod
    def _check_inputs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) == 0 or len(set(value)) != len(value):
            raise ValueError("inputs must name at least one of delay, go, zero, each once")
        return value

    @pydantic.model_validator(mode="after")
    def _check_tolerances(self) -> Self:
        if self.fixed_tol >= self.slow_tol:
            raise ValueError("fixed_tol must be smaller than slow_tol")
        return self

    def settings(self, dt: float) -> SolverSettings:
        """The solver settings this config implies (`dt`: the task's step, for 'golub')."""
        return SolverSettings(
            mode=self.mode,
            relax_steps=self.relax_steps,
            relax_step=self.relax_step,
            relaxed_fraction=self.relaxed_fraction,
            search=self.search,
            lm_steps=self.lm_steps,
            lm_cg_steps=self.lm_cg_steps,
            handoff_tol=self.handoff_tol,
            newton_steps=self.newton_steps,
            newton_tol=self.newton_tol,
            stall_blocks=self.stall_blocks,
            merge_tol=self.merge_tol,
            polish_steps=self.polish_steps,
            fixed_tol=self.fixed_tol,
            slow_tol=self.slow_tol,
            unique_tol=self.unique_tol,
            outlier_scale=self.outlier_scale,
            float64=self.float64,
            golub_dt=self.golub_dt or dt,
            golub_max_iters=self.golub_max_iters,
            golub_tol_q=self.golub_tol_q,
            golub_tol_dq=self.golub_tol_dq,
            golub_learning_rate=self.golub_learning_rate,
            golub_unique_tol=self.golub_unique_tol,
        )


def sample_starts(
    states: np.ndarray, n_starts: int, noise: float, *, key: PRNGKeyArray
) -> np.ndarray:
    """`n_starts` states drawn from `states` ``[..., n]`` plus N(0, noise²) per coordinate."""
    flat = np.asarray(states).reshape(-1, states.shape[-1])
    pick_key, noise_key = jax.random.split(key)
    index = np.asarray(jax.random.randint(pick_key, (n_starts,), 0, len(flat)))
    kick = np.asarray(jax.random.normal(noise_key, (n_starts, flat.shape[1])), np.float64)
    return flat[index] + noise * kick


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

    def run(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, mechscope.ProbeResult] | None = None,
    ) -> mechscope.ProbeResult:
        """Find fixed points for the configured inputs and summarise the mechanism."""
        del dependencies
        model = trained.model
        run = condition_run(model, task)
        inputs, kinds, delay_row = constant_inputs(run, self.config.inputs)
        starts = sample_starts(run.states, self.config.n_starts, self.config.start_noise, key=key)
        fps = find_fixed_points(
            model,
            inputs,
            starts,
            scale=run.scale,
            speed_scale=run.speed_scale,
            center=run.center,
            settings=self.config.settings(task.dt),
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
            "eigenvalues_real": fps.eigenvalues.real,
            "eigenvalues_imag": fps.eigenvalues.imag,
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
