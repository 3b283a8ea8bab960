"""Tuning: cosine fits recover planted preferred directions; PSTHs and motif statistics."""

from __future__ import annotations

import mechscope_population as mp
import numpy as np
import pytest
import scipy.optimize

DT = 0.01
ANGLES = np.arange(8) * 2 * np.pi / 8
DELAYS = (0.3, 0.5, 0.8)


def planted_data(seed: int = 0, noise: float = 0.0):
    """Units cosine-tuned with one PD in the delay and another during movement.

    Trials are 8 angles x 3 delays; delay-epoch rate b0 + b1 cos(θ − PD_delay) from target
    onset, movement-epoch rate b0 + b1 cos(θ − PD_move) from 100 ms before movement onset.
    Units 0..9 are tuned, 10..11 are untuned (constant, and random per angle).
    """
    rng = np.random.default_rng(seed)
    n_units = 12
    times = np.arange(160) * DT
    pd_delay = rng.uniform(-np.pi, np.pi, n_units)
    pd_move = np.angle(np.exp(1j * (pd_delay + rng.uniform(-1.5, 1.5, n_units))))
    base = rng.uniform(5, 20, n_units)
    depth = rng.uniform(2, 10, n_units)
    angles, delays = np.meshgrid(ANGLES, DELAYS, indexing="ij")
    angles, delays = angles.reshape(-1), delays.reshape(-1)
    target_on = np.full(angles.size, 0.2)
    go = target_on + delays
    move = go + 0.15
    rates = np.empty((angles.size, times.size, n_units))
    for c, theta in enumerate(angles):
        delay_rate = base + depth * np.cos(theta - pd_delay)
        move_rate = base + depth * np.cos(theta - pd_move)
        # Movement activity starts 100 ms before movement onset, as in motor cortex.
        in_delay = (times >= target_on[c]) & (times < move[c] - 0.1)
        in_move = times >= move[c] - 0.1
        rates[c] = base
        rates[c, in_delay] = delay_rate
        rates[c, in_move] = move_rate
    random_tuning = rng.uniform(0, 10, 8)
    rates[:, :, 10] = 7.0
    rates[:, :, 11] = 3.0 + np.tile(random_tuning, (len(DELAYS), 1)).T.reshape(-1)[:, None]
    rates += noise * rng.normal(size=rates.shape)
    data = mp.NeuralData(
        rates=rates,
        times=times,
        labels={"angle": angles, "delay": delays},
        events={"target_on": target_on, "go": go, "movement_onset": move},
    )
    return data, pd_delay, pd_move, base, depth


def wrap(angle):
    return np.angle(np.exp(1j * angle))


def test_cosine_tuning_recovers_planted_preferred_directions():
    data, pd_delay, pd_move, base, depth = planted_data()
    result = mp.tuning_analysis(data)
    tuned = slice(0, 10)
    np.testing.assert_allclose(wrap(result.delay.preferred[tuned] - pd_delay[tuned]), 0, atol=1e-9)
    np.testing.assert_allclose(
        wrap(result.movement.preferred[tuned] - pd_move[tuned]), 0, atol=1e-9
    )
    np.testing.assert_allclose(result.delay.depth[tuned], depth[tuned], rtol=1e-9)
    np.testing.assert_allclose(result.delay.baseline[tuned], base[tuned], rtol=1e-9)
    np.testing.assert_allclose(result.delay.r2[tuned], 1.0, atol=1e-9)
    np.testing.assert_allclose(result.pd_change[tuned], wrap(pd_move - pd_delay)[tuned], atol=1e-9)
    assert np.isnan(result.delay.r2[10])  # a constant unit has no tuning to explain
    assert result.delay.r2[11] < 0.5  # random per-angle rates are poorly cosine-like
    metrics = result.metrics()
    assert metrics["fraction_tuned_delay"] == pytest.approx(10 / 12)
    expected_change = np.degrees(np.mean(np.abs(wrap(pd_move - pd_delay)[tuned])))
    assert metrics["pd_change_mean_abs_deg"] == pytest.approx(expected_change)


def test_linear_cosine_fit_matches_a_nonlinear_fit_on_noisy_data():
    rng = np.random.default_rng(1)
    angles = np.repeat(ANGLES, 5)
    rates = 10 + 4 * np.cos(angles - 1.1) + rng.normal(0, 1.5, angles.size)
    fit = mp.fit_cosine_tuning(angles, rates[:, None])

    def model(theta, b0, b1, pd):
        return b0 + b1 * np.cos(theta - pd)

    (b0, b1, pd), _ = scipy.optimize.curve_fit(model, angles, rates, p0=(5, 1, 0))
    if b1 < 0:
        b1, pd = -b1, pd + np.pi
    assert fit.baseline[0] == pytest.approx(b0, rel=1e-6)
    assert fit.depth[0] == pytest.approx(b1, rel=1e-6)
    assert wrap(fit.preferred[0] - pd) == pytest.approx(0, abs=1e-6)
    residual = rates - model(angles, b0, b1, pd)
    r2 = 1 - np.sum(residual**2) / np.sum((rates - rates.mean()) ** 2)
    assert fit.r2[0] == pytest.approx(r2, rel=1e-6)


def test_noise_lowers_but_does_not_bias_preferred_directions():
    data, pd_delay, *_ = planted_data(seed=2, noise=2.0)
    result = mp.tuning_analysis(data)
    errors = np.degrees(np.abs(wrap(result.delay.preferred[:10] - pd_delay[:10])))
    assert np.median(errors) < 10


def test_psths_are_direction_averages_aligned_to_each_event():
    data, pd_delay, pd_move, base, depth = planted_data()
    result = mp.tuning_analysis(data)
    np.testing.assert_allclose(result.angles, ANGLES)
    assert result.target_psth.shape == (8, result.target_times.size, 12)
    # Before target onset every unit sits at baseline; after it, at its delay tuning.
    before = result.target_times < -1e-9
    after = (result.target_times > 0.05) & (result.target_times < 0.3 - 1e-9)
    np.testing.assert_allclose(
        result.target_psth[:, before, :10],
        np.broadcast_to(base[:10], result.target_psth[:, before, :10].shape),
    )
    expected = base + depth * np.cos(ANGLES[:, None] - pd_delay)
    np.testing.assert_allclose(
        result.target_psth[:, after, :10], np.repeat(expected[:, None, :10], after.sum(), axis=1)
    )
    late = result.movement_times >= 0
    expected = base + depth * np.cos(ANGLES[:, None] - pd_move)
    np.testing.assert_allclose(
        result.movement_psth[:, late, :10], np.repeat(expected[:, None, :10], late.sum(), axis=1)
    )


def test_angle_falls_back_to_target_positions():
    data, pd_delay, *_ = planted_data()
    angles = data.labels["angle"]
    data = data.replace(labels={"target": np.stack([np.cos(angles), np.sin(angles)], 1)})
    result = mp.tuning_analysis(data)
    np.testing.assert_allclose(wrap(result.delay.preferred[:10] - pd_delay[:10]), 0, atol=1e-9)
    with pytest.raises(ValueError, match="label"):
        mp.tuning_analysis(data.replace(labels={}))


def test_multiphasic_units_are_counted():
    times = np.arange(100) * DT
    mono = np.exp(-((times - 0.5) ** 2) / 0.01)
    bi = mono - np.exp(-((times - 0.7) ** 2) / 0.01)
    rates = np.stack([mono, bi], axis=-1)[None].repeat(8, axis=0)
    rates = rates * (1 + 0.5 * np.cos(ANGLES))[:, None, None]
    data = mp.NeuralData(
        rates=rates,
        times=times,
        labels={"angle": ANGLES},
        events={"target_on": np.zeros(8), "movement_onset": np.full(8, 0.45)},
    )
    config = mp.TuningConfig(
        target_psth_window=(0.0, 0.2), delay_epoch=(0.0, 0.2), movement_psth_window=(-0.4, 0.5)
    )
    result = mp.tuning_analysis(data, config)
    np.testing.assert_array_equal(result.multiphasic, [False, True])
    assert result.metrics()["fraction_multiphasic"] == 0.5


def test_psth_grid_draws_requested_units():
    import matplotlib.pyplot as plt

    data, *_ = planted_data()
    result = mp.tuning_analysis(data, mp.TuningConfig(n_units_plot=5))
    figure = result.figures()["tuning_psth_grid"]()
    drawn = [axes for axes in figure.axes if axes.lines]
    assert len(drawn) == 5
    assert len(drawn[0].lines) == 2 * 8 + 2  # two alignments per direction + event markers
    plt.close("all")


def test_config_validation():
    with pytest.raises(ValueError, match="end > start"):
        mp.TuningConfig(delay_epoch=(0.3, 0.1))
    with pytest.raises(ValueError, match="between 0 and 1"):
        mp.TuningConfig(tuned_r2=1.5)
