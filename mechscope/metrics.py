"""Measures of output quality shared by trainers and probes (one definition each)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def masked_r2(
    outputs: Float[ArrayLike, "*batch time n_outputs"],
    targets: Float[ArrayLike, "*batch time n_outputs"],
    mask: Float[ArrayLike, "*batch time n_outputs"],
) -> Float[Array, ""]:
    """Masked coefficient of determination of `outputs` against `targets`.

    R² = 1 − Σ m·(z − y)² / Σ m·(y − ȳ_c)², pooled over every leading axis (trials, times)
    and over channels; ȳ_c is the masked mean of target channel c over the leading axes. The
    mask may hold weights (any non-negative values), not only 0/1.

    Degenerate input: the result is NaN whenever the denominator vanishes, i.e. when every
    sample is masked out or the targets are constant on the masked samples (to rounding: a
    pooled variance below (16·eps)² times their mean square counts as zero). R² is undefined
    there; NaN (rather than −inf, 0 or 1) propagates as "not measurable" into tables and never
    meets a "reached R² ≥ x" stopping rule.

    Works under ``jit``/``vmap`` and on NumPy inputs (computed in JAX's default float
    precision). For one R² per trial, ``jax.vmap`` it over the trial axis.

    Args:
        outputs: model outputs z.
        targets: targets y, same shape.
        mask: per-sample weights m, same shape.

    Returns:
        A scalar array.
    """
    outputs, targets, mask = jnp.asarray(outputs), jnp.asarray(targets), jnp.asarray(mask)
    axes = tuple(range(targets.ndim - 1))
    counts = jnp.sum(mask, axis=axes)
    # A fully masked channel has no mean; any finite value works since its weights are zero.
    means = jnp.sum(mask * targets, axis=axes) / jnp.maximum(counts, jnp.finfo(counts.dtype).tiny)
    residual = jnp.sum(mask * (outputs - targets) ** 2)
    total = jnp.sum(mask * (targets - means) ** 2)
    # Rounding leaves constant targets a variance of order (eps·|y|)², not 0: below a floor
    # relative to their mean square, they count as constant.
    resolution = 16 * jnp.finfo(total.dtype).eps
    defined = total > resolution**2 * jnp.sum(mask * targets**2)
    # Dividing by a safe denominator keeps the untaken branch free of inf/NaN under autodiff.
    ratio = residual / jnp.where(defined, total, 1.0)
    return jnp.where(defined, 1.0 - ratio, jnp.nan)


__all__ = ["masked_r2"]
