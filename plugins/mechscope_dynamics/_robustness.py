"""The ``robustness`` probe: output quality under input noise, recurrent noise and state kicks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
from jaxtyping import Array, Float, PRNGKeyArray
from pydantic import Field

import mechscope
from mechscope_dynamics._common import endpoint_error, event_index, pca_basis, r2_per_repeat

_DIRECTION = re.compile(r"^(random|pc[1-9][0-9]*)$")


class RobustnessConfig(mechscope.Config):
    """Output R² and endpoint error of condition trials under input noise, recurrent noise and state kicks at go."""  # noqa: E501

    input_noise: tuple[float, ...] = Field(
        (0.0, 0.05, 0.1, 0.2, 0.4),
        description="Input-noise levels σ_in (the model's dt-invariant convention).",
    )
    recurrent_noise: tuple[float, ...] = Field(
        (0.0, 0.05, 0.1, 0.2, 0.4), description="Recurrent-noise levels σ_rec."
    )
    kick: tuple[float, ...] = Field(
        (0.0, 0.1, 0.2, 0.4, 0.8),
        description="Sizes of a state kick at go, as fractions of the trajectory scale.",
    )
    kick_direction: str = Field(
        "random",
        description="'random' (a fresh random unit direction per trial and repeat) or 'pcK' "
        "(the K-th principal axis of the condition trajectories, random sign).",
    )
    n_repeats: int = Field(4, ge=1, description="Noisy repeats of every condition per level.")
    endpoint_channels: tuple[int, ...] = Field(
        (2, 3),
        description="Output channels compared at the trial's last masked sample for the "
        "endpoint error (reach tasks: hand position x, y).",
    )

    @pydantic.field_validator("input_noise", "recurrent_noise", "kick")
    @classmethod
    def _check_levels(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(level < 0 for level in value):
            raise ValueError("noise and kick levels must be non-negative")
        if list(value) != sorted(value):
            raise ValueError("levels must be given in increasing order")
        return value

    @pydantic.field_validator("kick_direction")
    @classmethod
    def _check_direction(cls, value: str) -> str:
        if not _DIRECTION.match(value):
            raise ValueError("kick_direction must be 'random' or 'pcK' with K ≥ 1, e.g. 'pc1'")
        return value

    @pydantic.model_validator(mode="after")
    def _check_any(self) -> Self:
        if not (self.input_noise or self.recurrent_noise or self.kick):
            raise ValueError("give at least one level of input noise, recurrent noise or kick")
        return self


def area_under_curve(levels: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid area of `values` over `levels`, divided by the level range (a mean value)."""
    levels, values = np.asarray(levels, float), np.asarray(values, float)
    if len(levels) < 2 or levels[-1] == levels[0]:
        return float(values.mean()) if len(values) else float("nan")
    return float(np.trapezoid(values, levels) / (levels[-1] - levels[0]))


@eqx.filter_jit
def _noisy_outputs(
    model: mechscope.AbstractModel,
    inputs: Float[Array, "b t i"],
    times: Float[Array, " t"],
    input_levels: Float[Array, " levels"],
    recurrent_levels: Float[Array, " levels"],
    n_repeats: int,
    key: PRNGKeyArray,
) -> Float[Array, "levels repeats b t o"]:
    def one(level_in, level_rec, k):
        noise = mechscope.Noise(input=level_in, recurrent=level_rec)
        return mechscope.simulate(model, inputs, times, key=k, noise=noise).outputs

    keys = jax.random.split(key, (input_levels.shape[0], n_repeats))
    per_repeat = jax.vmap(one, in_axes=(None, None, 0))
    return jax.vmap(per_repeat, in_axes=(0, 0, 0))(input_levels, recurrent_levels, keys)


@eqx.filter_jit
def _kicked_outputs(
    model: mechscope.AbstractModel,
    inputs: Float[Array, "b t i"],
    times: Float[Array, " t"],
    states: Float[Array, "b t n"],
    outputs: Float[Array, "b t o"],
    go: Array,
    kicks: Float[Array, "levels repeats b n"],
) -> Float[Array, "levels repeats b t o"]:
    """Run to go (the clean run), add the kick, continue from there with ``x0=``."""
    n_times = times.shape[0]
    steps = jnp.arange(n_times)

    def one(u, x, clean, g, kick):
        index = jnp.clip(g + steps, 0, n_times - 1)
        after = model(u[index], times, x0=x[g] + kick).outputs
        back = jnp.clip(steps - g, 0, n_times - 1)
        return jnp.where((steps >= g)[:, None], after[back], clean)

    per_trial = jax.vmap(one)
    per_repeat = jax.vmap(per_trial, in_axes=(None, None, None, None, 0))
    per_level = jax.vmap(per_repeat, in_axes=(None, None, None, None, 0))
    return per_level(inputs, states, outputs, go, kicks)


_PERTURBATIONS = {
    "input_noise": ("input noise σ_in = {:g}", "input-noise levels"),
    "recurrent_noise": ("recurrent noise σ_rec = {:g}", "recurrent-noise levels"),
    "kick": ("a state kick at go of {:g} × the trajectory scale", "kick sizes"),
}


def robustness_metrics(config: RobustnessConfig) -> tuple[mechscope.Metric, ...]:
    """What :class:`RobustnessProbe` reports with `config`: names follow its levels."""
    metric = mechscope.Metric
    declared = [metric("clean_r2", "output R² on the noise-free condition trials")]
    sweeps = {
        "input_noise": config.input_noise,
        "recurrent_noise": config.recurrent_noise,
        "kick": config.kick,
    }
    repeats = f"mean of {config.n_repeats} repeat(s)"
    for kind, levels in sweeps.items():
        if not levels:
            continue
        perturbation, sweep = _PERTURBATIONS[kind]
        span = f"{sweep} {levels[0]:g}–{levels[-1]:g}"
        declared += [
            metric(
                f"auc_{kind}",
                f"mean output R² over the {span} (area under the curve / range)",
                direction="higher = more robust",
            ),
            metric(
                f"auc_endpoint_error_{kind}",
                f"mean endpoint error over the {span} (area under the curve / range)",
                unit="output units",
                direction="lower = more robust",
            ),
        ]
        for level in levels:
            declared += [
                metric(
                    f"r2_{kind}_{level:g}",
                    f"output R² under {perturbation.format(level)} ({repeats})",
                    direction="higher = more robust",
                ),
                metric(
                    f"endpoint_error_{kind}_{level:g}",
                    "distance of the output from the target at the last masked sample under "
                    f"{perturbation.format(level)} ({repeats})",
                    unit="output units",
                    direction="lower = more robust",
                ),
            ]
    # Levels that print alike (a repeated level) share a name, as they do in run's metrics.
    return tuple({m.name: m for m in declared}.values())


class RobustnessProbe(mechscope.AbstractProbe):
    """Robustness of the output to input noise, recurrent noise and state kicks at go time."""

    config: RobustnessConfig = eqx.field(static=True)

    def metrics(self) -> tuple[mechscope.Metric, ...]:
        """Clean R², then per perturbation its AUCs and R² and endpoint error per level."""
        return robustness_metrics(self.config)

    def run(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, mechscope.ProbeResult] | None = None,
        conditions: mechscope.ConditionRun | None = None,
    ) -> mechscope.ProbeResult:
        """Re-run condition trials under each perturbation level; R², endpoint error, AUC."""
        del dependencies
        config = self.config
        model = trained.model
        run = conditions or mechscope.condition_run(model, task)
        trials = run.trials
        key_in, key_rec, key_kick, key_dir = jax.random.split(key, 4)
        curves: dict[str, np.ndarray] = {}
        outputs_by_kind: dict[str, np.ndarray] = {}
        for kind, levels, k in (
            ("input_noise", config.input_noise, key_in),
            ("recurrent_noise", config.recurrent_noise, key_rec),
        ):
            if not levels:
                continue
            levels_arr = jnp.asarray(levels, jnp.float32)
            zeros = jnp.zeros_like(levels_arr)
            pair = (levels_arr, zeros) if kind == "input_noise" else (zeros, levels_arr)
            outputs_by_kind[kind] = np.asarray(
                _noisy_outputs(model, trials.inputs, trials.times, *pair, config.n_repeats, k)
            )
            curves[kind] = np.asarray(levels, float)
        go = event_index(trials, "go")
        if config.kick and go is not None:
            kicks = self._kicks(run, key_kick, key_dir)
            outputs_by_kind["kick"] = np.asarray(
                _kicked_outputs(
                    model,
                    trials.inputs,
                    trials.times,
                    jnp.asarray(run.states, jnp.float32),
                    jnp.asarray(run.outputs, jnp.float32),
                    jnp.asarray(go),
                    kicks,
                )
            )
            curves["kick"] = np.asarray(config.kick, float)
        metrics: dict[str, float] = {
            "clean_r2": float(mechscope.masked_r2(run.outputs, trials.targets, trials.mask))
        }
        arrays: dict[str, np.ndarray] = {}
        r2_curves, error_curves = {}, {}
        for kind, levels in curves.items():
            outputs = outputs_by_kind[kind]
            # One R² per level and repeat (over all trials), averaged over the repeats.
            r2 = np.asarray(r2_per_repeat(outputs, trials.targets, trials.mask), float).mean(1)
            error = endpoint_error(outputs, trials, config.endpoint_channels).mean(axis=(1, 2))
            r2_curves[kind], error_curves[kind] = r2, error
            metrics[f"auc_{kind}"] = area_under_curve(levels, r2)
            metrics[f"auc_endpoint_error_{kind}"] = area_under_curve(levels, error)
            for level, value, err in zip(levels, r2, error, strict=True):
                metrics[f"r2_{kind}_{level:g}"] = float(value)
                metrics[f"endpoint_error_{kind}_{level:g}"] = float(err)
            arrays[f"levels_{kind}"] = levels
            arrays[f"r2_{kind}"] = r2
            arrays[f"endpoint_error_{kind}"] = error
        if "kick" not in curves and config.kick:
            # A task without a go event has nowhere to kick: its kick metrics are NaN.
            kick_names = [m.name for m in robustness_metrics(config) if "kick" in m.name]
            metrics.update(dict.fromkeys(kick_names, float("nan")))
        from mechscope_dynamics._plot import curves_figure

        figures = {"robustness": lambda: curves_figure(curves, r2_curves, "output R²")}
        return mechscope.ProbeResult(metrics=metrics, arrays=arrays, figures=figures)

    def _kicks(self, run, key_kick: PRNGKeyArray, key_dir: PRNGKeyArray) -> Array:
        config = self.config
        n_trials = run.states.shape[0]
        n_units = run.states.shape[-1]
        shape = (config.n_repeats, n_trials)
        if config.kick_direction == "random":
            directions = jax.random.normal(key_dir, (*shape, n_units))
            directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
        else:
            index = int(config.kick_direction[2:]) - 1
            _, basis = pca_basis(run.states.reshape(-1, n_units), index + 1)
            sign = jnp.where(jax.random.bernoulli(key_dir, 0.5, (*shape, 1)), 1.0, -1.0)
            directions = sign * jnp.asarray(basis[index], jnp.float32)
        del key_kick  # the same directions at every level: curves differ only by size
        sizes = jnp.asarray(config.kick, jnp.float32) * run.scale
        return sizes[:, None, None, None] * directions[None]
