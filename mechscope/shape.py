"""Generalized shape metrics (Williams et al. 2021), matching ``netrep``'s ``LinearMetric``.

Per network (:func:`shape_represent`): condition-averaged responses become one row per
(condition, time sample), columns are centred and partially whitened with strength
1 − α (α = 1: Procrustes, rotations only; α = 0: CCA, any invertible linear map), keeping the
total variance. Per pair (:func:`shape_distance`): the best orthogonal alignment of the two
whitened matrices in closed form (SVD of XᵀY), scored as an angle (arccos of the aligned
normalised inner product) or a Euclidean (Frobenius) distance.

One home for this geometry: the ``shape`` comparison and the population probe's similarity to
a reference both use it. The functions run on JAX arrays (traceable: they are vmapped over
pairs) and on NumPy arrays (in float64, for probes on recorded data).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

#: A JAX or NumPy array: the functions below keep whichever they are given.
AnyArray: TypeAlias = Array | np.ndarray


def _namespace(*arrays: Any) -> ModuleType:
    """NumPy for NumPy inputs (float64 kept), jax.numpy as soon as one input is a JAX array."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


#: netrep's clip on covariance eigenvalues before they are inverted.
EIGVAL_TOL = 1e-7


def whiten(
    x: Float[AnyArray, "sample unit"], alpha: float, eigval_tol: float = EIGVAL_TOL
) -> Float[AnyArray, "sample unit"]:
    """Partial whitening X·Z with Z = V diag(α + (1 − α)λ^(−1/2)) Vᵀ, total variance kept.

    λ, V are the eigenpairs of XᵀX (X centred), clipped below at `eigval_tol`; Z is rescaled
    so that ‖XZ‖²_F = ‖X‖²_F, exactly as netrep's ``whiten(..., preserve_variance=True)``.

    Args:
        x: centred data, one row per sample.
        alpha: 1 leaves X unchanged, 0 whitens fully.
        eigval_tol: lower clip on the eigenvalues.

    Returns:
        The partially whitened data, same shape.
    """
    xp = _namespace(x)
    lam, v = xp.linalg.eigh(x.T @ x)
    lam = xp.maximum(lam, eigval_tol)
    d = alpha + (1 - alpha) * lam ** (-0.5)
    new_var = xp.sum(alpha**2 * lam + 2 * alpha * (1 - alpha) * lam**0.5 + (1 - alpha) ** 2)
    d = d * xp.sqrt(xp.sum(lam) / new_var)
    whitened = x @ ((v * d[None, :]) @ v.T)
    # netrep returns X untouched for α ≈ 1; so do we (the eigh round trip costs precision).
    return xp.where(alpha > 1 - eigval_tol, x, whitened)


def shape_represent(
    responses: Float[AnyArray, "condition time unit"],
    *,
    alpha: float = 1.0,
    center: bool = True,
) -> Float[AnyArray, "sample unit"]:
    """Centred, partially whitened response matrix: the per-network part of a shape metric.

    Args:
        responses: condition-averaged responses in the analysed epoch,
            ``[condition, time, unit]`` (conditions and times must match across networks).
        alpha: 1 = Procrustes (netrep's default), 0 = CCA, in between = partial whitening.
        center: subtract each unit's mean over samples (netrep's ``center_columns``).

    Returns:
        ``[condition·time, unit]``.
    """
    xp = _namespace(responses)
    x = responses.reshape(-1, responses.shape[-1])
    if center:
        x = x - xp.mean(x, axis=0, keepdims=True)
    return whiten(x, alpha)


def pad_units(x: Float[AnyArray, "sample unit"], n_units: int) -> Float[AnyArray, "sample n_units"]:
    """Zero-pad the unit axis to `n_units`, so networks of different sizes stack and compare.

    Padding after whitening leaves the distance between two networks unchanged (extra zero
    columns do not change XᵀY's singular values). netrep pads before whitening, which for
    α < 1 rescales by the clipped zero eigenvalues; pad here instead.
    """
    extra = n_units - x.shape[-1]
    if extra < 0:
        raise ValueError(f"cannot pad {x.shape[-1]} units down to {n_units}")
    return _namespace(x).pad(x, ((0, 0), (0, extra)))


def shape_distance(
    x: Float[AnyArray, "sample unit"], y: Float[AnyArray, "sample unit"]
) -> dict[str, Float[AnyArray, ""]]:
    """Shape distances between two representations: the pairwise part (closed form).

    The best orthogonal alignment makes ⟨XU, YV⟩_F equal the nuclear norm of XᵀY, so
    ``angular`` = arccos(‖XᵀY‖_* / (‖X‖_F ‖Y‖_F)) ∈ [0, π/2] and ``euclidean`` =
    (‖X‖² + ‖Y‖² − 2‖XᵀY‖_*)^½, netrep's "angular" and "euclidean" scores.

    Args:
        x: first representation from :func:`shape_represent`.
        y: second, same number of samples (units may differ: XᵀY need not be square).

    Returns:
        ``{"angular": ..., "euclidean": ...}``, scalars.
    """
    xp = _namespace(x, y)
    nuclear = xp.sum(xp.linalg.svd(x.T @ y, compute_uv=False))
    nx, ny = xp.sum(x**2), xp.sum(y**2)
    cosine = nuclear / xp.sqrt(nx * ny)
    return {
        "angular": xp.arccos(xp.clip(cosine, -1.0, 1.0)),
        "euclidean": xp.sqrt(xp.maximum(nx + ny - 2 * nuclear, 0.0)),
    }
