"""Experiments: validation up front, run ids, the store cache, failures, hooks."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import mechscope
from mechscope.errors import ConfigError
from mechscope.experiment import Experiment, ExperimentResult
from mechscope.plugins import PluginManager

from .toys import FIT_CALLS, ToyPlugin


class Recorder:
    """A plugin that records lifecycle hooks."""

    def __init__(self):
        self.events = []

    @mechscope.hookimpl
    def mechscope_run_start(self, run_id, config):
        self.events.append(("run_start", run_id))

    @mechscope.hookimpl
    def mechscope_train_start(self, run_id, n_steps):
        self.events.append(("train_start", n_steps))

    @mechscope.hookimpl
    def mechscope_train_progress(self, run_id, step, metrics):
        self.events.append(("progress", step, metrics["loss"]))

    @mechscope.hookimpl
    def mechscope_train_end(self, run_id, status, reason):
        self.events.append(("train_end", status))

    @mechscope.hookimpl
    def mechscope_probe_result(self, run_id, probe, metrics):
        self.events.append(("probe", probe))

    @mechscope.hookimpl
    def mechscope_run_end(self, run_id, config, status, reason):
        self.events.append(("run_end", status))


@pytest.fixture
def plugins():
    manager = PluginManager()
    manager.register(ToyPlugin(), name="toys")
    return manager


def toy_experiment(plugins, **overrides):
    arguments = dict(
        task="toy_task",
        model={"name": "toy_model", "n_units": 3},
        trainer={"name": "toy_trainer", "steps": 4},
        probes=["toy_probe"],
        seed=0,
        plugins=plugins,
    )
    arguments.update(overrides)
    return Experiment(**arguments)


def test_run_id_depends_on_resolved_config_only(plugins):
    short = toy_experiment(plugins)
    spelled = toy_experiment(
        plugins,
        task={"name": "toy_task", "dt": 0.05},
        model={"name": "toy_model", "n_units": 3, "tau": 0.1},
    )
    assert short.run_id == spelled.run_id
    assert short.config["model"] == {"name": "toy_model", "n_units": 3, "tau": 0.1}
    assert toy_experiment(plugins, seed=1).run_id != short.run_id
    assert toy_experiment(plugins, model={"name": "toy_model", "n_units": 4}).run_id != (
        short.run_id
    )


def test_toml_and_python_give_same_run(plugins, tmp_path):
    path = tmp_path / "experiment.toml"
    path.write_text(
        'seed = 0\ntask = "toy_task"\n[model]\nname = "toy_model"\nn_units = 3\n'
        '[trainer]\nname = "toy_trainer"\nsteps = 4\n[[probes]]\nname = "toy_probe"\n'
    )
    assert Experiment.from_toml(path, plugins=plugins).run_id == toy_experiment(plugins).run_id


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"model": {"name": "toy_model", "n_unit": 3}}, "unknown field 'n_unit'"),
        ({"model": "toy_modle"}, "did you mean 'toy_model'"),
        ({"probes": ["toy_probe", "toy_probe"]}, "listed twice"),
        ({"seed": "1"}, "seed must be an integer"),
        ({"task": {"name": "toy_task", "dt": -1}}, "field 'dt' = -1"),
    ],
)
def test_bad_experiments_fail_before_training(plugins, overrides, fragment):
    with pytest.raises(ConfigError) as caught:
        toy_experiment(plugins, **overrides)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_top_level_key(plugins):
    with pytest.raises(ConfigError, match="unknown key 'probe' \\(did you mean 'probes'"):
        Experiment.from_dict(
            {"task": "toy_task", "model": "toy_model", "probe": []}, plugins=plugins
        )


def test_run_saves_and_reuses(plugins, tmp_path):
    experiment = toy_experiment(plugins)
    first = experiment.run(store=tmp_path, progress=False)
    directory = tmp_path / experiment.run_id
    assert first.directory == directory
    assert (directory / "manifest.json").exists()
    assert (directory / "probes" / "toy_probe" / "outputs.png").exists()
    trainer_calls = len(FIT_CALLS)
    again = experiment.run(store=tmp_path, progress=False)
    assert len(FIT_CALLS) == trainer_calls, "a cached run was retrained"
    assert again.metrics() == pytest.approx(first.metrics())
    assert again.probes["toy_probe"].figure_files["outputs"].exists()
    # The reloaded model gives the same outputs as the one just trained.
    trials = experiment.build_task().conditions()
    before = mechscope.simulate(first.trained.model, trials.inputs, trials.times).outputs
    after = mechscope.simulate(again.trained.model, trials.inputs, trials.times).outputs
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    np.testing.assert_array_equal(again.trained.history["loss"], first.trained.history["loss"])
    # How it was trained is recorded: alone (the toy trainer never trains networks together).
    header = json.loads((directory / "experiment.json").read_text())
    assert header["trained_jointly_with"] == 1
    assert set(header["environment"]) == {
        "mechscope_version",
        "jax_version",
        "platform",
        "device",
        "host",
    }
    assert header["environment"]["jax_version"] == jax.__version__
    assert again.header() == first.header(), "reloading changed what the run says about itself"


def test_corrupted_probe_file_reprobes_without_retraining(plugins, tmp_path):
    experiment = toy_experiment(plugins)
    first = experiment.run(store=tmp_path, progress=False)
    calls = len(FIT_CALLS)
    metrics_file = first.directory / "probes" / "toy_probe" / "metrics.json"
    metrics_file.write_text(metrics_file.read_text()[:-5])
    with pytest.warns(UserWarning) as caught:
        again = experiment.run(store=tmp_path, progress=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "corrupted" in messages and "recomputing only the probes" in messages
    assert len(FIT_CALLS) == calls, "an intact trained network was retrained"
    assert again.metrics() == pytest.approx(first.metrics())
    # The stored run is whole again, with the same network.
    reloaded = ExperimentResult.load(again.directory, registry=plugins.registry)
    assert reloaded.metrics() == pytest.approx(first.metrics())
    for before, after in zip(
        jax.tree.leaves(first.trained.model), jax.tree.leaves(reloaded.trained.model), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


def test_corrupted_trained_network_is_retrained(plugins, tmp_path):
    experiment = toy_experiment(plugins)
    first = experiment.run(store=tmp_path, progress=False)
    calls = len(FIT_CALLS)
    victim = first.directory / "trained" / "model.eqx"
    victim.write_bytes(victim.read_bytes()[:-3])
    with pytest.warns(UserWarning, match="corrupted"):
        again = experiment.run(store=tmp_path, progress=False)
    assert len(FIT_CALLS) == calls + 1
    assert again.metrics() == pytest.approx(first.metrics())
    ExperimentResult.load(again.directory, registry=plugins.registry)


def test_force_recomputes(plugins, tmp_path):
    experiment = toy_experiment(plugins)
    experiment.run(store=tmp_path, progress=False)
    calls = len(FIT_CALLS)
    experiment.run(store=tmp_path, progress=False, force=True)
    assert len(FIT_CALLS) == calls + 1


def test_training_reduces_error(plugins):
    untrained = toy_experiment(plugins, trainer={"name": "toy_trainer", "steps": 0})
    trained = toy_experiment(plugins, trainer={"name": "toy_trainer", "steps": 60})
    before = untrained.run(store=None, progress=False).metrics()["toy_probe.mse"]
    after = trained.run(store=None, progress=False).metrics()["toy_probe.mse"]
    assert after < 0.5 * before


def test_required_probes_added_first_and_failures_isolated(plugins, tmp_path):
    experiment = toy_experiment(plugins, probes=["broken_probe", "dependent_probe"])
    assert [p["name"] for p in experiment.config["probes"]] == [
        "broken_probe",
        "toy_probe",
        "dependent_probe",
    ]
    result = experiment.run(store=tmp_path, progress=False)
    assert "this probe is broken on purpose" in result.probe_errors["broken_probe"]
    metrics = result.metrics()
    assert metrics["dependent_probe.double_mse"] == pytest.approx(2 * metrics["toy_probe.mse"])
    header = json.loads((result.directory / "experiment.json").read_text())
    assert "broken_probe" in header["probe_errors"]


def test_probe_keys_are_stable_when_probes_are_added(plugins):
    alone = toy_experiment(plugins).run(store=None, progress=False)
    together = toy_experiment(plugins, probes=["dependent_probe", "toy_probe"]).run(
        store=None, progress=False
    )
    assert alone.metrics()["toy_probe.noise_draw"] == together.metrics()["toy_probe.noise_draw"]


def test_lifecycle_hooks_fire_in_order(plugins):
    recorder = Recorder()
    plugins.register(recorder, name="recorder")
    experiment = toy_experiment(plugins, trainer={"name": "toy_trainer", "steps": 2})
    experiment.run(store=None, progress=False)
    kinds = [event[0] for event in recorder.events]
    assert kinds == [
        "run_start",
        "train_start",
        "progress",
        "progress",
        "train_end",
        "probe",
        "run_end",
    ]
    assert recorder.events[0] == ("run_start", experiment.run_id)
    assert recorder.events[1] == ("train_start", 2)
    assert recorder.events[-1] == ("run_end", "completed")
