"""Suites: grid expansion, validation before training, caching, failures, executors, report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import mechscope
from mechscope.errors import ConfigError
from mechscope.plugins import PluginManager
from mechscope.store import RunStore
from mechscope.suite import Suite

from .toys import FIT_CALLS, ToyPlugin, ToyTrainer, ToyTrainerConfig

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "task": "toy_task",
    "model": {"name": "toy_model", "n_units": 3},
    "trainer": {"name": "toy_trainer", "steps": 3},
    "probes": ["toy_probe"],
}
VARY = {"model.tau": [0.1, 0.2], "trainer.learning_rate": [0.01, 0.05]}

SUITE_TOML = """
name = "toy"
seeds = 2

[base]
task = "toy_task"
probes = ["toy_probe"]

[base.model]
name = "toy_model"
n_units = 3

[base.trainer]
name = "toy_trainer"
steps = 3

[vary]
"model.tau" = [0.1, 0.2]
"trainer.learning_rate" = [0.01, 0.05]

[statistics]
compare = ["toy_probe.mse"]
correlate = [["toy_probe.mse", "train.loss"]]
"""


@pytest.fixture
def plugins():
    manager = PluginManager()
    manager.load_entry_points(disabled=[])  # executors
    manager.register(ToyPlugin(), name="toys")
    return manager


def stable(table: pd.DataFrame) -> pd.DataFrame:
    """The table without timings (which legitimately differ between runs)."""
    return table.drop(columns=[c for c in table.columns if c.startswith("time.")])


def test_grid_expands_with_labels_and_ids(plugins):
    suite = Suite(base=BASE, vary=VARY, seeds=[3, 4], plugins=plugins)
    assert [v.label for v in suite.variants] == [
        "model.tau=0.1, trainer.learning_rate=0.01",
        "model.tau=0.1, trainer.learning_rate=0.05",
        "model.tau=0.2, trainer.learning_rate=0.01",
        "model.tau=0.2, trainer.learning_rate=0.05",
    ]
    assert len(suite.runs) == 8
    assert len({r.run_id for r in suite.runs}) == 8
    first = suite.runs[0].experiment.config
    assert first["model"]["tau"] == 0.1 and first["trainer"]["learning_rate"] == 0.01
    assert first["seed"] == 3


def test_list_of_grids_is_a_union_sharing_runs(plugins):
    suite = Suite(
        base=BASE,
        vary=[
            {"model.tau": [0.1, 0.2]},
            {"trainer.learning_rate": [0.05, 0.5], "model.tau": [0.1]},
        ],
        seeds=2,
        plugins=plugins,
    )
    assert [v.label for v in suite.variants] == [
        "model.tau=0.1",
        "model.tau=0.2",
        "trainer.learning_rate=0.05, model.tau=0.1",
        "trainer.learning_rate=0.5, model.tau=0.1",
    ]
    # tau=0.1 with the default learning rate (0.05) is the same experiment in both grids.
    assert len(suite.runs) == 2 * 3
    assert suite.vary == {"model.tau": [0.1, 0.2], "trainer.learning_rate": [0.05, 0.5]}
    with pytest.raises(ConfigError, match="empty list"):
        Suite(base=BASE, vary=[], plugins=plugins)


def test_toml_and_python_suites_give_same_runs(plugins, tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(SUITE_TOML)
    from_toml = Suite.from_toml(path, plugins=plugins)
    from_python = Suite(base=BASE, vary=VARY, seeds=2, plugins=plugins)
    assert [r.run_id for r in from_toml.runs] == [r.run_id for r in from_python.runs]
    assert from_toml.name == "toy"


@pytest.mark.parametrize(
    ("vary", "fragment"),
    [
        ({"model.tua": [1.0]}, "unknown path in vary 'model.tua' (did you mean 'model.tau'?)"),
        ({"modle.tau": [1.0]}, "unknown path in vary 'modle.tau' (did you mean 'model'?)"),
        ({"model.tau": []}, "has no values: the grid would be empty"),
        ({"probes.jpca.n_dims": [4]}, "probe 'jpca' is not in the base probes"),
        ({"model.tau": [-1.0]}, "variant [model.tau=-1.0]: model 'toy_model': field 'tau'"),
        ({"model.name": ["toy_modle"]}, "unknown model 'toy_modle'"),
    ],
)
def test_bad_suites_fail_before_training(plugins, vary, fragment):
    calls = len(FIT_CALLS)
    with pytest.raises(ConfigError) as caught:
        Suite(base=BASE, vary=vary, seeds=1, plugins=plugins)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)
    assert len(FIT_CALLS) == calls


def test_bad_seeds_and_keys(plugins):
    with pytest.raises(ConfigError, match="seeds must be at least 1"):
        Suite(base=BASE, seeds=0, plugins=plugins)
    with pytest.raises(ConfigError, match="seeds repeat"):
        Suite(base=BASE, seeds=[1, 1], plugins=plugins)
    with pytest.raises(ConfigError, match="unknown key 'vari' \\(did you mean 'vary'"):
        Suite.from_dict({"base": BASE, "vari": {}}, plugins=plugins)


def test_run_caches_and_reuses(plugins, tmp_path):
    suite = Suite(base=BASE, vary=VARY, seeds=2, plugins=plugins)
    calls = len(FIT_CALLS)
    table = suite.run(store=tmp_path, progress=False)
    assert len(FIT_CALLS) == calls + 8
    assert list(table["status"]) == ["completed"] * 8
    assert table["toy_probe.mse"].notna().all()
    assert list(table.columns[:6]) == [
        "variant",
        "seed",
        "run_id",
        "status",
        "reason",
        "model.tau",
    ]
    again = suite.run(store=tmp_path, progress=False)
    assert len(FIT_CALLS) == calls + 8, "finished runs were retrained"
    pd.testing.assert_frame_equal(stable(again), stable(table))


def test_seeds_of_a_variant_train_together_like_alone(plugins, tmp_path):
    together = Suite(base=BASE, seeds=3, plugins=plugins).run(store=tmp_path / "a", progress=False)
    alone = Suite(
        base=BASE, seeds=3, executor={"name": "local", "group_seeds": False}, plugins=plugins
    ).run(store=tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(stable(together), stable(alone))


def test_failing_run_is_isolated_and_redone(plugins, tmp_path):
    suite = Suite(base=BASE, vary={"trainer.fail": [False, True]}, seeds=2, plugins=plugins)
    table = suite.run(store=tmp_path, progress=False)
    by_fail = table.groupby("trainer.fail")["status"].apply(list).to_dict()
    assert by_fail == {False: ["completed"] * 2, True: ["failed"] * 2}
    reasons = table.loc[table["trainer.fail"], "reason"]
    assert reasons.str.contains("toy trainer told to fail").all()
    calls = len(FIT_CALLS)
    suite.run(store=tmp_path, progress=False)
    redone = FIT_CALLS[calls:]
    assert redone and all(config.fail for config in redone), "only the failed runs are redone"


def test_corrupted_result_is_recomputed(plugins, tmp_path):
    suite = Suite(base=BASE, seeds=2, plugins=plugins)
    table = suite.run(store=tmp_path, progress=False)
    victim = tmp_path / table["run_id"][1] / "trained" / "model.eqx"
    victim.write_bytes(victim.read_bytes()[:-3])
    calls = len(FIT_CALLS)
    with pytest.warns(UserWarning, match="corrupted"):
        again = suite.run(store=tmp_path, progress=False)
    assert len(FIT_CALLS) == calls + 1
    pd.testing.assert_frame_equal(stable(again), stable(table))


@pytest.mark.parametrize("model_too", [False, True])
def test_corrupted_probe_file_reprobes_without_retraining(plugins, tmp_path, model_too):
    # Both seeds of one variant are damaged, so they are redone together (fit_many); with
    # `model_too` the second seed's network is damaged as well and only it is retrained.
    suite = Suite(base=BASE, seeds=2, plugins=plugins)
    table = suite.run(store=tmp_path, progress=False)
    for run_id in table["run_id"]:
        victim = tmp_path / run_id / "probes" / "toy_probe" / "metrics.json"
        victim.write_text(victim.read_text()[:-4])
    if model_too:
        victim = tmp_path / table["run_id"][1] / "trained" / "model.eqx"
        victim.write_bytes(victim.read_bytes()[:-3])
    calls = len(FIT_CALLS)
    with pytest.warns(UserWarning, match="recomputing only the probes"):
        again = suite.run(store=tmp_path, progress=False)
    assert len(FIT_CALLS) == calls + int(model_too), "an intact trained network was retrained"
    pd.testing.assert_frame_equal(stable(again), stable(table))
    assert all(RunStore(tmp_path).is_complete(run_id) for run_id in table["run_id"])


def toy_environment(tmp_path):
    """A fake installed distribution whose entry point loads the toys, for child processes."""
    site = tmp_path / "site"
    info = site / "mechscope_toys-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mechscope-toys\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mechscope]\ntoys = tests.toys:plugin\n")
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site)])
    environment["MECHSCOPE_TOY_FIT_LOG"] = str(tmp_path / "fits.log")
    return environment


def test_killed_suite_resumes_without_retraining(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(SUITE_TOML)
    store = tmp_path / "store"
    environment = toy_environment(tmp_path)
    command = [
        sys.executable,
        "-m",
        "mechscope.cli",
        "run",
        str(path),
        "--out",
        str(store),
        "--quiet",
        "--executor",
        "local",
    ]
    killed = subprocess.run(
        command,
        env={**environment, "MECHSCOPE_TOY_KILL_AFTER": "3"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    log = Path(environment["MECHSCOPE_TOY_FIT_LOG"])
    assert len(log.read_text().split()) == 4  # three finished fits and the one killed
    complete = [d for d in store.iterdir() if (d / "manifest.json").exists()]
    assert 1 <= len(complete) <= 3
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    fits_after_resume = len(log.read_text().split()) - 4
    assert fits_after_resume == 8 - len(complete), "completed runs were retrained"
    # The resumed table equals a clean run's table.
    manager = PluginManager()
    manager.register(ToyPlugin(), name="toys")
    manager.load_entry_points(disabled=["toys"])
    suite = Suite.from_toml(path, plugins=manager)
    resumed = suite.table(store)
    clean = suite.run(store=tmp_path / "clean", progress=False)
    assert list(resumed["status"]) == ["completed"] * 8
    pd.testing.assert_frame_equal(stable(resumed), stable(clean))


def test_dask_local_cluster_gives_same_table_as_local(tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    environment = toy_environment(tmp_path)
    # Spawned workers inherit this process's sys.path: they find the toys' entry point there.
    for folder in reversed(environment["PYTHONPATH"].split(os.pathsep)):
        monkeypatch.syspath_prepend(folder)
    manager = PluginManager()
    manager.load_entry_points(disabled=["toys"])
    manager.register(ToyPlugin(), name="toys")
    suite = Suite(base=BASE, vary={"model.tau": [0.1, 0.2]}, seeds=1, plugins=manager)
    local = suite.run(store=tmp_path / "local", progress=False)
    distributed = suite.run(
        executor={"name": "dask", "n_workers": 2}, store=tmp_path / "dask", progress=False
    )
    assert list(distributed["status"]) == ["completed"] * 2
    pd.testing.assert_frame_equal(stable(distributed), stable(local))


class HookPairs:
    """Records run_start / run_end and the training hooks, per run id."""

    def __init__(self):
        self.events = []

    @mechscope.hookimpl
    def mechscope_run_start(self, run_id, config):
        self.events.append(("start", run_id, None))

    @mechscope.hookimpl
    def mechscope_run_end(self, run_id, config, status, reason):
        self.events.append(("end", run_id, status))

    @mechscope.hookimpl
    def mechscope_train_start(self, run_id, n_steps):
        self.events.append(("train_start", run_id, None))

    @mechscope.hookimpl
    def mechscope_train_end(self, run_id, status, reason):
        self.events.append(("train_end", run_id, status))

    def assert_training_paired(self):
        """Every train_start is closed by a train_end of the same run before the next start."""
        open_runs = set()
        for kind, run_id, _ in self.events:
            if kind == "train_start":
                assert run_id not in open_runs, f"{run_id} started training twice"
                open_runs.add(run_id)
            elif kind == "train_end":
                assert run_id in open_runs, f"{run_id} ended training it never started"
                open_runs.discard(run_id)
        assert not open_runs, f"training never ended for {open_runs}"

    def assert_paired(self, run_ids):
        """Every run opened exactly once and closed exactly once, after it opened."""
        for run_id in run_ids:
            mine = [
                kind for kind, rid, _ in self.events if rid == run_id and kind in ("start", "end")
            ]
            assert mine == ["start", "end"], (run_id, mine)

    def ends(self):
        return {rid: status for kind, rid, status in self.events if kind == "end"}


class JointFailTrainer(ToyTrainer):
    """Trains each seed like the toy trainer, but fails whenever asked to train several."""

    def fit_many(self, models, task, *, keys, callbacks=(), checkpoint_dirs=None):
        for model in models:  # training began for every network, then failed
            for callback in callbacks:
                callback.on_train_start(model=model, task=task, n_steps=self.config.steps)
        raise RuntimeError("joint fit exploded")


class JointFailPlugin:
    @mechscope.hookimpl
    def mechscope_register_trainers(self, register):
        register("joint_fail_trainer", ToyTrainerConfig, JointFailTrainer)


@pytest.fixture
def recorded(plugins):
    recorder = HookPairs()
    plugins.register(recorder, name="hook-pairs")
    plugins.register(JointFailPlugin(), name="joint-fail")
    return recorder


def test_seeds_trained_together_pair_every_run_start_with_one_run_end(plugins, recorded, tmp_path):
    calls = len(FIT_CALLS)
    table = Suite(base=BASE, seeds=3, plugins=plugins).run(store=tmp_path, progress=False)
    assert (table["status"] == "completed").all()
    assert len(FIT_CALLS) == calls + 3
    recorded.assert_paired(table["run_id"])
    assert recorded.ends() == dict.fromkeys(table["run_id"], "completed")
    # Training hooks name each seed's own run, not a joined id.
    trained = [rid for kind, rid, _ in recorded.events if kind == "train_start"]
    assert sorted(trained) == sorted(table["run_id"])


def test_failed_joint_fit_is_reported_then_each_seed_retried_alone(plugins, recorded, tmp_path):
    base = {**BASE, "trainer": {"name": "joint_fail_trainer", "steps": 3}}
    calls = len(FIT_CALLS)
    with pytest.warns(UserWarning, match="joint fit exploded.*retrying each seed alone"):
        table = Suite(base=base, seeds=2, plugins=plugins).run(store=tmp_path, progress=False)
    assert (table["status"] == "completed").all(), table[["status", "reason"]]
    assert len(FIT_CALLS) == calls + 2, "each seed trains alone exactly once"
    recorded.assert_paired(table["run_id"])
    recorded.assert_training_paired()
    assert all(RunStore(tmp_path).is_complete(run_id) for run_id in table["run_id"])


def test_seeds_that_fail_alone_too_end_failed_once_each(plugins, recorded, tmp_path):
    base = {**BASE, "trainer": {"name": "joint_fail_trainer", "steps": 3, "fail": True}}
    with pytest.warns(UserWarning, match="retrying each seed alone"):
        table = Suite(base=base, seeds=2, plugins=plugins).run(store=tmp_path, progress=False)
    assert (table["status"] == "failed").all()
    assert table["reason"].str.contains("toy trainer told to fail").all()
    recorded.assert_paired(table["run_id"])
    assert recorded.ends() == dict.fromkeys(table["run_id"], "failed")


def test_a_failed_save_loses_only_that_seed(plugins, recorded, tmp_path, monkeypatch):
    original = RunStore.save
    calls = []

    def save_fails_once(self, header, *args, **kwargs):
        calls.append(header.run_id)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return original(self, header, *args, **kwargs)

    monkeypatch.setattr(RunStore, "save", save_fails_once)
    table = Suite(base=BASE, seeds=3, plugins=plugins).run(store=tmp_path, progress=False)
    failed = table[table["status"] == "failed"]
    assert list(failed["run_id"]) == [calls[0]]
    assert "No space left on device" in failed["reason"].iloc[0]
    assert (table[table["status"] != "failed"]["status"] == "completed").sum() == 2
    recorded.assert_paired(table["run_id"])


# Metric names are checked against the probes' declarations before anything trains.

from .toys import ToyProbe, ToyProbeConfig  # noqa: E402 - kept with the tests that use them


class DeclaredProbe(ToyProbe):
    """The toy probe with its metrics declared: ``mse`` a metric, ``noise_draw`` a setting."""

    def metrics(self):
        return (
            mechscope.Metric("mse", "mean squared output error on the condition trials"),
            mechscope.Metric("noise_draw", "a uniform draw from the probe's key", kind="setting"),
        )


class DeclaredPlugin:
    @mechscope.hookimpl
    def mechscope_register_probes(self, register):
        register("declared_probe", ToyProbeConfig, DeclaredProbe)


@pytest.fixture
def declared(plugins):
    plugins.register(DeclaredPlugin(), name="declared")
    return plugins


DECLARED_BASE = {**BASE, "probes": ["declared_probe", "toy_probe"]}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (
            {"statistics": {"compare": ["declared_probe.mes"]}},
            "statistics.compare: probe 'declared_probe' declares no metric 'declared_probe.mes' "
            "(did you mean 'declared_probe.mse'?); it declares mse",
        ),
        (
            {"statistics": {"compare": ["declared_probe.noise_draw"]}},
            "statistics.compare: 'declared_probe.noise_draw' is a setting, not a metric",
        ),
        (
            {"statistics": {"correlate": [["declared_probe.mse", "train.los"]]}},
            "statistics.correlate: training declares no metric 'train.los' "
            "(did you mean 'train.loss'?); it declares loss, r2",
        ),
        (
            {
                "claims": [
                    {"kind": "exceeds", "title": "t", "metric": "declard_probe.mse", "threshold": 0}
                ]
            },
            "claim 't': 'declard_probe.mse' names no probe of the suite "
            "(did you mean 'declared_probe.mse'?)",
        ),
        (
            {
                "claims": [
                    {
                        "kind": "correlates",
                        "title": "c",
                        "x": "declared_probe.mse",
                        "y": "declared_probe.noise_draw",
                        "sign": "positive",
                    }
                ]
            },
            "claim 'c': 'declared_probe.noise_draw' is a setting, not a metric",
        ),
        (
            {
                "claims": [
                    {
                        "kind": "differs",
                        "title": "d",
                        "metric": "declared_probe.mse",
                        "by": "model.taus",
                    }
                ]
            },
            "claim 'd': no column 'model.taus' to group or filter by (did you mean 'model.tau'?)",
        ),
        (
            {
                "claims": [
                    {
                        "kind": "exceeds",
                        "title": "w",
                        "metric": "declared_probe.mse",
                        "threshold": 0,
                        "where": {"modle.tau": 0.1},
                    }
                ]
            },
            "claim 'w': no column 'modle.tau' to group or filter by (did you mean 'model.tau'?)",
        ),
    ],
)
def test_unknown_metric_or_column_fails_before_training(declared, tmp_path, options, fragment):
    calls = len(FIT_CALLS)
    with pytest.raises(ConfigError) as caught:
        Suite(base=DECLARED_BASE, vary=VARY, seeds=1, plugins=declared, **options).run(
            store=tmp_path / "runs", progress=False
        )
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)
    assert len(FIT_CALLS) == calls, "nothing may train for a suite naming an unknown column"
    assert not (tmp_path / "runs").exists()


def test_declared_names_undeclared_probes_and_config_columns_are_accepted(declared):
    suite = Suite(
        base=DECLARED_BASE,
        vary=VARY,
        seeds=1,
        plugins=declared,
        # toy_probe declares nothing, so its names cannot be checked and pass unchecked.
        statistics={
            "compare": ["declared_probe.mse", "train.loss", "toy_probe.anything"],
            "correlate": [["declared_probe.noise_draw", "model.tau"]],
        },
        claims=[
            {"kind": "differs", "title": "a", "metric": "declared_probe.mse", "by": "model.tau"},
            {"kind": "differs", "title": "b", "metric": "toy_probe.mse", "by": "variant"},
            {
                "kind": "exceeds",
                "title": "c",
                "metric": "train.r2",
                "threshold": 0,
                "where": {"model.n_units": 3},
            },
        ],
    )
    assert len(suite.runs) == 4


def test_first_party_declarations_catch_a_typo_in_a_ready_suite():
    """The kao2019 suite passes as written; one typo in it names jPCA's declared metrics."""
    import tomllib

    data = tomllib.loads((ROOT / "suites" / "kao2019-small.toml").read_text())
    assert len(Suite.from_dict(data).runs) == 14
    data["statistics"]["compare"][0] = "jpca.r2_skw"
    with pytest.raises(ConfigError) as caught:
        Suite.from_dict(data)
    message = str(caught.value)
    assert "probe 'jpca' declares no metric 'jpca.r2_skw' (did you mean 'jpca.r2_skew'?)" in message
    assert "r2_best, r2_skew, r2_ratio" in message
    assert "soften_norm_used" not in message, "settings are not offered as metrics"


# The overall bar shows the phase of the group computing and how much came from the cache.


class JointToyTrainer(ToyTrainer):
    """Trains its seeds in lockstep and tags each evaluation with the network's index, as a
    vmapping trainer does."""

    def fit_many(self, models, task, *, keys, callbacks=(), checkpoint_dirs=None):
        import jax
        import numpy as np
        import optax

        from .toys import _toy_step

        models = list(models)
        states = [optax.sgd(self.config.learning_rate).init(eqx_arrays(m)) for m in models]
        for model in models:
            for callback in callbacks:
                callback.on_train_start(model=model, task=task, n_steps=self.config.steps)
        losses = [[] for _ in models]
        for index in range(self.config.steps):
            for seed, key in enumerate(keys):
                models[seed], states[seed], loss = _toy_step(
                    models[seed], states[seed], task, jax.random.fold_in(key, index), self.config
                )
                losses[seed].append(float(loss))
                for callback in callbacks:
                    callback.on_evaluation(
                        step=index + 1, metrics={"loss": float(loss), "seed": seed}
                    )
        runs = []
        for model, history in zip(models, losses, strict=True):
            run = mechscope.TrainedRun(
                model=model,
                history={"step": np.arange(1, len(history) + 1), "loss": np.asarray(history)},
                metadata={"wall_time_s": 0.0},
            )
            for callback in callbacks:
                callback.on_train_end(run=run)
            runs.append(run)
        return runs


def eqx_arrays(model):
    import equinox as eqx

    return eqx.filter(model, eqx.is_array)


class JointPlugin:
    @mechscope.hookimpl
    def mechscope_register_trainers(self, register):
        register("joint_toy_trainer", ToyTrainerConfig, JointToyTrainer)


def status_lines(stream: str) -> list[str]:
    """Each state the bar was drawn in (tqdm redraws a line after a carriage return)."""
    lines = (line.rstrip() for chunk in stream.split("\n") for line in chunk.split("\r"))
    return [line for line in lines if line]


def test_suite_bar_shows_training_and_probe_phases_and_cache_reuse(plugins, tmp_path, capsys):
    plugins.register(JointPlugin(), name="joint")
    base = {
        **BASE,
        "trainer": {"name": "joint_toy_trainer", "steps": 3},
        "probes": ["toy_probe", "dependent_probe"],
    }
    capsys.readouterr()
    table = Suite(base=base, seeds=2, plugins=plugins).run(store=tmp_path, progress=True)
    lines = status_lines(capsys.readouterr().err)
    assert "0 loaded, 0 computed" in lines[1], "shown before anything trains"
    # The group's loss at the last step is the mean of its runs' final losses.
    loss = table["train.loss"].mean()
    last_step = f"0 loaded, 0 computed | training [base] (2 seeds): step 3/3, loss {loss:.4g}"
    assert any(line.endswith(last_step + "]") for line in lines), lines
    assert any("training [base] (2 seeds): step 1/3" in line for line in lines)
    trained = lines.index(next(line for line in lines if line.endswith(last_step + "]")))
    for seed in (0, 1):
        order = [
            next(i for i, line in enumerate(lines) if line.endswith(f"probing [base] {what}]"))
            for what in (f"seed {seed}: toy_probe", f"seed {seed}: dependent_probe")
        ]
        assert trained < order[0] < order[1], "after training, each probe in the order it runs"
    assert "2/2" in lines[-1] and lines[-1].endswith("0 loaded, 2 computed]")

    # A third seed: two runs are reused, one trains (alone: the label names its seed).
    Suite(base=base, seeds=3, plugins=plugins).run(store=tmp_path, progress=True)
    again = status_lines(capsys.readouterr().err)
    assert "2 loaded, 0 computed" in again[1]
    assert any("2 loaded, 0 computed | training [base] seed 2: step 3/3" in line for line in again)
    assert not any("seed 0" in line or "seed 1" in line for line in again), "cached: not rerun"
    assert again[-1].endswith("2 loaded, 1 computed]")


class ProgressEvents:
    """Records training progress and probe hooks by run."""

    def __init__(self):
        self.events = []

    @mechscope.hookimpl
    def mechscope_train_progress(self, run_id, step):
        self.events.append(("progress", run_id, step))

    @mechscope.hookimpl
    def mechscope_probe_start(self, run_id, probe):
        self.events.append(("probe_start", run_id, probe))

    @mechscope.hookimpl
    def mechscope_probe_result(self, run_id, probe):
        self.events.append(("probe_result", run_id, probe))


def test_seeds_trained_one_after_another_report_progress_under_their_own_runs(plugins, tmp_path):
    """ToyTrainer's fit_many is the default (one network after another, untagged rows)."""
    recorder = ProgressEvents()
    plugins.register(recorder, name="progress-events")
    base = {**BASE, "probes": ["toy_probe", "dependent_probe"]}
    table = Suite(base=base, seeds=2, plugins=plugins).run(store=tmp_path, progress=False)
    first, second = table["run_id"]
    progress = [(run_id, step) for kind, run_id, step in recorder.events if kind == "progress"]
    assert progress == [(first, 1), (first, 2), (first, 3), (second, 1), (second, 2), (second, 3)]
    probes = [event for event in recorder.events if event[0] != "progress"]
    assert probes == [
        (kind, run_id, probe)
        for run_id in (first, second)
        for probe in ("toy_probe", "dependent_probe")
        for kind in ("probe_start", "probe_result")
    ]


@pytest.mark.parametrize(
    ("vary", "fragment"),
    [
        ({"model.tau": 0.1}, "vary 'model.tau' = 0.1: expected a list of values, e.g. "),
        ({"model.name": "toy_model"}, "vary 'model.name' = 'toy_model': expected a list"),
        ({"model.tau": [0.1, 0.1]}, "lists 0.1 more than once"),
        ({"model.tau": [1, 1.0]}, "lists 1.0 more than once"),  # one setting of a float
    ],
)
def test_vary_values_are_lists_of_distinct_values(plugins, vary, fragment):
    with pytest.raises(ConfigError) as caught:
        Suite(base=BASE, vary=vary, seeds=1, plugins=plugins)
    assert fragment in str(caught.value)


def test_vary_keeps_values_that_only_look_alike(plugins):
    suite = Suite(base=BASE, vary={"model.tau": [0.1, 0.2, 0.3]}, seeds=1, plugins=plugins)
    assert [v.values["model.tau"] for v in suite.variants] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("seeds", [2.5, "3", True, [], [0, 1.5], [0, -1], [2**32], {"n": 2}, None])
def test_seeds_are_a_count_or_distinct_integers(plugins, seeds):
    with pytest.raises(ConfigError, match="seeds"):
        Suite(base=BASE, seeds=seeds, plugins=plugins)


@pytest.mark.parametrize(
    "name", ["../../x", "a/b", "a\\b", "a\x00b", ".hidden", "..", "", "a..b", 3, None]
)
def test_unsafe_suite_names_are_refused_before_anything_runs(plugins, name):
    with pytest.raises(ConfigError, match="not a safe file name"):
        Suite(base=BASE, name=name, seeds=1, plugins=plugins)


@pytest.mark.parametrize("name", ["toy", "kao2019-small", "run_2.v3", "A1"])
def test_safe_suite_names_are_kept(plugins, name):
    assert Suite(base=BASE, name=name, seeds=1, plugins=plugins).name == name


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "a\x00b"])
def test_the_store_refuses_unsafe_suite_names_too(tmp_path, name):
    with pytest.raises(mechscope.StoreError, match="not a file name inside the store"):
        RunStore(tmp_path).suite_record_path(name)
    assert RunStore(tmp_path).suite_record_path("ok").parent == tmp_path / "suites"


def test_a_suite_named_after_its_file_gets_a_safe_name(plugins, tmp_path):
    path = tmp_path / "my suite (draft).toml"
    path.write_text(SUITE_TOML.replace('name = "toy"\n', ""))
    assert Suite.from_toml(path, plugins=plugins).name == "my-suite--draft-"


def test_base_probes_must_be_a_list(plugins):
    for probes in ("toy_probe", {"name": "toy_probe"}):
        with pytest.raises(ConfigError, match="base.probes = .*expected a list of values"):
            Suite(base={**BASE, "probes": probes}, seeds=1, plugins=plugins)
