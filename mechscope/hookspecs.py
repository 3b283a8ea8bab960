"""Hook specifications: the plugin API of mechscope.

A plugin is a module (or object) with functions decorated by :data:`mechscope.hookimpl`, found
through the ``mechscope`` entry-point group. Registration hooks receive a ``register``
callback; lifecycle hooks are called from Python-level code only (never under ``jax.jit``) so
they see concrete values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

PROJECT = "mechscope"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: ``register(name, config_class, factory, description=None, *, default=False)``; a plugin
#: passes ``default=True`` for the component used when a config names none of its kind.
Register = Callable[..., None]


@hookspec
def mechscope_register_tasks(register: Register) -> None:
    """Register task components.

    Args:
        register: call ``register(name, ConfigClass, factory, description=None)`` once per
            task; ``factory(config) -> AbstractTask``.
    """


@hookspec
def mechscope_register_models(register: Register) -> None:
    """Register model components.

    Args:
        register: call ``register(name, ConfigClass, factory, description=None)`` once per
            model; ``factory(config, *, n_inputs, n_outputs, key) -> AbstractModel``.
    """


@hookspec
def mechscope_register_trainers(register: Register) -> None:
    """Register trainer components.

    Args:
        register: call ``register(name, ConfigClass, factory, description=None)`` once per
            trainer; ``factory(config) -> AbstractTrainer``.
    """


@hookspec
def mechscope_register_probes(register: Register) -> None:
    """Register probe components.

    Args:
        register: call ``register(name, ConfigClass, factory, description=None)`` once per
            probe; ``factory(config) -> AbstractProbe``.
    """


@hookspec
def mechscope_register_executors(register: Register) -> None:
    """Register executor components.

    Args:
        register: call ``register(name, ConfigClass, factory, description=None)`` once per
            executor; ``factory(config) -> AbstractExecutor``.
    """


@hookspec
def mechscope_register_comparisons(register: Register) -> None:
    """Register comparison components (distances between networks' mechanisms).

    Args:
        register: call ``register(name, ConfigClass, factory, description=None)`` once per
            comparison; ``factory(config) -> AbstractComparison``.
    """


@hookspec
def mechscope_run_start(run_id: str, config: Mapping[str, Any]) -> None:
    """Called before an experiment run starts training (or re-probing a stored network).

    Args:
        run_id: the run's content hash.
        config: the run's fully validated configuration as plain JSON types.
    """


@hookspec
def mechscope_run_end(run_id: str, config: Mapping[str, Any], status: str, reason: str) -> None:
    """Called when an experiment run has finished, failed or diverged.

    Args:
        run_id: the run's content hash.
        config: the run's fully validated configuration as plain JSON types.
        status: ``"completed"``, ``"diverged"``, ``"stopped"`` or ``"failed"``.
        reason: why it ended, in words (empty when it completed normally).
    """


@hookspec
def mechscope_train_start(run_id: str, n_steps: int) -> None:
    """Called once before the first training step.

    Args:
        run_id: the run's content hash.
        n_steps: the maximum number of steps the trainer will take.
    """


@hookspec
def mechscope_train_progress(run_id: str, step: int, metrics: Mapping[str, float]) -> None:
    """Called after each training evaluation.

    Args:
        run_id: the run's content hash.
        step: the training step just evaluated.
        metrics: the history row just recorded (loss terms, output R², gradient norm, ...).
    """


@hookspec
def mechscope_train_end(run_id: str, status: str, reason: str) -> None:
    """Called once when training ends.

    Args:
        run_id: the run's content hash.
        status: ``"completed"``, ``"diverged"``, ``"stopped"``, or ``"failed"`` when the
            trainer raised (each ``train_start`` is followed by exactly one ``train_end``).
        reason: why training ended, in words.
    """


@hookspec
def mechscope_probe_start(run_id: str, probe: str) -> None:
    """Called just before a probe runs on a trained network.

    Args:
        run_id: the run's content hash.
        probe: the probe's name.
    """


@hookspec
def mechscope_probe_result(run_id: str, probe: str, metrics: Mapping[str, float]) -> None:
    """Called after each probe has run on a trained network.

    Args:
        run_id: the run's content hash.
        probe: the probe's registered name.
        metrics: the probe's scalar metrics.
    """
