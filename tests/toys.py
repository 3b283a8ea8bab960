"""Small test doubles implementing the public interfaces, registered through a plugin object.

They let the core's tests exercise configs, the registry, experiments and the store without
depending on the first-party plugins.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic

import mechscope


class ToyTaskConfig(mechscope.Config):
    """Step response: output follows a delayed copy of a constant input."""

    dt: float = pydantic.Field(0.05, gt=0)
    n_times: int = pydantic.Field(12, ge=2)
    levels: tuple[float, ...] = (-1.0, 0.5, 1.0)


class ToyTask(mechscope.AbstractTask):
    config: ToyTaskConfig = eqx.field(static=True)

    @property
    def n_inputs(self) -> int:
        return 1

    @property
    def n_outputs(self) -> int:
        return 1

    @property
    def dt(self) -> float:
        return self.config.dt

    def _trials(self, levels: jax.Array) -> mechscope.Trials:
        times = jnp.arange(self.config.n_times) * self.config.dt
        inputs = jnp.broadcast_to(levels[:, None, None], (levels.shape[0], times.shape[0], 1))
        targets = 0.5 * inputs
        return mechscope.Trials(
            inputs=inputs,
            targets=targets,
            mask=jnp.ones_like(targets),
            times=times,
            events={"go": jnp.full(levels.shape, times[2])},
            labels={"level": levels, "condition": jnp.arange(levels.shape[0])},
        )

    def sample(self, batch_size: int, *, key: jax.Array) -> mechscope.Trials:
        return self._trials(jax.random.uniform(key, (batch_size,), minval=-1, maxval=1))

    def conditions(self) -> mechscope.Trials:
        return self._trials(jnp.asarray(self.config.levels))


class ToyModelConfig(mechscope.Config):
    """Linear Euler network."""

    n_units: int = pydantic.Field(4, ge=1)
    tau: float = pydantic.Field(0.1, gt=0)


class ToyModel(mechscope.AbstractModel):
    config: ToyModelConfig = eqx.field(static=True)
    weights: jax.Array
    input_weights: jax.Array
    output_weights: jax.Array

    def __init__(self, config, *, n_inputs, n_outputs, key):
        a, b, c = jax.random.split(key, 3)
        n = config.n_units
        self.config = config
        self.weights = 0.3 * jax.random.normal(a, (n, n)) / jnp.sqrt(n)
        self.input_weights = jax.random.normal(b, (n, n_inputs))
        self.output_weights = jax.random.normal(c, (n_outputs, n)) / jnp.sqrt(n)

    @property
    def n_inputs(self) -> int:
        return self.input_weights.shape[1]

    @property
    def n_outputs(self) -> int:
        return self.output_weights.shape[0]

    @property
    def n_units(self) -> int:
        return self.config.n_units

    def vector_field(self, t, x, u):
        return (-x + self.weights @ x + self.input_weights @ u) / self.config.tau

    def rates(self, x):
        return x

    def readout(self, r):
        return self.output_weights @ r

    def initial_state(self):
        return jnp.zeros(self.config.n_units)

    def __call__(self, inputs, times, *, key=None, noise=None, x0=None):
        dt = times[1] - times[0]
        noise = noise or mechscope.Noise.none()
        key = jax.random.key(0) if key is None else key
        kicks = jax.random.normal(key, (times.shape[0], self.n_units)) * noise.recurrent
        inputs = inputs + noise.input * jax.random.normal(jax.random.fold_in(key, 1), inputs.shape)

        def step(x, slice_):
            u, kick = slice_
            nxt = x + dt * self.vector_field(0.0, x, u) + jnp.sqrt(dt) * kick
            return nxt, x

        start = self.initial_state() if x0 is None else x0
        _, states = jax.lax.scan(step, start, (inputs, kicks))
        rates = jax.vmap(self.rates)(states)
        return mechscope.Trajectory(
            times=times, states=states, rates=rates, outputs=jax.vmap(self.readout)(rates)
        )


class ToyRNNConfig(mechscope.Config):
    """A tiny Euler-integrated CT-RNN, the shared test double for trainers and probes."""

    n_units: int = pydantic.Field(16, ge=1)
    tau: float = pydantic.Field(0.1, gt=0)
    gain: float = pydantic.Field(0.9, description="W_rec ~ N(0, gain²/N) at init")
    activation: Literal["tanh", "softplus", "linear"] = "tanh"


_TOY_ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus, "linear": lambda x: x}


class ToyRNN(mechscope.AbstractModel):
    """tau·dx/dt = −x + W_rec·φ(x) + W_in·u + b; z = W_out·φ(x) + b_out (Euler at the task dt).

    Noise follows the ctrnn convention: the input gets σ_in·sqrt(2·tau/dt)·η and each step's
    state σ_rec·sqrt(2·dt/tau)·ξ, from the two halves of ``jax.random.split(key)``. Build it
    with :func:`make_toy_rnn` (random weights) or directly from chosen weights.
    """

    config: ToyRNNConfig = eqx.field(static=True)
    w_rec: jax.Array
    w_in: jax.Array
    w_out: jax.Array
    b: jax.Array
    b_out: jax.Array

    @property
    def n_inputs(self) -> int:
        return self.w_in.shape[1]

    @property
    def n_outputs(self) -> int:
        return self.w_out.shape[0]

    @property
    def n_units(self) -> int:
        return self.w_rec.shape[0]

    @property
    def recurrent_weights(self):
        return self.w_rec

    def vector_field(self, t, x, u):
        return (-x + self.w_rec @ self.rates(x) + self.w_in @ u + self.b) / self.config.tau

    def rates(self, x):
        return _TOY_ACTIVATIONS[self.config.activation](x)

    def readout(self, r):
        return self.w_out @ r + self.b_out

    def initial_state(self):
        return jnp.zeros(self.n_units)

    def __call__(self, inputs, times, *, key=None, noise=None, x0=None):
        dt = times[1] - times[0]
        tau = self.config.tau
        noise = mechscope.Noise.none() if noise is None else noise
        key = jax.random.key(0) if key is None else key
        input_key, state_key = jax.random.split(key)
        u = inputs + noise.input * jnp.sqrt(2 * tau / dt) * jax.random.normal(
            input_key, inputs.shape
        )
        kicks = (
            noise.recurrent
            * jnp.sqrt(2 * dt / tau)
            * jax.random.normal(state_key, (times.shape[0], self.n_units))
        )

        def euler(x, step):
            u_t, kick = step
            return x + dt * self.vector_field(0.0, x, u_t) + kick, x

        start = self.initial_state() if x0 is None else x0
        _, states = jax.lax.scan(euler, start, (u, kicks))
        rates = jax.vmap(self.rates)(states)
        return mechscope.Trajectory(
            times=times, states=states, rates=rates, outputs=jax.vmap(self.readout)(rates)
        )


def make_toy_rnn(config: ToyRNNConfig, *, n_inputs: int, n_outputs: int, key) -> ToyRNN:
    """A ToyRNN with W_rec ~ N(0, g²/N), W_in ~ N(0, 1/n_inputs), W_out ~ N(0, 1/N), no biases."""
    k1, k2, k3 = jax.random.split(key, 3)
    n = config.n_units
    return ToyRNN(
        config=config,
        w_rec=config.gain * jax.random.normal(k1, (n, n)) / np.sqrt(n),
        w_in=jax.random.normal(k2, (n, n_inputs)) / np.sqrt(n_inputs),
        w_out=jax.random.normal(k3, (n_outputs, n)) / np.sqrt(n),
        b=jnp.zeros(n),
        b_out=jnp.zeros(n_outputs),
    )


def toy_rnn(w_rec, w_in, w_out, *, tau: float, activation: str = "tanh") -> ToyRNN:
    """A ToyRNN with the given weights and zero biases."""
    return ToyRNN(
        config=ToyRNNConfig(n_units=w_rec.shape[0], tau=tau, activation=activation),
        w_rec=jnp.asarray(w_rec),
        w_in=jnp.asarray(w_in),
        w_out=jnp.asarray(w_out),
        b=jnp.zeros(w_rec.shape[0]),
        b_out=jnp.zeros(w_out.shape[0]),
    )


#: Every ToyTrainer.fit call, so tests can tell a cached run from a retrained one.
FIT_CALLS: list = []


def _log_fit_and_maybe_die() -> None:
    """For subprocess tests: log each fit to a file, and SIGKILL this process after N fits."""
    log = os.environ.get("MECHSCOPE_TOY_FIT_LOG")
    if not log:
        return
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    limit = os.environ.get("MECHSCOPE_TOY_KILL_AFTER")
    if limit is not None:
        with open(log) as handle:
            if len(handle.readlines()) > int(limit):
                os.kill(os.getpid(), signal.SIGKILL)


class ToyTrainerConfig(mechscope.Config):
    """Plain gradient descent on masked MSE."""

    steps: int = pydantic.Field(5, ge=0)
    learning_rate: float = 0.05
    batch_size: int = 8
    fail: bool = pydantic.Field(False, description="Raise instead of training (for tests).")


class ToyTrainer(mechscope.AbstractTrainer):
    config: ToyTrainerConfig = eqx.field(static=True)

    def fit(
        self,
        model,
        task,
        *,
        key,
        callbacks: Sequence[mechscope.Callback] = (),
        checkpoint_dir: Path | None = None,
    ):
        FIT_CALLS.append(self.config)
        _log_fit_and_maybe_die()
        if self.config.fail:
            raise RuntimeError("toy trainer told to fail")
        state = optax.sgd(self.config.learning_rate).init(eqx.filter(model, eqx.is_array))

        for callback in callbacks:
            callback.on_train_start(model=model, task=task, n_steps=self.config.steps)
        losses = []
        for index in range(self.config.steps):
            model, state, loss = _toy_step(
                model, state, task, jax.random.fold_in(key, index), self.config
            )
            losses.append(float(loss))
            for callback in callbacks:
                callback.on_evaluation(step=index + 1, metrics={"loss": float(loss)})
        run = mechscope.TrainedRun(
            model=model,
            history={"step": np.arange(1, len(losses) + 1), "loss": np.asarray(losses)},
            metadata={"wall_time_s": 0.0},
        )
        for callback in callbacks:
            callback.on_train_end(run=run)
        return run


@eqx.filter_jit
def _toy_step(model, state, task, key, config):
    # Module-level and jitted once per (model, task, config) shape: tests stay fast.
    trials = task.sample(config.batch_size, key=key)

    def loss_fn(m):
        out = mechscope.simulate(m, trials.inputs, trials.times).outputs
        return jnp.mean(trials.mask * (out - trials.targets) ** 2)

    optimiser = optax.sgd(config.learning_rate)
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    updates, state = optimiser.update(grads, state)
    return eqx.apply_updates(model, updates), state, loss


@eqx.filter_jit
def _toy_outputs(model, inputs, times):
    return mechscope.simulate(model, inputs, times).outputs


class ToyProbeConfig(mechscope.Config):
    """Mean squared output error on the condition trials."""

    scale: float = 1.0


class ToyProbe(mechscope.AbstractProbe):
    config: ToyProbeConfig = eqx.field(static=True)

    def run(self, trained, task, *, key, dependencies: Mapping | None = None):
        trials = task.conditions()
        out = _toy_outputs(trained.model, trials.inputs, trials.times)
        error = float(jnp.mean((out - trials.targets) ** 2)) * self.config.scale
        return mechscope.ProbeResult(
            metrics={"mse": error, "noise_draw": float(jax.random.uniform(key))},
            arrays={"outputs": np.asarray(out)},
            figures={"outputs": lambda: _figure(np.asarray(out))},
        )


class DependentProbeConfig(mechscope.Config):
    """Needs toy_probe's result."""


class DependentProbe(mechscope.AbstractProbe):
    config: DependentProbeConfig = eqx.field(static=True)
    requires = ("toy_probe",)

    def run(self, trained, task, *, key, dependencies=None):
        mse = dependencies["toy_probe"].metrics["mse"]
        return mechscope.ProbeResult(metrics={"double_mse": 2 * mse})


class BrokenProbeConfig(mechscope.Config):
    """Always raises."""


class BrokenProbe(mechscope.AbstractProbe):
    config: BrokenProbeConfig = eqx.field(static=True)

    def run(self, trained, task, *, key, dependencies=None):
        raise RuntimeError("this probe is broken on purpose")


def _figure(outputs):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(2, 2))
    axis.plot(outputs[..., 0].T)
    return figure


class ToyPlugin:
    """Registers the toy components (a plugin can be any object with hook implementations)."""

    @mechscope.hookimpl
    def mechscope_register_tasks(self, register):
        register("toy_task", ToyTaskConfig, ToyTask)

    @mechscope.hookimpl
    def mechscope_register_models(self, register):
        register("toy_model", ToyModelConfig, ToyModel)

    @mechscope.hookimpl
    def mechscope_register_trainers(self, register):
        register("toy_trainer", ToyTrainerConfig, ToyTrainer)

    @mechscope.hookimpl
    def mechscope_register_probes(self, register):
        register("toy_probe", ToyProbeConfig, ToyProbe)
        register("dependent_probe", DependentProbeConfig, DependentProbe)
        register("broken_probe", BrokenProbeConfig, BrokenProbe)


#: What the fake entry point of subprocess tests names (``tests.toys:plugin``).
plugin = ToyPlugin()
