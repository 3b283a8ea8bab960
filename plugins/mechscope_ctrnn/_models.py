"""The ctrnn, ei_ctrnn and lowrank_ctrnn models: equinox modules over the shared integrators."""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, Any, TypeVar

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, ScalarLike

import mechscope
from mechscope_ctrnn._activations import get_activation
from mechscope_ctrnn._config import (
    CTRNNConfig,
    EICTRNNConfig,
    LowRankCTRNNConfig,
    _CTRNNFields,
    make_solver,
)
from mechscope_ctrnn._integrate import (
    EulerParameters,
    NoiseDraws,
    NoiseSource,
    PreactivationNoiseDrift,
    RateDynamics,
    checkpoint_chunk_for,
    integrate_diffeqsolve,
    integrate_euler_adjoint,
    integrate_scan,
)

_Model = TypeVar("_Model", bound=mechscope.AbstractModel)


def _is_concretely_zero(noise: mechscope.Noise) -> bool:
    """True if every noise level is a concrete (untraced) zero."""
    for level in (noise.input, noise.recurrent):
        if isinstance(level, jax.core.Tracer):
            return False
        # NumPy, not jnp: under jit a jnp comparison of a closed-over constant is a tracer.
        if np.any(np.asarray(level) != 0):
            return False
    return True


class AbstractCTRNN(mechscope.AbstractModel):
    """A rate network tau·dx/dt = −x + W_rec·φ(x) + W_in·u + b with readout z = W_out·φ(x) + b_out.

    Concrete subclasses choose how the stored (raw) parameters map to the effective weight
    matrices; everything else (integration, noise) lives here, and the formula itself in
    :class:`~mechscope_ctrnn._integrate.RateDynamics` (:meth:`dynamics`).
    """

    # Declared for the type checker only. Under postponed annotations equinox cannot see
    # `eqx.AbstractVar`, so annotations here would become dataclass fields of this class and
    # fix the field order of every subclass; that order is the order arrays are serialised
    # in, so each concrete class declares its own fields in its own (stored) order. W_rec is
    # not among them: ctrnn and ei_ctrnn store it, lowrank_ctrnn forms it from m and n, and
    # recurrent_weights() is the interface.
    if TYPE_CHECKING:
        config: _CTRNNFields
        w_in: Float[Array, "n_units n_inputs"]
        w_out: Float[Array, "n_outputs n_units"]
        bias: Float[Array, " n_units"]
        output_bias: Float[Array, " n_outputs"]
        x0: Float[Array, " n_units"]

    @abc.abstractmethod
    def recurrent_weights(self) -> Float[Array, "n_units n_units"]:
        """Effective W_rec (row = postsynaptic unit, column = presynaptic unit)."""

    @abc.abstractmethod
    def input_weights(self) -> Float[Array, "n_units n_inputs"]:
        """Effective W_in."""

    @abc.abstractmethod
    def output_weights(self) -> Float[Array, "n_outputs n_units"]:
        """Effective W_out."""

    @property
    def n_inputs(self) -> int:
        """Number of input channels."""
        return self.w_in.shape[1]

    @property
    def n_outputs(self) -> int:
        """Number of readout channels."""
        return self.w_out.shape[0]

    @property
    def n_units(self) -> int:
        """Number of recurrent units N."""
        return self.w_in.shape[0]

    def rates(self, x: Float[Array, "*batch n_units"]) -> Float[Array, "*batch n_units"]:
        """Firing rates r = φ(x) (works on any leading axes)."""
        return get_activation(self.config.activation).fn(x)

    def readout(self, r: Float[Array, "*batch n_units"]) -> Float[Array, "*batch n_outputs"]:
        """Output z = W_out·r + b_out (works on any leading axes)."""
        return r @ self.output_weights().T + self.output_bias

    def initial_state(self) -> Float[Array, " n_units"]:
        """x0: learned if ``config.learn_x0``, else a constant the gradient does not reach."""
        if self.config.learn_x0:
            return self.x0
        return jax.lax.stop_gradient(self.x0)

    def dynamics(self) -> RateDynamics:
        """The right-hand side tau·dx/dt = −x + W_rec·φ(x) + W_in·u + b, effective weights."""
        config = self.config
        return RateDynamics(
            self.recurrent_weights(),
            self.input_weights(),
            self.bias,
            get_activation(config.activation),
            config.tau,
        )

    def vector_field(
        self, t: ScalarLike, x: Float[Array, " n_units"], u: Float[Array, " n_inputs"]
    ) -> Float[Array, " n_units"]:
        """dx/dt = (−x + W_rec·φ(x) + W_in·u + b) / tau, noise-free."""
        del t
        return self.dynamics()(x, u)

    def jacobian(
        self, t: ScalarLike, x: Float[Array, " n_units"], u: Float[Array, " n_inputs"]
    ) -> Float[Array, "n_units n_units"]:
        """∂f/∂x = (−I + W_rec·diag(φ'(x))) / tau, in closed form."""
        del t, u
        return self.dynamics().jacobian(x)

    def __call__(
        self,
        inputs: Float[Array, "time n_inputs"],
        times: Float[Array, " time"],
        *,
        key: PRNGKeyArray | None = None,
        noise: mechscope.Noise | None = None,
        x0: Float[Array, " n_units"] | None = None,
    ) -> mechscope.Trajectory:
        """Integrate one trial; ``states[0]`` is x0 at ``times[0]``.

        The input ``inputs[k]`` is held constant on ``[times[k], times[k+1])``, so the last
        sample's input never affects the trajectory. Noise follows the documented convention:
        per solver step of length h, the recurrent term adds σ_rec·sqrt(2h/tau)·ξ and the input
        gets σ_in·sqrt(2·tau/h)·η before W_in, so stationary statistics do not depend on h.
        With ``recurrent_noise_site = "preactivation"`` the recurrent noise instead enters
        inside φ in the recurrence, W_rec·φ(x + σ_rec·sqrt(2·tau/h)·ξ), with the same ξ.

        Args:
            inputs: input at each sample time.
            times: evenly spaced sample times (at least two).
            key: PRNG key for the noise; required unless `noise` is None or concretely zero.
            noise: noise levels (arrays, so sweeping them does not recompile).
            x0: start from this state instead of :meth:`initial_state`.

        Returns:
            The trajectory at `times`.

        Raises:
            ValueError: on mismatched shapes, or noise without a key.
        """
        noise = self._checked_noise(inputs, times, key, noise)
        start = self.initial_state() if x0 is None else x0
        dynamics = self.dynamics()
        draws = None
        if noise is not None:
            assert key is not None  # _checked_noise raised otherwise
            draws = self._noise_draws(dynamics, noise, times, key, start.dtype)
        states = self._integrate(dynamics, start, inputs, times, draws)
        rates = dynamics.activation.fn(states)
        return mechscope.Trajectory(
            times=times, states=states, rates=rates, outputs=self.readout(rates)
        )

    def _checked_noise(
        self,
        inputs: Float[Array, "time n_inputs"],
        times: Float[Array, " time"],
        key: PRNGKeyArray | None,
        noise: mechscope.Noise | None,
    ) -> mechscope.Noise | None:
        """Validate a call's shapes and noise; concretely zero noise becomes None."""
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
        if noise is not None and self.config.adaptive:
            raise ValueError(
                "noise needs fixed-step integration (adaptive=False; Euler is then "
                "Euler-Maruyama); adaptive stepping is for noise-free runs"
            )
        return noise

    def _noise_draws(
        self,
        dynamics: RateDynamics,
        noise: mechscope.Noise,
        times: Float[Array, " time"],
        key: PRNGKeyArray,
        dtype: jnp.dtype,
    ) -> NoiseDraws:
        """The noise source and one trial's standard-normal draws for every solver step."""
        substeps = self.config.substeps
        # Convention (see the docs): one ξ per unit and one η per input channel per step,
        # drawn from the two halves of jax.random.split(key).
        key_rec, key_in = jax.random.split(key)
        n_steps = (times.shape[0] - 1) * substeps
        h = (times[1] - times[0]) / substeps
        source = NoiseSource(
            input_weights=dynamics.w_in,
            sigma_recurrent=jnp.asarray(noise.recurrent, dtype),
            sigma_input=jnp.asarray(noise.input, dtype),
            scale=jnp.sqrt(2.0 * h / dynamics.tau).astype(dtype),
        )
        return (
            source,
            jax.random.normal(key_rec, (n_steps, self.n_units), dtype),
            jax.random.normal(key_in, (n_steps, self.n_inputs), dtype),
        )

    def _integrate(
        self,
        dynamics: RateDynamics,
        start: Float[Array, " n_units"],
        inputs: Float[Array, "time n_inputs"],
        times: Float[Array, " time"],
        draws: NoiseDraws | None,
    ) -> Float[Array, "time n_units"]:
        """The states at `times` by the path the config selects (adjoint, scan, diffeqsolve)."""
        config = self.config
        n_intervals = times.shape[0] - 1
        substeps = config.substeps
        solver = make_solver(config.solver)
        chunk = checkpoint_chunk_for(
            config.checkpointing, config.checkpoint_chunk, n_intervals, substeps, self.n_units
        )
        if draws is not None and config.recurrent_noise_site == "preactivation":
            # Validation allows this site only with the scan integrator (adaptive runs
            # refuse noise earlier), and never with the adjoint.
            source, xi, eta = draws
            h = (times[1] - times[0]) / substeps
            level = source.sigma_recurrent * jnp.sqrt(2.0 * dynamics.tau / h).astype(start.dtype)
            input_only = eqx.tree_at(
                lambda s: s.sigma_recurrent, source, jnp.zeros_like(source.sigma_recurrent)
            )
            return integrate_scan(
                PreactivationNoiseDrift(dynamics, level),
                solver,
                start,
                inputs,
                times,
                (input_only.increment, (xi, eta)),
                substeps=substeps,
                checkpoint_chunk=chunk,
                drift_sees_draws=True,
            )
        if config.uses_adjoint(chunk):
            parameters = EulerParameters(
                dynamics.w_rec, dynamics.w_in, dynamics.bias, start, inputs
            )
            return integrate_euler_adjoint(
                dynamics.activation, dynamics.tau, parameters, times, draws
            )
        if config.uses_scan:
            step_noise = None if draws is None else (draws[0].increment, draws[1:])
            return integrate_scan(
                dynamics,
                solver,
                start,
                inputs,
                times,
                step_noise,
                substeps=substeps,
                checkpoint_chunk=chunk,
            )
        checkpoints = None
        if config.checkpointing == "never" and not config.adaptive:
            checkpoints = n_intervals * substeps
        return integrate_diffeqsolve(
            dynamics.without_input,
            dynamics.input_gain,
            solver,
            start,
            inputs,
            times,
            draws,
            substeps=substeps,
            adaptive=config.adaptive,
            rtol=config.rtol,
            atol=config.atol,
            max_steps=config.max_steps,
            checkpoints=checkpoints,
        )


class CTRNN(AbstractCTRNN):
    """The standard continuous-time RNN with unconstrained weights."""

    config: CTRNNConfig = eqx.field(static=True)
    w_rec: Float[Array, "n_units n_units"]
    w_in: Float[Array, "n_units n_inputs"]
    w_out: Float[Array, "n_outputs n_units"]
    bias: Float[Array, " n_units"]
    output_bias: Float[Array, " n_outputs"]
    x0: Float[Array, " n_units"]

    def __check_init__(self):
        _check_shapes(self)

    def recurrent_weights(self) -> Float[Array, "n_units n_units"]:
        """W_rec as stored."""
        return self.w_rec

    def input_weights(self) -> Float[Array, "n_units n_inputs"]:
        """W_in as stored."""
        return self.w_in

    def output_weights(self) -> Float[Array, "n_outputs n_units"]:
        """W_out as stored."""
        return self.w_out


class EICTRNN(AbstractCTRNN):
    """A Dale's-law network: W_rec = |W_raw|·diag(sign), so every update keeps the signs.

    Units ``0 .. n_excitatory-1`` are excitatory (their outgoing weights, i.e. columns of
    W_rec, are ≥ 0), the rest inhibitory (columns ≤ 0).
    """

    config: EICTRNNConfig = eqx.field(static=True)
    w_rec: Float[Array, "n_units n_units"]
    w_in: Float[Array, "n_units n_inputs"]
    w_out: Float[Array, "n_outputs n_units"]
    bias: Float[Array, " n_units"]
    output_bias: Float[Array, " n_outputs"]
    x0: Float[Array, " n_units"]

    def __check_init__(self):
        _check_shapes(self)

    def signs(self) -> Float[Array, " n_units"]:
        """+1 for excitatory units, −1 for inhibitory ones."""
        index = jnp.arange(self.n_units)
        return jnp.where(index < self.config.n_excitatory, 1.0, -1.0).astype(self.w_rec.dtype)

    def recurrent_weights(self) -> Float[Array, "n_units n_units"]:
        """|W_raw|·diag(sign): column j carries the sign of presynaptic unit j."""
        return jnp.abs(self.w_rec) * self.signs()[None, :]

    def input_weights(self) -> Float[Array, "n_units n_inputs"]:
        """|W_in_raw| when ``nonnegative_inputs``, else W_in as stored."""
        return jnp.abs(self.w_in) if self.config.nonnegative_inputs else self.w_in

    def output_weights(self) -> Float[Array, "n_outputs n_units"]:
        """W_out, with inhibitory columns zeroed when reading out from excitatory units only."""
        if not self.config.readout_from_excitatory:
            return self.w_out
        excitatory = (jnp.arange(self.n_units) < self.config.n_excitatory).astype(self.w_out.dtype)
        return self.w_out * excitatory[None, :]


class LowRankCTRNN(AbstractCTRNN):
    """A CT-RNN with rank-R recurrent weights W_rec = m·nᵀ/N (Mastrogiuseppe & Ostojic 2018).

    The trained parameters are the connectivity vectors m, n ∈ R^{N×R}; W_rec is formed from
    them wherever the dynamics need it, so integration, the Euler adjoint and the Jacobian
    are the ctrnn's, and their gradients reach m and n through the product.
    """

    config: LowRankCTRNNConfig = eqx.field(static=True)
    m: Float[Array, "n_units rank"]
    n: Float[Array, "n_units rank"]
    w_in: Float[Array, "n_units n_inputs"]
    w_out: Float[Array, "n_outputs n_units"]
    bias: Float[Array, " n_units"]
    output_bias: Float[Array, " n_outputs"]
    x0: Float[Array, " n_units"]

    def __check_init__(self):
        want = (self.config.n_units, self.config.rank)
        for name in ("m", "n"):
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise ValueError(f"{name} has shape {got}, expected {want} (n_units, rank)")
        _check_shapes(self)

    @property
    def w_rec(self) -> Float[Array, "n_units n_units"]:
        """W_rec = m·nᵀ/N, formed from the connectivity vectors."""
        return self.m @ self.n.T / self.m.shape[0]

    def recurrent_weights(self) -> Float[Array, "n_units n_units"]:
        """W_rec = m·nᵀ/N (rank ≤ R)."""
        return self.w_rec

    def input_weights(self) -> Float[Array, "n_units n_inputs"]:
        """W_in as stored."""
        return self.w_in

    def output_weights(self) -> Float[Array, "n_outputs n_units"]:
        """W_out as stored."""
        return self.w_out

    def latent(self, x: Float[Array, "*batch n_units"]) -> Float[Array, "*batch rank"]:
        """Coordinates of x on the columns of m (least squares), κ with x ≈ m·κ."""
        return jnp.linalg.lstsq(self.m, x.reshape(-1, x.shape[-1]).T)[0].T.reshape(
            *x.shape[:-1], self.m.shape[1]
        )


def _check_shapes(model: AbstractCTRNN) -> None:
    n = model.config.n_units
    checks = {
        "w_rec": (model.recurrent_weights().shape, (n, n)),
        "w_in": (model.w_in.shape[:1], (n,)),
        "w_out": (model.w_out.shape[1:], (n,)),
        "bias": (model.bias.shape, (n,)),
        "output_bias": (model.output_bias.shape, model.w_out.shape[:1]),
        "x0": (model.x0.shape, (n,)),
    }
    for name, (got, want) in checks.items():
        if tuple(got) != tuple(want):
            raise ValueError(f"{name} has shape {got}, expected {want} for {n} units")


def _place(model: _Model, device: str | None) -> _Model:
    if device is None:
        return model
    target = resolve_device(device)
    return jax.tree.map(lambda leaf: jax.device_put(leaf, target), model)


# jax.Device is a runtime alias of a compiled class without stubs: pyright cannot use it as a
# type, so the return type is spelled Any.
def resolve_device(name: str) -> Any:
    """The JAX device named like ``'cpu'``, ``'gpu'`` or ``'cuda:1'``.

    Raises:
        ValueError: if this JAX installation has no such device.
    """
    platform, _, index = name.partition(":")
    try:
        devices = jax.devices(platform)
    except RuntimeError as error:
        raise ValueError(f"device '{name}' is not available here: {error}") from None
    position = int(index or 0)
    if position >= len(devices):
        raise ValueError(f"device '{name}': only {len(devices)} {platform} device(s) here")
    return devices[position]


def make_ctrnn(config: CTRNNConfig, *, n_inputs: int, n_outputs: int, key: PRNGKeyArray) -> CTRNN:
    """Build a ctrnn: W_rec ~ N(0, g²/N), W_in, W_out ~ N(0, 1/fan-in), biases and x0 zero.

    Args:
        config: the validated config.
        n_inputs: input channels of the task.
        n_outputs: output channels of the task.
        key: PRNG key for the initial weights.
    """
    if type(config) is not CTRNNConfig:
        raise TypeError(f"make_ctrnn needs a CTRNNConfig, got {type(config).__name__}")
    n = config.n_units
    key_rec, key_in, key_out = jax.random.split(key, 3)
    model = CTRNN(
        config=config,
        w_rec=config.gain / math.sqrt(n) * jax.random.normal(key_rec, (n, n)),
        w_in=jax.random.normal(key_in, (n, n_inputs)) / math.sqrt(max(n_inputs, 1)),
        w_out=jax.random.normal(key_out, (n_outputs, n)) / math.sqrt(n),
        bias=jnp.zeros(n),
        output_bias=jnp.zeros(n_outputs),
        x0=jnp.zeros(n),
    )
    return _place(model, config.device)


def make_ei_ctrnn(
    config: EICTRNNConfig, *, n_inputs: int, n_outputs: int, key: PRNGKeyArray
) -> EICTRNN:
    """Build an ei_ctrnn: row-balanced E/I magnitudes with bulk spectral radius ≈ g.

    Magnitudes are |N(0, 1)|; each row's inhibitory weights are scaled so that the row's
    total inhibition equals its total excitation (exact balance keeps the eigenvalues free of
    the outlier a mean imbalance would create), and the whole matrix is scaled so that the
    radius of its eigenvalue bulk, sqrt(Σ_j Var W_ij) (Rajan & Abbott 2006), equals g.

    Args:
        config: the validated config.
        n_inputs: input channels of the task.
        n_outputs: output channels of the task.
        key: PRNG key for the initial weights.
    """
    if type(config) is not EICTRNNConfig:
        raise TypeError(f"make_ei_ctrnn needs an EICTRNNConfig, got {type(config).__name__}")
    n = config.n_units
    n_exc = config.n_excitatory
    n_inh = n - n_exc
    key_rec, key_in, key_out = jax.random.split(key, 3)
    magnitude = jnp.abs(jax.random.normal(key_rec, (n, n)))
    excitatory = jnp.arange(n) < n_exc
    excitation = jnp.sum(jnp.where(excitatory, magnitude, 0.0), axis=1, keepdims=True)
    inhibition = jnp.sum(jnp.where(excitatory, 0.0, magnitude), axis=1, keepdims=True)
    magnitude = jnp.where(excitatory, magnitude, magnitude * excitation / inhibition)
    # Inhibitory weights are about n_E/n_I times larger than excitatory ones.
    balance = n_exc / n_inh
    folded_variance = 1.0 - 2.0 / math.pi  # variance of |z| for z ~ N(0, 1)
    bulk_radius = math.sqrt(folded_variance * (n_exc + n_inh * balance**2))
    fan_in_out = n_exc if config.readout_from_excitatory else n
    model = EICTRNN(
        config=config,
        w_rec=config.gain / bulk_radius * magnitude,
        w_in=jax.random.normal(key_in, (n, n_inputs)) / math.sqrt(max(n_inputs, 1)),
        w_out=jax.random.normal(key_out, (n_outputs, n)) / math.sqrt(fan_in_out),
        bias=jnp.zeros(n),
        output_bias=jnp.zeros(n_outputs),
        x0=jnp.zeros(n),
    )
    return _place(model, config.device)


def make_lowrank_ctrnn(
    config: LowRankCTRNNConfig, *, n_inputs: int, n_outputs: int, key: PRNGKeyArray
) -> LowRankCTRNN:
    """Build a lowrank_ctrnn: m ~ N(0, g²), n ~ N(0, 1) entrywise; W_in, W_out as for ctrnn.

    Mastrogiuseppe & Ostojic's convention: connectivity vectors with O(1) entries and
    W_rec = m·nᵀ/N, so each non-zero singular value of W_rec is about g·‖m̂‖‖n̂‖ ≈ g and the
    overlaps nᵢᵀmⱼ/N (the eigenvalues that set the dynamics) start O(g/sqrt(N)), near zero.

    Args:
        config: the validated config.
        n_inputs: input channels of the task.
        n_outputs: output channels of the task.
        key: PRNG key for the initial weights.
    """
    if type(config) is not LowRankCTRNNConfig:
        raise TypeError(
            f"make_lowrank_ctrnn needs a LowRankCTRNNConfig, got {type(config).__name__}"
        )
    n, rank = config.n_units, config.rank
    key_m, key_n, key_in, key_out = jax.random.split(key, 4)
    model = LowRankCTRNN(
        config=config,
        m=config.gain * jax.random.normal(key_m, (n, rank)),
        n=jax.random.normal(key_n, (n, rank)),
        w_in=jax.random.normal(key_in, (n, n_inputs)) / math.sqrt(max(n_inputs, 1)),
        w_out=jax.random.normal(key_out, (n_outputs, n)) / math.sqrt(n),
        bias=jnp.zeros(n),
        output_bias=jnp.zeros(n_outputs),
        x0=jnp.zeros(n),
    )
    return _place(model, config.device)
