"""Shared preprocessing: soft normalisation and PCA on condition × time × neuron arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
from jaxtyping import Float

__all__ = ["PCA", "pca", "soft_normalize_factors"]


def soft_normalize_factors(
    rates: Float[np.ndarray, "condition time neuron"], soften: float
) -> Float[np.ndarray, " neuron"]:
    """Per-neuron divisors: the rate range over all conditions and times plus `soften`.

    This is the normalisation of Churchland et al.'s jPCA code (``range + softenNorm``), so a
    neuron whose range equals `soften` ends up with range 0.5 and weak neurons are not
    inflated to the size of strong ones.
    """
    flat = rates.reshape(-1, rates.shape[-1])
    span = np.nanmax(flat, axis=0) - np.nanmin(flat, axis=0)
    factors = span + soften
    if np.any(factors <= 0):
        raise ValueError("a neuron has zero rate range and soften is 0; use soften > 0")
    return factors


@dataclasses.dataclass(frozen=True)
class PCA:
    """Principal components of a set of samples.

    Attributes:
        components: orthonormal principal axes as columns, shape ``[feature, k]``, ordered by
            decreasing variance; each column's largest-magnitude entry is positive (MATLAB's
            ``pca`` convention), so results do not depend on the SVD's sign choices.
        variances: variance along each axis, shape ``[k]``.
        total_variance: summed variance of all features.
        mean: the feature means that were subtracted, shape ``[feature]``.
    """

    components: Float[np.ndarray, "feature k"]
    variances: Float[np.ndarray, " k"]
    total_variance: float
    mean: Float[np.ndarray, " feature"]

    @property
    def explained_ratio(self) -> Float[np.ndarray, " k"]:
        """Fraction of the total variance along each axis."""
        return self.variances / self.total_variance

    def transform(self, samples: Float[np.ndarray, "... feature"]) -> Float[np.ndarray, "... k"]:
        """Project samples (centred with the fitted mean) onto the axes."""
        return (samples - self.mean) @ self.components


def pca(samples: Float[np.ndarray, "sample feature"], n_components: int | None = None) -> PCA:
    """PCA of the mean-centred samples (covariance eigendecomposition, or SVD when wide).

    Args:
        samples: one row per observation (e.g. condition × time rows).
        n_components: how many axes to keep (default: all).
    """
    samples = np.asarray(samples, dtype=np.float64)
    if not np.all(np.isfinite(samples)):
        raise ValueError("PCA input contains NaN/Inf (does an analysis window leave the trial?)")
    mean = samples.mean(axis=0)
    centred = samples - mean
    scale = max(samples.shape[0] - 1, 1)
    n_features = samples.shape[1]
    available = min(samples.shape)
    keep = available if n_components is None else n_components
    if keep > available:
        raise ValueError(f"asked for {keep} components but the data have only {available}")
    if samples.shape[0] >= n_features:
        # Tall data (condition × time rows ≫ neurons): the eigendecomposition of the
        # neuron covariance is several times cheaper than an SVD of the samples.
        covariance = centred.T @ centred / scale
        values, vectors = scipy.linalg.eigh(
            covariance, subset_by_index=(n_features - keep, n_features - 1)
        )
        variances = np.clip(values[::-1], 0.0, None)
        components = vectors[:, ::-1]
        total = float(np.trace(covariance))
    else:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        variances = singular[:keep] ** 2 / scale
        components = vt[:keep].T
        total = float(np.sum(centred**2) / scale)
    largest = np.argmax(np.abs(components), axis=0)
    components = components * np.sign(components[largest, np.arange(keep)])
    return PCA(
        components=components,
        variances=variances,
        total_variance=total,
        mean=mean,
    )
