"""Tests of the lowrank_ctrnn model: W_rec = m·nᵀ/N of rank R on the ctrnn machinery."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import pytest
from mechscope_bptt import BPTTConfig, BPTTTrainer
from mechscope_ctrnn import LowRankCTRNN, LowRankCTRNNConfig, make_lowrank_ctrnn
from mechscope_reach import DelayedReach, DelayedReachConfig

import mechscope
from mechscope.testing import check_model

DT = 0.01


def _model(key, n=20, rank=2, n_outputs=2, **overrides) -> LowRankCTRNN:
    config = LowRankCTRNNConfig(n_units=n, rank=rank, **overrides)
    return make_lowrank_ctrnn(config, n_inputs=3, n_outputs=n_outputs, key=key)


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_recurrent_weights_have_exactly_the_configured_rank(getkey, rank):
    model = _model(getkey(), n=30, rank=rank)
    # float32, as the model computes it: matrix_rank's default tolerance then uses float32's
    # epsilon, which rounding in m·nᵀ stays below.
    w = np.asarray(model.recurrent_weights())
    assert w.shape == (30, 30) and w.dtype == np.float32
    assert np.linalg.matrix_rank(w) == rank
    np.testing.assert_allclose(w, np.asarray(model.m) @ np.asarray(model.n).T / 30, rtol=1e-5)
    # Control: one more small generic direction is seen, so the count is not a tolerance artefact.
    a, b = np.random.default_rng(rank).normal(size=(2, 30)).astype(np.float32)
    assert np.linalg.matrix_rank(w + 1e-3 * np.abs(w).max() * np.outer(a, b)) == rank + 1


def test_initialisation_follows_the_connectivity_vector_convention(getkey):
    n = 500
    model = _model(getkey(), n=n, rank=2, gain=1.5)
    assert float(jnp.std(model.m)) == pytest.approx(1.5, rel=0.08)
    assert float(jnp.std(model.n)) == pytest.approx(1.0, rel=0.08)
    singular = np.linalg.svd(np.asarray(model.recurrent_weights(), np.float64), compute_uv=False)
    np.testing.assert_allclose(singular[:2], 1.5, rtol=0.2)  # ‖m‖‖n‖/N ≈ g
    assert singular[2] < 1e-4 * singular[0]
    overlaps = np.asarray(model.n.T @ model.m) / n
    assert np.abs(overlaps).max() < 5 * 1.5 / np.sqrt(n)  # O(g/√N): no structure yet


def test_vector_field_and_jacobian_match_numpy_and_autodiff(getkey):
    model = _model(getkey(), n=15, rank=3, activation="softplus")
    model = eqx.tree_at(lambda m: m.bias, model, jax.random.normal(getkey(), (15,)))
    x, u = jax.random.normal(getkey(), (15,)), jax.random.normal(getkey(), (3,))
    m, n, w_in, b = (np.asarray(a, np.float64) for a in (model.m, model.n, model.w_in, model.bias))
    x64 = np.asarray(x, np.float64)
    rates = np.logaddexp(0.0, x64)
    # Factored form, as Mastrogiuseppe & Ostojic write it: m·(nᵀφ(x))/N.
    expected = (-x64 + m @ (n.T @ rates) / 15 + w_in @ np.asarray(u, np.float64) + b) / 0.05
    np.testing.assert_allclose(model.vector_field(0.0, x, u), expected, rtol=1e-5, atol=1e-4)
    jacobian = model.jacobian(0.0, x, u)
    np.testing.assert_allclose(
        jacobian, jax.jacfwd(lambda s: model.vector_field(0.0, s, u))(x), rtol=1e-5, atol=1e-5
    )
    sigmoid = 1 / (1 + np.exp(-x64))
    np.testing.assert_allclose(
        jacobian, (-np.eye(15) + (m @ n.T / 15) * sigmoid[None, :]) / 0.05, rtol=1e-5, atol=1e-4
    )


def test_latent_recovers_coordinates_on_m(getkey):
    model = _model(getkey(), n=25, rank=2)
    kappa = jax.random.normal(getkey(), (7, 2))
    np.testing.assert_allclose(model.latent(kappa @ model.m.T), kappa, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("noise", [None, mechscope.Noise(0.1, 0.2)])
def test_adjoint_gradients_reach_m_and_n_as_autodiff_does(getkey, noise):
    key, noise_key = getkey(), getkey()
    with jax.enable_x64(True):
        times = jnp.arange(30, dtype=jnp.float64) * DT
        u = jax.random.normal(getkey(), (30, 3), jnp.float64)
        grads = {}
        for gradient in ("adjoint", "autodiff"):
            model = _model(key, n=12, rank=2, gradient=gradient)
            model = jax.tree.map(
                lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
            )

            def loss(model, noise):
                traj = model(u, times, key=noise_key, noise=noise)
                return jnp.sum(jnp.sin(traj.states)) + jnp.sum(traj.outputs**2)

            grads[gradient] = eqx.filter_jit(eqx.filter_grad(loss))(model, noise)
        for name in ("m", "n", "w_in", "bias", "w_out"):
            a, b = getattr(grads["adjoint"], name), getattr(grads["autodiff"], name)
            scale = float(jnp.abs(b).max())
            assert scale > 0, name
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * scale, err_msg=name)


def test_contract_check_passes(getkey):
    check_model(_model(getkey(), n=12, rank=2), key=getkey())


def test_rank_must_fit_the_network():
    with pytest.raises(pydantic.ValidationError, match="exceeds n_units"):
        LowRankCTRNNConfig(n_units=3, rank=4)
    with pytest.raises(mechscope.ConfigError, match="rank"):
        mechscope.get_registry().get("model", "lowrank_ctrnn").validate({"rank": 0})


def test_bptt_training_lowers_the_loss_with_parallel_seeds(getkey):
    task = DelayedReach(DelayedReachConfig(delay_range=(0.3, 0.3), condition_delays=(0.3,)))
    models = [_model(getkey(), n=24, rank=2, n_outputs=4) for _ in range(2)]
    config = BPTTConfig(
        steps=60, batch_size=16, learning_rate=1e-2, eval_every=20, parallel_seeds=True
    )
    runs = BPTTTrainer(config).fit_many(models, task, keys=[getkey(), getkey()])
    assert runs[0].metadata["parallel_seeds"] == 2
    for run, initial in zip(runs, models, strict=True):
        loss = np.asarray(run.history["loss"])
        # Window-averaged loss falls at every evaluation (slower than a full-rank network).
        assert np.all(np.diff(loss) < 0) and loss[-1] < 0.95 * loss[0], loss
        assert (
            np.linalg.matrix_rank(np.asarray(run.model.recurrent_weights())) == 2
        )  # training keeps the rank
        assert not np.allclose(run.model.m, initial.m)  # ... while moving m and n
        assert not np.allclose(run.model.n, initial.n)
