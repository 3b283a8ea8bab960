"""The BPTT trainer: a Python loop around one jitted step, for one network or several at once."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

import mechscope

from ._checkpoint import check_compatible, resume_or_restart, save_checkpoint
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
    step_function,
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
    status: Literal["completed", "diverged", "stopped"] = "completed"
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
    return build(state, jnp.asarray(mask).reshape(np.shape(state.step)))


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
            step=step_function(task, hyper, static),
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
            step=step_function(task, hyper, static, many=True),
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
        seeds: list[_Seed] = []
        states: list[TrainState] = []
        for model, key, directory in zip(models, keys, directories, strict=True):
            state, seed = self._start(model, key, None if directory is None else Path(directory))
            states.append(state)
            seeds.append(seed)
        loop = _TrainingLoop(
            config=self.config,
            task=task,
            callbacks=callbacks,
            batch=batch,
            stacked=stacked,
            seeds=seeds,
            state=_stack(states) if stacked else states[0],
        )
        return loop.run()

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
        loaded = resume_or_restart(directory, state)
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


@dataclasses.dataclass
class _TrainingLoop:
    """The Python loop of :class:`BPTTTrainer`: step, catch divergence, evaluate, checkpoint.

    One jitted step advances every network at once; everything else here runs on the host,
    synchronising with the device only when some network evaluates or checkpoints.
    """

    config: BPTTConfig
    task: mechscope.AbstractTask
    callbacks: Sequence[mechscope.Callback]
    batch: _Batch
    stacked: bool
    seeds: list[_Seed]
    state: TrainState
    steps_taken: int = 0

    def __post_init__(self) -> None:
        self.trainer_json = _json_config(self.config)
        self.static = compile_config(self.config)
        self.hyper = Hyperparameters.from_config(self.config)

    def run(self) -> list[mechscope.TrainedRun]:
        """Train until every network has stopped; the runs, in order."""
        self._announce_start()
        start = time.perf_counter()
        try:
            self._deactivate_stopped()
            while any(seed.running for seed in self.seeds):
                self._one_iteration()
        except KeyboardInterrupt:
            # Keep what was computed: an exact checkpoint of every healthy network, then stop.
            active = np.atleast_1d(np.asarray(self.state.active))
            for i, seed in enumerate(self.seeds):
                if seed.running and active[i]:
                    self._checkpoint(i)
            raise
        return self._results(time.perf_counter() - start)

    def _announce_start(self) -> None:
        """Call ``on_train_start``; a network resumed at or past its last step is done."""
        for seed in self.seeds:
            for callback in self.callbacks:
                callback.on_train_start(
                    model=seed.initial_model, task=self.task, n_steps=self.config.steps
                )
            if seed.step >= self.config.steps or not seed.running:
                seed.running = False
                seed.reason = seed.reason or f"ran {seed.step} steps"

    def _deactivate_stopped(self) -> None:
        """Freeze stopped networks of a stacked batch, so the shared step leaves them alone."""
        if self.stacked and any(not s.running for s in self.seeds):
            stopped = np.array([not s.running for s in self.seeds])
            self.state = self.batch.set_inactive(self.state, stopped)

    def _one_iteration(self) -> None:
        """One step of every running network, then whatever bookkeeping is due."""
        self.state = self.batch.step(self.state)
        self.steps_taken += 1
        evaluate, save = self._due()
        if not (evaluate.any() or save.any()):
            return
        # One synchronisation: divergence first, so nothing non-finite is recorded.
        self._catch_divergence(evaluate, save)
        if evaluate.any():
            self._evaluate(evaluate, save)
        for seed in self.seeds:
            if seed.running and seed.step >= self.config.steps:
                seed.running = False
                seed.reason = f"ran {seed.step} steps"
        for i in np.flatnonzero(save):
            self._checkpoint(int(i))
        if self.stacked:
            self.state = self.batch.set_inactive(
                self.state, np.array([not s.running for s in self.seeds])
            )

    def _due(self) -> tuple[np.ndarray, np.ndarray]:
        """Count the step; which networks evaluate and which checkpoint now."""
        config = self.config
        n = len(self.seeds)
        evaluate = np.zeros(n, bool)
        save = np.zeros(n, bool)
        for i, seed in enumerate(self.seeds):
            if not seed.running:
                continue
            seed.step += 1
            evaluate[i] = seed.step % config.eval_every == 0 or seed.step >= config.steps
            save[i] = seed.directory is not None and (
                (config.checkpoint_every is not None and seed.step % config.checkpoint_every == 0)
                or seed.step >= config.steps
            )
        return evaluate, save

    def _catch_divergence(self, evaluate: np.ndarray, save: np.ndarray) -> None:
        """Stop every network whose step was rejected; it neither evaluates nor saves."""
        state = self.state
        active, failure, failed_step, device_step = (
            np.atleast_1d(np.asarray(x))
            for x in jax.device_get((state.active, state.failure, state.failed_step, state.step))
        )
        for i, seed in enumerate(self.seeds):
            if seed.running and not active[i]:
                seed.running = False
                seed.status = "diverged"
                seed.step = int(device_step[i])
                seed.reason = _failure_reason(int(failure[i]), int(failed_step[i]))
                evaluate[i] = save[i] = False

    def _evaluate(self, evaluate: np.ndarray, save: np.ndarray) -> None:
        """Record a history row per evaluating network, tell callbacks, apply the R² stop."""
        config = self.config
        state = self.state
        r2 = self.batch.r2(state)
        sums = {k: np.atleast_1d(np.asarray(v)) for k, v in state.sums.items()}
        count = np.atleast_1d(np.asarray(state.count))
        rate = np.atleast_1d(np.asarray(learning_rate_at(state.step, self.hyper, self.static)))
        for i in np.flatnonzero(evaluate):
            seed = self.seeds[i]
            row = {"step": float(seed.step)}
            row.update({k: float(sums[k][i]) / max(int(count[i]), 1) for k in sums})
            row["r2"] = float(r2[i])
            row["learning_rate"] = float(rate[i])
            for name in HISTORY_COLUMNS:
                seed.history[name].append(row[name])
            tagged = {**row, "seed": float(i)} if self.stacked else row
            for callback in self.callbacks:
                callback.on_evaluation(step=seed.step, metrics=tagged)
            if config.target_r2 is not None and row["r2"] >= config.target_r2:
                seed.running = False
                seed.reason = (
                    f"reached the target R² {config.target_r2} "
                    f"(R² = {row['r2']:.4f}) at step {seed.step}"
                )
                save[i] = seed.directory is not None
        self.state = self.batch.reset_window(state, evaluate)

    def _checkpoint(self, i: int) -> None:
        """Write network `i`'s checkpoint, if it has a directory."""
        seed = self.seeds[i]
        if seed.directory is None:
            return
        save_checkpoint(
            seed.directory,
            self.batch.get(self.state, i),
            history=seed.history,
            trainer_config=self.trainer_json,
            model_config=_json_config(seed.initial_model.config),
            status="running" if seed.running else seed.status,
            reason=seed.reason,
        )

    def _results(self, elapsed: float) -> list[mechscope.TrainedRun]:
        """One TrainedRun per network (``on_train_end`` called for each)."""
        runs = []
        for i, seed in enumerate(self.seeds):
            history = {
                name: np.asarray(values, dtype=np.int64 if name == "step" else np.float64)
                for name, values in seed.history.items()
            }
            run = mechscope.TrainedRun(
                model=self.batch.get(self.state, i).model,
                history=history,
                status=seed.status,
                reason=seed.reason,
                metadata={
                    "trainer": "bptt",
                    "trainer_config": self.trainer_json,
                    "steps": seed.step,
                    "resumed_from_step": seed.resumed_from,
                    "loop_iterations": self.steps_taken,
                    "wall_time_s": elapsed,
                    "parallel_seeds": len(self.seeds) if self.stacked else 1,
                    "final_r2": float(history["r2"][-1]) if len(history["r2"]) else None,
                },
            )
            for callback in self.callbacks:
                callback.on_train_end(run=run)
            runs.append(run)
        return runs
