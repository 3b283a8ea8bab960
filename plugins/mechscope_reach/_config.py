"""Configs of the reach tasks: shared geometry, timing and kinematics, plus jump options."""

from __future__ import annotations

import math
from typing import Any, Literal, Self

import numpy as np
import pydantic
from pydantic import Field

import mechscope

Position = tuple[float, float]


class ReachConfig(mechscope.Config):
    """Fields every reach task shares: target geometry, epoch timing, kinematics and mask.

    Not registered itself; :class:`DelayedReachConfig`, :class:`TargetSwitchConfig` and
    :class:`TargetRelocationConfig` subclass it, so a switch or relocation task can be built
    with exactly the geometry a delayed-reach network was trained on (see :meth:`from_config`).
    """

    dt: float = Field(default=0.01, gt=0, description="Sample interval in seconds.")
    n_targets: int = Field(
        default=8, ge=1, description="Number of targets at equal angles on a circle of `radius`."
    )
    radius: float = Field(default=1.0, gt=0, description="Radius of the target circle.")
    angle_offset: float = Field(
        default=0.0, description="Angle of the first target in radians (counter-clockwise from +x)."
    )
    target_positions: tuple[Position, ...] | None = Field(
        default=None,
        description="Explicit (x, y) target positions; when given they replace n_targets, "
        "radius and angle_offset.",
    )
    fixation_duration: float = Field(
        default=0.2, gt=0, description="Time from trial start to target onset, in seconds."
    )
    delay_range: tuple[float, float] = Field(
        default=(0.3, 1.0), description="Training delays are drawn from Uniform(min, max) seconds."
    )
    delays: tuple[float, ...] | None = Field(
        default=None,
        description="If given, training delays are drawn uniformly from this list instead of "
        "delay_range.",
    )
    catch_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Fraction of training trials with no go cue (the hand must stay put).",
    )
    condition_delays: tuple[float, ...] = Field(
        default=(0.5,), description="Delays (seconds) of the probe trials returned by conditions()."
    )
    reaction_time: float = Field(
        default=0.15,
        ge=0,
        description="Time from the go cue to movement onset, in seconds (0: moves at go).",
    )
    reach_duration: float = Field(default=0.5, gt=0, description="Duration of a reach, in seconds.")
    hold_duration: float = Field(
        default=0.3,
        gt=0,
        description="Time the hand holds at the target after the reach, in seconds.",
    )
    go_cue: Literal["step", "pulse", "hold"] = Field(
        default="step",
        description="Go channel: 'step' 0 → 1 at go; 'pulse' 1 for go_pulse_duration after go; "
        "'hold' 1 from trial start, 0 from go.",
    )
    go_pulse_duration: float = Field(
        default=0.1, gt=0, description="Width of the go pulse in seconds (go_cue = 'pulse')."
    )
    profile: Literal["gaussian", "minimum_jerk"] = Field(
        default="gaussian",
        description="Speed profile of a reach: Gaussian bell or minimum-jerk polynomial.",
    )
    gaussian_sd_fraction: float = Field(
        default=1 / 7,
        gt=0,
        description="Standard deviation of the Gaussian speed profile as a fraction of "
        "reach_duration.",
    )
    velocity: Literal["derivative", "peak_normalized"] = Field(
        default="derivative",
        description="'derivative': velocity outputs are d(position)/dt (units/s); "
        "'peak_normalized': displacement × speed / peak speed, as in published code.",
    )
    mask_reaction: bool = Field(
        default=False,
        description="Exclude the reaction window (go to movement onset) from the loss.",
    )

    @pydantic.field_validator("delay_range")
    @classmethod
    def _check_delay_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low <= high:
            raise ValueError("delay_range must be (min, max) with 0 <= min <= max")
        return value

    @pydantic.field_validator("delays", "condition_delays")
    @classmethod
    def _check_delays(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None:
            if len(value) == 0:
                raise ValueError("a list of delays must hold at least one delay")
            if min(value) < 0:
                raise ValueError("delays must be non-negative")
        return value

    @pydantic.field_validator("target_positions")
    @classmethod
    def _check_positions(cls, value: tuple[Position, ...] | None) -> tuple[Position, ...] | None:
        if value is not None and len(value) == 0:
            raise ValueError("target_positions must hold at least one (x, y) position")
        return value

    @pydantic.model_validator(mode="after")
    def _check_grid(self) -> Self:
        if self.trial_duration / self.dt > 100_000:
            raise ValueError(f"dt = {self.dt} gives more than 100000 samples per trial")
        return self

    @classmethod
    def from_config(cls, other: ReachConfig, **overrides: Any) -> Self:
        """This config class with the shared reach fields of `other` plus `overrides`.

        Use it to probe a network trained on one reach task with another, e.g.
        ``TargetSwitchConfig.from_config(trained_delayed_reach_config, switch_epoch="after_go")``.
        """
        shared = {name: getattr(other, name) for name in ReachConfig.model_fields}
        return cls(**{**shared, **overrides})

    # Derived quantities (plain Python / NumPy: they fix static shapes and constants).

    def quantize(self, seconds: float) -> float:
        """`seconds` rounded to the sample grid (events that drive inputs sit on samples)."""
        return round(seconds / self.dt) * self.dt

    @property
    def target_on_time(self) -> float:
        """Target onset in seconds, on the sample grid."""
        return self.quantize(self.fixation_duration)

    @property
    def max_delay(self) -> float:
        """The longest delay any trial (training or probe) can have, on the sample grid."""
        training = max(self.delays) if self.delays is not None else self.delay_range[1]
        return self.quantize(max(training, *self.condition_delays))

    def max_correction_after_go(self) -> float:
        """Latest start of the final reach segment after go (movement onset for a plain reach)."""
        return self.reaction_time

    @property
    def trial_duration(self) -> float:
        """Duration of the longest possible trial, which fixes the shared time grid."""
        return (
            self.target_on_time
            + self.max_delay
            + self.max_correction_after_go()
            + self.reach_duration
            + self.hold_duration
        )

    @property
    def n_times(self) -> int:
        """Number of samples per trial (the last one at or after the longest trial's end)."""
        return math.ceil(self.trial_duration / self.dt - 1e-6) + 1

    def trained_targets(self) -> np.ndarray:
        """Target positions, shape ``[n, 2]`` (float64)."""
        if self.target_positions is not None:
            return np.asarray(self.target_positions, dtype=float).reshape(-1, 2)
        angles = self.angle_offset + 2 * np.pi * np.arange(self.n_targets) / self.n_targets
        return self.radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


class DelayedReachConfig(ReachConfig):
    """Delayed center-out reach: target on, variable delay, go cue, reach and hold."""


class JumpConfig(ReachConfig):
    """Shared fields of tasks whose target moves once (target switch, target relocation)."""

    # Every value a subclass may hold ('none' only where the task offers it: relocation), so
    # code reading a JumpConfig sees them all; TargetSwitchConfig narrows it (configs are frozen).
    switch_epoch: Literal["none", "delay", "after_go"] = Field(
        default="delay",
        description="When the target moves: during the delay (at switch_delay_fraction of "
        "it) or switch_after_go seconds after the go cue (a mid-movement target jump); "
        "'none' where a task offers it.",
    )
    switch_delay_fraction: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Switch time as a fraction of the delay (switch_epoch = 'delay').",
    )
    switch_after_go: float = Field(
        default=0.3,
        ge=0,
        description="Switch time after the go cue in seconds (switch_epoch = 'after_go').",
    )
    correction_latency: float = Field(
        default=0.0,
        ge=0,
        description="Time from a switch to the start of the corrective reach, in seconds; "
        "corrections never start before movement onset.",
    )

    @pydantic.model_validator(mode="after")
    def _check_switch_in_trial(self) -> Self:
        after_go_end = self.reaction_time + self.reach_duration + self.hold_duration
        if self.switch_after_go >= after_go_end:
            raise ValueError(
                f"switch_after_go = {self.switch_after_go} s is after the trial ends "
                f"({after_go_end:g} s after go)"
            )
        return self

    def max_correction_after_go(self) -> float:
        """Latest start of the corrective reach after go."""
        if self.switch_epoch == "after_go":
            latest = self.quantize(self.switch_after_go) + self.correction_latency
        else:
            # A delay switch happens at or before go.
            latest = self.correction_latency
        return max(self.reaction_time, latest)


class TargetSwitchConfig(JumpConfig):
    """Target switch: the target input jumps to another trained target; reach to the final one."""

    switch_epoch: Literal["delay", "after_go"] = Field(
        default="delay",
        description="When the target moves: during the delay (at switch_delay_fraction of "
        "it) or switch_after_go seconds after the go cue (a mid-movement target jump).",
    )
    switch_offset: int | None = Field(
        default=None,
        description="New target = (old index + switch_offset) mod n; None draws a random "
        "other target.",
    )
    switch_fraction: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Fraction of training trials that switch (the rest are plain delayed reaches).",
    )

    @pydantic.model_validator(mode="after")
    def _check_switch_targets(self) -> Self:
        n = len(self.trained_targets())
        if n < 2:
            raise ValueError("target_switch needs at least two targets to switch between")
        if self.switch_offset is not None and self.switch_offset % n == 0:
            raise ValueError(
                f"switch_offset = {self.switch_offset} maps every target onto itself ({n} targets)"
            )
        return self


class TargetRelocationConfig(JumpConfig):
    """Target relocation: the target appears at, or moves to, a location absent from training."""

    switch_epoch: Literal["none", "delay", "after_go"] = Field(
        default="delay",
        description="'none': the target appears at the new location; 'delay': it appears at a "
        "trained target and moves during the delay; 'after_go': it jumps during the movement.",
    )
    novel_angles: tuple[float, ...] | None = Field(
        default=None,
        description="Angles (radians) of the new targets; None: midway between adjacent "
        "trained targets.",
    )
    novel_radii: tuple[float, ...] | None = Field(
        default=None,
        description="Radii of the new targets (each angle at each radius); None: the trained "
        "radius.",
    )
    novel_positions: tuple[Position, ...] | None = Field(
        default=None,
        description="Explicit (x, y) new targets; replace novel_angles and novel_radii.",
    )
    novel: bool = Field(
        default=True, description="Require every new target to differ from every trained target."
    )
    relocate_from: Literal["nearest", "random"] = Field(
        default="nearest",
        description="Trained target shown before the move: the one nearest the new target "
        "(lowest index on ties) or a random one.",
    )

    @pydantic.field_validator("novel_angles", "novel_positions")
    @classmethod
    def _check_nonempty(cls, value: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if value is not None and len(value) == 0:
            raise ValueError("give at least one new target (or None for the default)")
        return value

    @pydantic.field_validator("novel_radii")
    @classmethod
    def _check_radii(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and (len(value) == 0 or min(value) <= 0):
            raise ValueError("novel_radii must be one or more positive radii")
        return value

    @pydantic.model_validator(mode="after")
    def _check_novel(self) -> Self:
        if self.novel:
            trained, new = self.trained_targets(), self.novel_targets()
            distance = np.linalg.norm(new[:, None, :] - trained[None, :, :], axis=-1)
            scale = 1e-6 * max(1.0, float(np.abs(trained).max()))
            clashes = np.argwhere(distance <= scale)
            if len(clashes):
                k, i = clashes[0]
                raise ValueError(
                    f"new target {tuple(np.round(new[k], 6))} is trained target {i}; "
                    "choose other angles or radii, or set novel = False"
                )
        return self

    def novel_targets(self) -> np.ndarray:
        """Relocation targets, shape ``[m, 2]`` (float64)."""
        if self.novel_positions is not None:
            return np.asarray(self.novel_positions, dtype=float).reshape(-1, 2)
        trained = self.trained_targets()
        if self.novel_angles is not None:
            angles = np.asarray(self.novel_angles, dtype=float)
        else:
            angles = _midway_angles(np.arctan2(trained[:, 1], trained[:, 0]))
        if self.novel_radii is not None:
            radii = np.asarray(self.novel_radii, dtype=float)
        else:
            radii = np.asarray([np.median(np.linalg.norm(trained, axis=-1))])
        # Radius-major so a condition id steps through angles first.
        rr, aa = np.meshgrid(radii, angles, indexing="ij")
        return np.stack([rr * np.cos(aa), rr * np.sin(aa)], axis=-1).reshape(-1, 2)

    def nearest_trained(self) -> np.ndarray:
        """Index of the trained target nearest each new target (lowest index on ties)."""
        trained, new = self.trained_targets(), self.novel_targets()
        distance = np.linalg.norm(new[:, None, :] - trained[None, :, :], axis=-1)
        # Rounding makes exact ties (midway targets) resolve to the lowest index everywhere.
        return np.argmin(np.round(distance, 9), axis=-1)


def _midway_angles(angles: np.ndarray) -> np.ndarray:
    """Angles halfway between circularly adjacent unique angles (one per gap)."""
    unique = np.unique(np.round(np.mod(angles, 2 * np.pi), 12))
    if len(unique) == 1:
        return unique + np.pi
    gaps = np.diff(np.append(unique, unique[0] + 2 * np.pi))
    return unique + gaps / 2
