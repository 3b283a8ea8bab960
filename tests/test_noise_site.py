"""Where the recurrent training noise enters a CT-RNN: the state (default) or inside φ."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import pytest
from mechscope_ctrnn import CTRNNConfig, LowRankCTRNNConfig, make_ctrnn, make_lowrank_ctrnn

import mechscope

DT = 0.01
TAU = 0.05

#: Produced by the code before ``recurrent_noise_site`` existed (commit cebab13), for
#: make_ctrnn(CTRNNConfig(n_units=4), n_inputs=2, n_outputs=1, key=key(7)), inputs
#: normal(key(8), (8, 2)), 8 samples of 10 ms, key(9), Noise(0.2, 0.3); bit-identical then.
GOLDEN_LAST_STATE = [
    -0.16586095094680786,
    0.0030078478157520294,
    0.2975097894668579,
    0.5507924556732178,
]
#: Row 0 of ∂/∂W_rec of Σ outputs² + Σ rates for the same run (the Euler adjoint's).
GOLDEN_GRAD_W_REC_ROW0 = [
    -0.20898978412151337,
    0.7684914469718933,
    2.111609697341919,
    -0.5991096496582031,
]


def _golden_run(**overrides):
    model = make_ctrnn(
        CTRNNConfig(n_units=4, **overrides), n_inputs=2, n_outputs=1, key=jax.random.key(7)
    )
    times = jnp.arange(8, dtype=jnp.float32) * DT
    u = jax.random.normal(jax.random.key(8), (8, 2))
    noise = mechscope.Noise(0.2, 0.3)

    def loss(m):
        t = m(u, times, key=jax.random.key(9), noise=noise)
        return jnp.sum(t.outputs**2) + jnp.sum(t.rates), t.states

    (_, states), grads = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))(model)
    return states, grads.w_rec


def test_default_site_is_the_state_and_unchanged():
    assert CTRNNConfig().recurrent_noise_site == "state"
    states, grad = _golden_run()
    np.testing.assert_allclose(states[-1], GOLDEN_LAST_STATE, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad[0], GOLDEN_GRAD_W_REC_ROW0, rtol=1e-5, atol=1e-6)
    explicit_states, explicit_grad = _golden_run(recurrent_noise_site="state")
    np.testing.assert_array_equal(explicit_states, states)
    np.testing.assert_array_equal(explicit_grad, grad)
    # The other site is a different model of the noise (a control that the check can fail).
    other_states, _ = _golden_run(recurrent_noise_site="preactivation")
    assert float(jnp.abs(other_states[-1] - states[-1]).max()) > 1e-3


def _noisy_states(model, u, times, key, noise):
    return eqx.filter_jit(lambda m, n: m(u, times, key=key, noise=n).states)(model, noise)


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_preactivation_path_matches_hand_written_euler_loop(getkey, activation):
    n, n_in, n_times = 10, 3, 30
    config = CTRNNConfig(n_units=n, activation=activation, recurrent_noise_site="preactivation")
    model = make_ctrnn(config, n_inputs=n_in, n_outputs=2, key=getkey())
    model = eqx.tree_at(lambda m: m.bias, model, 0.3 * jax.random.normal(getkey(), (n,)))
    times = jnp.arange(n_times, dtype=jnp.float32) * DT
    u = jax.random.normal(getkey(), (n_times, n_in))
    key = getkey()
    sigma_in, sigma_rec = 0.1, 0.3
    states = _noisy_states(model, u, times, key, mechscope.Noise(sigma_in, sigma_rec))

    # Reference: float64 NumPy loop with the documented draws and scalings.
    key_rec, key_in = jax.random.split(key)
    xi = np.asarray(jax.random.normal(key_rec, (n_times - 1, n)), np.float64)
    eta = np.asarray(jax.random.normal(key_in, (n_times - 1, n_in)), np.float64)
    phi = {"tanh": np.tanh, "softplus": lambda v: np.logaddexp(0.0, v)}[activation]
    w, w_in, b = (np.asarray(a, np.float64) for a in (model.w_rec, model.w_in, model.bias))
    x = np.zeros(n)
    expected = [x]
    for k in range(n_times - 1):
        rate_input = x + sigma_rec * np.sqrt(2 * TAU / DT) * xi[k]
        noisy_u = np.asarray(u[k], np.float64) + sigma_in * np.sqrt(2 * TAU / DT) * eta[k]
        x = x + DT / TAU * (-x + w @ phi(rate_input) + w_in @ noisy_u + b)
        expected.append(x)
    np.testing.assert_allclose(states, np.stack(expected), atol=3e-5, rtol=1e-5)


def test_zero_preactivation_noise_equals_noise_free(getkey):
    model_key = getkey()
    config = CTRNNConfig(n_units=8, recurrent_noise_site="preactivation")
    model = make_ctrnn(config, n_inputs=2, n_outputs=1, key=model_key)
    times = jnp.arange(20, dtype=jnp.float32) * DT
    u = jax.random.normal(getkey(), (20, 2))
    key = getkey()
    # Levels traced under jit are not known to be zero, so the noisy path really runs.
    silent = _noisy_states(model, u, times, key, mechscope.Noise(0.0, 0.0))
    np.testing.assert_allclose(silent, model(u, times).states, atol=1e-6)
    # With σ_rec = 0 the site is irrelevant: only the input noise remains, the same draws.
    state_site = make_ctrnn(CTRNNConfig(n_units=8), n_inputs=2, n_outputs=1, key=model_key)
    inputs_only = mechscope.Noise(0.2, 0.0)
    np.testing.assert_allclose(
        _noisy_states(model, u, times, key, inputs_only),
        _noisy_states(state_site, u, times, key, inputs_only),
        atol=1e-6,
    )
    loud = _noisy_states(model, u, times, key, mechscope.Noise(0.0, 0.3))
    assert float(jnp.abs(loud - silent).max()) > 1e-3


@pytest.mark.parametrize("site", ["state", "preactivation"])
def test_stationary_variance_is_step_independent(getkey, site):
    """One linear unit with self-coupling w: the variance the SDE predicts at two steps.

    State site: dx = −(1 − w)x/τ dt + σ·sqrt(2/τ) dB, Var = σ²/(1 − w). Preactivation site:
    the recurrence sees x + σ·sqrt(2τ/h)·ξ, i.e. diffusion w·σ·sqrt(2/τ), Var = w²σ²/(1 − w).
    Euler–Maruyama at step h multiplies both by 1/(1 − (1 − w)h/(2τ)).
    """
    w, sigma, n_trials, duration, burn_in = 0.5, 0.4, 3000, 0.8, 0.4
    gain = 1.0 if site == "state" else w**2
    for dt in (0.01, 0.0025):
        config = CTRNNConfig(n_units=1, activation="linear", recurrent_noise_site=site)
        model = make_ctrnn(config, n_inputs=1, n_outputs=1, key=getkey())
        model = eqx.tree_at(
            lambda m: (m.w_rec, m.w_in), model, (jnp.full((1, 1), w), jnp.zeros((1, 1)))
        )
        n_times = round(duration / dt) + 1
        times = jnp.arange(n_times, dtype=jnp.float32) * dt
        states = eqx.filter_jit(
            lambda m, k: (
                mechscope.simulate(
                    m,
                    jnp.zeros((n_trials, n_times, 1)),
                    times,
                    key=k,
                    noise=mechscope.Noise(0.0, sigma),
                ).states
            )
        )(model, getkey())
        measured = np.asarray(states[:, round(burn_in / dt) :, 0], np.float64).var(axis=0).mean()
        theory = gain * sigma**2 / (1 - w)
        euler = theory / (1 - (1 - w) * dt / (2 * TAU))
        assert measured == pytest.approx(euler, rel=0.07), (dt, measured, euler)


def test_preactivation_site_trains_with_autodiff_and_refuses_the_adjoint():
    config = CTRNNConfig(recurrent_noise_site="preactivation")
    assert not config.uses_adjoint(None)
    assert CTRNNConfig().uses_adjoint(None)
    assert not LowRankCTRNNConfig(recurrent_noise_site="preactivation").uses_adjoint(None)
    with pytest.raises(pydantic.ValidationError, match="recurrent_noise_site 'preactivation'"):
        CTRNNConfig(recurrent_noise_site="preactivation", gradient="adjoint")
    with pytest.raises(pydantic.ValidationError, match="only the scan integrator"):
        CTRNNConfig(recurrent_noise_site="preactivation", integrator="diffeqsolve")
    with pytest.raises(mechscope.ConfigError, match="preactivation"):
        mechscope.get_registry().get("model", "ctrnn").validate(
            {"recurrent_noise_site": "preactivation", "gradient": "adjoint"}
        )


def test_preactivation_gradients_equal_finite_differences(getkey):
    """The autodiff path differentiates the noisy drift correctly (σ_rec included)."""
    with jax.enable_x64(True):
        model = make_lowrank_ctrnn(
            LowRankCTRNNConfig(n_units=6, rank=2, recurrent_noise_site="preactivation"),
            n_inputs=2,
            n_outputs=1,
            key=getkey(),
        )
        model = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
        )
        times = jnp.arange(15, dtype=jnp.float64) * DT
        u = jax.random.normal(getkey(), (15, 2), jnp.float64)
        key = getkey()

        @eqx.filter_jit
        def loss(m, sigma):
            t = m(u, times, key=key, noise=mechscope.Noise(0.05, sigma))
            return jnp.sum(jnp.sin(t.states)) + jnp.sum(t.outputs**2)

        grad_m, grad_sigma = eqx.filter_jit(jax.grad(loss, argnums=(0, 1)))(model, jnp.asarray(0.3))
        eps = 1e-6
        direction = jax.random.normal(getkey(), model.m.shape, jnp.float64)
        plus = eqx.tree_at(lambda m: m.m, model, model.m + eps * direction)
        minus = eqx.tree_at(lambda m: m.m, model, model.m - eps * direction)
        numeric = (loss(plus, 0.3) - loss(minus, 0.3)) / (2 * eps)
        assert float(jnp.sum(grad_m.m * direction)) == pytest.approx(float(numeric), rel=1e-6)
        numeric_sigma = (loss(model, 0.3 + eps) - loss(model, 0.3 - eps)) / (2 * eps)
        assert float(grad_sigma) == pytest.approx(float(numeric_sigma), rel=1e-6)
        assert abs(float(grad_sigma)) > 1e-6
