"""Population analyses (closed-form cases), data loaders, and the probes on a tiny model."""

from __future__ import annotations

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import mechscope_population as mp
import numpy as np
import pytest
import scipy.io

import mechscope
from mechscope.testing import check_probe

from .toys import toy_rnn

DT = 0.01


def orthonormal_columns(n_samples: int, k: int, seed: int) -> np.ndarray:
    """k centred, orthonormal columns."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n_samples, k))
    raw -= raw.mean(axis=0)
    return np.linalg.qr(raw)[0]


# --- closed-form cases -------------------------------------------------------------------


def test_participation_ratio_matches_closed_form():
    variances = np.array([4.0, 2.0, 1.0, 1.0])
    expected = variances.sum() ** 2 / np.sum(variances**2)
    basis = orthonormal_columns(400, 4, seed=0)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(30, 30)))[0][:4]
    samples = basis * np.sqrt(variances * 399) @ rotation  # exact variances, then rotated
    spectrum = mp.pca(samples)
    np.testing.assert_allclose(spectrum.variances[:4], variances, rtol=1e-10)
    assert mp.participation_ratio(spectrum.variances) == pytest.approx(expected, rel=1e-9)
    assert mp.participation_ratio(np.ones(7)) == pytest.approx(7.0)


def test_tangling_of_a_circle_matches_closed_form():
    n = 40
    theta = 2 * np.pi / n
    phase = theta * np.arange(n + 1)  # one full turn; the last sample closes the loop
    radius = 2.0
    states = radius * np.stack([np.cos(phase), np.sin(phase)], axis=-1)[None]
    q = mp.tangling(states, DT, epsilon=0.1)
    eps = 0.1 * np.sum(np.var(states[0], axis=0))
    # Forward differences are (R − I) x / dt, a scaled rotation: |ẋ − ẋ'| = c |x − x'|.
    c = 2 * np.sin(theta / 2) / DT
    far = (2 * radius) ** 2  # every sample has its antipode among the others
    np.testing.assert_allclose(q[0, :-1], c**2 * far / (far + eps), rtol=1e-10)
    assert np.isnan(q[0, -1])


def test_tangling_is_higher_where_trajectories_cross_with_opposite_velocities():
    t = np.linspace(0, 1, 101)
    # Two conditions pass through the same point heading in opposite directions.
    a = np.stack([t - 0.5, np.zeros_like(t)], axis=-1)
    b = np.stack([0.5 - t, 0.01 * np.ones_like(t)], axis=-1)
    crossing = mp.tangling(np.stack([a, b]), DT)
    parallel = mp.tangling(np.stack([a, a + np.array([0.0, 0.01])]), DT)
    assert np.nanmax(crossing) > 100 * np.nanmax(parallel)


def test_canonical_correlations_match_planted_values():
    basis = orthonormal_columns(600, 4, seed=2)
    x = basis[:, :2]
    rho = np.array([0.9, 0.5])
    y = x * rho + basis[:, 2:] * np.sqrt(1 - rho**2)
    mix = np.random.default_rng(3).normal(size=(2, 2))
    a = (x @ np.random.default_rng(4).normal(size=(2, 5))).reshape(20, 30, 5)
    b = (y @ mix).reshape(20, 30, 2)
    np.testing.assert_allclose(mp.canonical_correlations(a, b, None), rho, atol=1e-10)


def test_similarity_of_linear_transforms():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(10, 30, 6))
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    rotated = a @ rotation + 3.0
    np.testing.assert_allclose(mp.canonical_correlations(a, rotated, None), 1.0, atol=1e-10)
    assert mp.procrustes_similarity(a, rotated) == pytest.approx(1.0, abs=1e-12)
    # Embedding in more neurons (a semi-orthogonal map) is still a perfect match.
    embed = np.linalg.qr(rng.normal(size=(20, 6)))[0].T
    assert mp.procrustes_similarity(a, 2 * a @ embed) == pytest.approx(1.0, abs=1e-12)
    # Anisotropic scaling of white data: similarity (1 + s) / sqrt(2 (1 + s²)).
    white = orthonormal_columns(300, 2, seed=6).reshape(10, 30, 2)
    s = 0.3
    squeezed = white * np.array([1.0, s])
    expected = (1 + s) / np.sqrt(2 * (1 + s**2))
    assert mp.procrustes_similarity(white, squeezed) == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(mp.canonical_correlations(white, squeezed, None), 1.0, atol=1e-10)


def test_null_and_potent_variance_split_by_the_readout():
    rng = np.random.default_rng(7)
    readout = rng.normal(size=(2, 10))
    potent_basis = np.linalg.qr(readout.T)[0]
    null_basis = np.linalg.qr(np.eye(10) - potent_basis @ potent_basis.T)[0][:, :8]
    null_rates = rng.normal(size=(200, 8)) @ null_basis.T
    potent, null = mp.null_potent_variance(null_rates, readout)
    assert potent == pytest.approx(0.0, abs=1e-10)
    assert null == pytest.approx(np.sum(np.var(null_rates, axis=0, ddof=1)), rel=1e-10)
    potent_rates = rng.normal(size=(200, 2)) @ potent_basis.T
    potent, null = mp.null_potent_variance(potent_rates, readout)
    assert null == pytest.approx(0.0, abs=1e-10)


def test_population_analysis_on_delay_null_movement_potent_data():
    """Preparatory activity confined to the null space: the prep/move ratio is low in potent."""
    rng = np.random.default_rng(8)
    n_conditions, times = 8, np.arange(120) * DT
    readout = rng.normal(size=(2, 12))
    potent_basis = np.linalg.qr(readout.T)[0]
    null_basis = np.linalg.qr(np.eye(12) - potent_basis @ potent_basis.T)[0][:, :10]
    angle = np.arange(n_conditions) * 2 * np.pi / n_conditions
    prep = np.stack([np.cos(angle), np.sin(angle)], 1) @ null_basis[:, :2].T  # [C, N]
    move = np.stack([np.cos(angle), np.sin(angle)], 1) @ potent_basis.T
    delay_on = (times >= 0.2) & (times < 0.6)
    move_on = times >= 0.6
    ramp = np.sin(np.pi * np.clip((times - 0.6) / 0.5, 0, 1))
    rates = delay_on[None, :, None] * prep[:, None] + (move_on * ramp)[None, :, None] * (
        move[:, None] + 0.5 * prep[:, None]
    )
    data = mp.NeuralData(
        rates=rates + 5,
        times=times,
        labels={"angle": angle},
        events={"target_on": np.full(8, 0.2), "movement_onset": np.full(8, 0.6)},
    )
    config = mp.PopulationConfig(window=(-0.3, 0.5), movement_epoch=(0.1, 0.4))
    metrics = mp.population_analysis(data, config, readout=readout).metrics()
    assert metrics["delay_potent_fraction"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["movement_potent_fraction"] > 0.5
    assert metrics["null_prep_move_ratio"] > 10 * metrics["potent_prep_move_ratio"]
    # Activity lives in 4 dimensions: 2 null, 2 potent.
    assert metrics["n_pcs_variance"] <= 4
    assert np.isnan(metrics["cca_mean_reference"])


def test_compare_trajectories_resamples_the_reference_in_time():
    times = np.arange(0, 0.8, DT)
    fine = np.arange(-0.1, 0.9, DT / 4)
    phase = np.arange(6)[:, None, None] + np.array([1.0, 2.0, 3.0])
    model = mp.NeuralData(rates=np.sin(2 * np.pi * times[None, :, None] + phase), times=times)
    embed = np.linalg.qr(np.random.default_rng(9).normal(size=(7, 3)))[0].T
    reference = mp.NeuralData(
        rates=np.sin(2 * np.pi * fine[None, :, None] + phase) @ embed, times=fine
    )
    result = mp.compare_trajectories(model, reference, n_components=3)
    assert result["procrustes"] == pytest.approx(1.0, abs=2e-3)
    assert result["cca_mean"] == pytest.approx(1.0, abs=2e-3)
    with pytest.raises(ValueError, match="conditions"):
        mp.compare_trajectories(model, reference.select(slice(0, 3)))


# --- data containers and loaders ---------------------------------------------------------


def example_data() -> mp.NeuralData:
    rng = np.random.default_rng(10)
    angle = np.arange(4) * np.pi / 2
    return mp.NeuralData(
        rates=rng.uniform(0, 50, size=(4, 25, 6)),
        times=np.arange(25) * DT - 0.1,
        labels={"angle": angle, "target": np.stack([np.cos(angle), np.sin(angle)], 1)},
        events={"movement_onset": np.array([0.0, 0.01, 0.02, np.nan])},
        neuron_ids=np.arange(100, 106),
    )


def assert_same(loaded: mp.NeuralData, original: mp.NeuralData) -> None:
    np.testing.assert_allclose(loaded.rates, original.rates)
    np.testing.assert_allclose(loaded.times, original.times)
    assert set(loaded.labels) == set(original.labels)
    for name, value in original.labels.items():
        np.testing.assert_allclose(loaded.labels[name], value)
    for name, value in original.events.items():
        np.testing.assert_allclose(loaded.events[name], value)


def test_npz_round_trip(tmp_path):
    data = example_data()
    data.save_npz(tmp_path / "rates.npz")
    loaded = mp.load_neural_data(tmp_path / "rates.npz")
    assert_same(loaded, data)
    np.testing.assert_array_equal(loaded.neuron_ids, data.neuron_ids)


def test_mat_flat_and_jpca_struct_layouts(tmp_path):
    data = example_data()
    scipy.io.savemat(
        tmp_path / "flat.mat",
        {
            "rates": data.rates,
            "times": data.times * 1000,
            "label_angle": data.labels["angle"],
            "label_target": data.labels["target"],
            "event_movement_onset": data.events["movement_onset"] * 1000,
        },
    )
    loaded = mp.load_neural_data(tmp_path / "flat.mat", time_scale=1e-3)
    assert_same(loaded, data)
    # Churchland et al.'s layout: a struct array Data(c).A [time, neuron], Data(c).times (ms).
    struct = np.zeros(4, dtype=[("A", object), ("times", object)])
    for c in range(4):
        struct[c] = (data.rates[c], data.times * 1000)
    scipy.io.savemat(tmp_path / "jpca.mat", {"Data": struct})
    loaded = mp.load_neural_data(tmp_path / "jpca.mat", time_scale=1e-3)
    np.testing.assert_allclose(loaded.rates, data.rates)
    np.testing.assert_allclose(loaded.times, data.times)
    # The struct layout is in ms unless told otherwise; the flat layouts are in seconds.
    np.testing.assert_allclose(mp.load_neural_data(tmp_path / "jpca.mat").times, data.times)
    as_given = mp.load_neural_data(tmp_path / "jpca.mat", time_scale=1.0)
    np.testing.assert_allclose(as_given.times, data.times * 1000)
    np.testing.assert_allclose(mp.load_neural_data(tmp_path / "flat.mat").times, data.times * 1000)
    with pytest.raises(mechscope.ConfigError, match="time_scale must be a positive number"):
        mp.load_neural_data(tmp_path / "jpca.mat", time_scale=0.0)


def test_jpca_struct_in_ms_gives_the_frequencies_of_the_same_data_in_seconds(tmp_path):
    # A 3 Hz rotation in 12 neurons, sampled every 10 ms from -200 ms.
    times = np.arange(41) * DT - 0.2
    phase = 2 * np.pi * 3.0 * times[None, :] + np.linspace(0, np.pi, 6)[:, None]
    latent = np.stack([np.cos(phase), np.sin(phase)], axis=-1) * np.linspace(1, 2, 6)[:, None, None]
    embedding = np.random.default_rng(0).normal(size=(2, 12))
    rates = 20 + 5 * latent @ embedding
    in_seconds = mp.NeuralData(rates=rates, times=times)
    struct = np.zeros(6, dtype=[("A", object), ("times", object)])
    for c in range(6):
        struct[c] = (rates[c], times * 1000)
    scipy.io.savemat(tmp_path / "jpca.mat", {"Data": struct})
    loaded = mp.load_neural_data(tmp_path / "jpca.mat")
    config = mp.JPCAConfig(window=(-0.05, 0.15), n_pcs=2)
    expected = mp.jpca_analysis(in_seconds, config)
    found = mp.jpca_analysis(loaded, config)
    np.testing.assert_allclose(expected.freq_hz, [3.0], rtol=0.02)
    np.testing.assert_allclose(found.freq_hz, expected.freq_hz, rtol=1e-9)
    np.testing.assert_allclose(found.times, expected.times, atol=1e-12)
    # The window in ms is an error naming both ranges, not an analysis at 1/1000 the rate.
    with pytest.raises(mechscope.ConfigError, match=r"\(-50, 150\) s .*\(-0.2, 0.2\) s"):
        mp.jpca_analysis(loaded, mp.JPCAConfig(window=(-50.0, 150.0), n_pcs=2))


def test_nwb_round_trip(tmp_path):
    pytest.importorskip("pynwb")
    data = example_data()
    data.save_nwb(tmp_path / "rates.nwb")
    loaded = mp.load_neural_data(tmp_path / "rates.nwb")
    assert_same(loaded, data)
    np.testing.assert_array_equal(loaded.neuron_ids, data.neuron_ids)


def test_missing_pynwb_gives_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynwb", None)
    with pytest.raises(ImportError, match="needs pynwb") as error:
        mp.load_neural_data(tmp_path / "absent.nwb")
    assert "\n" not in str(error.value)


def test_alignment_drops_trials_without_the_event_and_pads_with_nan():
    data = example_data()
    aligned = data.align("movement_onset", (-0.05, 0.2))
    assert aligned.n_conditions == 3
    np.testing.assert_allclose(aligned.times, np.arange(-5, 21) * DT)
    np.testing.assert_allclose(aligned.rates[1, :19], data.rates[1, 6:])  # onset at sample 11
    assert np.all(np.isnan(aligned.rates[1, 19:]))  # runs past the end of the recording
    np.testing.assert_allclose(aligned.events["movement_onset"], 0.0)


def test_condition_average_groups_by_label_rows():
    values = np.arange(12.0).reshape(6, 2)
    labels = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [0, 1], [2, 2]])
    means, (unique, _, members) = mp.condition_average(values, labels)
    np.testing.assert_array_equal(unique, [[0, 1], [1, 0], [2, 2]])
    np.testing.assert_allclose(means, [[4.0, 5.0], [4.0, 5.0], [10.0, 11.0]])
    assert [m.sum() for m in members] == [3, 2, 1]


# --- the probes on a tiny task and model -------------------------------------------------


class TinyTaskConfig(mechscope.Config):
    """Eight-target delayed reach in miniature (two delays)."""

    delays: tuple[float, ...] = (0.3, 0.5)


class TinyTask(mechscope.AbstractTask):
    config: TinyTaskConfig = eqx.field(static=True)

    @property
    def n_inputs(self) -> int:
        return 3

    @property
    def n_outputs(self) -> int:
        return 2

    @property
    def dt(self) -> float:
        return DT

    def _trials(self, angle: jax.Array, delay: jax.Array) -> mechscope.Trials:
        times = jnp.arange(140) * DT
        target_on = jnp.full(angle.shape, 0.2)
        go = target_on + delay
        move = go + 0.15
        on = (times >= target_on[:, None]).astype(float)
        cue = (times >= go[:, None]).astype(float)
        inputs = jnp.stack(
            [on * jnp.cos(angle)[:, None], on * jnp.sin(angle)[:, None], cue], axis=-1
        )
        reach = jnp.clip((times - move[:, None]) / 0.4, 0, 1)[..., None]
        targets = reach * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)[:, None]
        return mechscope.Trials(
            inputs=inputs,
            targets=targets,
            mask=jnp.ones_like(targets),
            times=times,
            events={"target_on": target_on, "go": go, "movement_onset": move},
            labels={
                "angle": angle,
                "delay": delay,
                "target": jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1),
                "condition": jnp.arange(angle.shape[0]),
            },
        )

    def sample(self, batch_size: int, *, key: jax.Array) -> mechscope.Trials:
        angle = jax.random.randint(key, (batch_size,), 0, 8) * 2 * jnp.pi / 8
        return self._trials(angle, jnp.full((batch_size,), self.config.delays[0]))

    def conditions(self) -> mechscope.Trials:
        angle, delay = jnp.meshgrid(
            jnp.arange(8) * 2 * jnp.pi / 8, jnp.asarray(self.config.delays), indexing="ij"
        )
        return self._trials(angle.reshape(-1), delay.reshape(-1))


def make_tiny(key):
    k1, k2, k3 = jax.random.split(key, 3)
    n = 16
    model = toy_rnn(
        1.2 * jax.random.normal(k1, (n, n)) / jnp.sqrt(n),
        jax.random.normal(k2, (n, 3)),
        jax.random.normal(k3, (2, n)) / jnp.sqrt(n),
        tau=0.05,
    )
    return mechscope.TrainedRun(model=model), TinyTask(config=TinyTaskConfig())


@pytest.fixture
def registered():
    manager = mechscope.get_plugin_manager()
    if "jpca" not in manager.registry.names("probe"):
        manager.register(mp, name="population")
        yield manager
        manager.unregister("population")
    else:
        yield manager


def test_probes_are_registered_with_their_configs(registered):
    for name, config_class in (
        ("jpca", mp.JPCAConfig),
        ("tuning", mp.TuningConfig),
        ("population", mp.PopulationConfig),
    ):
        entry = registered.registry.get("probe", name)
        assert entry.config_class is config_class
        probe = entry.build(entry.validate({}))
        assert isinstance(probe, mechscope.AbstractProbe)
        assert entry.description


def test_jpca_probe_matches_the_analysis_on_simulated_rates(getkey, tmp_path):
    trained, task = make_tiny(getkey())
    probe = mp.JPCAProbe(config=mp.JPCAConfig(group_by="angle"))
    result = check_probe(probe, trained, task, key=getkey(), tmp_path=tmp_path)
    trials = task.conditions()
    rates = mechscope.simulate(trained.model, trials.inputs, trials.times).rates
    data = mp.NeuralData.from_trials(trials, np.asarray(rates))
    flat = data.rates.reshape(-1, data.n_neurons)
    soften = 0.25 * np.median(flat.max(0) - flat.min(0))
    expected = mp.jpca_analysis(data, mp.JPCAConfig(group_by="angle", soften_norm=soften))
    for name, value in expected.metrics().items():
        assert result.metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert result.arrays["projection"].shape == (8, 21, 6)


def test_tuning_probe_reports_fractions(getkey, tmp_path):
    trained, task = make_tiny(getkey())
    result = check_probe(
        mp.TuningProbe(config=mp.TuningConfig()), trained, task, key=getkey(), tmp_path=tmp_path
    )
    r2 = result.arrays["delay_r2"]
    assert result.metrics["fraction_tuned_delay"] == pytest.approx(
        np.mean(np.nan_to_num(r2) >= 0.5)
    )
    assert result.arrays["target_psth"].shape[0] == 8


def test_population_probe_uses_the_readout_and_compares_with_a_reference(getkey, tmp_path):
    trained, task = make_tiny(getkey())
    trials = task.conditions()
    trajectory = mechscope.simulate(trained.model, trials.inputs, trials.times)
    # A "recording" that is the model's own rates seen through a random linear mixing, so
    # canonical correlations on all 16 dimensions are exactly 1.
    mixing = np.random.default_rng(11).normal(size=(16, 30))
    recording = mp.NeuralData.from_trials(trials, np.asarray(trajectory.rates) @ mixing)
    recording.save_npz(tmp_path / "recording.npz")
    config = mp.PopulationConfig(
        reference_path=str(tmp_path / "recording.npz"), cca_n_components=16
    )  # the full rank: an exact match
    result = check_probe(
        mp.PopulationProbe(config=config), trained, task, key=getkey(), tmp_path=tmp_path / "result"
    )
    assert result.metrics["cca_mean_reference"] == pytest.approx(1.0, abs=1e-6)
    delay = mp.NeuralData.from_trials(trials, np.asarray(trajectory.rates)).align(
        "target_on", config.delay_epoch
    )
    potent, null = mp.null_potent_variance(
        delay.rates.reshape(-1, 16), np.asarray(trained.model.w_out)
    )
    assert result.metrics["delay_potent_fraction"] == pytest.approx(potent / (potent + null))
    assert np.isfinite(result.metrics["tangling_ratio_p90"])
