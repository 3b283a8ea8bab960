"""Correctness tests of the ctrnn and ei_ctrnn models (plugins/mechscope_ctrnn)."""

from __future__ import annotations

import importlib.util
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic
import pytest
import scipy.linalg
from mechscope_ctrnn import (
    ACTIVATIONS,
    CTRNNConfig,
    EICTRNNConfig,
    make_ctrnn,
    make_ei_ctrnn,
    register_activation,
)

import mechscope

DT = 0.01


def _times(n: int, dt: float = DT) -> jax.Array:
    return jnp.arange(n, dtype=jnp.float32) * dt


def _inputs(key, n_times: int, n_inputs: int) -> jax.Array:
    # Piecewise-constant random inputs that jump every few samples, like task epochs.
    levels = jax.random.normal(key, (n_times // 5 + 1, n_inputs))
    return jnp.repeat(levels, 5, axis=0)[:n_times]


def _with(model, **arrays):
    """The model with some parameter arrays replaced."""
    names = list(arrays)
    return eqx.tree_at(
        lambda m: [getattr(m, name) for name in names], model, [arrays[n] for n in names]
    )


# ------------------------------------------------------------------ integration correctness


@pytest.mark.parametrize("activation", ["tanh", pytest.param("softplus", marks=pytest.mark.slow)])
def test_euler_equals_hand_written_discrete_update(getkey, activation):
    n, n_in, n_times = 12, 3, 40
    model = make_ctrnn(
        CTRNNConfig(n_units=n, activation=activation), n_inputs=n_in, n_outputs=2, key=getkey()
    )
    model = _with(model, bias=0.3 * jax.random.normal(getkey(), (n,)))
    times, u = _times(n_times), _inputs(getkey(), n_times, n_in)
    x0 = 0.5 * jax.random.normal(getkey(), (n,))
    key = getkey()
    sigma_in, sigma_rec = 0.2, 0.3
    traj = model(u, times, key=key, noise=mechscope.Noise(sigma_in, sigma_rec), x0=x0)

    # Reference: float64 numpy loop with the documented noise convention.
    key_rec, key_in = jax.random.split(key)
    xi = np.asarray(jax.random.normal(key_rec, (n_times - 1, n)), np.float64)
    eta = np.asarray(jax.random.normal(key_in, (n_times - 1, n_in)), np.float64)
    phi = {"tanh": np.tanh, "softplus": lambda v: np.logaddexp(0.0, v)}[activation]
    w, w_in, b = (np.asarray(a, np.float64) for a in (model.w_rec, model.w_in, model.bias))
    tau, uu, dts = 0.05, np.asarray(u, np.float64), np.diff(np.asarray(times, np.float64))
    x = np.asarray(x0, np.float64)
    expected = [x]
    for k in range(n_times - 1):
        dt = dts[k]
        noisy_u = uu[k] + sigma_in * np.sqrt(2 * tau / DT) * eta[k]
        x = x + dt / tau * (-x + w @ phi(x) + w_in @ noisy_u + b)
        x = x + sigma_rec * np.sqrt(2 * DT / tau) * xi[k]
        expected.append(x)
    expected = np.stack(expected)

    np.testing.assert_allclose(traj.states, expected, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(traj.rates, phi(expected), atol=2e-5)
    w_out, b_out = np.asarray(model.w_out), np.asarray(model.output_bias)
    np.testing.assert_allclose(traj.outputs, phi(expected) @ w_out.T + b_out, atol=1e-4)


def test_first_sample_is_x0_and_last_input_is_unused(getkey):
    model = make_ctrnn(CTRNNConfig(n_units=8), n_inputs=2, n_outputs=1, key=getkey())
    times, u = _times(20), _inputs(getkey(), 20, 2)
    x0 = jax.random.normal(getkey(), (8,))
    traj = model(u, times, x0=x0)
    np.testing.assert_array_equal(traj.states[0], x0)
    np.testing.assert_array_equal(traj.times, times)
    changed = model(u.at[-1].add(10.0), times, x0=x0)
    np.testing.assert_array_equal(changed.states, traj.states)
    # ... while the input at sample k moves the state from sample k+1 on.
    moved = model(u.at[5].add(1.0), times, x0=x0)
    np.testing.assert_array_equal(moved.states[:6], traj.states[:6])
    assert np.abs(moved.states[6] - traj.states[6]).max() > 1e-3


def test_tsit5_and_small_step_euler_converge_to_the_same_trajectory(getkey):
    key, n, n_times = getkey(), 16, 60
    times, u = _times(n_times), _inputs(getkey(), n_times, 3)

    def run(**overrides):
        model = make_ctrnn(CTRNNConfig(n_units=n, **overrides), n_inputs=3, n_outputs=2, key=key)
        return model(u, times).states

    reference = run(solver="tsit5", adaptive=True, rtol=1e-7, atol=1e-7)
    errors = [float(jnp.abs(run(substeps=m) - reference).max()) for m in (1, 4, 16)]
    # Euler is first order: each 4× smaller step cuts the error about 4×.
    for coarse, fine in itertools.pairwise(errors):
        assert 2.5 < coarse / fine < 6.0, errors
    assert errors[-1] < 0.05 * max(1.0, float(jnp.abs(reference).max()))
    # Heun (second order) at the same small step agrees far more closely than Euler.
    heun = run(solver="heun", substeps=16)
    assert float(jnp.abs(heun - reference).max()) < errors[-1] / 10


def test_linear_model_matches_matrix_exponential(getkey):
    n, n_in, n_times, tau = 6, 2, 30, 0.05
    config = CTRNNConfig(
        n_units=n,
        activation="linear",
        gain=0.8,
        solver="tsit5",
        adaptive=True,
        rtol=1e-7,
        atol=1e-8,
    )
    model = make_ctrnn(config, n_inputs=n_in, n_outputs=1, key=getkey())
    model = _with(model, bias=jax.random.normal(getkey(), (n,)))
    times, u = _times(n_times), _inputs(getkey(), n_times, n_in)
    x0 = jax.random.normal(getkey(), (n,))
    traj = model(u, times, x0=x0)

    w, w_in, b = (np.asarray(a, np.float64) for a in (model.w_rec, model.w_in, model.bias))
    a = (-np.eye(n) + w) / tau
    propagator = scipy.linalg.expm(a * DT)
    # Exact solution with the input held over [t_k, t_{k+1}): x' = e^{A dt} x + A⁻¹(e^{A dt} − I) c.
    forcing = np.linalg.solve(a, propagator - np.eye(n))
    x = np.asarray(x0, np.float64)
    expected = [x]
    for k in range(n_times - 1):
        c = (w_in @ np.asarray(u[k], np.float64) + b) / tau
        x = propagator @ x + forcing @ c
        expected.append(x)
    np.testing.assert_allclose(traj.states, np.stack(expected), atol=2e-4, rtol=1e-4)


@eqx.filter_jit
def _simulate_states(model, inputs, times, key, noise):
    # Jitted once per time grid; noise levels are arrays, so every σ reuses the compilation.
    return mechscope.simulate(model, inputs, times, key=key, noise=noise).states


def _stationary_variance(getkey, dt, sigma_in, sigma_rec):
    """Variance across trials of one linear unit with no recurrence, after burn-in."""
    n_trials, duration, burn_in = 4000, 0.6, 0.3
    model = make_ctrnn(
        CTRNNConfig(n_units=1, activation="linear"), n_inputs=1, n_outputs=1, key=getkey()
    )
    model = _with(model, w_rec=jnp.zeros((1, 1)), w_in=jnp.ones((1, 1)))
    n_times = round(duration / dt) + 1
    times = _times(n_times, dt)
    inputs = jnp.zeros((n_trials, n_times, 1))
    states = _simulate_states(model, inputs, times, getkey(), mechscope.Noise(sigma_in, sigma_rec))
    states = np.asarray(states[:, round(burn_in / dt) :, 0], np.float64)
    return states.var(axis=0).mean()


@pytest.mark.parametrize(("sigma_in", "sigma_rec"), [(0.0, 0.5), (0.5, 0.0), (0.3, 0.4)])
def test_stationary_variance_matches_theory_for_any_dt(getkey, sigma_in, sigma_rec):
    tau = 0.05
    total = sigma_rec**2 + sigma_in**2  # w_in = 1
    for dt in (0.01, 0.0025):
        measured = _stationary_variance(getkey, dt, sigma_in, sigma_rec)
        # Euler–Maruyama's exact stationary variance; → total (the SDE's) as dt → 0.
        euler_theory = total / (1 - dt / (2 * tau))
        assert measured == pytest.approx(euler_theory, rel=0.06), (dt, measured)
        assert measured == pytest.approx(total, rel=0.15), (dt, measured)


# ------------------------------------------------------------------ gradients and fast paths


def _loss(model, u, times, key, noise):
    traj = model(u, times, key=key, noise=noise)
    return jnp.mean((traj.outputs - 0.3) ** 2) + 0.1 * jnp.mean(traj.rates**2)


@pytest.mark.parametrize("solver", ["euler", pytest.param("heun", marks=pytest.mark.slow)])
def test_scan_integrator_gradients_match_diffeqsolve(getkey, solver):
    key, noise_key = getkey(), getkey()
    times, u = _times(30), _inputs(getkey(), 30, 3)
    noise = mechscope.Noise(0.1, 0.2)
    grads = {}
    for integrator in ("scan", "diffeqsolve"):
        config = CTRNNConfig(
            n_units=10, solver=solver, substeps=2, integrator=integrator, learn_x0=True
        )
        model = make_ctrnn(config, n_inputs=3, n_outputs=2, key=key)
        grads[integrator] = eqx.filter_grad(_loss)(model, u, times, noise_key, noise)
    fast = jax.tree.leaves(eqx.filter(grads["scan"], eqx.is_array))
    plain = jax.tree.leaves(eqx.filter(grads["diffeqsolve"], eqx.is_array))
    assert len(fast) == len(plain) == 6
    for a, b in zip(fast, plain, strict=True):
        scale = float(jnp.abs(b).max())
        assert scale > 0
        np.testing.assert_allclose(a, b, atol=2e-4 * scale, rtol=2e-3)


def test_checkpointed_scan_gives_the_same_values_and_gradients(getkey):
    key, noise_key = getkey(), getkey()
    times, u = _times(37), _inputs(getkey(), 37, 3)  # 36 intervals: chunks of 5 need padding
    noise = mechscope.Noise(0.1, 0.1)
    results = []
    for policy in ("never", "always"):
        config = CTRNNConfig(
            n_units=10, checkpointing=policy, checkpoint_chunk=5, gradient="autodiff"
        )
        model = make_ctrnn(config, n_inputs=3, n_outputs=2, key=key)
        results.append(eqx.filter_value_and_grad(_loss)(model, u, times, noise_key, noise))
    (value_a, grad_a), (value_b, grad_b) = results
    np.testing.assert_allclose(value_a, value_b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _float64(model):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)


@pytest.mark.parametrize(
    ("factory", "config_cls", "activation", "noise"),
    [
        (make_ctrnn, CTRNNConfig, "tanh", None),
        (make_ctrnn, CTRNNConfig, "softplus", mechscope.Noise(0.1, 0.2)),
        (make_ei_ctrnn, EICTRNNConfig, "retanh", mechscope.Noise(0.05, 0.1)),
    ],
)
def test_euler_adjoint_gradients_equal_autodiff(getkey, factory, config_cls, activation, noise):
    """The hand-written adjoint is exact: it agrees with reverse-mode autodiff to rounding.

    Every differentiable input is checked: weights, biases, learned x0, the inputs and the
    noise levels, for a loss on states, rates and outputs.
    """
    key, noise_key = getkey(), getkey()
    n_times = 40
    with jax.enable_x64(True):
        times = jnp.arange(n_times, dtype=jnp.float64) * DT
        u = _inputs(getkey(), n_times, 3).astype(jnp.float64)
        levels = None if noise is None else jnp.array([noise.input, noise.recurrent])
        bias = 0.3 * jax.random.normal(getkey(), (12,), jnp.float64)
        # Away from 0, where relu-like activations have a kink: there the adjoint uses the
        # registered derivative and autodiff its own subgradient (jnp.maximum gives 1/2).
        x0 = 0.5 + jax.random.uniform(getkey(), (12,), jnp.float64)
        results = {}
        for gradient in ("adjoint", "autodiff"):
            config = config_cls(n_units=12, activation=activation, gradient=gradient, learn_x0=True)
            model = _float64(factory(config, n_inputs=3, n_outputs=2, key=key))
            model = _with(model, bias=bias, x0=x0)

            def loss(model, u, levels):
                noise_levels = None if levels is None else mechscope.Noise(*levels)
                traj = jax.vmap(
                    lambda trial: model(trial, times, key=noise_key, noise=noise_levels)
                )(jnp.stack([u, -u]))
                return (
                    jnp.sum(jnp.sin(traj.states[:, ::3]))
                    + jnp.sum(traj.outputs**2)
                    + jnp.mean(traj.rates)
                )

            results[gradient] = jax.value_and_grad(loss, argnums=(0, 1, 2))(model, u, levels)
        (value_a, grads_a), (value_b, grads_b) = results["adjoint"], results["autodiff"]
        assert float(value_a) == float(value_b)  # the forward pass is the same code
        leaves_a = jax.tree.leaves(eqx.filter(grads_a, eqx.is_inexact_array))
        leaves_b = jax.tree.leaves(eqx.filter(grads_b, eqx.is_inexact_array))
        assert len(leaves_a) == len(leaves_b) == 7 + (noise is not None)
        for a, b in zip(leaves_a, leaves_b, strict=True):
            scale = float(jnp.abs(b).max())
            assert scale > 0
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * scale)


def test_auto_gradient_uses_the_adjoint_only_where_it_applies():
    assert CTRNNConfig().uses_adjoint(None)
    assert not CTRNNConfig(gradient="autodiff").uses_adjoint(None)
    assert not CTRNNConfig(solver="heun").uses_adjoint(None)
    assert not CTRNNConfig(substeps=2).uses_adjoint(None)
    # Where checkpointing is on, 'auto' keeps reverse mode (the adjoint stores every state).
    assert not CTRNNConfig().uses_adjoint(10)
    assert CTRNNConfig(gradient="adjoint").uses_adjoint(None)


def test_x0_gets_a_gradient_only_when_learned(getkey):
    key = getkey()
    times, u = _times(10), _inputs(getkey(), 10, 2)
    for learn in (False, True):
        model = make_ctrnn(CTRNNConfig(n_units=5, learn_x0=learn), n_inputs=2, n_outputs=1, key=key)
        grad = eqx.filter_grad(_loss)(model, u, times, None, None)
        assert bool(jnp.any(grad.x0 != 0)) == learn


def test_noise_levels_are_arrays_and_do_not_recompile(getkey):
    model = make_ctrnn(CTRNNConfig(n_units=6), n_inputs=2, n_outputs=1, key=getkey())
    times, u = _times(15), _inputs(getkey(), 15, 2)
    traces = []

    @eqx.filter_jit
    def run(model, noise, key):
        traces.append(None)
        return model(u, times, key=key, noise=noise).states

    key = getkey()
    quiet = run(model, mechscope.Noise(0.0, 0.0), key)
    loud = run(model, mechscope.Noise(0.2, 0.3), key)
    louder = run(model, mechscope.Noise(0.4, 0.6), key)
    assert len(traces) == 1
    np.testing.assert_allclose(quiet, model(u, times).states, atol=1e-6)
    # Noise is linear in σ for a fixed key at the first noisy step.
    np.testing.assert_allclose(louder[1] - quiet[1], 2 * (loud[1] - quiet[1]), rtol=1e-4)
    assert float(jnp.abs(loud - quiet).max()) > 1e-3


def test_noise_without_a_key_is_an_error_unless_zero(getkey):
    model = make_ctrnn(CTRNNConfig(n_units=4), n_inputs=1, n_outputs=1, key=getkey())
    times, u = _times(5), jnp.zeros((5, 1))
    with pytest.raises(ValueError, match="PRNG key"):
        model(u, times, noise=mechscope.Noise(0.1, 0.0))
    silent = model(u, times, noise=mechscope.Noise.none())
    np.testing.assert_array_equal(silent.states, model(u, times).states)


# ------------------------------------------------------------------ Jacobian


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("factory", [make_ctrnn, make_ei_ctrnn])
def test_analytic_jacobian_matches_jacfwd(getkey, activation, factory):
    config_cls = CTRNNConfig if factory is make_ctrnn else EICTRNNConfig
    model = factory(
        config_cls(n_units=10, activation=activation), n_inputs=3, n_outputs=2, key=getkey()
    )
    x, u = jax.random.normal(getkey(), (10,)), jax.random.normal(getkey(), (3,))
    expected = jax.jacfwd(lambda state: model.vector_field(0.0, state, u))(x)
    np.testing.assert_allclose(model.jacobian(0.0, x, u), expected, rtol=1e-5, atol=1e-5)


def test_registered_activation_is_usable_with_an_autodiff_derivative(getkey):
    name = "test_cube_root_softsign"
    if name not in ACTIVATIONS:
        register_activation(name, lambda x: x / (1 + jnp.abs(x)))
    with pytest.raises(ValueError, match="already registered"):
        register_activation(name, jnp.tanh)
    model = make_ctrnn(
        CTRNNConfig(n_units=7, activation=name), n_inputs=2, n_outputs=1, key=getkey()
    )
    x = jax.random.normal(getkey(), (7,))
    np.testing.assert_allclose(model.rates(x), x / (1 + jnp.abs(x)), rtol=1e-6)
    expected = jax.jacfwd(lambda state: model.vector_field(0.0, state, jnp.zeros(2)))(x)
    np.testing.assert_allclose(model.jacobian(0.0, x, jnp.zeros(2)), expected, rtol=1e-5)


# ------------------------------------------------------------------ Dale's law


def test_dale_signs_hold_through_optimisation(getkey):
    config = EICTRNNConfig(n_units=20, nonnegative_inputs=True)
    model = make_ei_ctrnn(config, n_inputs=2, n_outputs=2, key=getkey())
    times, u = _times(25), _inputs(getkey(), 25, 2)
    target = jax.random.normal(getkey(), (25, 2))
    optimiser = optax.adam(0.05)  # large steps, so raw weights do cross zero
    state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        def loss(m):
            return jnp.mean((m(u, times).outputs - target) ** 2)

        grads = eqx.filter_grad(loss)(model)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(model, updates), state

    initial_raw = model.w_rec
    for _ in range(20):
        model, state = step(model, state)
    n_exc = config.n_excitatory
    assert n_exc == 16
    flipped = jnp.sign(model.w_rec) != jnp.sign(initial_raw)
    assert int(flipped.sum()) > 0  # the raw parameters did change sign...
    w = model.recurrent_weights()
    assert bool(jnp.all(w[:, :n_exc] >= 0)) and bool(jnp.all(w[:, n_exc:] <= 0))  # ...W did not
    assert bool(jnp.all(model.input_weights() >= 0))
    np.testing.assert_array_equal(model.output_weights()[:, n_exc:], 0.0)
    np.testing.assert_array_equal(model.signs(), np.where(np.arange(20) < 16, 1.0, -1.0))


def test_ei_initial_weights_are_balanced_with_spectral_radius_near_gain(getkey):
    config = EICTRNNConfig(n_units=400, gain=1.5)
    model = make_ei_ctrnn(config, n_inputs=3, n_outputs=2, key=getkey())
    w = np.asarray(model.recurrent_weights(), np.float64)
    # Every row's inhibition cancels its excitation exactly.
    np.testing.assert_allclose(w.sum(axis=1), 0.0, atol=1e-4 * w[:, :320].sum(axis=1).min())
    radius = np.abs(np.linalg.eigvals(w)).max()
    assert radius == pytest.approx(1.5, rel=0.15)


def test_ctrnn_initial_weights_follow_gain(getkey):
    model = make_ctrnn(CTRNNConfig(n_units=400, gain=1.5), n_inputs=3, n_outputs=2, key=getkey())
    assert float(jnp.std(model.w_rec)) == pytest.approx(1.5 / 20, rel=0.02)
    assert float(jnp.std(model.w_in)) == pytest.approx(1 / np.sqrt(3), rel=0.1)
    radius = np.abs(np.linalg.eigvals(np.asarray(model.w_rec, np.float64))).max()
    assert radius == pytest.approx(1.5, rel=0.1)


# ------------------------------------------------------------------ configs, device, contract


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"activation": "swish9"}, "unknown activation"),
        ({"solver": "rk99"}, "diffrax solver"),
        ({"adaptive": True}, "error estimate"),
        ({"adaptive": True, "solver": "tsit5", "integrator": "scan"}, "fixed-step only"),
        ({"tau": 0.0}, "greater than 0"),
        ({"device": "GPU 0"}, "platform name"),
        ({"gradient": "adjoint", "solver": "heun"}, "adjoint of fixed-step Euler"),
        ({"gradient": "adjoint", "substeps": 2}, "adjoint of fixed-step Euler"),
        ({"gradient": "adjoint", "checkpointing": "always"}, "checkpointing does not apply"),
    ],
)
def test_invalid_configs_fail_at_validation(params, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        CTRNNConfig(**params)


def test_ei_config_needs_both_populations():
    with pytest.raises(pydantic.ValidationError, match="both populations"):
        EICTRNNConfig(n_units=3, excitatory_fraction=0.9)


@pytest.mark.parametrize("config_cls", [CTRNNConfig, EICTRNNConfig])
def test_configs_round_trip_through_json_and_are_hashable(config_cls):
    config = config_cls(solver="Tsit5", adaptive=True, gain=4.0)
    assert config.solver == "tsit5"
    again = config_cls.model_validate_json(config.model_dump_json())
    assert again == config and hash(again) == hash(config)


def test_device_option_places_parameters_without_changing_numbers(getkey):
    key = getkey()
    times, u = _times(12), _inputs(getkey(), 12, 2)
    default = make_ctrnn(CTRNNConfig(n_units=6), n_inputs=2, n_outputs=1, key=key)
    on_cpu = make_ctrnn(CTRNNConfig(n_units=6, device="cpu:0"), n_inputs=2, n_outputs=1, key=key)
    assert on_cpu.w_rec.devices() == {jax.devices("cpu")[0]}
    np.testing.assert_array_equal(on_cpu(u, times).states, default(u, times).states)
    with pytest.raises(ValueError, match="cpu:7"):
        make_ctrnn(CTRNNConfig(device="cpu:7"), n_inputs=2, n_outputs=1, key=key)


def test_plugin_registers_both_models():
    registry = mechscope.get_registry()
    assert registry.get("model", "ctrnn").config_class is CTRNNConfig
    assert registry.get("model", "ei_ctrnn").config_class is EICTRNNConfig


_HAS_TESTING = importlib.util.find_spec("mechscope.testing") is not None


@pytest.mark.skipif(not _HAS_TESTING, reason="mechscope.testing not available yet")
@pytest.mark.parametrize("name", ["ctrnn", "ei_ctrnn"])
def test_contract_check_model_passes(getkey, name):
    from mechscope import testing

    entry = mechscope.get_registry().get("model", name)
    model = entry.build(entry.config_class(n_units=12), n_inputs=3, n_outputs=2, key=getkey())
    testing.check_model(model, key=getkey())


def test_a_network_stored_by_an_earlier_version_loads_with_its_weights_in_place():
    """benchmarks/data holds a ctrnn trained and stored before lowrank_ctrnn existed. A model's
    arrays are stored in its field order, so that order must not change: loaded, the network
    still reproduces the noise-free condition R² its training history recorded (0.9988), which
    weights in the wrong places (or a refused load) cannot."""
    from pathlib import Path

    from mechscope_reach import DelayedReach, DelayedReachConfig

    from mechscope.metrics import masked_r2
    from mechscope.plugins import get_plugin_manager

    directory = Path(__file__).parents[1] / "benchmarks" / "data" / "fixed_points" / "regularised"
    run = mechscope.TrainedRun.load(directory, registry=get_plugin_manager().registry)
    assert run.model.w_rec.shape == (100, 100) and run.model.w_in.shape == (100, 3)
    trials = DelayedReach(DelayedReachConfig()).conditions()
    trajectory = mechscope.simulate(run.model, trials.inputs, trials.times)
    r2 = float(masked_r2(trajectory.outputs, trials.targets, trials.mask))
    np.testing.assert_allclose(r2, float(run.history["r2"][-1]), atol=2e-3)
