"""Loss terms of the BPTT trainer: masked MSE, rate, weight and simple-dynamics penalties."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

import mechscope


class Hyperparameters(eqx.Module):
    """Learning rate, penalty weights and noise levels, as arrays so sweeps do not recompile.

    Attributes:
        learning_rate: the base learning rate (a schedule's initial/peak value).
        rate_reg: λ_r, weight of mean(r²).
        weight_reg: λ_w, weight of Σ over weight matrices of mean(W²).
        simple_dynamics_reg: λ_d, weight of the simple-dynamics penalty.
        input_noise: σ_in during training.
        recurrent_noise: σ_rec during training.
    """

    learning_rate: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    rate_reg: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    weight_reg: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    simple_dynamics_reg: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    input_noise: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    recurrent_noise: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    @classmethod
    def from_config(cls, config: Any) -> Hyperparameters:
        """Read the values from a :class:`BPTTConfig`."""
        return cls(
            learning_rate=jnp.asarray(config.learning_rate, dtype=float),
            rate_reg=jnp.asarray(config.rate_reg, dtype=float),
            weight_reg=jnp.asarray(config.weight_reg, dtype=float),
            simple_dynamics_reg=jnp.asarray(config.simple_dynamics_reg, dtype=float),
            input_noise=jnp.asarray(config.input_noise, dtype=float),
            recurrent_noise=jnp.asarray(config.recurrent_noise, dtype=float),
        )


def weight_matrices(model: mechscope.AbstractModel) -> tuple[Float[Array, "m n"], ...]:
    """The matrices the weight penalty acts on.

    A model may declare them with a ``weight_matrices()`` method (e.g. to penalise the effective
    sign-constrained matrix of a Dale's-law network rather than its raw parameters). Otherwise
    every two-dimensional floating-point array in the model is a weight matrix; vectors (biases,
    x0, time constants) and scalars are not penalised.
    """
    declared = getattr(model, "weight_matrices", None)
    if callable(declared):
        matrices = declared()
        if not isinstance(matrices, Iterable):
            raise TypeError(f"{type(model).__name__}.weight_matrices() must return matrices")
        return tuple(jnp.asarray(matrix) for matrix in matrices)
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    return tuple(leaf for leaf in leaves if leaf.ndim == 2)


def recurrent_weights(model: mechscope.AbstractModel) -> Float[Array, "n_units n_units"]:
    """W_rec of a model, read from its ``recurrent_weights`` attribute or property.

    Raises:
        TypeError: if the model does not expose a square ``recurrent_weights`` matrix.
    """
    weights = getattr(model, "recurrent_weights", None)
    if callable(weights):
        weights = weights()
    if (
        not isinstance(weights, jax.Array)
        or weights.ndim != 2
        or weights.shape[0] != weights.shape[1]
    ):
        raise TypeError(
            f"simple_dynamics_reg needs a model with a square 'recurrent_weights' matrix "
            f"(W_rec in tau·dx/dt = -x + W_rec·φ(x) + ...); {type(model).__name__} has none. "
            f"Set simple_dynamics_reg = 0 or add the attribute to the model."
        )
    return weights


def simple_dynamics_penalty(
    model: mechscope.AbstractModel, states: Float[Array, "*batch n_units"]
) -> Scalar:
    """Sussillo et al. (2015) simple-dynamics penalty, the mean of (W_rec·diag(φ'(x)))² entries.

    Equals ‖W_rec · diag(φ'(x))‖²_F / N² averaged over every state x given. φ'(x) is the
    diagonal of the Jacobian of ``model.rates``, obtained by one forward-mode product with a
    vector of ones, which is exact for element-wise activations (what the protocol requires).
    """
    weights = recurrent_weights(model)
    column_norms = jnp.sum(weights**2, axis=0)
    flat = states.reshape(-1, states.shape[-1])

    def slope(x: Float[Array, " n_units"]) -> Float[Array, " n_units"]:
        return jax.jvp(model.rates, (x,), (jnp.ones_like(x),))[1]

    slopes = jax.vmap(slope)(flat)
    return jnp.mean(slopes**2 @ column_norms) / weights.size


def masked_mse(
    outputs: Float[Array, "*batch time n_outputs"],
    targets: Float[Array, "*batch time n_outputs"],
    mask: Float[Array, "*batch time n_outputs"],
    total_mask: Float[ArrayLike, ""] | None = None,
) -> Scalar:
    """Σ mask·(z − y)² / Σ mask (0 when the mask is empty).

    `total_mask` replaces Σ mask in the denominator (a piece of a batch divides by the whole
    batch's, see :func:`piece_loss_terms`).
    """
    total = jnp.sum(mask) if total_mask is None else total_mask
    return jnp.sum(mask * (outputs - targets) ** 2) / jnp.maximum(total, 1.0)


def loss_terms(
    model: mechscope.AbstractModel,
    trials: mechscope.Trials,
    hyper: Hyperparameters,
    *,
    key: PRNGKeyArray,
    simple_dynamics: bool,
) -> tuple[Scalar, dict[str, Scalar]]:
    """Total training loss on a batch of trials, and each of its terms.

    loss = masked MSE + λ_r·mean(r²) + λ_w·Σ_W mean(W²) + λ_d·simple-dynamics penalty.

    Args:
        model: the model being trained.
        trials: a training batch.
        hyper: penalty weights and noise levels.
        key: PRNG key for the training noise (trial i gets ``split(key, batch)[i]``).
        simple_dynamics: include the simple-dynamics penalty (static; it costs a Jacobian
            diagonal per state).

    Returns:
        The loss and a dict with ``loss``, ``mse``, ``rate_penalty``, ``weight_penalty``,
        ``dynamics_penalty`` (each already multiplied by its λ), ``mean_rate_sq`` (mean r²)
        and ``train_r2`` (output R² of the batch).
    """
    keys = jax.random.split(key, trials.batch_size)
    loss, terms, outputs = piece_loss_terms(
        model, trials, hyper, keys=keys, simple_dynamics=simple_dynamics
    )
    return loss, {**terms, "train_r2": mechscope.masked_r2(outputs, trials.targets, trials.mask)}


def piece_loss_terms(
    model: mechscope.AbstractModel,
    trials: mechscope.Trials,
    hyper: Hyperparameters,
    *,
    keys: PRNGKeyArray,
    simple_dynamics: bool,
    noisy: bool = True,
    start: Int[ArrayLike, ""] = 0,
    size: int | None = None,
) -> tuple[Scalar, dict[str, Scalar], Float[Array, "piece time n_outputs"]]:
    """A piece's share of :func:`loss_terms`: the batch's terms are the sums over its pieces.

    The `size` trials of the batch from trial `start` are simulated (with their keys);
    the MSE is divided by the whole batch's mask sum and the means (r², the simple-dynamics
    penalty) are the piece's sums over the whole batch's count, so the pieces' losses, terms
    and gradients add up to the batch's. The weight penalty belongs to the piece that starts
    at trial 0. So a batch can be differentiated in pieces (on several cores, see
    ``docs/trainers/bptt.md``) and give the batch's gradient. `start` may be traced, so
    pieces of one size share one compilation.

    Args:
        model: the model being trained.
        trials: the whole training batch.
        hyper: penalty weights and noise levels.
        keys: one noise key per trial of the batch.
        simple_dynamics: include the simple-dynamics penalty.
        noisy: simulate with the noise levels of `hyper`; False runs noise-free (the levels
            must then be zero; the trainer decides this from its config).
        start: the piece's first trial.
        size: the piece's number of trials; None = the whole batch (`start` must be 0).

    Returns:
        The piece's loss, its terms (``loss``, ``mse``, ``rate_penalty``, ``weight_penalty``,
        ``dynamics_penalty``, ``mean_rate_sq``; no R², which does not add up) and its outputs.
    """
    size = trials.batch_size if size is None else size
    share = size / trials.batch_size

    def rows(a: Array) -> Array:
        return jax.lax.dynamic_slice_in_dim(a, start, size, axis=0)

    piece = mechscope.Trials(
        inputs=rows(trials.inputs),
        targets=rows(trials.targets),
        mask=rows(trials.mask),
        times=trials.times,
    )
    if noisy:
        noise = mechscope.Noise(input=hyper.input_noise, recurrent=hyper.recurrent_noise)
        trajectory = mechscope.simulate(
            model, piece.inputs, piece.times, keys=rows(keys), noise=noise
        )
    else:
        trajectory = mechscope.simulate(model, piece.inputs, piece.times)
    mse = masked_mse(trajectory.outputs, piece.targets, piece.mask, jnp.sum(trials.mask))
    mean_rate_sq = jnp.mean(trajectory.rates**2) * share
    weight_sq = sum((jnp.mean(w**2) for w in weight_matrices(model)), jnp.zeros(()))
    weight_sq = jnp.where(jnp.asarray(start) == 0, weight_sq, 0.0)
    rate_penalty = hyper.rate_reg * mean_rate_sq
    weight_penalty = hyper.weight_reg * weight_sq
    if simple_dynamics:
        dynamics_penalty = (
            hyper.simple_dynamics_reg * simple_dynamics_penalty(model, trajectory.states) * share
        )
    else:
        dynamics_penalty = jnp.zeros(())
    loss = mse + rate_penalty + weight_penalty + dynamics_penalty
    terms = {
        "loss": loss,
        "mse": mse,
        "rate_penalty": rate_penalty,
        "weight_penalty": weight_penalty,
        "dynamics_penalty": dynamics_penalty,
        "mean_rate_sq": mean_rate_sq,
    }
    return loss, terms, trajectory.outputs
