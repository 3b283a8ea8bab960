"""The training state and the training step, whole or in pieces over the cores (public)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Scalar, UInt32

import mechscope

from ._config import BPTTConfig, build_optimizer, build_schedule
from ._loss import Hyperparameters, piece_loss_terms

#: Quantities averaged over the steps between two evaluations.
WINDOW_METRICS = (
    "loss",
    "mse",
    "rate_penalty",
    "weight_penalty",
    "dynamics_penalty",
    "mean_rate_sq",
    "train_r2",
    "grad_norm",
)

# Bits of TrainState.failure: why a step was rejected.
FAILURE_LOSS = 1
FAILURE_GRADIENT = 2
FAILURE_WEIGHTS = 4


class TrainState(eqx.Module):
    """Everything a training run needs to continue exactly: what a checkpoint holds.

    Attributes:
        model: the current model (always finite: a non-finite step is rejected).
        opt_state: the optax optimiser state.
        step: number of accepted optimiser steps.
        key: raw data of the run's base PRNG key; step k uses ``fold_in(key, k)``.
        active: False once the run has diverged or been stopped; steps are then no-ops.
        failure: bit set of why a step was rejected (1 loss, 2 gradient, 4 weights non-finite).
        failed_step: the step number that was rejected (-1 if none).
        sums: running sums of :data:`WINDOW_METRICS` since the last evaluation.
        count: number of steps in those sums.
        key_impl: name of the PRNG implementation of `key`.
    """

    model: mechscope.AbstractModel
    opt_state: optax.OptState
    step: Int[Array, ""]
    key: UInt32[Array, "..."]
    active: Bool[Array, ""]
    failure: Int[Array, ""]
    failed_step: Int[Array, ""]
    sums: dict[str, Float[Array, ""]]
    count: Int[Array, ""]
    key_impl: str = eqx.field(static=True)

    def base_key(self) -> PRNGKeyArray:
        """The run's base PRNG key as a typed key."""
        return jax.random.wrap_key_data(self.key, impl=self.key_impl)


def _as_typed_key(key: PRNGKeyArray) -> PRNGKeyArray:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def _trainable(model: mechscope.AbstractModel):
    return eqx.filter(model, eqx.is_inexact_array)


def init_train_state(
    config: BPTTConfig, model: mechscope.AbstractModel, *, key: PRNGKeyArray
) -> TrainState:
    """A fresh training state: the model, a new optimiser state and step 0.

    Args:
        config: the trainer config.
        model: the initial model; its floating-point arrays are the trained parameters.
        key: the run's PRNG key (drives trial sampling and training noise).
    """
    key = _as_typed_key(key)
    optimizer = build_optimizer(config)
    return TrainState(
        model=model,
        opt_state=optimizer.init(_trainable(model)),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(key),
        active=jnp.ones((), bool),
        failure=jnp.zeros((), jnp.int32),
        failed_step=jnp.full((), -1, jnp.int32),
        sums={name: jnp.zeros(()) for name in WINDOW_METRICS},
        count=jnp.zeros((), jnp.int32),
        key_impl=str(jax.random.key_impl(key)),
    )


def compile_config(config: BPTTConfig) -> BPTTConfig:
    """The config with values that do not change the compiled step set to fixed values.

    The learning rate, penalty weights and noise levels enter the step as arrays
    (:class:`Hyperparameters`), and loop settings never reach it, so runs that differ only
    in those share one compilation. Kept are whether the simple-dynamics penalty is on and
    whether there is any noise (off, the step skips that work: a step compiled for a
    noise-free config ignores noise levels passed in `hyper`).
    """
    noisy = config.input_noise > 0 or config.recurrent_noise > 0
    return config.model_copy(
        update={
            "steps": 0,
            "learning_rate": 1.0,
            "rate_reg": 0.0,
            "weight_reg": 0.0,
            "simple_dynamics_reg": 1.0 if config.simple_dynamics_reg > 0 else 0.0,
            # Whether there is any noise is part of the program (a noise-free run draws
            # none); the levels are arrays.
            "input_noise": 1.0 if noisy else 0.0,
            "recurrent_noise": 1.0 if noisy else 0.0,
            "eval_every": 1,
            "target_r2": None,
            "checkpoint_every": None,
            "parallel_seeds": False,
        }
    )


def _batch(
    state: TrainState, task: mechscope.AbstractTask, config: BPTTConfig
) -> tuple[mechscope.Trials, PRNGKeyArray]:
    """The step's training batch and its trials' noise keys (from ``fold_in(key, step)``)."""
    key = jax.random.fold_in(state.base_key(), state.step)
    trial_key, noise_key = jax.random.split(key)
    trials = task.sample(config.batch_size, key=trial_key)
    return trials, jax.random.split(noise_key, config.batch_size)


class PieceGradient(eqx.Module):
    """One piece of a batch's gradient: what the pieces of a step hand to its update.

    Attributes:
        grads: the gradient of the piece's share of the loss (pieces' gradients add up).
        terms: the piece's share of each loss term (they add up too).
        outputs: the piece's outputs, ``[piece, time, n_outputs]`` (for the batch's R²).
    """

    grads: Any
    terms: dict[str, Float[Array, ""]]
    outputs: Float[Array, "piece time n_outputs"]


def _piece_gradient(
    state: TrainState,
    task: mechscope.AbstractTask,
    hyper: Hyperparameters,
    config: BPTTConfig,
    start: Int[Array, ""] | int,
    size: int | None,
) -> PieceGradient:
    trials, keys = _batch(state, task, config)
    params, static = eqx.partition(state.model, eqx.is_inexact_array)

    def objective(params):
        loss, terms, outputs = piece_loss_terms(
            eqx.combine(params, static),
            trials,
            hyper,
            keys=keys,
            simple_dynamics=config.simple_dynamics_reg > 0,
            noisy=config.input_noise > 0 or config.recurrent_noise > 0,
            start=start,
            size=size,
        )
        return loss, (terms, outputs)

    (_, (terms, outputs)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return PieceGradient(grads=grads, terms=terms, outputs=outputs)


def _update(
    state: TrainState,
    task: mechscope.AbstractTask,
    hyper: Hyperparameters,
    config: BPTTConfig,
    pieces: Sequence[PieceGradient],
) -> TrainState:
    optimizer = build_optimizer(config, hyper.learning_rate)
    trials, _ = _batch(state, task, config)
    params, static = eqx.partition(state.model, eqx.is_inexact_array)
    grads = jax.tree.map(lambda *parts: sum(parts[1:], parts[0]), *(p.grads for p in pieces))
    terms = {
        name: sum((p.terms[name] for p in pieces[1:]), pieces[0].terms[name])
        for name in pieces[0].terms
    }
    outputs = jnp.concatenate([p.outputs for p in pieces], axis=0)
    terms["train_r2"] = mechscope.masked_r2(outputs, trials.targets, trials.mask)
    loss = terms["loss"]
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)

    loss_ok = jnp.isfinite(loss)
    grad_ok = jnp.isfinite(grad_norm)
    weights_ok = jnp.ones((), bool)
    for leaf in jax.tree.leaves(new_params):
        weights_ok = weights_ok & jnp.all(jnp.isfinite(leaf))
    healthy = loss_ok & grad_ok & weights_ok
    accept = state.active & healthy
    rejected = state.active & ~healthy
    failure = (
        jnp.where(loss_ok, 0, FAILURE_LOSS)
        | jnp.where(grad_ok, 0, FAILURE_GRADIENT)
        | jnp.where(weights_ok, 0, FAILURE_WEIGHTS)
    )

    def choose(new, old):
        return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)

    terms = {**terms, "grad_norm": grad_norm}
    return TrainState(
        model=eqx.combine(choose(new_params, params), static),
        opt_state=choose(opt_state, state.opt_state),
        step=state.step + accept.astype(jnp.int32),
        key=state.key,
        active=state.active & healthy,
        failure=jnp.where(rejected, failure, state.failure).astype(jnp.int32),
        failed_step=jnp.where(rejected, state.step + 1, state.failed_step).astype(jnp.int32),
        sums={
            name: state.sums[name] + jnp.where(accept, terms[name], 0.0) for name in WINDOW_METRICS
        },
        count=state.count + accept.astype(jnp.int32),
        key_impl=state.key_impl,
    )


def _step(
    state: TrainState, task: mechscope.AbstractTask, hyper: Hyperparameters, config: BPTTConfig
) -> TrainState:
    return _update(
        state, task, hyper, config, [_piece_gradient(state, task, hyper, config, 0, None)]
    )


@eqx.filter_jit
def train_step(
    state: TrainState, task: mechscope.AbstractTask, hyper: Hyperparameters, config: BPTTConfig
) -> TrainState:
    """One optimiser step on a freshly sampled batch (jitted; `config` is static).

    A step whose loss, gradient norm or updated weights are not finite is rejected: the state
    keeps the last finite model and marks itself inactive with the reason in ``failure``.
    Pass ``compile_config(config)`` to share compilations between runs.
    """
    return _step(state, task, hyper, config)


@eqx.filter_jit
def train_step_many(
    states: TrainState, task: mechscope.AbstractTask, hyper: Hyperparameters, config: BPTTConfig
) -> TrainState:
    """:func:`train_step` vmapped over stacked states (a leading seed axis on every array)."""
    return eqx.filter_vmap(lambda s: _step(s, task, hyper, config))(states)


@eqx.filter_jit
def piece_gradient(
    state: TrainState,
    task: mechscope.AbstractTask,
    hyper: Hyperparameters,
    config: BPTTConfig,
    start: Int[Array, ""],
    size: int,
) -> PieceGradient:
    """The gradient of the `size` trials from trial `start` of the step's batch (jitted).

    The batch and its noise are those :func:`train_step` draws; the pieces of a batch add up
    to its gradient (see :func:`mechscope_bptt.piece_loss_terms`). `start` is an array, so
    pieces of one size share one compilation.
    """
    return _piece_gradient(state, task, hyper, config, start, size)


@eqx.filter_jit
def apply_pieces(
    state: TrainState,
    task: mechscope.AbstractTask,
    hyper: Hyperparameters,
    config: BPTTConfig,
    pieces: Sequence[PieceGradient],
) -> TrainState:
    """:func:`train_step`'s update from the batch's gradient in `pieces` (jitted)."""
    return _update(state, task, hyper, config, pieces)


@eqx.filter_jit
def piece_gradient_many(
    states: TrainState,
    task: mechscope.AbstractTask,
    hyper: Hyperparameters,
    config: BPTTConfig,
    start: Int[Array, ""],
    size: int,
) -> PieceGradient:
    """:func:`piece_gradient` vmapped over stacked states."""
    return eqx.filter_vmap(lambda s: _piece_gradient(s, task, hyper, config, start, size))(states)


@eqx.filter_jit
def apply_pieces_many(
    states: TrainState,
    task: mechscope.AbstractTask,
    hyper: Hyperparameters,
    config: BPTTConfig,
    pieces: Sequence[PieceGradient],
) -> TrainState:
    """:func:`apply_pieces` vmapped over stacked states."""
    return eqx.filter_vmap(lambda s, p: _update(s, task, hyper, config, p))(states, pieces)


#: Trials in one piece of a batch (on a CPU): a batch of B trials is cut into B // 32 pieces.
PIECE_TRIALS = 32


def batch_pieces(batch_size: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` trials of each piece a training batch is differentiated in.

    On a CPU, ``batch_size // PIECE_TRIALS`` pieces (at least one), as even as they divide;
    on an accelerator one piece. The pieces depend on the batch size only, never on the
    number of cores, so a run gives the same numbers on any CPU machine with the same
    arithmetic (and a resumed run those of an uninterrupted one); they run side by side on
    the cores there are. Why: XLA's CPU runtime gets little from a second core inside one
    training step (its matrix products on a few dozen trials are too short to split well),
    while independent programs run side by side; on two cores the gated network's canonical
    step (batch 64) takes 58–62 ms in two pieces against 87–92 ms as one program
    (docs/trainers/bptt.md). A batch's gradient is the sum of its pieces', so pieces change
    a run's numbers at rounding level only.
    """
    count = max(1, batch_size // PIECE_TRIALS) if mechscope.runs_on_cpu() else 1
    edges = [round(i * batch_size / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def step_function(
    task: mechscope.AbstractTask,
    hyper: Hyperparameters,
    config: BPTTConfig,
    *,
    many: bool = False,
) -> Callable[[TrainState], TrainState]:
    """The function ``state -> state`` that takes one training step, in pieces where that pays.

    One piece (a batch too small to cut, one core, an accelerator, or a step whose program
    calls LAPACK, e.g. an implicit solver: two such programs at once deadlock XLA's CPU
    runtime, see :mod:`mechscope.concurrency`) runs :func:`train_step`; several run
    :func:`piece_gradient` on the cores at once (:func:`mechscope.run_concurrently`) and
    then :func:`apply_pieces`. The LAPACK check runs on the first call of a step with
    several pieces; a step found to call LAPACK runs whole, holding
    :data:`mechscope.LAPACK_LOCK`.

    Args:
        task: the task.
        hyper: the step's hyperparameters.
        config: ``compile_config`` of the trainer's config.
        many: the states are stacked over seeds (``fit_many``).
    """
    single, gradient, apply = (
        (train_step_many, piece_gradient_many, apply_pieces_many)
        if many
        else (train_step, piece_gradient, apply_pieces)
    )
    pieces = batch_pieces(config.batch_size)
    starts = [jnp.asarray(first, jnp.int32) for first, _ in pieces]
    checked, lapack = [len(pieces) == 1], [False]

    def step(state: TrainState) -> TrainState:
        if not checked[0]:
            checked[0] = True
            lapack[0] = mechscope.calls_lapack(
                gradient, state, task, hyper, config, starts[0], pieces[0][1]
            )
        if lapack[0]:
            with mechscope.LAPACK_LOCK:  # beside no other program that calls LAPACK
                return single(state, task, hyper, config)
        if len(pieces) == 1:
            return single(state, task, hyper, config)
        calls = [
            functools.partial(gradient, state, task, hyper, config, start, stop - first)
            for start, (first, stop) in zip(starts, pieces, strict=True)
        ]
        return apply(state, task, hyper, config, mechscope.run_concurrently(calls))

    return step


def make_train_step(
    config: BPTTConfig, task: mechscope.AbstractTask
) -> Callable[[TrainState], TrainState]:
    """A function ``state -> state`` taking one step of `config` on `task`, as ``fit`` does.

    For benchmarks: ``step = make_train_step(config, task)``,
    ``state = init_train_state(config, model, key=key)``, then time ``step(state)`` (in
    pieces over the cores where :func:`step_function` cuts the batch).
    """
    hyper = Hyperparameters.from_config(config)
    return step_function(task, hyper, compile_config(config))


def _evaluate(model: mechscope.AbstractModel, trials: mechscope.Trials) -> Scalar:
    trajectory = mechscope.simulate(model, trials.inputs, trials.times)
    return mechscope.masked_r2(trajectory.outputs, trials.targets, trials.mask)


@eqx.filter_jit
def evaluate_r2(model: mechscope.AbstractModel, trials: mechscope.Trials) -> Scalar:
    """Noise-free output R² of `model` on `trials` (e.g. ``task.conditions()``)."""
    return _evaluate(model, trials)


@eqx.filter_jit
def evaluate_r2_many(
    models: mechscope.AbstractModel, trials: mechscope.Trials
) -> Float[Array, " seeds"]:
    """:func:`evaluate_r2` for stacked models."""
    return eqx.filter_vmap(lambda m: _evaluate(m, trials))(models)


@eqx.filter_jit
def learning_rate_at(
    step: Int[Array, "*seeds"], hyper: Hyperparameters, config: BPTTConfig
) -> Float[Array, "*seeds"]:
    """The learning rate the optimiser used for the update that produced `step`."""
    rate = build_schedule(config, hyper.learning_rate)(jnp.maximum(step - 1, 0))
    return jnp.broadcast_to(rate, jnp.shape(step))
