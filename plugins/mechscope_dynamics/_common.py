"""Helpers shared by the dynamics probes: noise-free condition runs, scales, PCA, R²."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

import mechscope


@dataclasses.dataclass(frozen=True)
class ConditionRun:
    """A model's noise-free response to ``task.conditions()`` as NumPy arrays.

    Attributes:
        trials: the condition trials.
        states: ``[conditions, time, n_units]``.
        outputs: ``[conditions, time, n_outputs]``.
        center: mean state over conditions and times, ``[n_units]``.
        scale: RMS distance of the states from `center` (the trajectory scale).
        speed_scale: RMS of ‖f(x, u)‖ along the trajectories (the typical speed).
    """

    trials: mechscope.Trials
    states: np.ndarray
    outputs: np.ndarray
    center: np.ndarray
    scale: float
    speed_scale: float


@eqx.filter_jit
def _run(model, inputs, times):
    trajectory = mechscope.simulate(model, inputs, times)
    velocity = jax.vmap(jax.vmap(lambda x, u: model.vector_field(0.0, x, u)))(
        trajectory.states, inputs
    )
    return trajectory.states, trajectory.outputs, velocity


def condition_run(model: mechscope.AbstractModel, task: mechscope.AbstractTask) -> ConditionRun:
    """Simulate `model` noise-free on ``task.conditions()`` and measure its scales."""
    trials = task.conditions()
    states, outputs, velocity = (
        np.asarray(a, np.float64) for a in _run(model, trials.inputs, trials.times)
    )
    flat = states.reshape(-1, states.shape[-1])
    center = flat.mean(axis=0)
    scale = float(np.sqrt(np.mean(np.sum((flat - center) ** 2, axis=1))))
    speed = float(np.sqrt(np.mean(np.sum(velocity**2, axis=-1))))
    return ConditionRun(
        trials=trials,
        states=states,
        outputs=outputs,
        center=center,
        scale=max(scale, 1e-12),
        speed_scale=max(speed, 1e-12),
    )


def pca_basis(
    states: Float[np.ndarray, "samples n"], n_components: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[n]`` and the top principal axes ``[n_components, n]`` of `states`."""
    mean = states.mean(axis=0)
    _, _, vt = np.linalg.svd(states - mean, full_matrices=False)
    basis = np.zeros((n_components, states.shape[1]))
    basis[: min(n_components, len(vt))] = vt[:n_components]
    return mean, basis


def r_squared(
    outputs: Float[Array, "... time out"],
    targets: Float[Array, "... time out"],
    mask: Float[Array, "... time out"],
) -> float:
    """Masked R² of outputs against targets, pooled over trials, times and channels."""
    outputs, targets, mask = (np.asarray(a, np.float64) for a in (outputs, targets, mask))
    weight = mask.sum()
    mean = (mask * targets).sum(axis=(0, 1), keepdims=True) / np.maximum(
        mask.sum(axis=(0, 1), keepdims=True), 1e-12
    )
    residual = (mask * (outputs - targets) ** 2).sum()
    total = (mask * (targets - mean) ** 2).sum()
    if weight == 0 or total == 0:
        return float("nan")
    return float(1.0 - residual / total)


def event_index(trials: mechscope.Trials, event: str) -> np.ndarray | None:
    """Sample index of `event` per trial, or None if the task has no such event."""
    if event not in trials.events:
        return None
    return np.asarray(trials.event_index(event))
