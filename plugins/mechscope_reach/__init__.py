"""First-party reach tasks (delayed reach, target switch, target relocation).

All three share one implementation of timing, kinematics and masks: each task only draws what
varies between trials (targets, delays, switch times) and a shared renderer builds the inputs
``[B, T, 3]`` (target x, target y, go cue), targets ``[B, T, 4]`` (hand velocity x, y and
position x, y), mask, events and labels on a common time grid.
"""

from __future__ import annotations

import mechscope
from mechscope_reach._config import (
    DelayedReachConfig,
    JumpConfig,
    ReachConfig,
    TargetRelocationConfig,
    TargetSwitchConfig,
)
from mechscope_reach._plot import plot_trials
from mechscope_reach._tasks import (
    AbstractReachTask,
    DelayedReach,
    TargetRelocation,
    TargetSwitch,
)
from mechscope_reach._trials import ReachPlan, displacement, render_trials

__all__ = [
    "AbstractReachTask",
    "DelayedReach",
    "DelayedReachConfig",
    "JumpConfig",
    "ReachConfig",
    "ReachPlan",
    "TargetRelocation",
    "TargetRelocationConfig",
    "TargetSwitch",
    "TargetSwitchConfig",
    "displacement",
    "plot_trials",
    "render_trials",
]


@mechscope.hookimpl
def mechscope_register_tasks(register: mechscope.Register) -> None:
    """Register ``delayed_reach``, ``target_switch`` and ``target_relocation``."""
    register("delayed_reach", DelayedReachConfig, DelayedReach)
    register("target_switch", TargetSwitchConfig, TargetSwitch)
    register("target_relocation", TargetRelocationConfig, TargetRelocation)
