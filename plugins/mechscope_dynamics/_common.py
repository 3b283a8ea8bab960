"""Helpers shared by the dynamics probes: the condition run (from the core), PCA, events."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

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
