"""The gated_ctrnn model: a GRU written as an ODE (Jordan, Sokół & Park 2021).

    z = σ(W_z·h + U_z·u + b_z),   g = σ(W_g·h + U_g·u + b_g),
    ĥ = tanh(W_h·(g ⊙ h) + U_h·u + b_h),
    tau·dh/dt = (1 − z) ⊙ (ĥ − h),         rates r = h,   z_out = W_out·h + b_out.

One Euler step with h = tau is exactly the discrete GRU update h ← z ⊙ h + (1 − z) ⊙ ĥ (Cho et
al. 2014), which is how Jordan et al. obtain the ODE; at the task's dt < tau each step moves a
fraction (dt/tau)·(1 − z) of the way to the candidate. The state is already a bounded rate
(|h| < 1 once it starts in [−1, 1]), so the rates are the state itself and the readout is
linear in h. Integration reuses the ctrnn's scan over diffrax solver steps.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, ScalarLike

import mechscope
from mechscope_ctrnn._config import GatedCTRNNConfig, make_solver
from mechscope_ctrnn._integrate import checkpoint_chunk_for, integrate_scan
from mechscope_ctrnn._models import _is_concretely_zero, _place


class GatedDynamics(eqx.Module):
    """tau·dh/dt = (1 − z)⊙(ĥ − h): the one place the gated network's formula lives.

    The recurrent and input matrices of the two gates are stacked (``[W_z; W_g]``,
    ``[U_z; U_g; U_h]``) so that one step costs two matrix products with the state and one
    with the input.

    Attributes:
        w_gates: ``[W_z; W_g]``, ``[2n, n]``.
        w_candidate: W_h, ``[n, n]``.
        w_in: ``[U_z; U_g; U_h]``, ``[3n, i]``.
        bias: ``[b_z; b_g; b_h]``, ``[3n]``.
        tau: the time constant (s).
    """

    w_gates: Float[Array, "2n n"]
    w_candidate: Float[Array, "n n"]
    w_in: Float[Array, "3n i"]
    bias: Float[Array, " 3n"]
    tau: float = eqx.field(static=True)

    def _parts(self, h: Float[Array, " n"], u: Float[Array, " i"]):
        n = h.shape[0]
        drive = self.w_in @ u + self.bias
        gates = jax.nn.sigmoid(self.w_gates @ h + drive[: 2 * n])
        update, reset = gates[:n], gates[n:]
        candidate = jnp.tanh(self.w_candidate @ (reset * h) + drive[2 * n :])
        return update, reset, candidate

    def __call__(self, h: Float[Array, " n"], u: Float[Array, " i"]) -> Float[Array, " n"]:
        """dh/dt = (1 − z)⊙(ĥ − h)/tau."""
        update, _, candidate = self._parts(h, u)
        return (1.0 - update) * (candidate - h) / self.tau

    def jacobian(self, h: Float[Array, " n"], u: Float[Array, " i"]) -> Float[Array, "n n"]:
        """∂(dh/dt)/∂h in closed form.

        With s_z = z(1 − z), s_g = g(1 − g), s_h = 1 − ĥ²:
        tau·J = −diag((ĥ − h)·s_z)·W_z
                + diag(1 − z)·(diag(s_h)·W_h·(diag(g) + diag(h·s_g)·W_g) − I).
        """
        n = h.shape[0]
        update, reset, candidate = self._parts(h, u)
        w_update, w_reset = self.w_gates[:n], self.w_gates[n:]
        d_reset_h = (
            reset[:, None] * jnp.eye(n, dtype=h.dtype)
            + (h * reset * (1 - reset))[:, None] * w_reset
        )
        d_candidate = (1 - candidate**2)[:, None] * (self.w_candidate @ d_reset_h)
        d_update = ((candidate - h) * update * (1 - update))[:, None] * w_update
        eye = jnp.eye(n, dtype=h.dtype)
        return (-d_update + (1 - update)[:, None] * (d_candidate - eye)) / self.tau


class _RecomputedInReverse(eqx.Module):
    """A drift whose intermediates reverse mode recomputes instead of storing.

    Differentiated through the scan, each step's gates, candidate and their products would be
    stacked over the whole trial (about eight ``[steps, batch, n]`` arrays) and copied
    between the forward and the reverse loop; rematerialising them from the stored state
    costs one more evaluation of the step in the reverse pass and gives the same gradient
    bit for bit. On the benchmark's configuration (N = 100, batch 64, 250 steps, CPU) it
    makes the training step about 30 % faster (docs/models/gated_ctrnn.md).
    """

    drift: eqx.Module

    def __call__(self, h: Float[Array, " n"], args) -> Float[Array, " n"]:
        # prevent_cse=False: inside a scan, XLA cannot merge the recomputation away anyway.
        evaluate = jax.checkpoint(
            type(self.drift).__call__,
            policy=jax.checkpoint_policies.nothing_saveable,
            prevent_cse=False,
        )
        return evaluate(self.drift, h, args)


class _NoisyGatedDrift(eqx.Module):
    """The gated drift with input noise: f(h, u + c·η) for one step's draws (ξ, η)."""

    dynamics: GatedDynamics
    input_level: Float[Array, ""]

    def __call__(self, h: Float[Array, " n"], args) -> Float[Array, " n"]:
        u, (_, eta) = args
        return self.dynamics(h, u + self.input_level * eta)


class _StateIncrement(eqx.Module):
    """Recurrent noise added to the state: σ_rec·sqrt(2h/tau)·ξ per step."""

    level: Float[Array, ""]

    def __call__(self, xi: Float[Array, " n"], eta: Float[Array, " i"]) -> Float[Array, " n"]:
        del eta
        return self.level * xi


class GatedCTRNN(mechscope.AbstractModel):
    """Continuous-time gated recurrent network (a GRU in ODE form); rates are the state h."""

    config: GatedCTRNNConfig = eqx.field(static=True)
    w_update: Float[Array, "n_units n_units"]
    w_reset: Float[Array, "n_units n_units"]
    w_candidate: Float[Array, "n_units n_units"]
    u_update: Float[Array, "n_units n_inputs"]
    u_reset: Float[Array, "n_units n_inputs"]
    u_candidate: Float[Array, "n_units n_inputs"]
    b_update: Float[Array, " n_units"]
    b_reset: Float[Array, " n_units"]
    b_candidate: Float[Array, " n_units"]
    w_out: Float[Array, "n_outputs n_units"]
    output_bias: Float[Array, " n_outputs"]
    x0: Float[Array, " n_units"]

    def __check_init__(self):
        n = self.config.n_units
        for name in ("w_update", "w_reset", "w_candidate"):
            if tuple(getattr(self, name).shape) != (n, n):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(n, n)}")
        n_in = self.u_update.shape[1]
        for name in ("u_update", "u_reset", "u_candidate"):
            if tuple(getattr(self, name).shape) != (n, n_in):
                raise ValueError(
                    f"{name} has shape {getattr(self, name).shape}, expected {(n, n_in)}"
                )
        for name in ("b_update", "b_reset", "b_candidate", "x0"):
            if tuple(getattr(self, name).shape) != (n,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(n,)}")
        if self.w_out.shape[1:] != (n,) or self.output_bias.shape != self.w_out.shape[:1]:
            raise ValueError(f"w_out {self.w_out.shape} / output_bias do not fit {n} units")

    @property
    def n_inputs(self) -> int:
        """Number of input channels."""
        return self.u_update.shape[1]

    @property
    def n_outputs(self) -> int:
        """Number of readout channels."""
        return self.w_out.shape[0]

    @property
    def n_units(self) -> int:
        """Number of units N."""
        return self.w_update.shape[0]

    def weight_matrices(self) -> tuple[Float[Array, "..."], ...]:
        """The matrices the trainer's weight penalty applies to (recurrent, input, output)."""
        return (
            self.w_update,
            self.w_reset,
            self.w_candidate,
            self.u_update,
            self.u_reset,
            self.u_candidate,
            self.w_out,
        )

    def dynamics(self) -> GatedDynamics:
        """The right-hand side with stacked weights."""
        return GatedDynamics(
            w_gates=jnp.concatenate([self.w_update, self.w_reset]),
            w_candidate=self.w_candidate,
            w_in=jnp.concatenate([self.u_update, self.u_reset, self.u_candidate]),
            bias=jnp.concatenate([self.b_update, self.b_reset, self.b_candidate]),
            tau=self.config.tau,
        )

    def vector_field(
        self, t: ScalarLike, x: Float[Array, " n_units"], u: Float[Array, " n_inputs"]
    ) -> Float[Array, " n_units"]:
        """dh/dt = (1 − z)⊙(ĥ − h)/tau, noise-free."""
        del t
        return self.dynamics()(x, u)

    def jacobian(
        self, t: ScalarLike, x: Float[Array, " n_units"], u: Float[Array, " n_inputs"]
    ) -> Float[Array, "n_units n_units"]:
        """∂f/∂h in closed form (see :meth:`GatedDynamics.jacobian`)."""
        del t
        return self.dynamics().jacobian(x, u)

    def rates(self, x: Float[Array, "*batch n_units"]) -> Float[Array, "*batch n_units"]:
        """The rates are the state itself, r = h (bounded by the tanh candidate)."""
        return x

    def readout(self, r: Float[Array, "*batch n_units"]) -> Float[Array, "*batch n_outputs"]:
        """Output W_out·r + b_out."""
        return r @ self.w_out.T + self.output_bias

    def initial_state(self) -> Float[Array, " n_units"]:
        """h0: learned if ``config.learn_x0``, else a constant the gradient does not reach."""
        if self.config.learn_x0:
            return self.x0
        return jax.lax.stop_gradient(self.x0)

    def __call__(
        self,
        inputs: Float[Array, "time n_inputs"],
        times: Float[Array, " time"],
        *,
        key: PRNGKeyArray | None = None,
        noise: mechscope.Noise | None = None,
        x0: Float[Array, " n_units"] | None = None,
    ) -> mechscope.Trajectory:
        """Integrate one trial; ``states[0]`` is h0 at ``times[0]``.

        Noise follows the ctrnn's convention, per solver step of length h: the state gets
        σ_rec·sqrt(2h/tau)·ξ, and the input the gates and the candidate see is
        u + σ_in·sqrt(2·tau/h)·η (the input enters non-linearly, so it is perturbed where it
        enters rather than as a state increment). ξ and η are drawn as for ctrnn:
        ``key_rec, key_in = jax.random.split(key)``, shapes ``(steps, N)`` and
        ``(steps, n_inputs)``.

        Args:
            inputs: input at each sample time, held over ``[t_k, t_{k+1})``.
            times: evenly spaced sample times (at least two).
            key: PRNG key for the noise; required unless `noise` is None or concretely zero.
            noise: noise levels (arrays, so sweeping them does not recompile).
            x0: start from this state instead of :meth:`initial_state`.

        Raises:
            ValueError: on mismatched shapes, or noise without a key.
        """
        if times.ndim != 1 or times.shape[0] < 2:
            raise ValueError(f"times must be 1-d with at least 2 samples, got {times.shape}")
        if inputs.shape != (times.shape[0], self.n_inputs):
            raise ValueError(
                f"inputs must have shape (time, n_inputs) = ({times.shape[0]}, "
                f"{self.n_inputs}), got {inputs.shape}"
            )
        if noise is not None and _is_concretely_zero(noise):
            noise = None
        if noise is not None and key is None:
            raise ValueError("a PRNG key is required when noise is given (pass key=...)")
        config = self.config
        start = self.initial_state() if x0 is None else x0
        dynamics = self.dynamics()
        n_intervals = times.shape[0] - 1
        chunk = checkpoint_chunk_for(
            config.checkpointing,
            config.checkpoint_chunk,
            n_intervals,
            config.substeps,
            self.n_units,
        )
        solver = make_solver(config.solver)
        if noise is None:
            states = integrate_scan(
                _RecomputedInReverse(dynamics),
                solver,
                start,
                inputs,
                times,
                None,
                substeps=config.substeps,
                checkpoint_chunk=chunk,
            )
        else:
            assert key is not None
            dtype = start.dtype
            key_rec, key_in = jax.random.split(key)
            n_steps = n_intervals * config.substeps
            h = (times[1] - times[0]) / config.substeps
            xi = jax.random.normal(key_rec, (n_steps, self.n_units), dtype)
            eta = jax.random.normal(key_in, (n_steps, self.n_inputs), dtype)
            recurrent = jnp.asarray(noise.recurrent, dtype) * jnp.sqrt(2.0 * h / config.tau)
            input_level = jnp.asarray(noise.input, dtype) * jnp.sqrt(2.0 * config.tau / h)
            states = integrate_scan(
                _RecomputedInReverse(_NoisyGatedDrift(dynamics, input_level.astype(dtype))),
                solver,
                start,
                inputs,
                times,
                (_StateIncrement(recurrent.astype(dtype)), (xi, eta)),
                substeps=config.substeps,
                checkpoint_chunk=chunk,
                drift_sees_draws=True,
            )
        return mechscope.Trajectory(
            times=times, states=states, rates=states, outputs=self.readout(states)
        )


def make_gated_ctrnn(
    config: GatedCTRNNConfig, *, n_inputs: int, n_outputs: int, key: PRNGKeyArray
) -> GatedCTRNN:
    """Build a gated_ctrnn: W_z, W_g, W_h ~ N(0, g²/N), U ~ N(0, 1/n_inputs), W_out ~ N(0, 1/N).

    Biases and h0 start at zero, so both gates start at ½ (each unit's effective time
    constant is then 2·tau) and the candidate's recurrence has bulk spectral radius g/2
    around h = 0 (the reset gate halves it).

    Args:
        config: the validated config.
        n_inputs: input channels of the task.
        n_outputs: output channels of the task.
        key: PRNG key for the initial weights.
    """
    if type(config) is not GatedCTRNNConfig:
        raise TypeError(f"make_gated_ctrnn needs a GatedCTRNNConfig, got {type(config).__name__}")
    n = config.n_units
    keys = jax.random.split(key, 7)
    recurrent = [config.gain / math.sqrt(n) * jax.random.normal(k, (n, n)) for k in keys[:3]]
    inputs = [jax.random.normal(k, (n, n_inputs)) / math.sqrt(max(n_inputs, 1)) for k in keys[3:6]]
    model = GatedCTRNN(
        config=config,
        w_update=recurrent[0],
        w_reset=recurrent[1],
        w_candidate=recurrent[2],
        u_update=inputs[0],
        u_reset=inputs[1],
        u_candidate=inputs[2],
        b_update=jnp.zeros(n),
        b_reset=jnp.zeros(n),
        b_candidate=jnp.zeros(n),
        w_out=jax.random.normal(keys[6], (n_outputs, n)) / math.sqrt(n),
        output_bias=jnp.zeros(n_outputs),
        x0=jnp.zeros(n),
    )
    return _place(model, config.device)
