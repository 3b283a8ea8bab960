"""Tests of mechscope.masked_r2 against a direct NumPy computation, and its degenerate cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mechscope


def numpy_r2(outputs, targets, mask):
    """R² written out sample by sample in float64: 1 − SSE/SST, per-channel masked means."""
    outputs, targets, mask = (np.asarray(a, np.float64) for a in (outputs, targets, mask))
    flat_z = outputs.reshape(-1, outputs.shape[-1])
    flat_y = targets.reshape(-1, targets.shape[-1])
    flat_m = mask.reshape(-1, mask.shape[-1])
    sse = sst = 0.0
    for c in range(flat_y.shape[1]):
        mean = np.sum(flat_m[:, c] * flat_y[:, c]) / np.sum(flat_m[:, c])
        sse += np.sum(flat_m[:, c] * (flat_z[:, c] - flat_y[:, c]) ** 2)
        sst += np.sum(flat_m[:, c] * (flat_y[:, c] - mean) ** 2)
    return 1.0 - sse / sst


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(5, 30, 3)) + np.array([0.0, 2.0, -1.0])
    outputs = targets + 0.4 * rng.normal(size=targets.shape)
    mask = (rng.uniform(size=targets.shape) < 0.7).astype(float)
    return outputs, targets, mask


def test_matches_direct_numpy_computation(data):
    outputs, targets, mask = data
    assert float(mechscope.masked_r2(outputs, targets, mask)) == pytest.approx(
        numpy_r2(outputs, targets, mask), rel=1e-5
    )


def test_weighted_mask_and_channel_means(data):
    outputs, targets, mask = data
    weights = mask * np.random.default_rng(1).uniform(0.2, 3.0, size=mask.shape)
    expected = numpy_r2(outputs, targets, weights)
    assert float(mechscope.masked_r2(outputs, targets, weights)) == pytest.approx(
        expected, rel=1e-5
    )
    # Per-channel means: a constant offset per channel is not "explained" by the model.
    shifted = targets + np.array([10.0, -5.0, 3.0])
    assert float(mechscope.masked_r2(shifted, shifted, mask)) == 1.0


def test_masked_samples_do_not_count(data):
    outputs, targets, mask = data
    wild = np.where(mask > 0, outputs, 1e6)
    assert float(mechscope.masked_r2(wild, targets, mask)) == pytest.approx(
        float(mechscope.masked_r2(outputs, targets, mask)), rel=1e-6
    )


def test_known_values():
    targets = np.array([[[0.0], [1.0], [2.0], [3.0]]])  # mean 1.5, SST = 5
    mask = np.ones_like(targets)
    assert float(mechscope.masked_r2(targets, targets, mask)) == 1.0
    mean = np.full_like(targets, 1.5)
    assert float(mechscope.masked_r2(mean, targets, mask)) == pytest.approx(0.0, abs=1e-7)
    assert float(mechscope.masked_r2(targets + 1.0, targets, mask)) == pytest.approx(1 - 4 / 5)


def test_degenerate_inputs_are_nan(data):
    outputs, targets, mask = data
    # Every sample masked out.
    assert math.isnan(float(mechscope.masked_r2(outputs, targets, np.zeros_like(mask))))
    # Constant targets on the masked samples, whether the outputs are right or wrong.
    flat = np.full_like(targets, 0.7)
    assert math.isnan(float(mechscope.masked_r2(flat, flat, mask)))
    assert math.isnan(float(mechscope.masked_r2(outputs, flat, mask)))
    # One channel without variance is fine: the pooled denominator is still positive.
    partly = targets.copy()
    partly[..., 0] = 2.0
    assert math.isfinite(float(mechscope.masked_r2(outputs, partly, mask)))


def test_jit_vmap_and_gradient_are_finite(data):
    outputs, targets, mask = (jnp.asarray(a, jnp.float32) for a in data)
    per_trial = jax.jit(jax.vmap(mechscope.masked_r2))(outputs, targets, mask)
    expected = [numpy_r2(o, t, m) for o, t, m in zip(*data, strict=True)]
    np.testing.assert_allclose(np.asarray(per_trial), expected, rtol=1e-5)
    # The NaN branch of a degenerate batch must not poison gradients of the defined branch.
    grad = jax.grad(lambda z: mechscope.masked_r2(z, targets, mask))(outputs)
    assert bool(jnp.all(jnp.isfinite(grad)))
    flat_grad = jax.grad(lambda z: mechscope.masked_r2(z, jnp.ones_like(z), mask))(outputs)
    assert bool(jnp.all(flat_grad == 0))
