"""The command line: listings, schemas, runs, reports and one-line errors."""

from __future__ import annotations

import json

import equinox as eqx
import numpy as np
import pydantic
import pytest

import mechscope
from mechscope.cli import main

from .toys import ToyPlugin


@pytest.fixture
def toys():
    manager = mechscope.get_plugin_manager()
    manager.register(ToyPlugin(), name="cli-toys")
    yield manager
    manager.unregister("cli-toys")


def test_plugins_json_lists_components_with_distributions(capsys, toys):
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {(item["kind"], item["name"]): item for item in listing}
    assert by_name[("executor", "local")]["distribution"] == "mechscope"
    assert by_name[("executor", "local")]["version"] == mechscope.__version__
    assert by_name[("model", "toy_model")]["description"] == "Linear Euler network."
    kinds = {item["kind"] for item in listing}
    assert kinds <= {"task", "model", "trainer", "probe", "executor", "comparison", "load_error"}


def test_plugins_table(capsys, toys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["task", "toy_task"] for line in lines)


def test_schema_prints_json_schema(capsys, toys):
    assert main(["schema", "model", "toy_model", "--json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == {"n_units", "tau"}
    assert schema["properties"]["n_units"]["default"] == 4
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["schema", "model", "toy_modle"], "unknown model 'toy_modle' (did you mean 'toy_model'?)"),
        (["schema", "modle", "x"], "unknown component kind 'modle'"),
        (["run", "does-not-exist.toml"], "does-not-exist.toml: no such file"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(capsys, toys, argv, fragment):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err


def test_usage_errors_are_one_line_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "invalid choice: 'frobnicate'" in error
    assert "\n" not in error


def test_config_typo_in_file_is_one_line(tmp_path, capsys, toys):
    path = tmp_path / "bad.toml"
    path.write_text('task = "toy_task"\n[model]\nname = "toy_model"\nn_unitz = 3\n')
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mechscope: error: model 'toy_model': unknown field 'n_unitz'")
    assert "did you mean 'n_units'" in error
    assert "\n" not in error
    assert not (tmp_path / "runs").exists(), "nothing may be trained for an invalid config"


def test_debug_shows_traceback(tmp_path, toys):
    path = tmp_path / "bad.toml"
    path.write_text("task = ")
    with pytest.raises(mechscope.ConfigError, match="invalid TOML"):
        main(["--debug", "run", str(path)])


def test_run_runs_report(tmp_path, capsys, toys):
    path = tmp_path / "experiment.toml"
    path.write_text(
        'task = "toy_task"\n[model]\nname = "toy_model"\n[trainer]\nname = "toy_trainer"\n'
        'steps = 3\n[[probes]]\nname = "toy_probe"\n'
    )
    store = tmp_path / "runs"
    assert main(["run", str(path), "--out", str(store), "--quiet"]) == 0
    output = capsys.readouterr().out
    run_id = output.split()[1].rstrip(":")
    assert (store / run_id / "manifest.json").exists()
    assert "toy_probe.mse" in output
    assert main(["runs", str(store)]) == 0
    assert run_id in capsys.readouterr().out
    # A second run that differs in one setting: the default listing shows that setting, the
    # component names and the training fit, and hides the rest until asked.
    path.write_text(path.read_text().replace("steps = 3", "steps = 4"))
    assert main(["run", str(path), "--out", str(store), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["runs", str(store)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    # (the toy trainer records a loss but no R²)
    assert header.split() == [
        "run_id",
        "status",
        "task.name",
        "model.name",
        "trainer.name",
        "trainer.steps",
        "seed",
        "train.loss",
    ]
    assert sorted(row.split()[5] for row in rows[:2]) == ["3", "4"]
    assert "more columns" in rows[2]
    assert main(["runs", "--columns", "toy_probe.*,nothing.*", str(store)]) == 0
    chosen = capsys.readouterr().out.splitlines()[0].split()[len(header.split()) :]
    assert chosen and all(c.startswith("toy_probe.") for c in chosen) and "toy_probe.mse" in chosen
    assert main(["runs", str(store), "--all"]) == 0
    full_header = capsys.readouterr().out.splitlines()[0].split()
    assert {"toy_probe.mse", "trainer.learning_rate", "time.train_s"} <= set(full_header)
    assert main(["report", str(store)]) == 0
    html = (store / "report" / "report.html").read_text()
    assert run_id in html and "data:image/png;base64," in html
    csv = (store / "report" / "runs.csv").read_text().splitlines()
    assert len(csv) == 3 and "toy_probe.mse" in csv[0]  # header and the two runs


def test_schema_is_a_table_of_fields_and_a_probes_metrics(capsys, toys):
    assert main(["schema", "model", "toy_model"]) == 0
    title, _, header, *rows = capsys.readouterr().out.splitlines()
    assert title.startswith("model 'toy_model'") and title.endswith("Linear Euler network.")
    assert header.split() == ["field", "type", "default", "description"]
    assert [row.split()[:3] for row in rows] == [["n_units", "int", "4"], ["tau", "float", "0.1"]]

    entry = mechscope.get_registry().get("probe", "jpca")
    declared = entry.build(entry.validate({})).metrics()
    assert main(["schema", "probe", "jpca"]) == 0
    output = capsys.readouterr().out
    lines = output.splitlines()
    assert any(line.split()[:3] == ["n_pcs", "int", "6"] for line in lines)
    metrics_at = next(i for i, line in enumerate(lines) if line.startswith("metrics ("))
    settings_at = next(i for i, line in enumerate(lines) if line.startswith("settings ("))
    listed = lambda block: [line.split()[0] for line in block if line and not line[0].isspace()]  # noqa: E731
    assert listed(lines[metrics_at + 2 : settings_at]) == [
        m.name for m in declared if m.kind == "metric"
    ]
    assert listed(lines[settings_at + 2 :]) == ["soften_norm_used"]
    assert any(line.split()[:2] == ["freq_hz_plane1", "Hz"] for line in lines)
    assert "ΔX" in output and "\\u" not in output, "unicode is printed as itself"

    assert main(["schema", "probe", "jpca", "--json"]) == 0
    raw = capsys.readouterr().out
    schema = json.loads(raw)
    assert [m["name"] for m in schema["metrics"]] == [m.name for m in declared]
    assert schema["properties"]["n_pcs"]["default"] == 6
    assert "ΔX" in raw and "\\u" not in raw

    assert main(["schema", "probe", "toy_probe"]) == 0
    assert "metrics: not declared" in capsys.readouterr().out


def test_runs_orders_suite_runs_by_variant_and_seed_and_shows_list_settings(tmp_path, capsys, toys):
    from mechscope.suite import Suite

    # Two lists longer than a truncated cell that differ only in their last element.
    first = [round(0.1 * i, 1) for i in range(1, 12)]
    second = [*first[:-1], 2.0]
    store = tmp_path / "runs"
    suite = Suite(
        base={
            "task": "toy_task",
            "model": "toy_model",
            "trainer": {"name": "toy_trainer", "steps": 2},
            "probes": ["toy_probe"],
        },
        # Planned order: `second` first, seeds 1 then 0 (neither alphabetical nor ascending).
        vary={"task.levels": [second, first]},
        seeds=[1, 0],
        name="lists",
        plugins=toys,
    )
    suite.run(store=store, progress=False)
    loose = tmp_path / "experiment.toml"
    loose.write_text(
        'task = "toy_task"\n[model]\nname = "toy_model"\n[trainer]\nname = "toy_trainer"\n'
        "steps = 5\n"
    )
    assert main(["run", str(loose), "--out", str(store), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["runs", str(store)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()[:-1]  # the hidden-columns note
    assert header.split()[:4] == ["run_id", "status", "suite", "variant"]
    assert "task.levels" in header.split()
    by_id = {run.run_id: run for run in suite.runs}
    listed = [row.split()[0] for row in rows]
    assert [(by_id[r].variant.label, by_id[r].seed) for r in listed[:4]] == [
        (f"task.levels={json.dumps(second)}", 0),
        (f"task.levels={json.dumps(second)}", 1),
        (f"task.levels={json.dumps(first)}", 0),
        (f"task.levels={json.dumps(first)}", 1),
    ]
    assert [row.split()[2] for row in rows] == ["lists"] * 4 + ["-"], "the loose run comes last"
    for row, run_id in zip(rows, listed[:4], strict=False):
        levels = by_id[run_id].variant.values["task.levels"]
        assert row.count(json.dumps(levels)) == 2, "variant and task.levels, both in full"


def test_a_suite_naming_an_undeclared_metric_fails_before_training(tmp_path, capsys):
    from .toys import FIT_CALLS

    suite = tmp_path / "suite.toml"
    suite.write_text(
        'seeds = 2\n[base]\ntask = "delayed_reach"\nprobes = ["jpca"]\n'
        '[base.model]\nname = "ctrnn"\nn_units = 4\n[base.trainer]\nname = "bptt"\nsteps = 1\n'
        '[vary]\n"model.activation" = ["tanh", "relu"]\n'
        '[statistics]\ncompare = ["jpca.rotation_r2"]\n'
    )
    calls = len(FIT_CALLS)
    assert main(["run", str(suite), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        "mechscope: error: statistics.compare: probe 'jpca' declares no metric 'jpca.rotation_r2'"
    )
    assert "; it declares r2_best, r2_skew, r2_ratio" in error and "\n" not in error
    assert not (tmp_path / "runs").exists() and len(FIT_CALLS) == calls, "nothing trained"


class DivergingTrainerConfig(mechscope.Config):
    """Returns the untrained model as diverged at `step` (no training: fast)."""

    step: int = 3


class DivergingTrainer(mechscope.AbstractTrainer):
    config: DivergingTrainerConfig = eqx.field(static=True)

    def fit(self, model, task, *, key, callbacks=(), checkpoint_dir=None):
        del task, key, callbacks, checkpoint_dir
        step = self.config.step
        return mechscope.TrainedRun(
            model=model,
            history={"step": np.arange(1.0, step), "loss": np.ones(step - 1)},
            status="diverged",
            reason=f"diverged at step {step}: the loss became NaN or Inf; kept step {step - 1}",
        )


class StrictTypeConfig(mechscope.Config):
    """A config whose validator raises TypeError (which pydantic does not wrap)."""

    value: int = 0

    @pydantic.field_validator("value")
    @classmethod
    def _raises(cls, value: int) -> int:
        if value < 0:
            raise TypeError("a plugin bug")
        return value


class CLIExtras:
    @mechscope.hookimpl
    def mechscope_register_trainers(self, register):
        register("diverging", DivergingTrainerConfig, DivergingTrainer)

    @mechscope.hookimpl
    def mechscope_register_probes(self, register):
        register("buggy_probe", StrictTypeConfig, lambda config: None)


@pytest.fixture
def extras(toys):
    toys.register(CLIExtras(), name="cli-extras")
    yield toys
    toys.unregister("cli-extras")


SUITE = """
name = "reasons"
seeds = 1
[base]
task = "toy_task"
model = {{ name = "toy_model", n_units = 3 }}
trainer = {{ name = "{trainer}" }}
[vary]
"{path}" = {values}
"""


def test_run_lists_each_diverged_and_failed_run_with_its_reason(tmp_path, capsys, extras):
    path = tmp_path / "reasons.toml"
    store = tmp_path / "runs"
    path.write_text(SUITE.format(trainer="diverging", path="trainer.step", values="[3, 5]"))
    assert main(["run", str(path), "--out", str(store), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "suite 'reasons': 2 diverged" in captured.out
    lines = [line.strip() for line in captured.err.splitlines() if "diverged:" in line]
    assert len(lines) == 2
    for step, line in zip((3, 5), sorted(lines), strict=True):
        assert line.startswith(f"diverged: [trainer.step={step}] seed 0 run ")
        assert line.endswith(
            f"diverged at step {step}: the loss became NaN or Inf; kept step {step - 1}"
        )
    failing = tmp_path / "failing.toml"
    failing.write_text(SUITE.format(trainer="toy_trainer", path="trainer.fail", values="[true]"))
    assert main(["run", str(failing), "--out", str(store), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "failed: [trainer.fail=True] seed 0 run " in err
    assert "RuntimeError: toy trainer told to fail" in err
    # `mechscope runs` shows the reason of the runs that did not complete.
    assert main(["runs", str(store)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["run_id", "status", "reason"]
    assert sum("diverged at step" in row for row in rows) == 2


def test_out_that_is_a_file_is_refused_before_the_file_is_read(tmp_path, capsys, toys):
    existing = tmp_path / "store"
    existing.write_text("a file\n")
    for out, fragment in [
        (existing, f"--out {existing} is a file, not a directory"),
        (
            existing / "runs",
            f"--out {existing / 'runs'} is inside {existing}, which is a file, not a directory",
        ),
    ]:
        # The suite file does not even exist: --out is checked first, before anything runs.
        assert main(["run", str(tmp_path / "missing.toml"), "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"mechscope: error: {fragment}"
    assert existing.read_text() == "a file\n"
    assert main(["report", str(tmp_path), "--out", str(existing)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_a_directory_as_the_run_file_is_a_clean_error(tmp_path, capsys, toys):
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"mechscope: error: {tmp_path}: cannot read it as a TOML file")
    assert "\n" not in error


def test_unexpected_errors_name_the_input_and_hint_at_the_traceback(
    tmp_path, capsys, extras, monkeypatch
):
    path = tmp_path / "buggy.toml"
    path.write_text(
        'task = "toy_task"\nmodel = "toy_model"\ntrainer = "toy_trainer"\n'
        '[[probes]]\nname = "buggy_probe"\nvalue = -1\n'
    )
    monkeypatch.delenv("MECHSCOPE_DEBUG", raising=False)
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"mechscope: error: unexpected TypeError in 'mechscope run {path}': a plugin bug"
    )
    assert "--traceback or MECHSCOPE_DEBUG=1" in error
    assert "\n" not in error
    with pytest.raises(TypeError, match="a plugin bug"):
        main(["--traceback", "run", str(path)])
    monkeypatch.setenv("MECHSCOPE_DEBUG", "1")
    with pytest.raises(TypeError, match="a plugin bug"):
        main(["run", str(path)])
