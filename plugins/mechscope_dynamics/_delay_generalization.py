"""The ``delay_generalization`` probe: a delayed-reach network at delays it was not trained on.

A network that only ever sees one delay can time its output from a transient; one trained on a
range of delays must hold its preparatory state, i.e. park it on an attractor of the delay
input. The probe asks which one a network does, on behaviour: it runs the condition trials at
delays outside the trained range (shorter, and multiples of the longest), and measures how far
the state still moves at the end of the delay and how the output degrades under input noise
during the delay only (the perturbation an attractor is meant to absorb).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
from jaxtyping import Array, Float, Int, PRNGKeyArray
from pydantic import Field

import mechscope
from mechscope_dynamics._common import (
    condition_run,
    endpoint_error,
    event_index,
    r2_per_repeat,
    reach_success,
)
from mechscope_dynamics._generalization import matching_task
from mechscope_dynamics._robustness import area_under_curve


class DelayGeneralizationConfig(mechscope.Config):
    """Endpoint error, success, end-of-delay speed and drift of a reach network at delays outside training, and its output R² under delay-period input noise."""  # noqa: E501

    shorter_fraction: float | None = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Test a delay this fraction of the shortest trained delay (None: no shorter "
        "delay; it is 0 when the shortest trained delay is 0).",
    )
    delay_multiples: tuple[float, ...] = Field(
        default=(1.5, 2.0, 3.0),
        description="Test delays at these multiples of the longest trained delay.",
    )
    test_delays: tuple[float, ...] | None = Field(
        default=None,
        description="Explicit test delays in seconds; when given they replace shorter_fraction "
        "and delay_multiples.",
    )
    n_trained_delays: int = Field(
        default=3,
        ge=1,
        description="Reference delays evenly spaced over a trained delay_range (a trained "
        "`delays` list is used as it is).",
    )
    delay_noise: tuple[float, ...] = Field(
        default=(0.0, 0.05, 0.1, 0.2, 0.4),
        description="Levels σ of input noise applied between target onset and go only, in "
        "robustness's input-noise units (see noise_time_constant).",
    )
    noise_time_constant: float | None = Field(
        default=None,
        gt=0,
        description="τ (s) that converts σ to a per-sample input noise σ·√(2τ/dt), matching "
        "robustness's dt-invariant input noise; None reads the model config's `tau`.",
    )
    n_repeats: int = Field(
        default=4, ge=1, description="Noisy repeats of every trial per noise level."
    )
    position_channels: tuple[int, int] = Field(
        default=(2, 3), description="Output channels of hand position x, y."
    )
    success_radius: float = Field(
        default=0.2,
        gt=0,
        description="A trial succeeds when the final hand position is within this × the "
        "final target's distance from the origin of it (as in generalization).",
    )
    settle_time: float = Field(
        default=0.1,
        ge=0,
        description="Drift is the state's path length over the delay after this much time "
        "from target onset (the onset transient is not drift).",
    )

    @pydantic.field_validator("delay_multiples")
    @classmethod
    def _check_multiples(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(m <= 1 for m in value) or list(value) != sorted(set(value)):
            raise ValueError("delay_multiples must be distinct, increasing and above 1")
        return value

    @pydantic.field_validator("test_delays")
    @classmethod
    def _check_test_delays(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and (len(value) == 0 or min(value) < 0):
            raise ValueError("test_delays must be one or more non-negative delays")
        return value

    @pydantic.field_validator("delay_noise")
    @classmethod
    def _check_levels(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) == 0 or any(level < 0 for level in value) or list(value) != sorted(value):
            raise ValueError("delay_noise must be one or more non-negative increasing levels")
        return value

    @pydantic.model_validator(mode="after")
    def _check_any(self) -> Self:
        if self.test_delays is None and self.shorter_fraction is None and not self.delay_multiples:
            raise ValueError("give test_delays, shorter_fraction or delay_multiples")
        return self

    def test_labels(self) -> tuple[str, ...]:
        """Metric labels of the test delays, in the order :func:`plan_delays` returns them."""
        if self.test_delays is not None:
            return tuple(f"{d:g}s" for d in self.test_delays)
        shorter = ("shorter",) if self.shorter_fraction is not None else ()
        return shorter + tuple(f"{m:g}x" for m in self.delay_multiples)


def trained_delays(task_config: mechscope.Config) -> tuple[float, float, tuple[float, ...] | None]:
    """Shortest and longest trained delay, and the trained list if the task draws from one.

    Raises:
        mechscope.ConfigError: if the task config has neither ``delays`` nor ``delay_range``.
    """
    listed = getattr(task_config, "delays", None)
    if listed is not None:
        return float(min(listed)), float(max(listed)), tuple(float(d) for d in listed)
    window = getattr(task_config, "delay_range", None)
    if window is None:
        raise mechscope.ConfigError(
            "delay_generalization needs a delayed-reach task (a config with `delays` or "
            f"`delay_range`); {type(task_config).__name__} has neither"
        )
    return float(window[0]), float(window[1]), None


def plan_delays(
    config: DelayGeneralizationConfig, task: mechscope.AbstractTask
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Reference (trained) delays, test delays and the test delays' labels, on `task`'s grid.

    A test delay that rounds onto a reference delay is still run (its label needs a value).
    """
    dt = float(task.dt)
    low, high, listed = trained_delays(task.config)
    if listed is not None:
        reference = np.unique(listed)
    else:
        reference = np.unique(np.linspace(low, high, config.n_trained_delays))
    if config.test_delays is not None:
        test = np.asarray(config.test_delays, float)
        labels = config.test_labels()
    else:
        test_list, labels = [], []
        if config.shorter_fraction is not None:  # 0 when the shortest trained delay is 0
            test_list.append(config.shorter_fraction * low)
            labels.append("shorter")
        for multiple in config.delay_multiples:
            test_list.append(multiple * high)
            labels.append(f"{multiple:g}x")
        test, labels = np.asarray(test_list, float), tuple(labels)
    on_grid = lambda d: np.round(np.asarray(d) / dt) * dt  # noqa: E731
    return on_grid(reference), on_grid(test), tuple(labels)


def delay_noise_inputs(
    inputs: Float[Array, "b t i"],
    onset: Int[Array, " b"],
    go: Int[Array, " b"],
    sigma: Float[Array, ""],
    *,
    key: PRNGKeyArray,
) -> Float[Array, "b t i"]:
    """`inputs` plus white noise of per-sample standard deviation `sigma` during the delay only.

    The noisy samples are ``onset ≤ t < go`` of each trial: the input held over the delay's
    integration intervals. Samples before target onset and from go on are returned unchanged.

    Args:
        inputs: the trials' inputs.
        onset: each trial's target-onset sample.
        go: each trial's go sample.
        sigma: standard deviation of the noise per input sample (input units).
        key: PRNG key.
    """
    step = jnp.arange(inputs.shape[1])[None, :]
    delay = (step >= onset[:, None]) & (step < go[:, None])
    noise = sigma * jax.random.normal(key, inputs.shape, inputs.dtype)
    return jnp.where(delay[..., None], inputs + noise, inputs)


@eqx.filter_jit
def _delay_noise_outputs(
    model: mechscope.AbstractModel,
    inputs: Float[Array, "b t i"],
    times: Float[Array, " t"],
    onset: Int[Array, " b"],
    go: Int[Array, " b"],
    sigmas: Float[Array, " levels"],
    n_repeats: int,
    key: PRNGKeyArray,
) -> Float[Array, "levels repeats b t o"]:
    """Noise-free runs of the delay-noised inputs, vmapped over levels and repeats."""

    def one(sigma, k):
        noisy = delay_noise_inputs(inputs, onset, go, sigma, key=k)
        return mechscope.simulate(model, noisy, times).outputs

    keys = jax.random.split(key, (sigmas.shape[0], n_repeats))
    per_repeat = jax.vmap(one, in_axes=(None, 0))
    return jax.vmap(per_repeat)(sigmas, keys)


@eqx.filter_jit
def _speeds(
    model: mechscope.AbstractModel,
    states: Float[Array, "b t n"],
    inputs: Float[Array, "b t i"],
    times: Float[Array, " t"],
) -> Float[Array, "b t"]:
    """‖f(t, x_t, u_t)‖ at every sample of every trial."""
    field = jax.vmap(jax.vmap(model.vector_field))
    tt = jnp.broadcast_to(times, states.shape[:2])
    return jnp.linalg.norm(field(tt, states, inputs), axis=-1)


def _window_mean(values: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Mean of ``values[b, start[b]:stop[b]]`` per trial (NaN for an empty window)."""
    step = np.arange(values.shape[1])[None, :]
    inside = (step >= start[:, None]) & (step < stop[:, None])
    count = inside.sum(axis=1)
    total = np.where(inside, values, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _window_sum(values: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Sum of ``values[b, start[b]:stop[b]]`` per trial (0 for an empty window)."""
    step = np.arange(values.shape[1])[None, :]
    inside = (step >= start[:, None]) & (step < stop[:, None])
    return np.where(inside, values, 0.0).sum(axis=1)


def delay_generalization_metrics(config: DelayGeneralizationConfig) -> tuple[mechscope.Metric, ...]:
    """What :class:`DelayGeneralizationProbe` reports with `config`: names follow its delays."""
    metric = mechscope.Metric
    success = f"within {config.success_radius:g} × the target's distance of it"
    speed = "‖f(x, u)‖ at the go sample under the delay input, ÷ the mean ‖f‖ during movement"
    drift = (
        f"state path length over the delay after the first {config.settle_time:g} s, ÷ its "
        "path length during movement"
    )
    better = "higher = better generalisation"
    declared = [
        metric(
            "success_rate_trained",
            f"fraction of condition trials at the trained delays ending {success}",
            direction=better,
        ),
        metric(
            "endpoint_error_trained",
            "mean distance of the final hand position from the target at the trained delays",
            unit="output units",
            direction="lower = better generalisation",
        ),
        metric(
            "success_rate_beyond",
            "mean success rate over the test delays longer than the longest trained delay",
            direction=better,
        ),
        metric("success_rate_longest", "success rate at the longest test delay", direction=better),
        metric(
            "end_speed_trained",
            # The longest trained delay: at a short one the state may still be settling from
            # target onset, which says nothing about whether it is held.
            f"mean over trials at the longest trained delay of {speed}",
            direction="lower = more attractor-like",
        ),
        metric(
            "end_speed_longest",
            f"mean over trials at the longest test delay of {speed}",
            direction="lower = more attractor-like",
        ),
        metric(
            "drift_trained",
            f"mean over trials at the trained delays of the {drift}",
            direction="lower = more attractor-like",
        ),
        metric(
            "drift_longest",
            f"mean over trials at the longest test delay of the {drift}",
            direction="lower = more attractor-like",
        ),
    ]
    for label in config.test_labels():
        where = f"at the {label} test delay"
        declared += [
            metric(
                f"success_rate_{label}",
                f"fraction of condition trials {where} ending {success}",
                direction=better,
            ),
            metric(
                f"endpoint_error_{label}",
                f"mean distance of the final hand position from the target {where}",
                unit="output units",
                direction="lower = better generalisation",
            ),
        ]
    levels = config.delay_noise
    span = f"delay-noise levels {levels[0]:g}–{levels[-1]:g}"
    repeats = f"mean of {config.n_repeats} repeat(s), trials at the trained delays"
    declared += [
        metric(
            "auc_delay_noise",
            f"mean output R² over the {span} (area under the curve / range)",
            direction="higher = more robust",
        ),
        metric(
            "auc_endpoint_error_delay_noise",
            f"mean endpoint error over the {span} (area under the curve / range)",
            unit="output units",
            direction="lower = more robust",
        ),
    ]
    for level in levels:
        declared += [
            metric(
                f"r2_delay_noise_{level:g}",
                f"output R² under input noise σ = {level:g} during the delay only ({repeats})",
                direction="higher = more robust",
            ),
            metric(
                f"endpoint_error_delay_noise_{level:g}",
                f"endpoint error under input noise σ = {level:g} during the delay only ({repeats})",
                unit="output units",
                direction="lower = more robust",
            ),
        ]
    # Delays or levels that print alike share a name, as they do in run's metrics.
    return tuple({m.name: m for m in declared}.values())


class DelayGeneralizationProbe(mechscope.AbstractProbe):
    """A delayed-reach network at delays outside its training range, and under delay noise."""

    config: DelayGeneralizationConfig = eqx.field(static=True)

    def metrics(self) -> tuple[mechscope.Metric, ...]:
        """Success, endpoint error, end-of-delay speed and drift per delay; delay-noise R²."""
        return delay_generalization_metrics(self.config)

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
        """Run the conditions at the reference and test delays; measure; sweep delay noise.

        The shared condition run (`conditions`) is at the task's own condition delays, so this
        probe builds and runs its own; it does not use it.

        Raises:
            mechscope.ConfigError: without `registry` (the delayed-reach task at the new
                delays is built from it), or if the task has no trained delays.
        """
        del dependencies, conditions
        if registry is None:
            raise mechscope.ConfigError(
                "delay_generalization builds the delayed-reach task at new delays: pass "
                "registry= (experiments pass their plugin registry)"
            )
        config = self.config
        model = trained.model
        tau = self._time_constant(model)  # before any simulation: fail fast
        reference, test, labels = plan_delays(config, task)
        all_delays = np.concatenate([reference, test])
        # One task holds every delay, so every trial shares one time grid and one vmapped run.
        probe_task = matching_task(
            task,
            "delayed_reach",
            {"condition_delays": tuple(float(d) for d in all_delays)},
            registry=registry,
        )
        run = condition_run(model, probe_task)
        trials = run.trials
        n_geometries = trials.inputs.shape[0] // len(all_delays)
        # Rows are delay-major (see the task's conditions()); row r has delay all_delays[r // g].
        row_delay = np.repeat(np.arange(len(all_delays)), n_geometries)
        onset, go = event_index(trials, "target_on"), event_index(trials, "go")
        movement_end = event_index(trials, "movement_end")
        assert onset is not None and go is not None and movement_end is not None
        channels = config.position_channels

        error = endpoint_error(run.outputs, trials, channels)
        success = reach_success(error, trials, channels, config.success_radius)

        inputs = jnp.asarray(trials.inputs)
        speed = np.asarray(
            _speeds(model, jnp.asarray(run.states, inputs.dtype), inputs, trials.times), float
        )
        # The state at the go sample was integrated under the delay input (sample go − 1).
        batch = np.arange(len(go))
        end_speed = np.asarray(
            jax.vmap(model.vector_field)(
                trials.times[jnp.asarray(go)],
                jnp.asarray(run.states[batch, go], inputs.dtype),
                inputs[batch, np.maximum(go - 1, 0)],
            )
        )
        end_speed = np.linalg.norm(end_speed, axis=-1)
        step_length = np.linalg.norm(np.diff(run.states, axis=1), axis=-1)  # sample t → t + 1
        is_reference = row_delay < len(reference)
        # Normalisers from the trained-delay trials' movement epoch (go to movement end).
        moving_speed = float(np.nanmean(_window_mean(speed, go, movement_end + 1)[is_reference]))
        moving_path = float(np.mean(_window_sum(step_length, go, movement_end)[is_reference]))
        settle = np.round(config.settle_time / float(task.dt)).astype(int)
        drift_start = np.minimum(onset + settle, go)
        drift = _window_sum(step_length, drift_start, go) / max(moving_path, 1e-12)
        end_speed = end_speed / max(moving_speed, 1e-12)

        def per_delay(values: np.ndarray) -> np.ndarray:
            return np.asarray([values[row_delay == d].mean() for d in range(len(all_delays))])

        table = {
            "error": per_delay(error),
            "success": per_delay(success.astype(float)),
            "end_speed": per_delay(end_speed),
            "drift": per_delay(drift),
        }
        tst = slice(len(reference), None)
        metrics: dict[str, float] = {
            "success_rate_trained": float(success[is_reference].mean()),
            "endpoint_error_trained": float(error[is_reference].mean()),
            "drift_trained": float(drift[is_reference].mean()),
        }
        longest = len(reference) + int(np.argmax(test))
        beyond = len(reference) + np.flatnonzero(test > reference.max())
        metrics["success_rate_longest"] = float(table["success"][longest])
        metrics["end_speed_trained"] = float(table["end_speed"][int(np.argmax(reference))])
        metrics["end_speed_longest"] = float(table["end_speed"][longest])
        metrics["drift_longest"] = float(table["drift"][longest])
        metrics["success_rate_beyond"] = (
            float(table["success"][beyond].mean()) if len(beyond) else float("nan")
        )
        for i, label in enumerate(labels):
            metrics[f"success_rate_{label}"] = float(table["success"][tst][i])
            metrics[f"endpoint_error_{label}"] = float(table["error"][tst][i])

        # Delay-only input noise on the trained-delay trials.
        levels = np.asarray(config.delay_noise, float)
        per_sample = levels * np.sqrt(2.0 * tau / float(task.dt))
        rows = np.flatnonzero(is_reference)
        noisy = np.asarray(
            _delay_noise_outputs(
                model,
                inputs[rows],
                trials.times,
                jnp.asarray(onset[rows]),
                jnp.asarray(go[rows]),
                jnp.asarray(per_sample, inputs.dtype),
                config.n_repeats,
                key,
            )
        )
        reference_trials = trials.select(jnp.asarray(rows))
        r2 = np.asarray(
            r2_per_repeat(noisy, reference_trials.targets, reference_trials.mask), float
        ).mean(axis=1)
        noise_error = endpoint_error(noisy, reference_trials, channels).mean(axis=(1, 2))
        metrics["auc_delay_noise"] = area_under_curve(levels, r2)
        metrics["auc_endpoint_error_delay_noise"] = area_under_curve(levels, noise_error)
        for level, value, err in zip(levels, r2, noise_error, strict=True):
            metrics[f"r2_delay_noise_{level:g}"] = float(value)
            metrics[f"endpoint_error_delay_noise_{level:g}"] = float(err)

        arrays = {
            "delays": all_delays,
            "trained": is_reference[:: max(n_geometries, 1)][: len(all_delays)],
            "trained_range": np.asarray(trained_delays(task.config)[:2]),
            "endpoint_error": table["error"],
            "success_rate": table["success"],
            "end_speed": table["end_speed"],
            "drift": table["drift"],
            "trial_delay": all_delays[row_delay],
            "trial_endpoint_error": error,
            "trial_success": success,
            "trial_end_speed": end_speed,
            "trial_drift": drift,
            "delay_noise_levels": levels,
            "delay_noise_per_sample": per_sample,
            "r2_delay_noise": r2,
            "endpoint_error_delay_noise": noise_error,
        }
        from mechscope_dynamics._plot import delay_generalization_figure

        figures = {"delay_generalization": lambda: delay_generalization_figure(arrays)}
        return mechscope.ProbeResult(metrics=metrics, arrays=arrays, figures=figures)

    def _time_constant(self, model: mechscope.AbstractModel) -> float:
        if self.config.noise_time_constant is not None:
            return self.config.noise_time_constant
        tau = getattr(model.config, "tau", None)
        if tau is None:
            raise mechscope.ConfigError(
                f"{type(model).__name__}'s config has no `tau`: set noise_time_constant to give "
                "delay_noise its units"
            )
        return float(tau)
