"""The training state and the one jitted training step (public so benchmarks can time it)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Scalar, UInt32

import mechscope

from ._config import BPTTConfig, build_optimizer, build_schedule
from ._loss import Hyperparameters, loss_terms

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
    (:class:`Hyperparameters`), and
    loop settings never reach it, so runs that differ only in those share one compilation.
    """
    return config.model_copy(
        update={
            "steps": 0,
            "learning_rate": 1.0,
            "rate_reg": 0.0,
            "weight_reg": 0.0,
            "simple_dynamics_reg": 1.0 if config.simple_dynamics_reg > 0 else 0.0,
            "input_noise": 0.0,
            "recurrent_noise": 0.0,
            "eval_every": 1,
            "target_r2": None,
            "checkpoint_every": None,
            "parallel_seeds": False,
        }
    )


def _step(
    state: TrainState, task: mechscope.AbstractTask, hyper: Hyperparameters, config: BPTTConfig
) -> TrainState:
    optimizer = build_optimizer(config, hyper.learning_rate)
    key = jax.random.fold_in(state.base_key(), state.step)
    trial_key, noise_key = jax.random.split(key)
    trials = task.sample(config.batch_size, key=trial_key)
    params, static = eqx.partition(state.model, eqx.is_inexact_array)

    def objective(params):
        model = eqx.combine(params, static)
        return loss_terms(
            model, trials, hyper, key=noise_key, simple_dynamics=config.simple_dynamics_reg > 0
        )

    (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(params)
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


def make_train_step(
    config: BPTTConfig, task: mechscope.AbstractTask
) -> Callable[[TrainState], TrainState]:
    """A function ``state -> state`` taking one jitted step of `config` on `task`.

    For benchmarks: ``step = make_train_step(config, task)``,
    ``state = init_train_state(config, model, key=key)``, then time ``step(state)``.
    """
    hyper = Hyperparameters.from_config(config)
    static = compile_config(config)
    return lambda state: train_step(state, task, hyper, static)


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
