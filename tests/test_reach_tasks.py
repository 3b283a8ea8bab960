"""Tests of the reach task family: delayed reach, target switch, target relocation."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from matplotlib.figure import Figure
from mechscope_reach import (
    DelayedReach,
    DelayedReachConfig,
    ReachPlan,
    TargetRelocation,
    TargetRelocationConfig,
    TargetSwitch,
    TargetSwitchConfig,
    plot_trials,
    render_trials,
)

import mechscope
from mechscope.testing import check_task

ATOL = 1e-5


def _np(trials: mechscope.Trials) -> dict:
    return {
        "inputs": np.asarray(trials.inputs),
        "targets": np.asarray(trials.targets),
        "mask": np.asarray(trials.mask),
        "times": np.asarray(trials.times),
        **{f"e_{k}": np.asarray(v) for k, v in trials.events.items()},
        **{f"l_{k}": np.asarray(v) for k, v in trials.labels.items()},
    }


@functools.cache
def _sampler(task, batch_size):
    # One compiled sampler per (task, batch size), shared by every test that uses it.
    return jax.jit(lambda k: task.sample(batch_size, key=k))


def _sample(task, key, batch_size=32):
    return _np(_sampler(task, batch_size)(key))


def _index(times, event):
    """Grid index of an event time (independent of Trials.event_index)."""
    return round(float(event - times[0]) / float(times[1] - times[0]))


# --- registration and contract ---------------------------------------------------------------


def test_registered_with_their_config_classes():
    registry = mechscope.get_registry()
    expected = {
        "delayed_reach": (DelayedReachConfig, DelayedReach),
        "target_switch": (TargetSwitchConfig, TargetSwitch),
        "target_relocation": (TargetRelocationConfig, TargetRelocation),
    }
    for name, (config_class, task_class) in expected.items():
        entry = registry.get("task", name)
        assert entry.config_class is config_class
        task = entry.build(entry.validate({}))
        assert type(task) is task_class
        assert (task.n_inputs, task.n_outputs, task.dt) == (3, 4, 0.01)
        assert entry.description


@pytest.mark.parametrize(
    "task",
    [
        DelayedReach(DelayedReachConfig(catch_fraction=0.3, go_cue="pulse", delays=(0.3, 0.6))),
        TargetSwitch(TargetSwitchConfig(switch_epoch="after_go", switch_fraction=0.5)),
        TargetRelocation(TargetRelocationConfig(switch_epoch="after_go", relocate_from="random")),
        pytest.param(DelayedReach(DelayedReachConfig()), marks=pytest.mark.slow),
        pytest.param(
            TargetSwitch(TargetSwitchConfig(switch_offset=3, profile="minimum_jerk")),
            marks=pytest.mark.slow,
        ),
        pytest.param(
            TargetRelocation(TargetRelocationConfig(switch_epoch="none", novel_radii=(0.5, 1.5))),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["reach-catch-pulse", "switch-go", "reloc-go", "reach", "switch-offset", "reloc-none"],
)
def test_contract(task, getkey):
    check_task(task, key=getkey(), batch_size=6)


def test_same_key_same_batch_and_different_keys_differ(getkey):
    task = DelayedReach(DelayedReachConfig(catch_fraction=0.2))
    key = getkey()
    first, again, other = _sample(task, key), _sample(task, key), _sample(task, getkey())
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    assert not np.array_equal(first["l_delay"], other["l_delay"])
    assert not np.array_equal(first["targets"], other["targets"])


# --- kinematics ------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["gaussian", "minimum_jerk"])
def test_position_ends_at_target_and_stays(profile, getkey):
    config = DelayedReachConfig(profile=profile)
    trials = _sample(DelayedReach(config), getkey())
    times = trials["times"]
    for b in range(trials["inputs"].shape[0]):
        position = trials["targets"][b, :, 2:]
        onset, end = trials["e_movement_onset"][b], trials["e_movement_end"][b]
        target = trials["l_target"][b]
        after = times >= end - 1e-6
        np.testing.assert_allclose(
            position[after], np.broadcast_to(target, position[after].shape), atol=ATOL
        )
        np.testing.assert_allclose(position[times <= onset + 1e-6], 0.0, atol=ATOL)
        np.testing.assert_allclose(trials["targets"][b, after, :2], 0.0, atol=ATOL)
        # The target is one of the trained ones, on the circle.
        assert math.isclose(np.linalg.norm(target), config.radius, rel_tol=1e-5)


@pytest.mark.parametrize("profile", ["gaussian", "minimum_jerk"])
def test_velocity_integrates_to_position(profile, getkey):
    trials = _sample(DelayedReach(DelayedReachConfig(profile=profile)), getkey(), 32)
    velocity, position = trials["targets"][..., :2], trials["targets"][..., 2:]
    integral = scipy.integrate.cumulative_trapezoid(velocity, trials["times"], axis=1, initial=0)
    np.testing.assert_allclose(integral, position, atol=2e-3)
    # Nonzero motion, so the comparison is not vacuous.
    assert np.abs(velocity).max() > 1.0


def test_gaussian_speed_profile_matches_normal_density(getkey):
    """Speed is a normal density (sd = reach / 7) minus its edge value, scaled to the distance."""
    config = DelayedReachConfig(radius=2.0)
    trials = _sample(DelayedReach(config), getkey(), 32)
    sd = config.reach_duration * config.gaussian_sd_fraction
    half = config.reach_duration / 2
    edge = scipy.stats.norm.pdf(half, scale=sd)
    mass = scipy.stats.norm.cdf(half, scale=sd) - scipy.stats.norm.cdf(-half, scale=sd)
    mass -= edge * config.reach_duration
    times = trials["times"]
    for b in range(4):
        onset = trials["e_movement_onset"][b]
        centre = onset + half
        inside = (times > onset) & (times < onset + config.reach_duration)
        expected = (scipy.stats.norm.pdf(times, loc=centre, scale=sd) - edge) / mass
        expected = np.where(inside, expected, 0.0)
        speed = np.linalg.norm(trials["targets"][b, :, :2], axis=-1)
        np.testing.assert_allclose(speed, config.radius * expected, rtol=1e-4, atol=1e-4)
        assert np.argmax(speed) == _index(times, centre)


def test_minimum_jerk_position_matches_polynomial(getkey):
    config = DelayedReachConfig(profile="minimum_jerk", radius=1.5)
    trials = _sample(DelayedReach(config), getkey(), 32)
    times = trials["times"]
    for b in range(4):
        u = np.clip((times - trials["e_movement_onset"][b]) / config.reach_duration, 0, 1)
        s = 10 * u**3 - 15 * u**4 + 6 * u**5
        expected = s[:, None] * trials["l_target"][b][None, :]
        np.testing.assert_allclose(trials["targets"][b, :, 2:], expected, atol=1e-5)


@pytest.mark.parametrize("profile", ["gaussian", "minimum_jerk"])
def test_peak_normalized_velocity_peaks_at_reach_distance(profile, getkey):
    base = DelayedReachConfig(profile=profile, radius=1.7)
    normalized = base.model_copy(update={"velocity": "peak_normalized"})
    key = getkey()
    a, b = _sample(DelayedReach(base), key), _sample(DelayedReach(normalized), key)
    # Same positions; velocities differ only by a constant factor with peak |v| = distance.
    np.testing.assert_allclose(a["targets"][..., 2:], b["targets"][..., 2:], atol=1e-6)
    peak = np.linalg.norm(b["targets"][..., :2], axis=-1).max(axis=1)
    np.testing.assert_allclose(peak, 1.7, rtol=2e-3)
    ratio = a["targets"][..., :2].max() / b["targets"][..., :2].max()
    assert ratio > 1.5  # derivative units (1/s) differ from the normalised ones


# --- inputs, events and masks ----------------------------------------------------------------


@pytest.mark.parametrize("go_cue", ["step", "pulse", "hold"])
def test_go_cue_and_target_onset_at_event_times(go_cue, getkey):
    config = DelayedReachConfig(go_cue=go_cue, go_pulse_duration=0.05)
    trials = _sample(DelayedReach(config), getkey(), 32)
    times = trials["times"]
    pulse_samples = round(config.go_pulse_duration / config.dt)
    for b in range(16):
        on, go = _index(times, trials["e_target_on"][b]), _index(times, trials["e_go"][b])
        assert math.isclose(trials["e_target_on"][b], 0.2, abs_tol=1e-6)
        np.testing.assert_allclose(trials["e_go"][b], 0.2 + trials["l_delay"][b], atol=1e-5)
        target_input = trials["inputs"][b, :, :2]
        np.testing.assert_array_equal(target_input[:on], 0.0)
        np.testing.assert_allclose(
            target_input[on:],
            np.broadcast_to(trials["l_target"][b], target_input[on:].shape),
            atol=1e-6,
        )
        cue = trials["inputs"][b, :, 2]
        expected = np.zeros_like(cue)
        if go_cue == "step":
            expected[go:] = 1
        elif go_cue == "pulse":
            expected[go : go + pulse_samples] = 1
        else:
            expected[:go] = 1
        np.testing.assert_array_equal(cue, expected)
        np.testing.assert_allclose(
            trials["e_movement_onset"][b] - trials["e_go"][b], config.reaction_time, atol=1e-5
        )


def test_delays_drawn_from_range_on_grid(getkey):
    config = DelayedReachConfig(delay_range=(0.3, 0.7))
    delays = _sample(DelayedReach(config), getkey(), 256)["l_delay"]
    assert delays.min() >= 0.3 - 1e-6 and delays.max() <= 0.7 + 1e-6
    np.testing.assert_allclose(delays / 0.01, np.round(delays / 0.01), atol=1e-3)
    assert len(np.unique(np.round(delays, 4))) > 20  # really varies
    listed = _sample(DelayedReach(DelayedReachConfig(delays=(0.2, 0.9))), getkey(), 64)
    assert set(np.round(listed["l_delay"] * 100).astype(int).tolist()) == {20, 90}


def test_catch_trials_never_move(getkey):
    config = DelayedReachConfig(catch_fraction=0.5)
    trials = _sample(DelayedReach(config), getkey(), 64)
    catch = trials["l_catch"]
    assert 10 < catch.sum() < 54
    np.testing.assert_array_equal(trials["targets"][catch], 0.0)
    np.testing.assert_array_equal(trials["inputs"][catch, :, 2], 0.0)
    for name in ("go", "movement_onset", "movement_end"):
        assert np.isnan(trials[f"e_{name}"][catch]).all()
        assert np.isfinite(trials[f"e_{name}"][~catch]).all()
    assert np.isnan(trials["e_switch"]).all()
    # Non-catch trials do move; catch trials are scored until their nominal end.
    assert (np.abs(trials["targets"][~catch, -1, 2:]) > 0.1).any(axis=-1).all()
    nominal = 0.2 + trials["l_delay"][catch] + 0.15 + 0.5 + 0.3
    np.testing.assert_allclose(trials["e_trial_end"][catch], nominal, atol=1e-5)


@pytest.mark.parametrize("mask_reaction", [False, True])
def test_mask_covers_trial_and_excludes_padding(mask_reaction, getkey):
    config = DelayedReachConfig(mask_reaction=mask_reaction)
    trials = _sample(DelayedReach(config), getkey(), 32)
    times = trials["times"]
    # The grid holds the longest trial: fixation + max delay + reaction + reach + hold.
    assert math.isclose(times[-1], 0.2 + 1.0 + 0.15 + 0.5 + 0.3, abs_tol=1e-5)
    for b in range(32):
        end = _index(times, trials["e_trial_end"][b])
        expected = np.zeros(len(times))
        expected[: end + 1] = 1
        if mask_reaction:
            go = _index(times, trials["e_go"][b])
            expected[go : go + round(config.reaction_time / config.dt)] = 0
        for channel in range(4):
            np.testing.assert_array_equal(trials["mask"][b, :, channel], expected)
    assert trials["mask"][:, -1].min() == 0 or np.isclose(trials["l_delay"].max(), 1.0)


def test_longest_trial_fits_the_grid(getkey):
    config = TargetSwitchConfig(
        switch_epoch="after_go", switch_after_go=0.6, correction_latency=0.1, delays=(1.0,)
    )
    trials = _sample(TargetSwitch(config), getkey(), 32)
    # Correction starts 0.7 s after go, then reach and hold.
    np.testing.assert_allclose(trials["e_trial_end"], 0.2 + 1.0 + 0.7 + 0.5 + 0.3, atol=1e-5)
    assert math.isclose(trials["times"][-1], 0.2 + 1.0 + 0.7 + 0.5 + 0.3, abs_tol=1e-5)
    np.testing.assert_array_equal(trials["mask"][:, -1], 1.0)
    np.testing.assert_allclose(trials["targets"][:, -1, 2:], trials["l_target"], atol=ATOL)


# --- switch and relocation -------------------------------------------------------------------


def _assert_ends_at_final_target(trials):
    times = trials["times"]
    for b in range(trials["inputs"].shape[0]):
        final = trials["l_target"][b]
        after = times >= trials["e_movement_end"][b] - 1e-6
        assert after.any()
        np.testing.assert_allclose(
            trials["targets"][b, after, 2:], np.broadcast_to(final, (after.sum(), 2)), atol=ATOL
        )
        np.testing.assert_allclose(trials["inputs"][b, -1, :2], final, atol=1e-6)


@pytest.mark.parametrize(
    "config",
    [
        TargetSwitchConfig(),
        TargetSwitchConfig(switch_epoch="after_go", switch_after_go=0.4),
        TargetSwitchConfig(switch_epoch="after_go", switch_after_go=0.9, profile="minimum_jerk"),
        TargetSwitchConfig(switch_offset=4, switch_delay_fraction=0.2),
    ],
    ids=["delay", "mid-movement", "after-movement", "offset"],
)
def test_switch_trials_reach_the_final_target(config, getkey):
    task = TargetSwitch(config)
    for trials in (_sample(task, getkey()), _np(task.conditions())):
        _assert_ends_at_final_target(trials)
        start, final = trials["l_switched_from"], trials["l_target"]
        assert np.isfinite(start).all()
        assert (np.linalg.norm(start - final, axis=-1) > 0.1).all()
        times = trials["times"]
        for b in range(len(start)):
            switch = _index(times, trials["e_switch"][b])
            np.testing.assert_allclose(trials["inputs"][b, switch - 1, :2], start[b], atol=1e-6)
            np.testing.assert_allclose(
                trials["inputs"][b, switch:, :2],
                np.broadcast_to(final[b], (len(times) - switch, 2)),
                atol=1e-6,
            )
            if config.switch_epoch == "delay":
                # The sample nearest the chosen fraction of the delay.
                expected = 0.2 + config.switch_delay_fraction * trials["l_delay"][b]
                assert abs(trials["e_switch"][b] - expected) <= 0.005 + 1e-5
        if config.switch_offset is not None:
            angle_step = np.mod(
                np.arctan2(final[:, 1], final[:, 0]) - np.arctan2(start[:, 1], start[:, 0]),
                2 * np.pi,
            )
            np.testing.assert_allclose(angle_step, np.pi, atol=1e-5)


def test_mid_movement_switch_corrects_from_current_hand_position(getkey):
    """Until the switch the hand follows the plain reach; afterwards it stays smooth."""
    config = TargetSwitchConfig(switch_epoch="after_go", switch_after_go=0.4)
    trials = _sample(TargetSwitch(config), getkey(), 32)
    plain = DelayedReachConfig.from_config(config)
    times = trials["times"]
    # Independent reference: the same trials rendered as plain reaches to the first target.
    plan = ReachPlan(
        delay_steps=jnp.asarray(np.round(trials["l_delay"] / 0.01).astype(int)),
        catch=jnp.zeros(32, dtype=bool),
        start=jnp.asarray(trials["l_switched_from"]),
        final=jnp.asarray(trials["l_switched_from"]),
        switch_step=jnp.full(32, -1),
        condition=jnp.zeros(32, dtype=int),
        target_index=jnp.zeros(32, dtype=int),
    )
    references = np.asarray(eqx.filter_jit(render_trials)(plain, plan).targets)
    for b in range(8):
        reference = references[b]
        switch = _index(times, trials["e_switch"][b])
        np.testing.assert_allclose(
            trials["targets"][b, : switch + 1], reference[: switch + 1], atol=1e-5
        )
        # The hand is mid-reach at the switch, and the output changes smoothly afterwards.
        hand = trials["targets"][b, switch, 2:]
        assert 0.1 < np.linalg.norm(hand) < 0.9
        # No jumps: per-sample changes stay within those of a reach of the summed distance.
        distance = np.linalg.norm(trials["l_switched_from"][b]) + np.linalg.norm(
            trials["l_target"][b] - trials["l_switched_from"][b]
        )
        steps = np.abs(np.diff(trials["targets"][b, :, 2:], axis=0)).max()
        assert steps <= distance * np.abs(np.diff(reference[:, 2:], axis=0)).max() + 1e-6
        accel = np.abs(np.diff(trials["targets"][b, :, :2], axis=0)).max()
        reference_accel = np.abs(np.diff(reference[:, :2], axis=0)).max()
        assert accel <= distance * reference_accel + 1e-5
        assert math.isclose(
            trials["e_movement_end"][b],
            trials["e_switch"][b] + config.reach_duration,
            abs_tol=1e-5,
        )


@pytest.mark.parametrize(
    "config",
    [
        TargetRelocationConfig(),
        TargetRelocationConfig(switch_epoch="none", novel_radii=(0.6, 1.4)),
        TargetRelocationConfig(switch_epoch="after_go", relocate_from="random"),
        TargetRelocationConfig(novel_angles=(0.3, 2.0), novel_radii=(2.0,)),
    ],
    ids=["delay-nearest", "none-radii", "go-random", "explicit"],
)
def test_relocation_trials_reach_novel_targets(config, getkey):
    task = TargetRelocation(config)
    trained = config.trained_targets()
    novel = config.novel_targets()
    for trials in (_sample(task, getkey()), _np(task.conditions())):
        _assert_ends_at_final_target(trials)
        final = trials["l_target"]
        distance = np.linalg.norm(final[:, None] - trained[None], axis=-1)
        assert distance.min() > 0.05  # never a trained target
        np.testing.assert_allclose(final, novel[trials["l_target_index"]], atol=1e-6)
        if config.switch_epoch == "none":
            assert np.isnan(trials["l_switched_from"]).all()
            assert np.isnan(trials["e_switch"]).all()
        else:
            start = trials["l_switched_from"]
            assert np.isfinite(start).all()
            assert (
                np.min(np.linalg.norm(start[:, None] - trained[None], axis=-1), axis=1).max() < 1e-6
            )
            if config.relocate_from == "nearest":
                nearest = np.argmin(np.linalg.norm(final[:, None] - trained[None], axis=-1), 1)
                np.testing.assert_allclose(
                    np.linalg.norm(start - final, axis=-1),
                    np.linalg.norm(trained[nearest] - final, axis=-1),
                    atol=1e-5,
                )


def test_default_relocation_targets_lie_midway_between_trained_ones():
    config = TargetRelocationConfig()
    angles = np.sort(np.mod(np.arctan2(*config.novel_targets()[:, ::-1].T), 2 * np.pi))
    np.testing.assert_allclose(angles, (np.arange(8) + 0.5) * np.pi / 4, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(config.novel_targets(), axis=-1), 1.0)


# --- conditions ------------------------------------------------------------------------------


def test_delayed_reach_conditions():
    config = DelayedReachConfig(n_targets=6, condition_delays=(0.4, 0.8), catch_fraction=0.5)
    trials = _np(DelayedReach(config).conditions())
    assert trials["inputs"].shape[0] == 12
    assert not trials["l_catch"].any()
    np.testing.assert_allclose(trials["l_delay"], np.repeat([0.4, 0.8], 6), atol=1e-6)
    np.testing.assert_array_equal(trials["l_condition"], np.tile(np.arange(6), 2))
    angles = np.mod(trials["l_angle"], 2 * np.pi)
    np.testing.assert_allclose(angles, np.tile(np.arange(6) * 2 * np.pi / 6, 2), atol=1e-5)
    np.testing.assert_allclose(trials["e_go"], 0.2 + trials["l_delay"], atol=1e-6)


def test_switch_condition_ids_agree_between_sample_and_conditions(getkey):
    task = TargetSwitch(TargetSwitchConfig(n_targets=5, switch_fraction=0.7))
    conditions = _np(task.conditions())
    assert conditions["inputs"].shape[0] == 20
    np.testing.assert_array_equal(conditions["l_condition"], np.arange(20))
    trials = _sample(task, getkey(), 64)
    switched = np.isfinite(trials["e_switch"])
    assert 20 < switched.sum() < 64
    for b in np.flatnonzero(switched):
        row = trials["l_condition"][b]
        np.testing.assert_allclose(
            trials["l_switched_from"][b], conditions["l_switched_from"][row], atol=1e-6
        )
        np.testing.assert_allclose(trials["l_target"][b], conditions["l_target"][row], atol=1e-6)
    plain = ~switched
    assert (trials["l_condition"][plain] >= 20).all()
    assert np.isnan(trials["l_switched_from"][plain]).all()


def test_from_config_copies_the_trained_geometry():
    trained = DelayedReachConfig(n_targets=4, radius=2.0, delay_range=(0.2, 0.6), dt=0.02)
    switch = TargetSwitchConfig.from_config(trained, switch_offset=1)
    relocation = TargetRelocationConfig.from_config(trained, switch_epoch="none")
    for config in (switch, relocation):
        assert (config.n_targets, config.radius, config.delay_range, config.dt) == (
            4,
            2.0,
            (0.2, 0.6),
            0.02,
        )
    np.testing.assert_allclose(switch.trained_targets(), trained.trained_targets())
    assert DelayedReach(trained).times.shape == TargetSwitch(switch).times.shape


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("delayed_reach", {"delay_range": (1.0, 0.3)}, "delay_range"),
        ("delayed_reach", {"reach_duration": 0.0}, "reach_duration"),
        ("delayed_reach", {"hold_duration": -0.1}, "hold_duration"),
        ("delayed_reach", {"dt": 0}, "dt"),
        ("delayed_reach", {"fixation_duration": 0}, "fixation_duration"),
        ("delayed_reach", {"n_targets": 0}, "n_targets"),
        ("delayed_reach", {"target_positions": ()}, "target_positions"),
        ("delayed_reach", {"catch_fraction": 1.0}, "catch_fraction"),
        ("target_switch", {"switch_epoch": "after_go", "switch_after_go": 2.0}, "switch_after"),
        ("target_switch", {"n_targets": 1}, "two targets"),
        ("target_switch", {"switch_offset": 8}, "switch_offset"),
        ("target_relocation", {"novel_angles": (0.0,)}, "trained target"),
        ("target_relocation", {"novel_radii": (0.0,)}, "novel_radii"),
    ],
)
def test_invalid_configs_fail_with_one_line(name, params, field):
    entry = mechscope.get_registry().get("task", name)
    with pytest.raises(mechscope.ConfigError) as info:
        entry.validate(params)
    message = str(info.value)
    assert "\n" not in message
    assert field in message


def test_novel_check_can_be_turned_off():
    config = TargetRelocationConfig(novel_angles=(0.0, 0.1), novel=False)
    np.testing.assert_allclose(config.novel_targets()[0], [1.0, 0.0], atol=1e-12)


# --- plotting --------------------------------------------------------------------------------


def test_plot_trials_draws_inputs_outputs_and_events():
    trials = TargetSwitch(TargetSwitchConfig(switch_epoch="after_go")).conditions()
    figure = plot_trials(trials, max_trials=3)
    assert isinstance(figure, Figure)
    axes = figure.axes
    assert len(axes) == 9
    # Top-left panel: the three input channels, then vertical lines at every event.
    lines = axes[0].get_lines()
    np.testing.assert_allclose(lines[2].get_ydata(), np.asarray(trials.inputs[0, :, 2]))
    verticals = sorted(
        line.get_xdata()[0] for line in lines[3:] if line.get_xdata()[0] == line.get_xdata()[1]
    )
    expected = sorted(float(v[0]) for v in trials.events.values())
    np.testing.assert_allclose(verticals, expected, atol=1e-6)
    # Position panel shows the position outputs.
    np.testing.assert_allclose(
        axes[6].get_lines()[0].get_ydata(), np.asarray(trials.targets[0, :, 2])
    )


def test_catch_trials_never_jump_after_go(getkey):
    config = TargetSwitchConfig(switch_epoch="after_go", catch_fraction=0.5)
    trials = _sample(TargetSwitch(config), getkey(), 32)
    catch = trials["l_catch"]
    assert catch.any() and (~catch).any()
    assert np.isnan(trials["e_switch"][catch]).all()
    assert np.isnan(trials["l_switched_from"][catch]).all()
    np.testing.assert_array_equal(trials["targets"][catch], 0.0)
    # The target shown is the target named in the labels, for the whole trial.
    np.testing.assert_allclose(trials["inputs"][catch, -1, :2], trials["l_target"][catch])
    np.testing.assert_allclose(trials["inputs"][catch, 25, :2], trials["l_target"][catch])
