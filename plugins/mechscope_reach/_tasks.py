"""Task modules: delayed reach, target switch and target relocation.

Each task draws a :class:`ReachPlan` (targets, delays, switch times) and hands it to the shared
renderer, so timing, kinematics and masks are implemented once for all three.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

import mechscope
from mechscope_reach._config import (
    DelayedReachConfig,
    JumpConfig,
    ReachConfig,
    TargetRelocationConfig,
    TargetSwitchConfig,
)
from mechscope_reach._trials import ReachPlan, plan_from_numpy, render_trials, time_grid


class AbstractReachTask(mechscope.AbstractTask):
    """A reach task: 3 inputs (target x, y, go cue), 4 outputs (hand velocity x, y, position x, y).

    Subclasses only decide what varies between trials (:meth:`draw_plan`,
    :meth:`condition_plan`); rendering to time courses is shared.
    """

    config: eqx.AbstractVar[ReachConfig]

    @property
    def n_inputs(self) -> int:
        """Target x, target y and the go cue."""
        return 3

    @property
    def n_outputs(self) -> int:
        """Hand velocity x, y and position x, y."""
        return 4

    @property
    def dt(self) -> float:
        """Sample interval in seconds."""
        return self.config.dt

    @property
    def times(self) -> Float[Array, " time"]:
        """The time grid every trial of this task shares."""
        return time_grid(self.config)

    @abc.abstractmethod
    def draw_plan(self, batch_size: int, *, key: PRNGKeyArray) -> ReachPlan:
        """Random targets, delays, catch flags and switch times of `batch_size` trials."""

    @abc.abstractmethod
    def condition_plan(self) -> ReachPlan:
        """One plan row per probe condition (no catch trials)."""

    def sample(self, batch_size: int, *, key: PRNGKeyArray) -> mechscope.Trials:
        """Draw a batch of training trials. Jit-able (static `batch_size`); deterministic in `key`.

        Args:
            batch_size: number of trials.
            key: PRNG key.
        """
        return render_trials(self.config, self.draw_plan(batch_size, key=key))

    def conditions(self) -> mechscope.Trials:
        """One noiseless trial per condition and per delay in ``condition_delays``.

        Rows are ordered delay-major: all conditions at the first condition delay, then all at
        the next. ``labels["condition"]`` identifies the geometry of a row (the same ids that
        :meth:`sample` uses) and ``labels["delay"]`` its delay.
        """
        return _render_jit(self.config, self.condition_plan())


# Conditions are rendered outside any user jit; compiling once per config beats op-by-op.
_render_jit = eqx.filter_jit(render_trials)


def _trained(config: ReachConfig) -> Float[Array, "n 2"]:
    return jnp.asarray(config.trained_targets(), dtype=float)


def _steps(config: ReachConfig, seconds: float) -> int:
    return round(seconds / config.dt)


def _draw_delays(config: ReachConfig, batch_size: int, key: PRNGKeyArray) -> Int[Array, " b"]:
    """Delays in samples: uniform over the list, or over every grid point of the range."""
    if config.delays is not None:
        choices = jnp.asarray([_steps(config, d) for d in config.delays])
        return jax.random.choice(key, choices, (batch_size,))
    low, high = (_steps(config, d) for d in config.delay_range)
    return jax.random.randint(key, (batch_size,), low, high + 1)


def _draw_catch(config: ReachConfig, batch_size: int, key: PRNGKeyArray) -> Bool[Array, " b"]:
    if config.catch_fraction == 0:
        return jnp.zeros(batch_size, dtype=bool)
    return jax.random.bernoulli(key, config.catch_fraction, (batch_size,))


def _switch_steps(config: JumpConfig, delay_steps: Array, catch: Array) -> Int[Array, " b"]:
    """Sample at which the target moves (``-1``: never)."""
    on_step = _steps(config, config.target_on_time)
    if config.switch_epoch == "delay":
        offset = jnp.round(config.switch_delay_fraction * delay_steps).astype(int)
        return on_step + offset
    if config.switch_epoch == "after_go":
        # No go cue, no movement to correct: catch trials never switch after go.
        after = on_step + delay_steps + _steps(config, config.switch_after_go)
        return jnp.where(catch, -1, after)
    return jnp.full(delay_steps.shape, -1)


def _condition_delays(config: ReachConfig, n_geometries: int) -> np.ndarray:
    delays = np.asarray([_steps(config, d) for d in config.condition_delays])
    return np.repeat(delays, n_geometries)


class DelayedReach(AbstractReachTask):
    """Delayed center-out reach to one of the trained targets."""

    config: DelayedReachConfig = eqx.field(static=True)

    def __check_init__(self) -> None:
        if not isinstance(self.config, DelayedReachConfig):
            raise TypeError(f"DelayedReach needs a DelayedReachConfig, got {type(self.config)}")

    def draw_plan(self, batch_size: int, *, key: PRNGKeyArray) -> ReachPlan:
        """Random target, delay and catch flag per trial; nothing moves."""
        k_target, k_delay, k_catch = jax.random.split(key, 3)
        targets = _trained(self.config)
        index = jax.random.randint(k_target, (batch_size,), 0, targets.shape[0])
        return ReachPlan(
            delay_steps=_draw_delays(self.config, batch_size, k_delay),
            catch=_draw_catch(self.config, batch_size, k_catch),
            start=targets[index],
            final=targets[index],
            switch_step=jnp.full(batch_size, -1),
            condition=index,
            target_index=index,
        )

    def condition_plan(self) -> ReachPlan:
        """One row per (delay, target); condition id = target index."""
        targets = self.config.trained_targets()
        n_delays = len(self.config.condition_delays)
        index = np.tile(np.arange(len(targets)), n_delays)
        return plan_from_numpy(
            delay_steps=_condition_delays(self.config, len(targets)),
            start=targets[index],
            final=targets[index],
            switch_step=np.full(len(index), -1),
            condition=index,
            target_index=index,
        )


class TargetSwitch(AbstractReachTask):
    """Target switch: the target input jumps to another trained target once per trial.

    Condition ids: with ``switch_offset = None`` a switch from target i to target j has id
    ``i (n − 1) + ((j − i) mod n) − 1`` (n (n − 1) conditions); with a fixed offset it has id i.
    Unswitched training trials (``switch_fraction < 1``) to target i have id ``n_switch + i``.
    """

    config: TargetSwitchConfig = eqx.field(static=True)

    def __check_init__(self) -> None:
        if not isinstance(self.config, TargetSwitchConfig):
            raise TypeError(f"TargetSwitch needs a TargetSwitchConfig, got {type(self.config)}")

    @property
    def n_switch_conditions(self) -> int:
        """Number of distinct (from, to) switch conditions."""
        n = len(self.config.trained_targets())
        return n if self.config.switch_offset is not None else n * (n - 1)

    def _pair_id(self, start: Array, final: Array, n: int) -> Array:
        if self.config.switch_offset is not None:
            return start
        return start * (n - 1) + jnp.mod(final - start, n) - 1

    def draw_plan(self, batch_size: int, *, key: PRNGKeyArray) -> ReachPlan:
        """Random first target, a different final target, a delay and a switch time."""
        k_target, k_other, k_switched, k_delay, k_catch = jax.random.split(key, 5)
        config = self.config
        targets = _trained(config)
        n = targets.shape[0]
        first = jax.random.randint(k_target, (batch_size,), 0, n)
        if config.switch_offset is None:
            step = jax.random.randint(k_other, (batch_size,), 1, n)
        else:
            step = jnp.full(batch_size, config.switch_offset)
        second = jnp.mod(first + step, n)
        if config.switch_fraction == 1:
            switched = jnp.ones(batch_size, dtype=bool)
        else:
            switched = jax.random.bernoulli(k_switched, config.switch_fraction, (batch_size,))
        delay = _draw_delays(config, batch_size, k_delay)
        catch = _draw_catch(config, batch_size, k_catch)
        final = jnp.where(switched, second, first)
        condition = jnp.where(
            switched, self._pair_id(first, second, n), self.n_switch_conditions + first
        )
        return ReachPlan(
            delay_steps=delay,
            catch=catch,
            start=targets[first],
            final=targets[final],
            switch_step=jnp.where(switched, _switch_steps(config, delay, catch), -1),
            condition=condition,
            target_index=final,
        )

    def condition_plan(self) -> ReachPlan:
        """One row per (delay, first target, final target)."""
        config = self.config
        targets = config.trained_targets()
        n = len(targets)
        steps = [config.switch_offset] if config.switch_offset is not None else range(1, n)
        first = np.asarray([i for i in range(n) for _ in steps])
        second = np.asarray([(i + k) % n for i in range(n) for k in steps])
        n_delays = len(config.condition_delays)
        first, second = np.tile(first, n_delays), np.tile(second, n_delays)
        delay = _condition_delays(config, len(steps) * n)
        switch = _switch_steps(config, jnp.asarray(delay), jnp.zeros(len(delay), dtype=bool))
        return plan_from_numpy(
            delay_steps=delay,
            start=targets[first],
            final=targets[second],
            switch_step=np.asarray(switch),
            condition=np.asarray(self._pair_id(jnp.asarray(first), jnp.asarray(second), n)),
            target_index=second,
        )


class TargetRelocation(AbstractReachTask):
    """Target relocation: reach to targets absent from training, shown from onset or moved to.

    Condition ids: the index k of the new target, or ``k n + i`` when the first target i is
    drawn at random (``relocate_from = "random"``) among the n trained targets.
    ``labels["target_index"]`` indexes the new targets (``config.novel_targets()``).
    """

    config: TargetRelocationConfig = eqx.field(static=True)

    def __check_init__(self) -> None:
        if not isinstance(self.config, TargetRelocationConfig):
            raise TypeError(
                f"TargetRelocation needs a TargetRelocationConfig, got {type(self.config)}"
            )

    @property
    def _random_start(self) -> bool:
        return self.config.switch_epoch != "none" and self.config.relocate_from == "random"

    def draw_plan(self, batch_size: int, *, key: PRNGKeyArray) -> ReachPlan:
        """Random new target, first target (trained), delay and move time."""
        k_target, k_start, k_delay, k_catch = jax.random.split(key, 4)
        config = self.config
        trained = _trained(config)
        novel = jnp.asarray(config.novel_targets(), dtype=float)
        n = trained.shape[0]
        k = jax.random.randint(k_target, (batch_size,), 0, novel.shape[0])
        delay = _draw_delays(config, batch_size, k_delay)
        catch = _draw_catch(config, batch_size, k_catch)
        if config.switch_epoch == "none":
            start, condition = novel[k], k
        elif self._random_start:
            first = jax.random.randint(k_start, (batch_size,), 0, n)
            start, condition = trained[first], k * n + first
        else:
            start, condition = trained[jnp.asarray(config.nearest_trained())[k]], k
        return ReachPlan(
            delay_steps=delay,
            catch=catch,
            start=start,
            final=novel[k],
            switch_step=_switch_steps(config, delay, catch),
            condition=condition,
            target_index=k,
        )

    def condition_plan(self) -> ReachPlan:
        """One row per (delay, new target[, first trained target])."""
        config = self.config
        trained, novel = config.trained_targets(), config.novel_targets()
        n, m = len(trained), len(novel)
        if self._random_start:
            k, first = np.repeat(np.arange(m), n), np.tile(np.arange(n), m)
            condition = k * n + first
        else:
            k = np.arange(m)
            first = config.nearest_trained()
            condition = k
        start = novel[k] if config.switch_epoch == "none" else trained[first]
        n_delays = len(config.condition_delays)
        delay = _condition_delays(config, len(k))
        switch = _switch_steps(config, jnp.asarray(delay), jnp.zeros(len(delay), dtype=bool))
        return plan_from_numpy(
            delay_steps=delay,
            start=np.tile(start, (n_delays, 1)),
            final=np.tile(novel[k], (n_delays, 1)),
            switch_step=np.asarray(switch),
            condition=np.tile(condition, n_delays),
            target_index=np.tile(k, n_delays),
        )
