"""The one place reach time courses are built: kinematics, inputs, mask, events and labels.

Each task only decides, per trial, which target is shown first, which is final, when the
target moves and how long the delay is (a :class:`ReachPlan`); :func:`render_trials` turns any
plan into a :class:`mechscope.Trials` with vectorised comparisons against the time grid.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

import mechscope
from mechscope_reach._config import JumpConfig, ReachConfig


class ReachPlan(eqx.Module):
    """What varies between reach trials, before rendering to time courses.

    Times that drive inputs are whole samples, so inputs switch exactly at the reported events
    and jitted and eager runs agree to the last bit on the timing.

    Attributes:
        delay_steps: delay from target onset to go, in samples, ``[batch]``.
        catch: True for trials without a go cue, ``[batch]``.
        start: target shown at target onset, ``[batch, 2]``.
        final: target after the switch (equal to `start` when nothing moves), ``[batch, 2]``.
        switch_step: sample at which the target input moves to `final`; ``-1`` when it never
            does, ``[batch]``.
        condition: condition id, ``[batch]``.
        target_index: index of the final target in the task's target list, ``[batch]``.
    """

    delay_steps: Int[Array, " batch"]
    catch: Bool[Array, " batch"]
    start: Float[Array, "batch 2"]
    final: Float[Array, "batch 2"]
    switch_step: Int[Array, " batch"]
    condition: Int[Array, " batch"]
    target_index: Int[Array, " batch"]


def displacement(
    u: Float[Array, "..."], config: ReachConfig
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """Normalised displacement s(u) and ds/du of one reach at normalised time u = t / duration.

    s rises from 0 at u = 0 to 1 at u = 1 and is constant outside; ds/du is zero outside (0, 1).
    The Gaussian profile is ds/du ∝ φ((u − ½)/σ) − φ(½/σ) on (0, 1) (σ = gaussian_sd_fraction),
    i.e. a bell of standard deviation σ·duration lowered by its tiny edge value so that speed
    starts and ends at exactly zero; minimum-jerk is s = 10u³ − 15u⁴ + 6u⁵.

    Args:
        u: time since movement onset divided by the reach duration (any real, ±inf allowed).
        config: supplies the profile (Gaussian or minimum-jerk) and the Gaussian width.
    """
    inside = (u > 0) & (u < 1)
    v = jnp.clip(u, 0.0, 1.0)
    if config.profile == "gaussian":
        sd = config.gaussian_sd_fraction
        edge = 0.5 / sd
        # A Gaussian bell minus its value at the window edges: speed is continuous (exactly 0
        # at onset and end), so a sample landing on an edge cannot flip the output.
        floor = math.exp(-0.5 * edge**2) / math.sqrt(2 * math.pi)
        norm = math.erf(edge / math.sqrt(2)) - floor / sd
        z = (v - 0.5) / sd
        s = (jsp.ndtr(z) - jsp.ndtr(-edge) - v * floor / sd) / norm
        rate = (jnp.exp(-0.5 * z**2) / math.sqrt(2 * math.pi) - floor) / (sd * norm)
    else:
        s = v**3 * (10 - 15 * v + 6 * v**2)
        rate = 30 * v**2 * (1 - v) ** 2
    s = jnp.where(v >= 1, 1.0, jnp.where(v <= 0, 0.0, s))
    return s, jnp.where(inside, rate, 0.0)


def peak_rate(config: ReachConfig) -> float:
    """The peak of ds/du (at mid-reach), used for peak-normalised velocity."""
    if config.profile == "gaussian":
        sd = config.gaussian_sd_fraction
        edge = 0.5 / sd
        floor = math.exp(-0.5 * edge**2) / math.sqrt(2 * math.pi)
        norm = math.erf(edge / math.sqrt(2)) - floor / sd
        return (1 / math.sqrt(2 * math.pi) - floor) / (sd * norm)
    return 30 / 16


def time_grid(config: ReachConfig) -> Float[Array, " time"]:
    """Sample times ``0, dt, ..., (n_times - 1) dt`` shared by every trial of a task."""
    return jnp.arange(config.n_times) * config.dt


def render_trials(config: ReachConfig, plan: ReachPlan) -> mechscope.Trials:
    """Build inputs, targets, mask, events and labels of the trials in `plan`.

    The hand starts at the origin and follows a superposition of reaches (the classic model of
    target jumps): a reach to the first target from movement onset and, when the target moved,
    a second reach by (final − first) from the correction time max(switch + latency, onset).
    Position is continuous and ends exactly at the final target; with a switch before the
    movement the two reaches coincide into one reach to the final target.

    Args:
        config: the task's config.
        plan: per-trial delays, targets and switch times.

    Returns:
        Trials with inputs ``[B, T, 3]`` (target x, target y, go), targets ``[B, T, 4]``
        (velocity x, y, position x, y) and mask ``[B, T, 4]`` on the config's time grid.
    """
    dt = config.dt
    times = time_grid(config)
    dtype = times.dtype
    step = jnp.arange(config.n_times)[None, :]

    def column(x: Array) -> Array:
        return x[:, None]

    on_step = round(config.target_on_time / dt)
    go_step = on_step + plan.delay_steps
    moved = plan.switch_step >= 0
    # A trial whose target never moves (e.g. a catch trial that would have jumped after go)
    # keeps its first target.
    final = jnp.where(moved[:, None], plan.final, plan.start)
    # Continuous-time quantities are measured from the (nominal) go sample: small numbers, so
    # float32 rounding stays far below the outputs' resolution.
    since_go = (step - column(go_step)) * dt
    rt = config.reaction_time
    latency = config.correction_latency if isinstance(config, JumpConfig) else 0.0
    switch_after_go = (plan.switch_step - go_step) * dt
    correction = jnp.where(moved, jnp.maximum(switch_after_go + latency, rt), rt)
    end_after_go = correction + config.reach_duration + config.hold_duration
    end_after_go = jnp.where(
        plan.catch, rt + config.reach_duration + config.hold_duration, end_after_go
    )

    # Inputs.
    after_switch = (moved[:, None] & (step >= column(plan.switch_step)))[..., None]
    target_seen = jnp.where(after_switch, final[:, None, :], plan.start[:, None, :])
    target_seen = jnp.where((step >= on_step)[..., None], target_seen, 0.0)
    after_go = (step >= column(go_step)) & ~column(plan.catch)
    if config.go_cue == "step":
        go_channel = after_go
    elif config.go_cue == "pulse":
        width = max(1, round(config.go_pulse_duration / dt))
        go_channel = after_go & (step < column(go_step) + width)
    else:
        go_channel = ~after_go
    inputs = jnp.concatenate([target_seen, go_channel[..., None].astype(dtype)], axis=-1)

    # Outputs: superposed reaches; catch trials never start one.
    moving = ~column(plan.catch)
    s1, rate1 = displacement((since_go - rt) / config.reach_duration, config)
    s2, rate2 = displacement((since_go - column(correction)) / config.reach_duration, config)
    s1, rate1 = jnp.where(moving, s1, 0.0), jnp.where(moving, rate1, 0.0)
    s2, rate2 = jnp.where(moving, s2, 0.0), jnp.where(moving, rate2, 0.0)
    first = plan.start[:, None, :]
    second = (final - plan.start)[:, None, :]
    position = first * s1[..., None] + second * s2[..., None]
    if config.velocity == "derivative":
        scale = 1.0 / config.reach_duration
    else:
        scale = 1.0 / peak_rate(config)
    velocity = scale * (first * rate1[..., None] + second * rate2[..., None])
    targets = jnp.concatenate([velocity, position], axis=-1).astype(dtype)

    mask = since_go <= column(end_after_go) + 1e-3 * dt
    if config.mask_reaction:
        mask = mask & ~(after_go & (since_go < rt - 0.5 * dt))
    mask = jnp.broadcast_to(mask[..., None], targets.shape).astype(dtype)

    def unless(absent: Array, x: Array) -> Array:
        return jnp.where(absent, jnp.nan, x).astype(dtype)

    go = go_step * dt
    events = {
        "target_on": jnp.full(go.shape, on_step * dt, dtype=dtype),
        "switch": unless(~moved, plan.switch_step * dt),
        "go": unless(plan.catch, go),
        "movement_onset": unless(plan.catch, go + rt),
        "movement_end": unless(plan.catch, go + correction + config.reach_duration),
        "trial_end": (go + end_after_go).astype(dtype),
    }
    labels = {
        "condition": plan.condition,
        "target_index": plan.target_index,
        "target": final.astype(dtype),
        "angle": jnp.arctan2(final[:, 1], final[:, 0]).astype(dtype),
        "radius": jnp.linalg.norm(final, axis=-1).astype(dtype),
        "delay": (plan.delay_steps * dt).astype(dtype),
        "switched_from": jnp.where(moved[:, None], plan.start, jnp.nan).astype(dtype),
        "catch": plan.catch,
    }
    return mechscope.Trials(
        inputs=inputs, targets=targets, mask=mask, times=times, events=events, labels=labels
    )


def plan_from_numpy(
    *,
    delay_steps: np.ndarray,
    start: np.ndarray,
    final: np.ndarray,
    switch_step: np.ndarray,
    condition: np.ndarray,
    target_index: np.ndarray,
) -> ReachPlan:
    """A ReachPlan of noiseless probe conditions (never catch trials) from NumPy arrays."""
    return ReachPlan(
        delay_steps=jnp.asarray(delay_steps, dtype=int),
        catch=jnp.zeros(len(delay_steps), dtype=bool),
        start=jnp.asarray(start, dtype=float),
        final=jnp.asarray(final, dtype=float),
        switch_step=jnp.asarray(switch_step, dtype=int),
        condition=jnp.asarray(condition, dtype=int),
        target_index=jnp.asarray(target_index, dtype=int),
    )
