"""The BPTT trainer: a Python loop around one jitted step, for one network or several at once."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

import mechscope

from ._checkpoint import check_compatible, load_checkpoint, save_checkpoint
from ._config import BPTTConfig
from ._loss import Hyperparameters
from ._step import (
    FAILURE_GRADIENT,
    FAILURE_LOSS,
    FAILURE_WEIGHTS,
    WINDOW_METRICS,
    TrainState,
    compile_config,
    evaluate_r2,
    evaluate_r2_many,
    init_train_state,
    learning_rate_at,
    train_step,
    train_step_many,
)

#: Columns of ``TrainedRun.history``, in order.
HISTORY_COLUMNS = ("step", *WINDOW_METRICS, "r2", "learning_rate")


def _json_config(config: Any) -> dict[str, Any]:
    return config.model_dump(mode="json")


def _failure_reason(code: int, step: int) -> str:
    what = []
    if code & FAILURE_LOSS:
        what.append("the loss")
    if code & FAILURE_GRADIENT:
        what.append("the gradient norm")
    if code & FAILURE_WEIGHTS:
        what.append("the updated weights")
    named = ", ".join(what[:-1]) + " and " + what[-1] if len(what) > 1 else "".join(what)
    return (
        f"{named or 'a value'} became NaN or Inf at step {step}; "
        f"kept the last finite model (step {step - 1})"
    )


def _stack(states: Sequence[TrainState]) -> TrainState:
    dynamic = [eqx.filter(s, eqx.is_array) for s in states]
    static = eqx.filter(states[0], eqx.is_array, inverse=True)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *dynamic)
    return eqx.combine(stacked, static)


def _index(stacked: TrainState, i: int) -> TrainState:
    dynamic, static = eqx.partition(stacked, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda leaf: leaf[i], dynamic), static)


def _same_structure(states: Sequence[TrainState]) -> bool:
    def signature(state: TrainState) -> Any:
        dynamic, static = eqx.partition(state, eqx.is_array)
        shapes = [(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(dynamic)]
        return jax.tree.structure(dynamic), shapes, jax.tree.structure(static)

    first = signature(states[0])
    try:
        return all(signature(s) == first for s in states[1:])
    except (TypeError, ValueError):
        return False


@dataclasses.dataclass
class _Seed:
    """Host-side bookkeeping of one network in the loop."""

    directory: Path | None
    initial_model: mechscope.AbstractModel
    history: dict[str, list[float]]
    step: int
    resumed_from: int
    running: bool = True
    status: str = "completed"
    reason: str = ""


@dataclasses.dataclass
class _Batch:
    """How the loop steps, evaluates and indexes its networks (one, or several vmapped)."""

    step: Callable[[TrainState], TrainState]
    r2: Callable[[TrainState], np.ndarray]
    get: Callable[[TrainState, int], TrainState]
    set_inactive: Callable[[TrainState, np.ndarray], TrainState]
    reset_window: Callable[[TrainState, np.ndarray], TrainState]


def _masked(state: TrainState, mask: np.ndarray, build: Callable[[Any, Any], Any]) -> TrainState:
    mask = jnp.asarray(mask).reshape(np.shape(state.step))
    return build(state, mask)


def _deactivate(state: TrainState, mask: np.ndarray) -> TrainState:
    return _masked(state, mask, lambda s, m: eqx.tree_at(lambda t: t.active, s, s.active & ~m))


def _reset(state: TrainState, mask: np.ndarray) -> TrainState:
    def build(s: TrainState, m: Any) -> TrainState:
        sums = {name: jnp.where(m, 0.0, value) for name, value in s.sums.items()}
        count = jnp.where(m, 0, s.count).astype(s.count.dtype)
        return eqx.tree_at(lambda t: (t.sums, t.count), s, (sums, count))

    return _masked(state, mask, build)


class BPTTTrainer(mechscope.AbstractTrainer):
    """Trains a model by backpropagation through time with an optax optimiser.

    See ``docs/trainers/bptt.md`` for the loss, every config field, checkpoints, divergence
    handling and training seeds together.
    """

    config: BPTTConfig = eqx.field(static=True)

    def fit(
        self,
        model: mechscope.AbstractModel,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        callbacks: Sequence[mechscope.Callback] = (),
        checkpoint_dir: Path | None = None,
    ) -> mechscope.TrainedRun:
        """Train `model` on `task` (see :class:`mechscope.AbstractTrainer`).

        Returns a run with status ``"completed"`` (all steps, or the target R² reached) or
        ``"diverged"`` (with the last finite model and the reason).
        """
        static = compile_config(self.config)
        hyper = Hyperparameters.from_config(self.config)
        conditions = task.conditions()
        batch = _Batch(
            step=lambda s: train_step(s, task, hyper, static),
            r2=lambda s: np.atleast_1d(np.asarray(evaluate_r2(s.model, conditions))),
            get=lambda s, i: s,
            set_inactive=_deactivate,
            reset_window=_reset,
        )
        return self._loop([model], task, [key], callbacks, [checkpoint_dir], batch, False)[0]

    def fit_many(
        self,
        models: Sequence[mechscope.AbstractModel],
        task: mechscope.AbstractTask,
        *,
        keys: Sequence[PRNGKeyArray],
        callbacks: Sequence[mechscope.Callback] = (),
        checkpoint_dirs: Sequence[Path | None] | None = None,
    ) -> list[mechscope.TrainedRun]:
        """Train several networks; vmapped together when ``parallel_seeds`` allows it.

        Networks train together only if they share one structure (same model config and
        shapes); each then gives the weights a separate :meth:`fit` with its key gives, to
        float tolerance. Each network keeps its own stop rule, divergence status, history and
        checkpoint directory. Callbacks receive every network's events in turn, with a
        ``"seed"`` entry (the network's index) added to the metrics.
        """
        if checkpoint_dirs is None:
            checkpoint_dirs = [None] * len(models)
        if not (len(models) == len(keys) == len(checkpoint_dirs)):
            raise ValueError(
                f"fit_many needs one key and one checkpoint_dir per model, got {len(models)} "
                f"models, {len(keys)} keys and {len(checkpoint_dirs)} checkpoint_dirs"
            )
        if not models:
            return []
        if not self.config.parallel_seeds or len(models) == 1:
            return super().fit_many(
                models, task, keys=keys, callbacks=callbacks, checkpoint_dirs=checkpoint_dirs
            )
        like = [init_train_state(self.config, m, key=k) for m, k in zip(models, keys, strict=True)]
        if not _same_structure(like):
            return super().fit_many(
                models, task, keys=keys, callbacks=callbacks, checkpoint_dirs=checkpoint_dirs
            )
        static = compile_config(self.config)
        hyper = Hyperparameters.from_config(self.config)
        conditions = task.conditions()
        batch = _Batch(
            step=lambda s: train_step_many(s, task, hyper, static),
            r2=lambda s: np.asarray(evaluate_r2_many(s.model, conditions)),
            get=_index,
            set_inactive=_deactivate,
            reset_window=_reset,
        )
        return self._loop(models, task, keys, callbacks, checkpoint_dirs, batch, True)

    def _loop(
        self,
        models: Sequence[mechscope.AbstractModel],
        task: mechscope.AbstractTask,
        keys: Sequence[PRNGKeyArray],
        callbacks: Sequence[mechscope.Callback],
        directories: Sequence[Path | None],
        batch: _Batch,
        stacked: bool,
    ) -> list[mechscope.TrainedRun]:
        config = self.config
        trainer_json = _json_config(config)
        seeds: list[_Seed] = []
        states: list[TrainState] = []
        for model, key, directory in zip(models, keys, directories, strict=True):
            state, seed = self._start(model, key, None if directory is None else Path(directory))
            states.append(state)
            seeds.append(seed)
        state = _stack(states) if stacked else states[0]
        del states
        n = len(seeds)
        static = compile_config(config)
        hyper = Hyperparameters.from_config(config)

        def tag(i: int, metrics: dict[str, float]) -> dict[str, float]:
            return {**metrics, "seed": float(i)} if stacked else metrics

        for seed in seeds:
            for callback in callbacks:
                callback.on_train_start(model=seed.initial_model, task=task, n_steps=config.steps)
            if seed.step >= config.steps or not seed.running:
                seed.running = False
                seed.reason = seed.reason or f"ran {seed.step} steps"
        start = time.perf_counter()
        steps_taken = 0

        def checkpoint(i: int) -> None:
            seed = seeds[i]
            if seed.directory is None:
                return
            save_checkpoint(
                seed.directory,
                batch.get(state, i),
                history=seed.history,
                trainer_config=trainer_json,
                model_config=_json_config(seed.initial_model.config),
                status="running" if seed.running else seed.status,
                reason=seed.reason,
            )

        try:
            if stacked and any(not s.running for s in seeds):
                state = batch.set_inactive(state, np.array([not s.running for s in seeds]))
            while any(seed.running for seed in seeds):
                state = batch.step(state)
                steps_taken += 1
                evaluate = np.zeros(n, bool)
                save = np.zeros(n, bool)
                for i, seed in enumerate(seeds):
                    if not seed.running:
                        continue
                    seed.step += 1
                    evaluate[i] = seed.step % config.eval_every == 0 or seed.step >= config.steps
                    save[i] = seed.directory is not None and (
                        (
                            config.checkpoint_every is not None
                            and seed.step % config.checkpoint_every == 0
                        )
                        or seed.step >= config.steps
                    )
                if not (evaluate.any() or save.any()):
                    continue
                # One synchronisation: divergence first, so nothing non-finite is recorded.
                active, failure, failed_step, device_step = (
                    np.atleast_1d(np.asarray(x))
                    for x in jax.device_get(
                        (state.active, state.failure, state.failed_step, state.step)
                    )
                )
                for i, seed in enumerate(seeds):
                    if seed.running and not active[i]:
                        seed.running = False
                        seed.status = "diverged"
                        seed.step = int(device_step[i])
                        seed.reason = _failure_reason(int(failure[i]), int(failed_step[i]))
                        evaluate[i] = save[i] = False
                if evaluate.any():
                    r2 = batch.r2(state)
                    sums = {k: np.atleast_1d(np.asarray(v)) for k, v in state.sums.items()}
                    count = np.atleast_1d(np.asarray(state.count))
                    rate = np.atleast_1d(np.asarray(learning_rate_at(state.step, hyper, static)))
                    for i in np.flatnonzero(evaluate):
                        seed = seeds[i]
                        row = {"step": float(seed.step)}
                        row.update({k: float(sums[k][i]) / max(int(count[i]), 1) for k in sums})
                        row["r2"] = float(r2[i])
                        row["learning_rate"] = float(rate[i])
                        for name in HISTORY_COLUMNS:
                            seed.history[name].append(row[name])
                        for callback in callbacks:
                            callback.on_evaluation(step=seed.step, metrics=tag(i, row))
                        if config.target_r2 is not None and row["r2"] >= config.target_r2:
                            seed.running = False
                            seed.reason = (
                                f"reached the target R² {config.target_r2} "
                                f"(R² = {row['r2']:.4f}) at step {seed.step}"
                            )
                            save[i] = seed.directory is not None
                    state = batch.reset_window(state, evaluate)
                for seed in seeds:
                    if seed.running and seed.step >= config.steps:
                        seed.running = False
                        seed.reason = f"ran {seed.step} steps"
                for i in np.flatnonzero(save):
                    checkpoint(int(i))
                if stacked:
                    state = batch.set_inactive(state, np.array([not s.running for s in seeds]))
        except KeyboardInterrupt:
            # Keep what was computed: an exact checkpoint of every healthy network, then stop.
            active = np.atleast_1d(np.asarray(state.active))
            for i, seed in enumerate(seeds):
                if seed.running and active[i]:
                    checkpoint(i)
            raise

        elapsed = time.perf_counter() - start
        runs = []
        for i, seed in enumerate(seeds):
            history = {
                name: np.asarray(values, dtype=np.int64 if name == "step" else np.float64)
                for name, values in seed.history.items()
            }
            run = mechscope.TrainedRun(
                model=batch.get(state, i).model,
                history=history,
                status=seed.status,
                reason=seed.reason,
                metadata={
                    "trainer": "bptt",
                    "trainer_config": trainer_json,
                    "steps": seed.step,
                    "resumed_from_step": seed.resumed_from,
                    "loop_iterations": steps_taken,
                    "wall_time_s": elapsed,
                    "parallel_seeds": n if stacked else 1,
                    "final_r2": float(history["r2"][-1]) if len(history["r2"]) else None,
                },
            )
            for callback in callbacks:
                callback.on_train_end(run=run)
            runs.append(run)
        return runs

    def _start(
        self, model: mechscope.AbstractModel, key: PRNGKeyArray, directory: Path | None
    ) -> tuple[TrainState, _Seed]:
        """A fresh state, or the one in `directory`'s checkpoint, with its bookkeeping."""
        state = init_train_state(self.config, model, key=key)
        seed = _Seed(
            directory=directory,
            initial_model=model,
            history={name: [] for name in HISTORY_COLUMNS},
            step=0,
            resumed_from=0,
        )
        if directory is None:
            return state, seed
        loaded = load_checkpoint(directory, state)
        if loaded is None:
            return state, seed
        saved, header = loaded
        check_compatible(
            header,
            trainer_config=_json_config(self.config),
            model_config=_json_config(model.config),
            directory=directory,
        )
        if not np.array_equal(np.asarray(saved.key), np.asarray(state.key)):
            raise mechscope.ConfigError(
                f"checkpoint in {directory} was written by a run with a different key; "
                f"use another checkpoint_dir or the same key"
            )
        # Only healthy states are checkpointed; a network frozen because it had finished must be
        # able to continue if `steps` grew.
        saved = eqx.tree_at(lambda s: s.active, saved, jnp.ones((), bool))
        seed.history = {name: list(header["history"].get(name, [])) for name in HISTORY_COLUMNS}
        seed.step = seed.resumed_from = int(header["step"])
        if header["status"] == "completed" and self.config.target_r2 is not None:
            r2 = seed.history["r2"]
            if r2 and r2[-1] >= self.config.target_r2:
                seed.running = False
                seed.reason = header["reason"]
        return saved, seed
