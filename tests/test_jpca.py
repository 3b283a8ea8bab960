"""jPCA: recovery of planted rotations, exact vs iterative skew fit, invariances."""

from __future__ import annotations

import math

import mechscope_population as mp
import numpy as np
import pytest
import scipy.linalg
from mechscope_population.jpca import weighted_circular_mean

import mechscope

DT = 0.01


def simulate_linear(
    dynamics: np.ndarray,
    n_conditions: int,
    n_times: int,
    n_neurons: int,
    *,
    seed: int,
    noise: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Latent linear system dx/dt = A x, embedded in many noisy neurons. Returns rates, latents."""
    rng = np.random.default_rng(seed)
    k = dynamics.shape[0]
    step = scipy.linalg.expm(dynamics * DT)
    latents = np.zeros((n_conditions, n_times, k))
    latents[:, 0] = rng.normal(size=(n_conditions, k)) * np.linspace(3, 1, k)
    for t in range(1, n_times):
        latents[:, t] = latents[:, t - 1] @ step.T
    embedding = np.linalg.qr(rng.normal(size=(n_neurons, k)))[0]
    rates = (
        30 + 8 * latents @ embedding.T + noise * rng.normal(size=(n_conditions, n_times, n_neurons))
    )
    return rates, latents


def rotation_generator(freqs_hz: list[float]) -> np.ndarray:
    blocks = [2 * np.pi * f * np.array([[0.0, -1.0], [1.0, 0.0]]) for f in freqs_hz]
    return scipy.linalg.block_diag(*blocks)


FREQS = [3.0, 1.6, 0.7]


@pytest.fixture(scope="module")
def rotational() -> mp.NeuralData:
    rates, _ = simulate_linear(rotation_generator(FREQS), 24, 41, 120, seed=0)
    return mp.NeuralData(rates=rates, times=np.arange(41) * DT - 0.2)


def test_rotational_system_gives_high_r2_skew_and_true_frequencies(rotational):
    result = mp.jpca_analysis(rotational, mp.JPCAConfig(window=(-0.2, 0.2)))
    metrics = result.metrics()
    assert metrics["r2_skew"] > 0.97
    assert metrics["r2_ratio"] > 0.97
    assert metrics["r2_skew_plane1"] > 0.97
    # Planes are ordered by |eigenvalue|, i.e. by frequency.
    recovered = [metrics[f"freq_hz_plane{i}"] for i in (1, 2, 3)]
    np.testing.assert_allclose(recovered, FREQS, rtol=0.03)
    assert metrics["var_captured"] > 0.99
    np.testing.assert_allclose(np.sum(result.var_pcs), metrics["var_captured"], rtol=1e-9)
    # Pure counter-clockwise rotation: the derivative leads the state by π/2.
    assert metrics["phase_fraction_ccw_plane1"] == 1.0
    assert abs(metrics["phase_mean_plane1"] - np.pi / 2) < 0.2
    assert metrics["phase_rotation_index_plane1"] > 0.95


def test_projection_rotates_counter_clockwise_and_plan_states_lie_along_jpc1(rotational):
    result = mp.jpca_analysis(rotational, mp.JPCAConfig(window=(-0.2, 0.2)))
    for plane in range(result.n_planes):
        x = result.projection[:, :, 2 * plane]
        y = result.projection[:, :, 2 * plane + 1]
        angular = x[:, :-1] * np.diff(y, axis=1) - y[:, :-1] * np.diff(x, axis=1)
        # Sensor noise leaks a little between planes; almost every step must turn CCW.
        assert np.mean(angular > 0) > 0.97, f"plane {plane + 1} does not rotate CCW"
        start = np.stack([x[:, 0], y[:, 0]], axis=1)
        spread = np.cov(start.T)
        assert spread[0, 0] >= spread[1, 1]
        assert abs(spread[0, 1]) < 1e-8 * spread[0, 0]  # the start states' principal axis
        assert np.max(y) >= np.max(np.abs(y)) - 1e-12  # largest excursion is positive
    np.testing.assert_allclose(result.jpcs.T @ result.jpcs, np.eye(6), atol=1e-10)


def test_symmetric_system_gives_low_skew_to_best_ratio():
    dynamics = np.diag([-4.0, -2.5, -1.0, 1.0, 2.0, 3.0])
    rates, _ = simulate_linear(dynamics, 24, 41, 120, seed=1)
    data = mp.NeuralData(rates=rates, times=np.arange(41) * DT)
    metrics = mp.jpca_analysis(data, mp.JPCAConfig(window=(0.0, 0.4))).metrics()
    assert metrics["r2_best"] > 0.9
    assert metrics["r2_ratio"] < 0.3


def test_exact_skew_fit_equals_iterative_and_brute_force_solutions():
    rng = np.random.default_rng(2)
    states = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    derivatives = states @ rng.normal(size=(6, 6)) + 0.3 * rng.normal(size=(300, 6))
    exact = mp.fit_skew_symmetric(states, derivatives)
    iterative = mp.fit_skew_symmetric_iterative(states, derivatives)
    np.testing.assert_allclose(exact, -exact.T, atol=1e-12)
    np.testing.assert_allclose(exact, iterative, atol=1e-6 * np.abs(exact).max())
    # Brute force: least squares over the k(k-1)/2 free entries with an explicit design.
    k = 6
    upper = np.triu_indices(k, 1)
    columns = []
    for i, j in zip(*upper, strict=True):
        basis = np.zeros((k, k))
        basis[i, j], basis[j, i] = 1.0, -1.0
        columns.append((states @ basis).reshape(-1))
    coefficients = np.linalg.lstsq(np.stack(columns, axis=1), derivatives.reshape(-1), rcond=None)[
        0
    ]
    rows = np.zeros((k, k))
    rows[upper] = coefficients
    rows = rows - rows.T
    np.testing.assert_allclose(exact, rows.T, atol=1e-10)


def test_iterative_solver_option_gives_the_same_analysis(rotational):
    exact = mp.jpca_analysis(rotational, mp.JPCAConfig(window=(-0.2, 0.2)))
    iterative = mp.jpca_analysis(
        rotational, mp.JPCAConfig(window=(-0.2, 0.2), skew_solver="iterative")
    )
    for name, value in exact.metrics().items():
        assert iterative.metrics()[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_results_do_not_depend_on_neuron_order(rotational):
    config = mp.JPCAConfig(window=(-0.2, 0.2))
    order = np.random.default_rng(3).permutation(rotational.n_neurons)
    original = mp.jpca_analysis(rotational, config)
    permuted = mp.jpca_analysis(rotational.select_neurons(order), config)
    for name, value in original.metrics().items():
        assert permuted.metrics()[name] == pytest.approx(value, rel=1e-8, abs=1e-10), name
    np.testing.assert_allclose(permuted.projection, original.projection, atol=1e-8)
    np.testing.assert_allclose(permuted.pcs, original.pcs[order], atol=1e-8)


def test_soft_normalisation_uses_range_over_all_times_plus_soften(rotational):
    result = mp.jpca_analysis(rotational, mp.JPCAConfig(window=(0.0, 0.1), soften_norm=7.0))
    flat = rotational.rates.reshape(-1, rotational.n_neurons)
    np.testing.assert_allclose(result.norm_factors, flat.max(0) - flat.min(0) + 7.0)
    assert result.times[0] == pytest.approx(0.0) and result.times[-1] == pytest.approx(0.1)


def test_alignment_to_per_condition_events_matches_prealigned_data(rotational):
    # Put each condition at a different offset inside a longer recording.
    rng = np.random.default_rng(4)
    shifts = rng.integers(0, 30, size=rotational.n_conditions)
    long = np.full((rotational.n_conditions, 100, rotational.n_neurons), np.nan)
    for c, s in enumerate(shifts):
        long[c, s : s + rotational.n_times] = rotational.rates[c]
    onset = (shifts + 20) * DT  # sample 20 of the original is its time 0
    data = mp.NeuralData(rates=long, times=np.arange(100) * DT, events={"movement_onset": onset})
    config = mp.JPCAConfig(window=(-0.15, 0.15))
    aligned = mp.jpca_analysis(data, config)
    direct = mp.jpca_analysis(rotational, config)
    np.testing.assert_allclose(aligned.projection, direct.projection, atol=1e-8)


def test_window_outside_the_trials_is_a_clear_error(rotational):
    # Within the data's range relative to the event overall, but past the end of the trials
    # whose event comes late.
    onsets = np.where(np.arange(rotational.n_conditions) % 2, 0.1, -0.1)
    data = rotational.replace(events={"movement_onset": onsets})
    with pytest.raises(ValueError, match="leaves some trials"):
        mp.jpca_analysis(data, mp.JPCAConfig(window=(-0.05, 0.25)))
    assert mp.jpca_analysis(data, mp.JPCAConfig(window=(-0.05, 0.05))).projection.shape[1] == 11


def test_window_outside_the_data_names_both_ranges(rotational):
    # A window in ms against times in s: one line naming the window and the data's range.
    with pytest.raises(mechscope.ConfigError, match=r"\(-50, 150\) s .*\(-0.2, 0.2\) s"):
        mp.jpca_analysis(rotational, mp.JPCAConfig(window=(-50.0, 150.0)))
    onsets = np.full(rotational.n_conditions, 0.1)
    data = rotational.replace(events={"movement_onset": onsets})
    with pytest.raises(mechscope.ConfigError, match="relative to 'movement_onset'"):
        mp.jpca_analysis(data, mp.JPCAConfig(window=(-0.05, 0.15)))
    # The same window fits once the event leaves room for it.
    data = rotational.replace(events={"movement_onset": np.zeros(rotational.n_conditions)})
    result = mp.jpca_analysis(data, mp.JPCAConfig(window=(-0.05, 0.15)))
    assert result.times[-1] == pytest.approx(0.15)


def _second_axis_flipped(second: np.ndarray) -> bool:
    """Whether getRealVs would flip a plane whose second-axis values are `second`."""
    return bool(np.max(np.abs(second)) > np.max(second))


def test_plane_orientation_uses_every_analysed_sample_as_the_reference(rotational):
    # Short windows of ordinary rotational data: in some, a plane's largest |jPC2| is a
    # condition's last analysed sample, which only the reference's rule (all analysed
    # samples, not only those that precede a step) sees.
    where_it_matters = []
    for first in range(0, 34, 2):
        window = (rotational.times[first], rotational.times[first + 6])
        result = mp.jpca_analysis(rotational, mp.JPCAConfig(window=window))
        for plane in range(result.n_planes):
            x = result.projection[:, :, 2 * plane]
            y = result.projection[:, :, 2 * plane + 1]
            # The reference's rule holds on every window: the largest |jPC2| is positive ...
            assert not _second_axis_flipped(y.reshape(-1)), (window, plane)
            # ... and the rosette still turns counter-clockwise.
            turning = x[:, :-1] * np.diff(y, axis=1) - y[:, :-1] * np.diff(x, axis=1)
            assert np.mean(turning > 0) > 0.9, (window, plane)
            if _second_axis_flipped(y[:, :-1].reshape(-1)):
                # The pre-step samples alone would have flipped this plane (rotated the rosette
                # by 180°): its extreme is a last sample, and positive.
                extreme = np.unravel_index(np.argmax(np.abs(y)), y.shape)
                assert extreme[1] == y.shape[1] - 1
                assert y[extreme] > 0
                where_it_matters.append((window, plane))
    assert len(where_it_matters) >= 2, "too few windows where the last sample decides"


def test_circular_statistics_are_radius_weighted_as_the_reference():
    # Closed form: two angles, weights 3 and 1.
    mean, resultant = weighted_circular_mean(np.array([0.0, np.pi / 2]), np.array([3.0, 1.0]))
    assert mean == pytest.approx(np.arctan2(1.0, 3.0))
    assert resultant == pytest.approx(np.sqrt(10.0) / 4.0)
    # On non-rotational data the weighted statistics are those of a direct computation from
    # the projection, and differ from the unweighted ones.
    dynamics = np.diag([-4.0, -2.5, -1.0, 1.0, 2.0, 3.0])
    rates, _ = simulate_linear(dynamics, 24, 41, 120, seed=1)
    data = mp.NeuralData(rates=rates, times=np.arange(41) * DT)
    result = mp.jpca_analysis(data, mp.JPCAConfig(window=(0.0, 0.4)))
    x, y = result.projection[:, :, 0], result.projection[:, :, 1]
    sum_cos = sum_sin = total = 0.0
    angles = []
    for c in range(x.shape[0]):
        for t in range(x.shape[1]):
            # As getPhase.m: the step arriving at t (at t = 0, the first step).
            arrival = max(t, 1)
            step_angle = math.atan2(
                y[c, arrival] - y[c, arrival - 1], x[c, arrival] - x[c, arrival - 1]
            )
            angle = (step_angle - math.atan2(y[c, t], x[c, t]) + math.pi) % (2 * math.pi) - math.pi
            radius = math.hypot(x[c, t], y[c, t])
            sum_cos += radius * math.cos(angle)
            sum_sin += radius * math.sin(angle)
            total += radius
            angles.append(angle)
    metrics = result.metrics()
    assert metrics["phase_mean_plane1"] == pytest.approx(math.atan2(sum_sin, sum_cos), abs=1e-9)
    assert metrics["phase_resultant_plane1"] == pytest.approx(
        math.hypot(sum_sin, sum_cos) / total, abs=1e-9
    )
    unweighted = np.mean(np.exp(1j * np.asarray(angles)))
    assert abs(np.angle(unweighted) - metrics["phase_mean_plane1"]) > 1e-3
    assert metrics["phase_rotation_index_plane1"] == pytest.approx(
        np.mean(np.cos(np.asarray(angles) - np.pi / 2)), abs=1e-9
    )


def test_config_validation():
    with pytest.raises(ValueError, match="even"):
        mp.JPCAConfig(n_pcs=5)
    with pytest.raises(ValueError, match="end > start"):
        mp.JPCAConfig(window=(0.1, -0.1))
    assert hash(mp.JPCAConfig()) == hash(mp.JPCAConfig())


def test_figures_draw_every_condition(rotational):
    import matplotlib.pyplot as plt

    result = mp.jpca_analysis(rotational, mp.JPCAConfig(window=(-0.2, 0.2)))
    figure = result.figures()["jpca_rosette"]()
    lines = [line for line in figure.axes[0].lines if len(line.get_xdata()) > 2]
    assert len(lines) == rotational.n_conditions
    bars = result.figures()["jpca_r2"]()
    heights = sorted(p.get_height() for p in bars.axes[0].patches)
    np.testing.assert_allclose(
        heights,
        sorted([result.r2_best, result.r2_best_plane1, result.r2_skew, result.r2_skew_plane1]),
    )
    plt.close("all")
