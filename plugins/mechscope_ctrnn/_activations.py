"""Firing-rate nonlinearities φ and their derivatives, in a registry plugins can extend."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

ElementwiseFn = Callable[[Float[Array, "..."]], Float[Array, "..."]]


@dataclasses.dataclass(frozen=True)
class Activation:
    """An elementwise firing-rate function φ with its derivative φ'.

    Attributes:
        name: the name configs use (``activation = "tanh"``).
        fn: φ, applied elementwise.
        derivative: φ', applied elementwise; used by the analytic Jacobian.
    """

    name: str
    fn: ElementwiseFn
    derivative: ElementwiseFn


def _retanh(x: Float[Array, "..."]) -> Float[Array, "..."]:
    return jnp.maximum(jnp.tanh(x), 0.0)


def _retanh_derivative(x: Float[Array, "..."]) -> Float[Array, "..."]:
    return jnp.where(x > 0, 1.0 - jnp.tanh(x) ** 2, 0.0)


def _sigmoid_derivative(x: Float[Array, "..."]) -> Float[Array, "..."]:
    s = jax.nn.sigmoid(x)
    return s * (1.0 - s)


ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation("tanh", jnp.tanh, lambda x: 1.0 - jnp.tanh(x) ** 2),
    "relu": Activation("relu", jax.nn.relu, lambda x: jnp.where(x > 0, 1.0, 0.0)),
    "softplus": Activation("softplus", jax.nn.softplus, jax.nn.sigmoid),
    "retanh": Activation("retanh", _retanh, _retanh_derivative),
    "sigmoid": Activation("sigmoid", jax.nn.sigmoid, _sigmoid_derivative),
    "linear": Activation("linear", lambda x: x, jnp.ones_like),
}
"""Every activation a ctrnn config may name, keyed by name. Extend with
:func:`register_activation`, not by writing to the dict."""


def _autodiff_derivative(fn: ElementwiseFn) -> ElementwiseFn:
    # For an elementwise φ, a forward-mode tangent of ones gives φ' at every element at once.
    def derivative(x: Float[Array, "..."]) -> Float[Array, "..."]:
        return jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]

    return derivative


def register_activation(
    name: str,
    fn: ElementwiseFn,
    derivative: ElementwiseFn | None = None,
    *,
    overwrite: bool = False,
) -> Activation:
    """Make an elementwise nonlinearity available to ctrnn configs under `name`.

    Call it at import time of your plugin, before any config naming it is validated.

    Args:
        name: the name configs will use.
        fn: φ, elementwise and differentiable by JAX.
        derivative: φ', elementwise; derived by forward-mode autodiff when omitted.
        overwrite: replace an existing activation of that name instead of failing.

    Returns:
        The registered :class:`Activation`.

    Raises:
        ValueError: if `name` is taken (and `overwrite` is false) or is not a valid name.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"activation name must be a Python identifier, got {name!r}")
    if name in ACTIVATIONS and not overwrite:
        raise ValueError(
            f"activation '{name}' is already registered; pass overwrite=True to replace it"
        )
    if not callable(fn):
        raise ValueError(f"activation '{name}': fn must be callable, got {fn!r}")
    activation = Activation(
        name, fn, derivative if derivative is not None else _autodiff_derivative(fn)
    )
    ACTIVATIONS[name] = activation
    return activation


def get_activation(name: str) -> Activation:
    """The registered activation called `name`.

    Raises:
        ValueError: naming the registered activations, if there is none of that name.
    """
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation '{name}'; registered: {known}") from None
