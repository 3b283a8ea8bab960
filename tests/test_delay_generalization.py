"""Tests of the delay_generalization probe: a latching oracle, a decaying memory, delay noise."""

from __future__ import annotations

import math
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mechscope_dynamics import (
    DelayGeneralizationConfig,
    DelayGeneralizationProbe,
    delay_noise_inputs,
    plan_delays,
)

import mechscope
from mechscope.experiment import Experiment
from mechscope.testing import check_probe

REGISTRY = mechscope.get_registry()
# Reach geometry of every test: 4 targets on the unit circle, one trained delay of 0.4 s.
REACH = {"n_targets": 4, "delays": (0.4,), "condition_delays": (0.4,)}
LATCH_RATE = 80.0  # 1/s: with dt = 0.01 the latch keeps 20 % of the gap per step
LATCH_WINDOW = 0.055  # s: the timer stops (and the latch closes) after ceil(5.5) = 6 steps
HAND_TAU = 0.05  # s


class LatchConfig(mechscope.Config):
    """A test double's config (its decay rate is an array leaf, so runs share compilations)."""


class Latch(mechscope.AbstractModel):
    """A hand-written delayed-reach solution with a memory that is held or decays.

    State x = (timer c, memory m (2), hand h (2)); inputs u = (target x, y, go).
    The timer runs while a target is shown, until LATCH_WINDOW; while it runs the memory
    latches onto the target input, ṁ = k (u_xy − m). After that the memory ignores the input
    and decays, ṁ = −r m, until go (r = 0: a line attractor that holds any target). From go the
    hand follows the memory, ḣ = (m − h)/τ_h, and the position readout is h.
    Integrated by forward Euler, one step per sample.
    """

    config: LatchConfig = eqx.field(static=True)
    decay_rate: jax.Array  # 1/s; 0 holds forever

    @property
    def n_inputs(self):
        return 3

    @property
    def n_outputs(self):
        return 4

    @property
    def n_units(self):
        return 5

    def vector_field(self, t, x, u):
        timer, memory, hand = x[0], x[1:3], x[3:5]
        shown = (jnp.sum(u[:2] ** 2) > 0).astype(x.dtype)
        latching = (timer < LATCH_WINDOW).astype(x.dtype)
        moving = (u[2] > 0.5).astype(x.dtype)
        d_timer = shown * latching
        d_memory = (
            shown * latching * LATCH_RATE * (u[:2] - memory)
            - (1 - latching) * (1 - moving) * self.decay_rate * memory
        )
        d_hand = moving * (memory - hand) / HAND_TAU
        return jnp.concatenate([d_timer[None], d_memory, d_hand])

    def rates(self, x):
        return x

    def readout(self, r):
        return jnp.concatenate([jnp.zeros(2, r.dtype), r[3:5]])

    def initial_state(self):
        return jnp.zeros(5)

    def __call__(self, inputs, times, *, key=None, noise=None, x0=None):
        dt = times[1] - times[0]

        def euler(x, u):
            return x + dt * self.vector_field(0.0, x, u), x

        start = self.initial_state() if x0 is None else x0
        _, states = jax.lax.scan(euler, start, inputs)
        return mechscope.Trajectory(
            times=times, states=states, rates=states, outputs=jax.vmap(self.readout)(states)
        )


def _task(**fields):
    entry = REGISTRY.get("task", "delayed_reach")
    return entry.build(entry.validate({**REACH, **fields}))


def _latch(decay_rate):
    return Latch(LatchConfig(), jnp.asarray(decay_rate, jnp.float32))


def _latched_at():
    """Seconds after target onset at which the latch closes (the timer's Euler steps)."""
    return math.ceil(LATCH_WINDOW / 0.01) * 0.01


DECAY_RATE, RADIUS = 0.5, 0.2
# The decaying memory: m(go) = target · exp(−r (D − t_latch)); the reach misses by
# |target| (1 − exp(−r (D − t_latch))), which exceeds RADIUS × |target| once
# D > t_latch + ln(1 / (1 − RADIUS)) / r.
CRITICAL = _latched_at() + math.log(1 / (1 - RADIUS)) / DECAY_RATE
# Every run uses these fields, so all of them share one set of compilations.
FIELDS = {
    "noise_time_constant": 0.05,
    "n_repeats": 2,
    "delay_noise": (0.0, 0.2, 0.4),
    "success_radius": RADIUS,
    "test_delays": (0.2, 0.4, round(CRITICAL - 0.03, 2), round(CRITICAL + 0.03, 2), 0.8, 1.2),
}


def _run(decay_rate, key=0, **fields):
    config = DelayGeneralizationConfig(**{**FIELDS, **fields})
    return DelayGeneralizationProbe(config).run(
        mechscope.TrainedRun(model=_latch(decay_rate)),
        _task(),
        key=jax.random.key(key),
        registry=REGISTRY,
    )


def test_default_delays_follow_the_trained_delays():
    config = DelayGeneralizationConfig()
    reference, test, labels = plan_delays(config, _task())
    np.testing.assert_allclose(reference, [0.4])
    np.testing.assert_allclose(test, [0.2, 0.6, 0.8, 1.2])
    assert labels == ("shorter", "1.5x", "2x", "3x")
    ranged = _task(delays=None, delay_range=(0.3, 0.9))
    reference, test, _ = plan_delays(config, ranged)
    np.testing.assert_allclose(reference, [0.3, 0.6, 0.9])
    np.testing.assert_allclose(test, [0.15, 1.35, 1.8, 2.7])


def test_attractor_oracle_holds_at_every_delay():
    result = _run(0.0)
    metrics, arrays = result.metrics, result.arrays
    np.testing.assert_allclose(arrays["delays"], [0.4, *FIELDS["test_delays"]])
    np.testing.assert_array_equal(arrays["success_rate"], 1.0)
    assert metrics["success_rate_beyond"] == 1.0 and metrics["success_rate_longest"] == 1.0
    assert metrics["success_rate_0.2s"] == 1.0
    # Residual of 6 latch steps: 0.2⁶ of the unit reach.
    assert np.all(arrays["endpoint_error"] < 1e-3)
    # The held state does not move: zero speed at go and no drift after the latch.
    np.testing.assert_allclose(arrays["trial_end_speed"], 0.0, atol=1e-6)
    assert metrics["end_speed_longest"] == pytest.approx(0.0, abs=1e-6)
    assert np.all(arrays["drift"] < 1e-3)


def test_decaying_memory_fails_beyond_the_closed_form_delay():
    rate = DECAY_RATE
    assert 0.5 < CRITICAL < 0.6  # between the trained 0.4 s and the 1.5× test delay
    result = _run(rate)
    success = result.arrays["success_rate"][1:]  # after the trained reference delay
    # Flips between CRITICAL − 0.03 and CRITICAL + 0.03 and nowhere else.
    np.testing.assert_array_equal(success, [1, 1, 1, 0, 0, 0])
    assert result.metrics[f"success_rate_{FIELDS['test_delays'][2]:g}s"] == 1.0
    assert result.metrics[f"success_rate_{FIELDS['test_delays'][3]:g}s"] == 0.0
    assert result.metrics["success_rate_trained"] == 1.0
    assert result.metrics["success_rate_longest"] == 0.0
    # Endpoint error follows the closed form at every delay.
    tested = result.arrays["delays"][1:]
    predicted = 1 - np.exp(-rate * (tested - _latched_at()))
    np.testing.assert_allclose(result.arrays["endpoint_error"][1:], predicted, rtol=0.02)
    # End-of-delay speed: ‖ṁ‖ = r |m(go)|, normalised by the mean speed during movement.
    assert np.all(result.arrays["end_speed"] > 0)
    assert result.metrics["end_speed_longest"] < result.metrics["end_speed_trained"]


def test_drift_matches_the_closed_form():
    rate = DECAY_RATE
    result = _run(rate)
    delays = result.arrays["delays"]
    settle = 0.1  # the default settle_time; the latch has closed by then
    # Path length of m from settle to go over the path of h during the reference movement.
    moved = np.exp(-rate * (0.4 - _latched_at()))
    drifted = np.exp(-rate * (settle - _latched_at())) - np.exp(-rate * (delays - _latched_at()))
    np.testing.assert_allclose(result.arrays["drift"], drifted / moved, rtol=0.02)
    assert result.metrics["drift_longest"] > result.metrics["drift_trained"]


def test_delay_noise_touches_the_delay_samples_only():
    trials = _task(condition_delays=(0.3, 0.6)).conditions()
    onset = jnp.asarray(trials.event_index("target_on"))
    go = jnp.asarray(trials.event_index("go"))
    noisy = delay_noise_inputs(trials.inputs, onset, go, jnp.asarray(0.5), key=jax.random.key(0))
    clean, noisy = np.asarray(trials.inputs), np.asarray(noisy)
    step = np.arange(clean.shape[1])[None, :]
    before = step < np.asarray(onset)[:, None]
    during = (step >= np.asarray(onset)[:, None]) & (step < np.asarray(go)[:, None])
    after = step >= np.asarray(go)[:, None]
    assert before.any() and during.any() and after.any()
    np.testing.assert_array_equal(noisy[before], clean[before])
    np.testing.assert_array_equal(noisy[after], clean[after])
    # Positive control: every delay sample moved, by noise of the requested size.
    difference = noisy[during] - clean[during]
    assert np.all(difference != 0)
    assert np.std(difference) == pytest.approx(0.5, rel=0.05)
    assert abs(np.mean(difference)) < 0.05
    # Negative control: σ = 0 changes nothing.
    silent = delay_noise_inputs(trials.inputs, onset, go, jnp.asarray(0.0), key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(silent), clean)


def test_delay_noise_units_match_the_models_input_noise():
    """σ of delay noise and σ_in of mechscope.Noise give the same state spread at go.

    A ctrnn without recurrence is a leaky integrator (τ = 50 ms); the 0.4 s delay is 8 τ, so
    at go the state has forgotten the pre-onset noise of the full-trial run and both spreads
    are the stationary one.
    """
    task = _task()
    entry = REGISTRY.get("model", "ctrnn")
    model = entry.build(
        entry.validate({"n_units": 6, "tau": 0.05}), n_inputs=3, n_outputs=4, key=jax.random.key(0)
    )
    model = eqx.tree_at(lambda m: m.w_rec, model, jnp.zeros_like(model.w_rec))
    trials = task.conditions()
    go = np.asarray(trials.event_index("go"))
    onset = jnp.asarray(trials.event_index("target_on"))
    n_repeats, sigma = 512, 0.2
    inputs = jnp.tile(trials.inputs, (n_repeats, 1, 1))
    per_sample = sigma * math.sqrt(2 * 0.05 / task.dt)
    delay_only = delay_noise_inputs(
        inputs,
        jnp.tile(onset, n_repeats),
        jnp.tile(jnp.asarray(go), n_repeats),
        jnp.asarray(per_sample),
        key=jax.random.key(1),
    )
    # Jitted: op-by-op dispatch of the noisy integration costs more than compiling it.
    simulate = eqx.filter_jit(
        lambda model, inputs, key, noise: (
            mechscope.simulate(model, inputs, trials.times, key=key, noise=noise).states
        )
    )
    spread_delay = simulate(model, delay_only, None, None)
    spread_model = simulate(model, inputs, jax.random.key(2), mechscope.Noise(input=sigma))
    # Stationary spread: variance over repeats in the last 20 delay samples (4 τ) before go.
    window = np.tile(go, n_repeats)[:, None] + np.arange(-20, 0)[None, :]
    rows = np.arange(window.shape[0])[:, None]

    def spread(states):
        late = np.asarray(states)[rows, window].reshape(n_repeats, len(go), 20, 6)
        return late.var(axis=0).mean()

    ratio = spread(spread_delay) / spread(spread_model)
    # Wrong units would be off by far more: without √(2τ/dt) the ratio is dt/(2τ) = 0.1.
    assert ratio == pytest.approx(1.0, abs=0.08)
    # The conversion is what the probe reports.
    result = _run(0.0)
    np.testing.assert_allclose(
        result.arrays["delay_noise_per_sample"], np.asarray([0.0, 0.2, 0.4]) / sigma * per_sample
    )


def test_same_key_same_result_other_key_other_noise():
    first, again, other = _run(0.5, key=3), _run(0.5, key=3), _run(0.5, key=4)
    assert first.metrics == again.metrics
    for name, array in first.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], array, err_msg=name)
    # Noise-free quantities do not depend on the key; noisy ones do.
    np.testing.assert_array_equal(other.arrays["success_rate"], first.arrays["success_rate"])
    assert other.arrays["r2_delay_noise"][0] == first.arrays["r2_delay_noise"][0]
    assert other.arrays["r2_delay_noise"][1] != first.arrays["r2_delay_noise"][1]


def test_delay_noise_during_the_latch_perturbs_the_held_memory():
    result = _run(0.0)
    error = result.arrays["endpoint_error_delay_noise"]
    assert error[0] < 1e-3 and error[1] > error[0] and error[2] > error[1]
    assert result.metrics["auc_delay_noise"] < result.metrics["r2_delay_noise_0"]


def test_contract_and_reload(tmp_path):
    config = DelayGeneralizationConfig(**FIELDS)
    trained = mechscope.TrainedRun(model=_latch(DECAY_RATE))
    result = check_probe(
        DelayGeneralizationProbe(config),
        trained,
        _task(),
        key=jax.random.key(0),
        tmp_path=tmp_path,
        registry=REGISTRY,
    )
    loaded = mechscope.ProbeResult.load(tmp_path)
    assert loaded.metrics == pytest.approx(result.metrics, nan_ok=True)
    assert set(loaded.arrays) == set(result.arrays)


def test_model_without_tau_needs_a_time_constant():
    probe = DelayGeneralizationProbe(DelayGeneralizationConfig())
    with pytest.raises(mechscope.ConfigError, match="noise_time_constant"):
        probe.run(
            mechscope.TrainedRun(model=_latch(0.0)),
            _task(),
            key=jax.random.key(0),
            registry=REGISTRY,
        )


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="above 1"):
        DelayGeneralizationConfig(delay_multiples=(0.5, 2.0))
    with pytest.raises(ValueError, match="increasing"):
        DelayGeneralizationConfig(delay_noise=(0.2, 0.1))


def test_tiny_ctrnn_through_an_experiment():
    experiment = Experiment(
        task={"name": "delayed_reach", "dt": 0.02, "n_targets": 4, "delay_range": [0.2, 0.4]},
        model={"name": "ctrnn", "n_units": 8},
        trainer={"name": "bptt", "steps": 24, "batch_size": 8, "eval_every": 24},
        probes=[{"name": "delay_generalization", "n_repeats": 2, "delay_noise": [0.0, 0.1]}],
        seed=0,
    )
    result = experiment.run(store=None, progress=False)
    assert not result.probe_errors
    probe = result.probes["delay_generalization"]
    np.testing.assert_allclose(probe.arrays["delays"], [0.2, 0.3, 0.4, 0.1, 0.6, 0.8, 1.2])
    np.testing.assert_array_equal(probe.arrays["trained"], [1, 1, 1, 0, 0, 0, 0])
    config = DelayGeneralizationConfig(n_repeats=2, delay_noise=(0.0, 0.1))
    declared = {m.name for m in DelayGeneralizationProbe(config).metrics()}
    assert set(probe.metrics) == declared
    assert all(np.isfinite(v) for v in probe.metrics.values())
    assert 0 <= probe.metrics["success_rate_beyond"] <= 1
    assert probe.metrics["end_speed_trained"] > 0


def test_position_channels_partly_missing_are_an_error_wholly_missing_mean_all():
    from mechscope_dynamics._common import endpoint_error

    targets = np.zeros((2, 5, 3))
    targets[:, -1] = [0.0, 3.0, 4.0]
    trials = types.SimpleNamespace(targets=targets, mask=np.ones((2, 5, 3)))
    outputs = np.zeros((2, 5, 3))
    with pytest.raises(ValueError, match=r"channel\(s\) \[3\].*3 outputs"):
        endpoint_error(outputs, trials, (2, 3))  # type: ignore[arg-type]
    error = endpoint_error(outputs, trials, (1, 2))  # type: ignore[arg-type]
    np.testing.assert_allclose(error, [5.0, 5.0])
    # A task without those channels at all (a toy task) is measured on every output.
    error = endpoint_error(outputs, trials, (5, 6))  # type: ignore[arg-type]
    np.testing.assert_allclose(error, [5.0, 5.0])
    error = endpoint_error(outputs[..., :1], trials, (0,))  # type: ignore[arg-type]
    np.testing.assert_allclose(error, [0.0, 0.0])
