"""Helpers shared by the dynamics probes: condition run (from the core), PCA, events, endpoints."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

import mechscope

# The shared condition run lives in the core, so every probe (any plugin's) can take the one
# Experiment.finish computes; these names stay for the modules and benchmarks that import them.
ConditionRun = mechscope.ConditionRun
condition_run = mechscope.condition_run


def pca_basis(
    states: Float[np.ndarray, "samples n"], n_components: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[n]`` and the top principal axes ``[n_components, n]`` of `states`."""
    mean = states.mean(axis=0)
    _, _, vt = np.linalg.svd(states - mean, full_matrices=False)
    basis = np.zeros((n_components, states.shape[1]))
    basis[: min(n_components, len(vt))] = vt[:n_components]
    return mean, basis


def event_index(trials: mechscope.Trials, event: str) -> np.ndarray | None:
    """Sample index of `event` per trial, or None if the task has no such event."""
    if event not in trials.events:
        return None
    return np.asarray(trials.event_index(event))


def last_masked_index(trials: mechscope.Trials) -> np.ndarray:
    """Each trial's last sample where any output channel is masked in, ``[b]``."""
    mask: np.ndarray = np.any(np.asarray(trials.mask), axis=-1)
    return mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)


def _chosen(channels: tuple[int, ...], n_outputs: int) -> list[int]:
    """`channels` as a list, or every channel when none of them exists.

    A task without those channels at all (e.g. a toy task with one output) is measured on
    all its outputs.

    Raises:
        ValueError: when some of `channels` exist and others do not; measuring only the
            existing ones would silently report an error over part of the hand position.
    """
    missing = [c for c in channels if not 0 <= c < n_outputs]
    if len(missing) == len(channels):
        return list(range(n_outputs))
    if missing:
        raise ValueError(
            f"channels {tuple(channels)} name output channel(s) {missing} that the model does "
            f"not have (it has {n_outputs} outputs, 0-{n_outputs - 1}); set the probe's "
            "position/endpoint channels to the channels of hand position x, y"
        )
    return list(channels)


def endpoint_error(
    outputs: np.ndarray, trials: mechscope.Trials, channels: tuple[int, ...]
) -> np.ndarray:
    """Distance of `outputs` from the targets in `channels` at each trial's last masked sample.

    `outputs` is ``[..., b, t, o]`` (leading axes: levels, repeats); the result ``[..., b]``.
    """
    last = last_masked_index(trials)
    chosen = _chosen(channels, outputs.shape[-1])
    batch = np.arange(len(last))
    target = np.asarray(trials.targets)[batch, last][:, chosen]
    end = np.asarray(outputs)[..., batch, last, :][..., chosen]
    return np.linalg.norm(end - target, axis=-1)


def final_targets(trials: mechscope.Trials, channels: tuple[int, ...]) -> np.ndarray:
    """The targets in `channels` at each trial's last masked sample, ``[b, len(channels)]``."""
    last = last_masked_index(trials)
    chosen = _chosen(channels, np.asarray(trials.targets).shape[-1])
    return np.asarray(trials.targets)[np.arange(len(last)), last][:, chosen]


def reach_success(
    error: np.ndarray, trials: mechscope.Trials, channels: tuple[int, ...], radius: float
) -> np.ndarray:
    """A reach succeeds when its endpoint `error` is at most `radius` × the final target's reach.

    The reach is the final target's distance from the origin (where every reach starts);
    `error` is ``[..., b]`` as :func:`endpoint_error` gives it.
    """
    reach = np.maximum(np.linalg.norm(final_targets(trials, channels), axis=-1), 1e-9)
    return error <= radius * reach


@eqx.filter_jit
def r2_per_repeat(
    outputs: Float[ArrayLike, "levels repeats b t o"],
    targets: Float[Array, "b t o"],
    mask: Float[Array, "b t o"],
) -> Float[Array, "levels repeats"]:
    """:func:`mechscope.masked_r2` of every level's every repeat (pooled over trials)."""
    per_repeat = jax.vmap(mechscope.masked_r2, in_axes=(0, None, None))
    return jax.vmap(per_repeat, in_axes=(0, None, None))(jnp.asarray(outputs), targets, mask)
