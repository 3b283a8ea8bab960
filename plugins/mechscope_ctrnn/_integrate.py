"""Integration of tau·dx/dt = −x + W_rec·φ(x) + W_in·u + b (+ noise) with diffrax.

Two integrators share one discretisation: ``scan`` runs the diffrax solver's own ``step``
inside a ``lax.scan`` (fixed steps, input held constant over each step, cheap reverse-mode
autodiff), ``diffeqsolve`` calls :func:`diffrax.diffeqsolve` (fixed or adaptive steps,
RecursiveCheckpointAdjoint). For fixed-step Euler both give the same numbers.

Performance note: per-step quantities that depend on parameters (the input projection W_in·u,
the noise W_in·η) are computed inside the loop from parameter-free per-step data (u, ξ, η).
Precomputing them as one [time, N] array looks cheaper but makes reverse mode stack a
[time, N] cotangent per trial, which on CPU costs more than the whole forward pass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PyTree

from mechscope_ctrnn._activations import Activation

#: ``drift(x, u) -> dx/dt`` at state x and (held) input u.
Drift = Callable[[Float[Array, " n"], Float[Array, " i"]], Float[Array, " n"]]

#: One step's noise for :func:`integrate_scan`: ``(increment, draws)``, where ``draws`` are
#: arrays with a leading step axis and ``increment(*draws_j)`` is step j's state increment.
StepNoise = tuple[Callable[..., Float[Array, " n"]], tuple[Float[Array, "steps ..."], ...]]

#: A noisy run's noise: the source and its per-step draws ξ ``[steps, n]`` and η ``[steps, i]``.
NoiseDraws = tuple["NoiseSource", Float[Array, "steps n"], Float[Array, "steps i"]]

#: 'auto' checkpointing turns on once (solver steps × units) reaches this.
AUTO_CHECKPOINT_SIZE = 2**18


class NoiseSource(eqx.Module):
    """Turns one solver step's standard-normal draws into the additive state increment.

    increment = sqrt(2h/tau)·(σ_rec·ξ + σ_in·W_in·η), ξ ~ N(0, I_N), η ~ N(0, I_inputs): the
    Euler–Maruyama increment of dx = f dt + sqrt(2/tau)·(σ_rec dB_rec + σ_in·W_in dB_in).
    """

    input_weights: Float[Array, "n i"]
    sigma_recurrent: Float[Array, ""]
    sigma_input: Float[Array, ""]
    scale: Float[Array, ""]

    def increment(self, xi: Float[Array, " n"], eta: Float[Array, " i"]) -> Float[Array, " n"]:
        """The state increment of one step from its draws ξ (units) and η (inputs)."""
        return self.scale * (
            self.sigma_recurrent * xi + self.sigma_input * (self.input_weights @ eta)
        )


class HeldIncrement(diffrax.AbstractPath):
    """A control path whose increment over any interval is one given array (one step's)."""

    increment: Float[Array, " n"]

    @property
    def t0(self):
        return -jnp.inf

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left=True):
        del t0, t1, left
        return self.increment


class GridIncrements(diffrax.AbstractPath):
    """Noise increments of a uniform step grid, from draws made in advance.

    ``evaluate(ta, tb)`` returns the increment of the grid step that starts at ``ta``, so a
    fixed-step solver stepping on the grid sees exactly the increments the scan integrator
    uses.
    """

    source: NoiseSource
    xi: Float[Array, "steps n"]
    eta: Float[Array, "steps i"]
    start: Float[Array, ""]
    step: Float[Array, ""]

    @property
    def t0(self):
        return self.start

    @property
    def t1(self):
        return self.start + self.step * self.xi.shape[0]

    def evaluate(self, t0, t1=None, left=True):
        del t1, left
        index = jnp.round((t0 - self.start) / self.step).astype(int)
        index = jnp.clip(index, 0, self.xi.shape[0] - 1)
        return self.source.increment(self.xi[index], self.eta[index])


class HeldInputIntegral(diffrax.AbstractPath):
    """U(t) = ∫ u ds for an input held at ``inputs[k]`` on ``[t_k, t_{k+1})``.

    Driving the input term by this continuous path (dx ∝ W_in dU) gives every stage of a
    solver step the same held input, so multi-stage solvers do not see the next sample's
    input at a step's right end. Increments within one interval are computed directly as
    ``u_k·(t1 − t0)`` rather than as a difference of large integrals, to keep precision.
    """

    inputs: Float[Array, "time i"]
    times: Float[Array, " time"]
    cumulative: Float[Array, "time i"]

    def __init__(self, inputs: Float[Array, "time i"], times: Float[Array, " time"]):
        self.inputs = inputs
        self.times = times
        pieces = inputs[:-1] * jnp.diff(times)[:, None]
        self.cumulative = jnp.concatenate([jnp.zeros_like(inputs[:1]), jnp.cumsum(pieces, 0)])

    @property
    def t0(self):
        return self.times[0]

    @property
    def t1(self):
        return self.times[-1]

    def _interval(self, t, side: str):
        last = self.times.shape[0] - 2
        return jnp.clip(jnp.searchsorted(self.times, t, side=side) - 1, 0, last)

    def _integral(self, t):
        k = self._interval(t, "right")
        return self.cumulative[k] + self.inputs[k] * (t - self.times[k])

    def evaluate(self, t0, t1=None, left=True):
        del left
        if t1 is None:
            return self._integral(t0)
        start = self._interval(t0, "right")
        # A step ending exactly on a sample time still belongs to the interval before it.
        same_interval = start == self._interval(t1, "left")
        direct = self.inputs[start] * (t1 - t0)
        return jnp.where(same_interval, direct, self._integral(t1) - self._integral(t0))


def _identity_diffusion(t, y, args) -> lx.IdentityLinearOperator:
    # The increments already carry the diffusion (noise is additive), so G is the identity.
    del t, args
    return lx.IdentityLinearOperator(jax.eval_shape(lambda: y))


def _terms(drift: Drift, control: diffrax.AbstractPath | None) -> diffrax.AbstractTerm:
    ode = diffrax.ODETerm(lambda t, x, u: drift(x, u))
    if control is None:
        return ode
    return diffrax.MultiTerm(ode, diffrax.ControlTerm(_identity_diffusion, control))


def _chunked_scan(
    body: Callable, carry: PyTree, xs: PyTree, length: int, chunk: int | None
) -> tuple[PyTree, PyTree]:
    """``lax.scan`` that, given `chunk`, checkpoints every `chunk` iterations.

    The backward pass then stores one carry per chunk and recomputes the chunk's steps,
    so memory grows like length/chunk + chunk instead of length.
    """
    if chunk is None or chunk >= length:
        return jax.lax.scan(body, carry, xs)
    n_chunks = -(-length // chunk)
    padding = n_chunks * chunk - length

    def to_chunks(leaf):
        # The padded steps run past the end; their outputs are dropped below.
        leaf = jnp.concatenate([leaf, jnp.zeros((padding, *leaf.shape[1:]), leaf.dtype)])
        return leaf.reshape(n_chunks, chunk, *leaf.shape[1:])

    @jax.checkpoint
    def chunk_body(carry, xs_chunk):
        return jax.lax.scan(body, carry, xs_chunk)

    carry, ys = jax.lax.scan(chunk_body, carry, jax.tree.map(to_chunks, xs))
    ys = jax.tree.map(lambda leaf: leaf.reshape(-1, *leaf.shape[2:])[:length], ys)
    return carry, ys


def integrate_scan(
    drift: Drift,
    solver: diffrax.AbstractSolver,
    x0: Float[Array, " n"],
    inputs: Float[Array, "time i"],
    times: Float[Array, " time"],
    noise: StepNoise | None,
    *,
    substeps: int,
    checkpoint_chunk: int | None,
    drift_sees_draws: bool = False,
) -> Float[Array, "time n"]:
    """Fixed-step integration as a scan over ``solver.step``; the state at every sample time.

    Only states are stacked: anything derived from them (rates, outputs) is cheaper to
    compute afterwards than to record inside the loop, where reverse mode would stack its
    own copies of φ(x) and φ'(x).

    Args:
        drift: ``drift(x, u) -> dx/dt``.
        solver: a diffrax solver; its ``step`` does the arithmetic.
        x0: state at ``times[0]``.
        inputs: input at each sample time; ``inputs[k]`` is held over ``[t_k, t_{k+1})``.
        times: sample times.
        noise: ``(increment, draws)``: per-step draws (arrays with a leading step axis)
            and the function turning one step's draws into its state increment; or None.
        substeps: solver steps per sample interval.
        checkpoint_chunk: intervals per checkpointed chunk, or None for no checkpointing.
        drift_sees_draws: call the drift as ``drift(x, (u, draws_j))`` with the step's
            draws, for noise that enters the vector field non-additively (inside a
            nonlinearity); the step's ``increment`` is still added. Needs `noise`.

    """
    if drift_sees_draws and noise is None:
        raise ValueError("drift_sees_draws needs per-step noise draws")
    n_intervals = times.shape[0] - 1
    increment, draws = None, None
    if noise is not None:
        increment, draws = noise
        draws = jax.tree.map(lambda a: a.reshape(n_intervals, substeps, *a.shape[1:]), tuple(draws))

    def control(draws_j):
        if draws_j is None or increment is None:
            return None
        return HeldIncrement(increment(*draws_j))

    def args(u, draws_j):
        # The drift's second argument: the held input, with the step's draws if it sees them.
        return (u, draws_j) if drift_sees_draws else u

    first_draws = None if draws is None else jax.tree.map(lambda a: a[0, 0], draws)
    solver_state = solver.init(
        _terms(drift, control(first_draws)), times[0], times[1], x0, args(inputs[0], first_draws)
    )

    def one_step(carry, t0, t1, u, draws_j, made_jump):
        x, state = carry
        x, _, _, state, _ = solver.step(
            _terms(drift, control(draws_j)), t0, t1, x, args(u, draws_j), state, made_jump
        )
        return x, state

    def interval(carry, per_interval):
        t_k, t_next, u_k, draws_k = per_interval
        # Each interval's own width, so that uneven float sample times are honoured exactly.
        h_k = (t_next - t_k) / substeps
        end = t_next if substeps == 1 else t_k + h_k
        first = None if draws_k is None else jax.tree.map(lambda a: a[0], draws_k)
        # The input jumps at every sample time, so stages cached across it (FSAL) are stale.
        carry = one_step(carry, t_k, end, u_k, first, True)
        if substeps > 1:

            def substep(carry, j_draws):
                j, draws_j = j_draws
                t_j = t_k + j * h_k
                t_end = jnp.where(j == substeps - 1, t_next, t_j + h_k)
                return one_step(carry, t_j, t_end, u_k, draws_j, False), None

            rest = None if draws_k is None else jax.tree.map(lambda a: a[1:], draws_k)
            carry, _ = jax.lax.scan(substep, carry, (jnp.arange(1, substeps), rest))
        return carry, carry[0]

    _, states = _chunked_scan(
        interval,
        (x0, solver_state),
        (times[:-1], times[1:], inputs[:-1], draws),
        n_intervals,
        checkpoint_chunk,
    )
    return jnp.concatenate([x0[None], states])


class RateDynamics(eqx.Module):
    """tau·dx/dt = −x + W_rec·φ(x) + W_in·u + b: the one place the CT-RNN's formula lives.

    The models' vector field and Jacobian and every integration path (scan, Euler adjoint,
    diffeqsolve) evaluate it through this module, with the model's effective weights.

    Attributes:
        w_rec: W_rec, ``[n, n]`` (row = postsynaptic unit).
        w_in: W_in, ``[n, i]``.
        bias: b, ``[n]``.
        activation: φ and φ'.
        tau: the time constant (s).
    """

    w_rec: Float[Array, "n n"]
    w_in: Float[Array, "n i"]
    bias: Float[Array, " n"]
    activation: Activation = eqx.field(static=True)
    tau: float = eqx.field(static=True)

    def _leak_and_recurrence(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        return -x + self.w_rec @ self.activation.fn(x)

    def __call__(self, x: Float[Array, " n"], u: Float[Array, " i"]) -> Float[Array, " n"]:
        """dx/dt = (−x + W_rec·φ(x) + W_in·u + b) / tau (a :data:`Drift`)."""
        return (self._leak_and_recurrence(x) + self.w_in @ u + self.bias) / self.tau

    def without_input(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        """(−x + W_rec·φ(x) + b) / tau: the drift with the input term left out."""
        return (self._leak_and_recurrence(x) + self.bias) / self.tau

    @property
    def input_gain(self) -> Float[Array, "n i"]:
        """W_in / tau, so that the input adds ``input_gain @ u`` to dx/dt."""
        return self.w_in / self.tau

    def jacobian(self, x: Float[Array, " n"]) -> Float[Array, "n n"]:
        """∂(dx/dt)/∂x = (−I + W_rec·diag(φ'(x))) / tau, in closed form."""
        slope = self.activation.derivative(x)
        eye = jnp.eye(self.w_rec.shape[0], dtype=x.dtype)
        return (-eye + self.w_rec * slope[None, :]) / self.tau


class PreactivationNoiseDrift(eqx.Module):
    """The CT-RNN drift with recurrent noise inside φ: (−x + W_rec·φ(x + c·ξ) + W_in·u + b)/tau.

    A :data:`Drift` for :func:`integrate_scan` with ``drift_sees_draws=True``: its second
    argument is ``(u, (ξ, η))``, one solver step's held input and draws. ``c`` is
    σ_rec·sqrt(2·tau/h), the scaling of input noise, so that in the linear regime the state
    receives the white-noise increment σ_rec·sqrt(2h/tau)·W_rec·diag(φ'(x))·ξ whatever h is.
    The rates the model returns and reads out stay φ(x): the noise acts on the recurrence.

    Attributes:
        dynamics: the noise-free right-hand side.
        level: c = σ_rec·sqrt(2·tau/h), the standard deviation of the preactivation noise.
    """

    dynamics: RateDynamics
    level: Float[Array, ""]

    def __call__(self, x: Float[Array, " n"], args) -> Float[Array, " n"]:
        """dx/dt with the preactivation noise of this step's draws ξ."""
        u, (xi, _) = args
        d = self.dynamics
        recurrence = d.w_rec @ d.activation.fn(x + self.level * xi)
        return (-x + recurrence + d.w_in @ u + d.bias) / d.tau


class EulerParameters(eqx.Module):
    """What :func:`integrate_euler_adjoint` differentiates: weights, x0 and inputs."""

    w_rec: Float[Array, "n n"]
    w_in: Float[Array, "n i"]
    bias: Float[Array, " n"]
    x0: Float[Array, " n"]
    inputs: Float[Array, "time i"]


def integrate_euler_adjoint(
    activation: Activation,
    tau: float,
    parameters: EulerParameters,
    times: Float[Array, " time"],
    noise: NoiseDraws | None,
) -> Float[Array, "time n"]:
    """Euler integration (one step per sample interval) with a hand-written reverse pass.

    The forward pass is :func:`integrate_scan` with :class:`diffrax.Euler` and the drift of
    :class:`RateDynamics`, so the states are bit for bit those of the autodiff path. The
    reverse pass is the discrete adjoint of

        x_{k+1} = x_k + a_k·(−x_k + R_k + D_k) + N_k,
        R_k = W_rec·φ(x_k),  D_k = W_in·u_k + b,  a_k = (t_{k+1} − t_k)/tau,

    (N_k the step's noise increment): a reverse scan carries λ_k = ∂L/∂x_k with one
    matrix-vector product per step,

        λ_k = ∂L/∂S_k + (1 − a_k)·λ_{k+1} + a_k·φ'(x_k) ⊙ W_rec^T·λ_{k+1},

    and hands e_k = a_k·λ_{k+1} back as the cotangent of R_k and D_k and λ_{k+1} as that of
    N_k. R, D and N are written as whole-trial products of the weights (their values are
    never used, so XLA drops them), so JAX's own transposes of those products give
    ∂L/∂W_rec = Σ_k e_k φ(x_k)^T, ∂L/∂W_in, ∂L/∂b and the noise-level gradients as single
    matrix products over trials and time. Reverse-mode autodiff of the scan instead adds a
    rank-one update to every weight gradient inside the loop and keeps its own copies of
    φ(x_k) and φ'(x_k); ``benchmarks/train_step.py`` measures the difference. The sample
    times get no gradient.

    Args:
        activation: φ and φ'.
        tau: the time constant.
        parameters: weights, initial state and inputs.
        times: sample times; every interval is one Euler step.
        noise: the noise source and its per-step draws (ξ, η), or None.

    Returns:
        The state at every sample time (``[0]`` is x0).
    """
    frozen, frozen_noise = jax.lax.stop_gradient((parameters, noise))
    drift = RateDynamics(frozen.w_rec, frozen.w_in, frozen.bias, activation, tau)
    step_noise = None
    if frozen_noise is not None:
        source, xi, eta = frozen_noise
        step_noise = (source.increment, (xi, eta))
    states = integrate_scan(
        drift,
        diffrax.Euler(),
        frozen.x0,
        frozen.inputs,
        times,
        step_noise,
        substeps=1,
        checkpoint_chunk=None,
    )
    # Gradient carriers: only their cotangents are used (see above).
    recurrent = jax.lax.stop_gradient(activation.fn(states)) @ parameters.w_rec.T
    drives = parameters.inputs @ parameters.w_in.T + parameters.bias
    increments = None
    if noise is not None:
        source, xi, eta = noise
        increments = source.scale * (
            source.sigma_recurrent * xi + source.sigma_input * (eta @ source.input_weights.T)
        )
    step_rates = jax.lax.stop_gradient(jnp.diff(times) / tau)
    return _with_euler_adjoint(
        activation,
        states,
        recurrent,
        drives,
        parameters.x0,
        increments,
        frozen.w_rec,
        step_rates,
    )


def _row(array: Float[Array, "time n"], k) -> Float[Array, " n"]:
    # lax indexing: a traced k needs no wrap-around handling for negative indices.
    return jax.lax.dynamic_index_in_dim(array, k, 0, keepdims=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _with_euler_adjoint(activation, states, recurrent, drives, x0, increments, w_rec, step_rates):
    """``states``, with the Euler adjoint as the reverse pass (see integrate_euler_adjoint)."""
    del activation, recurrent, drives, x0, increments, w_rec, step_rates
    return states


def _with_euler_adjoint_fwd(
    activation, states, recurrent, drives, x0, increments, w_rec, step_rates
):
    del activation, recurrent, drives
    # An empty tuple (no leaves) tells the reverse pass that there is noise to differentiate.
    noise_marker = None if increments is None else ()
    return states, (states, x0, noise_marker, w_rec, step_rates)


def _with_euler_adjoint_bwd(activation, residuals, states_cotangent):
    states, x0, noise_marker, w_rec, step_rates = residuals
    n_steps = step_rates.shape[0]
    slopes = activation.derivative(states)  # φ'(x_k), vectorised over the whole trial

    def reverse_step(later, k):
        adjoint = later + _row(states_cotangent, k + 1)  # λ_{k+1}
        rate = step_rates[k]
        earlier = adjoint - rate * adjoint + rate * (adjoint @ w_rec) * _row(slopes, k)
        return earlier, adjoint

    first, adjoints = jax.lax.scan(
        reverse_step, jnp.zeros_like(x0), jnp.arange(n_steps), reverse=True
    )
    # e_k = a_k·λ_{k+1} = ∂L/∂R_k = ∂L/∂D_k; no step starts at the last sample, so its row is 0.
    drives = jnp.concatenate([step_rates[:, None] * adjoints, jnp.zeros_like(states[:1])])
    return (
        jnp.zeros_like(states),
        drives,
        drives,
        states_cotangent[0] + first,
        None if noise_marker is None else adjoints,
        jnp.zeros_like(w_rec),
        jnp.zeros_like(step_rates),
    )


_with_euler_adjoint.defvjp(_with_euler_adjoint_fwd, _with_euler_adjoint_bwd)


def integrate_diffeqsolve(
    autonomous_drift: Callable[[Float[Array, " n"]], Float[Array, " n"]],
    input_gain: Float[Array, "n i"],
    solver: diffrax.AbstractSolver,
    x0: Float[Array, " n"],
    inputs: Float[Array, "time i"],
    times: Float[Array, " time"],
    noise: NoiseDraws | None,
    *,
    substeps: int,
    adaptive: bool,
    rtol: float,
    atol: float,
    max_steps: int,
    checkpoints: int | None = None,
) -> Float[Array, "time n"]:
    """Integration with :func:`diffrax.diffeqsolve`; the state at every sample time.

    The system is written as dx = g(x) dt + G_u dU(t) [+ dN(t)]: the input enters as a
    control term driven by the integral U of the held input, so every solver stage sees the
    input held over the step (as in :func:`integrate_scan`). Fixed steps land on a grid
    through the sample times (``StepTo``); adaptive steps are told that the input changes at
    the sample times (``jump_ts``), so no step straddles one and high order is kept.

    Args:
        autonomous_drift: ``g(x)``, the drift without the input.
        input_gain: ``G_u`` (W_in / tau), so the input's contribution is ``G_u·u``.
        solver: a diffrax solver.
        x0: state at ``times[0]``.
        inputs: input at each sample time.
        times: sample times.
        noise: the noise source and its per-step draws on the fixed grid, or None.
        substeps: solver steps per sample interval (fixed steps).
        adaptive: use a PID controller instead of fixed steps.
        rtol: relative tolerance (adaptive).
        atol: absolute tolerance (adaptive).
        max_steps: step limit (adaptive).
        checkpoints: RecursiveCheckpointAdjoint checkpoints (None: diffrax's choice).
    """
    n_intervals = times.shape[0] - 1
    if adaptive and noise is not None:
        raise ValueError("noise needs fixed-step integration")
    h = (times[1] - times[0]) / substeps
    terms = [
        diffrax.ODETerm(lambda t, x, args: autonomous_drift(x)),
        diffrax.ControlTerm(lambda t, x, gain: gain, HeldInputIntegral(inputs, times)),
    ]
    if adaptive:
        controller = diffrax.ClipStepSizeController(
            diffrax.PIDController(rtol=rtol, atol=atol), jump_ts=times[1:-1]
        )
        dt0, steps = h, max_steps
    else:
        widths = jnp.diff(times)[:, None] / substeps
        grid = (times[:-1, None] + widths * jnp.arange(substeps)).reshape(-1)
        controller = diffrax.StepTo(ts=jnp.concatenate([grid, times[-1:]]))
        dt0, steps = None, n_intervals * substeps
        if noise is not None:
            terms.append(
                diffrax.ControlTerm(_identity_diffusion, GridIncrements(*noise, times[0], h))
            )
    solution = diffrax.diffeqsolve(
        diffrax.MultiTerm(*terms),
        solver,
        times[0],
        times[-1],
        dt0,
        x0,
        args=input_gain,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=controller,
        max_steps=steps,
        adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints),
    )
    states = solution.ys
    if states is None:  # SaveAt(ts=times) always saves; this narrows diffrax's Optional
        raise RuntimeError("diffeqsolve returned no states")
    return states


def checkpoint_chunk_for(
    policy: str, chunk: int | None, n_intervals: int, substeps: int, n_units: int
) -> int | None:
    """Intervals per checkpointed chunk under `policy`, or None for no checkpointing."""
    if policy == "never":
        return None
    if policy == "auto" and n_intervals * substeps * n_units < AUTO_CHECKPOINT_SIZE:
        return None
    if chunk is not None:
        return chunk
    return max(1, math.isqrt(max(n_intervals - 1, 0)) + 1)


__all__ = [
    "AUTO_CHECKPOINT_SIZE",
    "EulerParameters",
    "GridIncrements",
    "HeldIncrement",
    "HeldInputIntegral",
    "NoiseDraws",
    "NoiseSource",
    "PreactivationNoiseDrift",
    "RateDynamics",
    "StepNoise",
    "checkpoint_chunk_for",
    "integrate_diffeqsolve",
    "integrate_euler_adjoint",
    "integrate_scan",
]
