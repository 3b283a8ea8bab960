"""Tests of the gated_ctrnn model: a GRU in ODE form, tau·dh/dt = (1 − z)⊙(ĥ − h)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mechscope_bptt import BPTTConfig, BPTTTrainer
from mechscope_ctrnn import GatedCTRNN, GatedCTRNNConfig, make_gated_ctrnn
from mechscope_reach import DelayedReach, DelayedReachConfig

import mechscope
from mechscope.testing import check_model

DT = 0.01


def _model(key, n=10, n_inputs=3, **overrides) -> GatedCTRNN:
    config = GatedCTRNNConfig(n_units=n, **overrides)
    model = make_gated_ctrnn(config, n_inputs=n_inputs, n_outputs=2, key=key)
    # Non-zero biases, so that a bias wired to the wrong gate would show.
    keys = jax.random.split(jax.random.fold_in(key, 1), 3)
    return eqx.tree_at(
        lambda m: (m.b_update, m.b_reset, m.b_candidate),
        model,
        tuple(0.5 * jax.random.normal(k, (n,)) for k in keys),
    )


def _numpy_field(model: GatedCTRNN, h, u):
    """The gated vector field written out in float64 NumPy, from the unstacked parameters."""
    p = {
        f.name: np.asarray(getattr(model, f.name), np.float64)
        for f in dataclasses.fields(model)
        if f.name != "config"
    }
    h, u = np.asarray(h, np.float64), np.asarray(u, np.float64)

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    z = sigmoid(p["w_update"] @ h + p["u_update"] @ u + p["b_update"])
    g = sigmoid(p["w_reset"] @ h + p["u_reset"] @ u + p["b_reset"])
    candidate = np.tanh(p["w_candidate"] @ (g * h) + p["u_candidate"] @ u + p["b_candidate"])
    return (1 - z) * (candidate - h) / model.config.tau, z, candidate


def test_vector_field_matches_numpy_reference(getkey):
    model = _model(getkey(), n=12)
    for _ in range(3):
        h, u = jax.random.normal(getkey(), (12,)), jax.random.normal(getkey(), (3,))
        expected, _, _ = _numpy_field(model, h, u)
        np.testing.assert_allclose(model.vector_field(0.0, h, u), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("gain", [0.5, 3.0])
def test_analytic_jacobian_equals_jacfwd(getkey, gain):
    model = _model(getkey(), n=14, gain=gain)
    h, u = 0.8 * jax.random.normal(getkey(), (14,)), jax.random.normal(getkey(), (3,))
    expected = jax.jacfwd(lambda s: model.vector_field(0.0, s, u))(h)
    np.testing.assert_allclose(model.jacobian(0.0, h, u), expected, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(expected).max()) > 1.0


def test_euler_step_of_length_tau_is_the_discrete_gru(getkey):
    """h ← z⊙h + (1 − z)⊙ĥ (Cho et al. 2014) is one Euler step with dt = tau."""
    tau, n_times = 0.05, 12
    model = _model(getkey(), n=9, tau=tau)
    times = jnp.arange(n_times, dtype=jnp.float32) * tau
    u = jax.random.normal(getkey(), (n_times, 3))
    x0 = 0.5 * jax.random.normal(getkey(), (9,))
    states = model(u, times, x0=x0).states
    h = np.asarray(x0, np.float64)
    for k in range(n_times - 1):
        _, z, candidate = _numpy_field(model, h, u[k])
        h = z * h + (1 - z) * candidate
        np.testing.assert_allclose(states[k + 1], h, rtol=1e-5, atol=1e-5)


def test_noisy_trajectory_matches_hand_written_euler_maruyama(getkey):
    n, n_in, n_times, tau = 8, 3, 25, 0.05
    model = _model(getkey(), n=n)
    times = jnp.arange(n_times, dtype=jnp.float32) * DT
    u = jax.random.normal(getkey(), (n_times, n_in))
    key = getkey()
    sigma_in, sigma_rec = 0.2, 0.3
    traj = eqx.filter_jit(
        lambda m: m(u, times, key=key, noise=mechscope.Noise(sigma_in, sigma_rec))
    )(model)
    key_rec, key_in = jax.random.split(key)
    xi = np.asarray(jax.random.normal(key_rec, (n_times - 1, n)), np.float64)
    eta = np.asarray(jax.random.normal(key_in, (n_times - 1, n_in)), np.float64)
    h = np.zeros(n)
    expected = [h]
    for k in range(n_times - 1):
        noisy_u = np.asarray(u[k], np.float64) + sigma_in * np.sqrt(2 * tau / DT) * eta[k]
        field, _, _ = _numpy_field(model, h, noisy_u)
        h = h + DT * field + sigma_rec * np.sqrt(2 * DT / tau) * xi[k]
        expected.append(h)
    np.testing.assert_allclose(traj.states, np.stack(expected), rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(traj.rates, traj.states)
    w_out, b_out = np.asarray(model.w_out), np.asarray(model.output_bias)
    np.testing.assert_allclose(traj.outputs, np.stack(expected) @ w_out.T + b_out, atol=1e-4)


@pytest.mark.parametrize("noisy", [False, True])
def test_gradients_equal_those_of_a_hand_unrolled_euler_loop(getkey, noisy):
    """Reverse mode through the scan (which recomputes each step's gates) gives the gradient
    of the same trial written as a plain Python loop, for every parameter, in float64."""
    n, n_in, n_times, tau = 7, 3, 20, 0.05
    key, noise_key = getkey(), getkey()
    with jax.enable_x64(True):
        model = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a,
            _model(key, n=n, learn_x0=True),
        )
        model = eqx.tree_at(lambda m: m.x0, model, 0.3 * jnp.ones(n, jnp.float64))
        times = jnp.arange(n_times, dtype=jnp.float64) * DT
        u = jax.random.normal(getkey(), (n_times, n_in), jnp.float64)
        sigma_in, sigma_rec = (0.2, 0.3) if noisy else (0.0, 0.0)
        key_rec, key_in = jax.random.split(noise_key)
        xi = jax.random.normal(key_rec, (n_times - 1, n), jnp.float64)
        eta = jax.random.normal(key_in, (n_times - 1, n_in), jnp.float64)

        def unrolled(m):
            h = m.x0
            states = [h]
            for k in range(n_times - 1):
                v = u[k] + sigma_in * np.sqrt(2 * tau / DT) * eta[k]
                z = jax.nn.sigmoid(m.w_update @ h + m.u_update @ v + m.b_update)
                g = jax.nn.sigmoid(m.w_reset @ h + m.u_reset @ v + m.b_reset)
                c = jnp.tanh(m.w_candidate @ (g * h) + m.u_candidate @ v + m.b_candidate)
                h = h + DT * (1 - z) * (c - h) / tau + sigma_rec * np.sqrt(2 * DT / tau) * xi[k]
                states.append(h)
            states = jnp.stack(states)
            return jnp.sum(jnp.sin(states)) + jnp.sum((states @ m.w_out.T + m.output_bias) ** 2)

        def scanned(m):
            noise = mechscope.Noise(sigma_in, sigma_rec) if noisy else None
            traj = m(u, times, key=noise_key, noise=noise)
            return jnp.sum(jnp.sin(traj.states)) + jnp.sum(traj.outputs**2)

        got = eqx.filter_jit(eqx.filter_grad(scanned))(model)
        expected = eqx.filter_grad(unrolled)(model)
        for name in [f.name for f in dataclasses.fields(model) if f.name != "config"]:
            a, b = np.asarray(getattr(got, name)), np.asarray(getattr(expected, name))
            scale = float(np.abs(b).max())
            assert scale > 0, name
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * scale, err_msg=name)


def test_contract_check_passes(getkey):
    check_model(_model(getkey(), n=12), key=getkey())


def test_initial_state_gets_a_gradient_only_when_learned(getkey):
    times = jnp.arange(10, dtype=jnp.float32) * DT
    u = jax.random.normal(getkey(), (10, 3))
    key = getkey()
    for learn in (False, True):
        model = _model(key, n=6, learn_x0=learn)
        grad = eqx.filter_grad(lambda m: jnp.sum(m(u, times).outputs ** 2))(model)
        assert bool(jnp.any(grad.x0 != 0)) == learn


def test_bptt_training_lowers_the_loss_with_parallel_seeds(getkey):
    task = DelayedReach(DelayedReachConfig(delay_range=(0.3, 0.3), condition_delays=(0.3,)))
    config = GatedCTRNNConfig(n_units=24)
    models = [make_gated_ctrnn(config, n_inputs=3, n_outputs=4, key=getkey()) for _ in range(2)]
    trainer = BPTTTrainer(
        BPTTConfig(steps=60, batch_size=16, learning_rate=1e-2, eval_every=20, parallel_seeds=True)
    )
    runs = trainer.fit_many(models, task, keys=[getkey(), getkey()])
    assert runs[0].metadata["parallel_seeds"] == 2
    for run in runs:
        loss = np.asarray(run.history["loss"])
        assert np.all(np.isfinite(loss))
        assert loss[-1] < 0.8 * loss[0], loss
