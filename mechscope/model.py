"""The model interface: a continuous-time dynamical system with a readout."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike

from mechscope.config import Config


class Noise(eqx.Module):
    """Noise levels for one forward pass.

    Levels are arrays, not static numbers, so sweeping them does not recompile jitted code.
    Each level is the standard deviation of the process in the units the model documents,
    defined so that the effect does not depend on the integration step.

    Attributes:
        input: standard deviation of noise added to the inputs.
        recurrent: standard deviation of noise added to the state dynamics.
    """

    input: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.0)
    recurrent: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.0)

    @classmethod
    def none(cls) -> Noise:
        """No noise."""
        return cls(input=0.0, recurrent=0.0)


class Trajectory(eqx.Module):
    """A model's response to one trial, sampled at the task's times.

    Batched calls (``jax.vmap``) give the same fields with a leading batch axis.

    Attributes:
        times: sample times, shape ``[time]``.
        states: hidden state x, shape ``[time, n_units]``.
        rates: firing rates r = φ(x), shape ``[time, n_units]``.
        outputs: readout z, shape ``[time, n_outputs]``.
    """

    times: Float[Array, " time"]
    states: Float[Array, "time n_units"]
    rates: Float[Array, "time n_units"]
    outputs: Float[Array, "time n_outputs"]


class AbstractModel(eqx.Module):
    """A continuous-time recurrent model, dx/dt = f(t, x, u), with rates and a linear readout.

    Exposing the vector field is what lets probes find fixed points, draw flow fields and
    linearise any model. Concrete models are final modules; their config is a static field.
    """

    config: eqx.AbstractVar[Config]

    @property
    @abc.abstractmethod
    def n_inputs(self) -> int:
        """Number of input channels."""

    @property
    @abc.abstractmethod
    def n_outputs(self) -> int:
        """Number of readout channels."""

    @property
    @abc.abstractmethod
    def n_units(self) -> int:
        """Dimension of the state x."""

    @abc.abstractmethod
    def vector_field(
        self, t: ScalarLike, x: Float[Array, " n_units"], u: Float[Array, " n_inputs"]
    ) -> Float[Array, " n_units"]:
        """dx/dt at time `t`, state `x` and input `u` (noise-free)."""

    @abc.abstractmethod
    def rates(self, x: Float[Array, " n_units"]) -> Float[Array, " n_units"]:
        """Firing rates r = φ(x)."""

    @abc.abstractmethod
    def readout(self, r: Float[Array, " n_units"]) -> Float[Array, " n_outputs"]:
        """Output z from rates r."""

    @abc.abstractmethod
    def initial_state(self) -> Float[Array, " n_units"]:
        """The state x0 every trial starts from (fixed or learned)."""

    @abc.abstractmethod
    def __call__(
        self,
        inputs: Float[Array, "time n_inputs"],
        times: Float[Array, " time"],
        *,
        key: PRNGKeyArray | None = None,
        noise: Noise | None = None,
        x0: Float[Array, " n_units"] | None = None,
    ) -> Trajectory:
        """Integrate one trial and sample the state at `times`.

        Args:
            inputs: input at each sample time (held piecewise constant between samples).
            times: sample times, evenly spaced.
            key: PRNG key; required when `noise` is non-zero.
            noise: noise levels (arrays, so sweeps do not recompile); None means no noise.
            x0: start from this state instead of :meth:`initial_state`.
        """

    def jacobian(
        self, t: ScalarLike, x: Float[Array, " n_units"], u: Float[Array, " n_inputs"]
    ) -> Float[Array, "n_units n_units"]:
        """∂f/∂x at (t, x, u). Forward-mode autodiff by default; models may override."""
        return jax.jacfwd(lambda state: self.vector_field(t, state, u))(x)

    def speed(self, x: Float[Array, " n_units"], u: Float[Array, " n_inputs"]) -> Scalar:
        """q(x) = ½‖f(x, u)‖², the kinetic energy minimised to find fixed and slow points."""
        velocity = self.vector_field(0.0, x, u)
        return 0.5 * jnp.sum(velocity**2)


def simulate(
    model: AbstractModel,
    inputs: Float[Array, "batch time n_inputs"],
    times: Float[Array, " time"],
    *,
    key: PRNGKeyArray | None = None,
    noise: Noise | None = None,
    keys: PRNGKeyArray | None = None,
) -> Trajectory:
    """Run `model` on a batch of trials (vmapped); one independent noise key per trial.

    Args:
        model: the model.
        inputs: inputs of each trial, e.g. ``trials.inputs``.
        times: the shared sample times, e.g. ``trials.times``.
        key: PRNG key; required when `noise` is non-zero. Trial i gets
            ``jax.random.split(key, batch)[i]``.
        noise: noise levels; None means noise-free.
        keys: the trials' own keys instead of `key` (one per trial), e.g. a slice of
            ``jax.random.split(key, batch)`` to run part of a batch with the noise the whole
            batch would get.

    Returns:
        A Trajectory whose fields have a leading batch axis (``times`` too).
    """
    batch = inputs.shape[0]
    if key is not None and keys is not None:
        raise ValueError("pass either key (split per trial) or keys (one per trial), not both")
    if key is not None:
        keys = jax.random.split(key, batch)
    elif keys is None:
        return jax.vmap(lambda u: model(u, times, noise=noise))(inputs)
    elif keys.shape[0] != batch:
        raise ValueError(f"keys has {keys.shape[0]} keys for {batch} trials")
    return jax.vmap(lambda u, k: model(u, times, key=k, noise=noise))(inputs, keys)
