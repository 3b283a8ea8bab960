"""Synthetic systems with known mechanisms, the controls every comparison must pass.

Each system has closed-form dynamics in three latent coordinates z = Eᵀx (E: a random
orthonormal embedding into ``n_units``, drawn from the model's key) and decays off that
subspace, so its state lives in ``n_units`` dimensions like a network's:

- :class:`PointAttractor`: one stable node, dz/dt = −z/τ.
- :class:`LineAttractor`: neutral along z₁, decay in z₂, z₃ (a continuum of fixed points).
- :class:`RingAttractor`: radius relaxes to 1 in the (z₁, z₂) plane, no angular motion.
- :class:`LimitCycle`: the same radial relaxation plus rotation at ω (a Hopf oscillator).

The key also jitters τ and ω (``jitter``, log-normal), so seeds are repeats of one mechanism
in different bases with slightly different parameters, and recurrent noise is available
through :class:`mechscope.Noise`. :func:`warp` bends trajectories by a smooth invertible map.
"""

from __future__ import annotations

import abc
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import pydantic
from jaxtyping import Array, Float, PRNGKeyArray, ScalarLike

import mechscope

N_LATENT = 3


class SyntheticConfig(mechscope.Config):
    """A synthetic system: size, time constant, rotation speed and seed-to-seed jitter."""

    n_units: int = pydantic.Field(default=10, ge=N_LATENT, description="State dimension.")
    tau: float = pydantic.Field(default=0.1, gt=0, description="Relaxation time constant (s).")
    omega: float = pydantic.Field(
        default=2 * jnp.pi, description="Angular speed of the limit cycle (rad/s)."
    )
    jitter: float = pydantic.Field(
        default=0.1, ge=0, description="Log-normal spread of τ and ω across seeds."
    )


class AbstractSyntheticSystem(mechscope.AbstractModel):
    """Closed-form latent dynamics embedded in ``n_units`` dimensions, integrated by Euler.

    Subclasses define :meth:`latent_velocity`; the state off the latent subspace decays with
    τ. The single input pushes along the first latent axis, the readout is (z₁, z₂).
    """

    config: eqx.AbstractVar[SyntheticConfig]
    embedding: eqx.AbstractVar[Float[Array, "n_units 3"]]
    tau: eqx.AbstractVar[Float[Array, ""]]
    omega: eqx.AbstractVar[Float[Array, ""]]

    @abc.abstractmethod
    def latent_velocity(self, z: Float[Array, " 3"]) -> Float[Array, " 3"]:
        """dz/dt in the latent coordinates."""

    @property
    def n_inputs(self) -> int:
        """One input channel, along the first latent axis."""
        return 1

    @property
    def n_outputs(self) -> int:
        """Readout of the first two latent coordinates."""
        return 2

    @property
    def n_units(self) -> int:
        """State dimension."""
        return self.config.n_units

    def vector_field(
        self, t: ScalarLike, x: Float[Array, " n_units"], u: Float[Array, " n_inputs"]
    ) -> Float[Array, " n_units"]:
        """dx/dt = E(g(z) + u e₁) − (x − E z)/τ with z = Eᵀx."""
        del t
        z = self.embedding.T @ x
        drive = jnp.zeros(N_LATENT, x.dtype).at[0].set(u[0])
        return self.embedding @ (self.latent_velocity(z) + drive) - (x - self.embedding @ z) / (
            self.tau
        )

    def rates(self, x: Float[Array, " n_units"]) -> Float[Array, " n_units"]:
        """Rates are the state (a linear system of observables)."""
        return x

    def readout(self, r: Float[Array, " n_units"]) -> Float[Array, " n_outputs"]:
        """(z₁, z₂)."""
        return (self.embedding.T @ r)[:2]

    def initial_state(self) -> Float[Array, " n_units"]:
        """The point z = (1, 0, 0)."""
        return self.embedding[:, 0]

    def embed(self, z: Float[Array, "... 3"]) -> Float[Array, "... n_units"]:
        """Latent coordinates to states."""
        return z @ self.embedding.T

    def __call__(
        self,
        inputs: Float[Array, "time n_inputs"],
        times: Float[Array, " time"],
        *,
        key: PRNGKeyArray | None = None,
        noise: mechscope.Noise | None = None,
        x0: Float[Array, " n_units"] | None = None,
    ) -> mechscope.Trajectory:
        """Euler-integrate one trial; recurrent noise σ enters as σ·√dt per step."""
        dt = times[1] - times[0]
        noise = mechscope.Noise.none() if noise is None else noise
        key = jax.random.key(0) if key is None else key
        k_rec, k_in = jax.random.split(key)
        kicks = noise.recurrent * jax.random.normal(k_rec, (times.shape[0], self.n_units))
        inputs = inputs + noise.input * jax.random.normal(k_in, inputs.shape)

        def step(x, slice_):
            u, kick = slice_
            return x + dt * self.vector_field(0.0, x, u) + jnp.sqrt(dt) * kick, x

        start = self.initial_state() if x0 is None else x0
        _, states = jax.lax.scan(step, start, (inputs, kicks))
        return mechscope.Trajectory(
            times=times, states=states, rates=states, outputs=jax.vmap(self.readout)(states)
        )


def _draw(config: SyntheticConfig, key: PRNGKeyArray) -> tuple[Array, Array, Array]:
    k_embed, k_tau, k_omega = jax.random.split(key, 3)
    q, r = jnp.linalg.qr(jax.random.normal(k_embed, (config.n_units, N_LATENT)))
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    tau = config.tau * jnp.exp(config.jitter * jax.random.normal(k_tau))
    omega = config.omega * jnp.exp(config.jitter * jax.random.normal(k_omega))
    return q, tau, omega


def _radial(z: Array, tau: Array) -> Array:
    """Relaxation of the (z₁, z₂) radius to 1: dr/dt = r(1 − r²)/τ, written in Cartesian form."""
    planar = z[:2]
    return planar * (1 - jnp.sum(planar**2)) / tau


class PointAttractor(AbstractSyntheticSystem):
    """A single stable node at the origin: dz/dt = −z/τ."""

    config: SyntheticConfig = eqx.field(static=True)
    embedding: Float[Array, "n_units 3"]
    tau: Float[Array, ""]
    omega: Float[Array, ""]

    def __init__(self, config: SyntheticConfig, *, key: PRNGKeyArray, **_):
        self.config = config
        self.embedding, self.tau, self.omega = _draw(config, key)

    def latent_velocity(self, z: Float[Array, " 3"]) -> Float[Array, " 3"]:
        """−z/τ."""
        return -z / self.tau


class LineAttractor(AbstractSyntheticSystem):
    """A line of fixed points along z₁; z₂ and z₃ decay onto it."""

    config: SyntheticConfig = eqx.field(static=True)
    embedding: Float[Array, "n_units 3"]
    tau: Float[Array, ""]
    omega: Float[Array, ""]

    def __init__(self, config: SyntheticConfig, *, key: PRNGKeyArray, **_):
        self.config = config
        self.embedding, self.tau, self.omega = _draw(config, key)

    def latent_velocity(self, z: Float[Array, " 3"]) -> Float[Array, " 3"]:
        """(0, −z₂/τ, −z₃/τ)."""
        return jnp.stack([jnp.zeros_like(z[0]), -z[1] / self.tau, -z[2] / self.tau])


class RingAttractor(AbstractSyntheticSystem):
    """A ring of fixed points of radius 1 in (z₁, z₂); no motion along the ring."""

    config: SyntheticConfig = eqx.field(static=True)
    embedding: Float[Array, "n_units 3"]
    tau: Float[Array, ""]
    omega: Float[Array, ""]

    def __init__(self, config: SyntheticConfig, *, key: PRNGKeyArray, **_):
        self.config = config
        self.embedding, self.tau, self.omega = _draw(config, key)

    def latent_velocity(self, z: Float[Array, " 3"]) -> Float[Array, " 3"]:
        """Radial relaxation to the unit circle, decay of z₃."""
        return jnp.concatenate([_radial(z, self.tau), -z[2:] / self.tau])


class LimitCycle(AbstractSyntheticSystem):
    """A stable limit cycle of radius 1 in (z₁, z₂), traversed at angular speed ω."""

    config: SyntheticConfig = eqx.field(static=True)
    embedding: Float[Array, "n_units 3"]
    tau: Float[Array, ""]
    omega: Float[Array, ""]

    def __init__(self, config: SyntheticConfig, *, key: PRNGKeyArray, **_):
        self.config = config
        self.embedding, self.tau, self.omega = _draw(config, key)

    def latent_velocity(self, z: Float[Array, " 3"]) -> Float[Array, " 3"]:
        """Hopf normal form: radial relaxation plus rotation, decay of z₃."""
        rotation = self.omega * jnp.stack([-z[1], z[0]])
        return jnp.concatenate([_radial(z, self.tau) + rotation, -z[2:] / self.tau])


SYSTEMS: dict[str, type[AbstractSyntheticSystem]] = {
    "point": PointAttractor,
    "line": LineAttractor,
    "ring": RingAttractor,
    "limit_cycle": LimitCycle,
}


def latent_starts(n_conditions: int) -> Float[Array, "condition 3"]:
    """Initial latent states: angles around the circle, alternating radius 0.5 / 1.5, z₃ = ±0.5."""
    angles = 2 * jnp.pi * jnp.arange(n_conditions) / n_conditions
    radius = jnp.where(jnp.arange(n_conditions) % 2 == 0, 0.5, 1.5)
    z3 = jnp.where(jnp.arange(n_conditions) % 4 < 2, 0.5, -0.5)
    return jnp.stack([radius * jnp.cos(angles), radius * jnp.sin(angles), z3], axis=-1)


def condition_trajectories(
    model: AbstractSyntheticSystem,
    *,
    n_conditions: int = 8,
    n_times: int = 100,
    dt: float = 0.01,
    noise: float = 0.0,
    key: PRNGKeyArray | None = None,
) -> Float[Array, "condition time unit"]:
    """States from :func:`latent_starts`, with zero input, as ``[condition, time, unit]``.

    Args:
        model: the system.
        n_conditions: number of initial conditions.
        n_times: samples per trajectory.
        dt: sample (and Euler) step.
        noise: recurrent noise σ (per √s); needs `key`.
        key: PRNG key for the noise.
    """
    times = jnp.arange(n_times) * dt
    inputs = jnp.zeros((n_times, 1))
    starts = model.embed(latent_starts(n_conditions))
    keys = jax.random.split(jax.random.key(0) if key is None else key, n_conditions)
    level = mechscope.Noise(recurrent=noise)
    return jax.vmap(lambda x0, k: model(inputs, times, key=k, noise=level, x0=x0).states)(
        starts, keys
    )


def make_system(
    kind: Literal["point", "line", "ring", "limit_cycle"],
    config: SyntheticConfig | None = None,
    *,
    key: PRNGKeyArray,
) -> AbstractSyntheticSystem:
    """A synthetic system by name."""
    system: Any = SYSTEMS[kind]  # each final class takes (config, *, key)
    return system(SyntheticConfig() if config is None else config, key=key)


def random_orthogonal(n: int, *, key: PRNGKeyArray, proper: bool = True) -> Float[Array, "n n"]:
    """A Haar-random orthogonal matrix with det +1 (`proper`) or −1."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    flip = jnp.sign(jnp.linalg.det(q)) * (1.0 if proper else -1.0)
    return q.at[:, 0].multiply(flip)


def warp(
    trajectories: Float[Array, "... unit"],
    strength: float,
    *,
    key: PRNGKeyArray,
) -> Float[Array, "... unit"]:
    """A smooth invertible nonlinear warp y = Q(x + β s tanh(W x / s)), applied to every state.

    s is the root-mean-square distance of the states from their mean (so β is unitless and
    the warp bends the data on its own scale), W and Q are random orthogonal. The Jacobian
    Q(I + β diag(sech²(·)) W) is invertible for β < 1 (‖β diag(·) W‖₂ ≤ β), and by the
    contraction-mapping theorem x ↦ x + β s tanh(Wx/s) is a bijection of ℝⁿ: a change of
    coordinates that keeps the dynamics (conjugate systems) but bends the geometry.

    Args:
        trajectories: states, any leading shape, last axis units.
        strength: β in [0, 1).
        key: PRNG key for W and Q.
    """
    if not 0 <= strength < 1:
        raise ValueError(f"warp strength must be in [0, 1) to stay invertible, got {strength}")
    n = trajectories.shape[-1]
    k_w, k_q = jax.random.split(key)
    w, q = random_orthogonal(n, key=k_w), random_orthogonal(n, key=k_q)
    flat = trajectories.reshape(-1, n)
    scale = jnp.sqrt(jnp.mean(jnp.sum((flat - flat.mean(0)) ** 2, axis=-1)))
    bent = trajectories + strength * scale * jnp.tanh(trajectories @ w.T / scale)
    return bent @ q.T
