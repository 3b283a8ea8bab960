"""Plugin discovery: entry points, failures, disabling, duplicates, unknown names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import mechscope
import mechscope.experiment
from mechscope.errors import DuplicateComponentError, PluginLoadError, UnknownComponentError
from mechscope.plugins import ComponentEntry, PluginManager, Registry

from .toys import ToyPlugin, ToyTaskConfig

GOOD_PLUGIN = '''
import mechscope
import mechscope.experiment

class FakeConfig(mechscope.Config):
    """A fake task from a fake distribution."""

@mechscope.hookimpl
def mechscope_register_tasks(register):
    register("{name}", FakeConfig, lambda config: None)
'''


def make_distribution(root, name, plugins):
    """Write an installed-looking distribution with `mechscope` entry points onto `root`."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{ep} = {module}" for ep, (module, _) in plugins.items())
    (info / "entry_points.txt").write_text(f"[mechscope]\n{lines}\n")
    for module, source in plugins.values():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    make_distribution(
        tmp_path,
        "fakedist",
        {
            "broken": ("fake_broken_plugin", "raise ImportError('missing dependency: nope')\n"),
            "good": ("fake_good_plugin", GOOD_PLUGIN.format(name="fake_task")),
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_broken_plugin_is_reported_and_others_load(fake_site):
    manager = PluginManager()
    manager.load_entry_points(disabled=[])
    failures = {f.plugin: f for f in manager.failures}
    assert set(failures) == {"broken"}
    assert failures["broken"].distribution == "fakedist"
    assert "ImportError: missing dependency: nope" in failures["broken"].error
    fake = manager.registry.get("task", "fake_task")
    assert (fake.distribution, fake.version, fake.plugin) == ("fakedist", "1.0", "good")
    assert fake.description == "A fake task from a fake distribution."
    local = manager.registry.get("executor", "local")
    assert local.distribution == "mechscope"


@pytest.mark.parametrize("blocked", ["good", "fake_good_plugin", "fakedist"])
def test_disable_by_entry_point_module_or_distribution(fake_site, monkeypatch, blocked):
    monkeypatch.setenv("MECHSCOPE_DISABLE_PLUGINS", f" {blocked} ,other")
    manager = PluginManager()
    manager.load_entry_points()
    assert "fake_task" not in manager.registry.names("task")
    assert "local" in manager.registry.names("executor")


def test_duplicate_names_name_both_distributions(tmp_path, monkeypatch):
    make_distribution(
        tmp_path, "rivaldist", {"rival": ("rival_plugin", GOOD_PLUGIN.format(name="shared_name"))}
    )
    other = tmp_path / "other"
    other.mkdir()
    make_distribution(
        other, "otherdist", {"other": ("other_plugin", GOOD_PLUGIN.format(name="shared_name"))}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(other))
    manager = PluginManager()
    with pytest.raises(DuplicateComponentError) as caught:
        manager.load_entry_points(disabled=[])
    message = str(caught.value)
    assert "task 'shared_name' is registered twice" in message
    assert "'rivaldist'" in message and "'otherdist'" in message


def test_registry_unknown_name_lists_and_suggests():
    registry = Registry()
    for name in ("delayed_reach", "target_switch"):
        registry.add(ComponentEntry("task", name, ToyTaskConfig, object, "p", "d", "1", ""))
    with pytest.raises(UnknownComponentError) as caught:
        registry.get("task", "delayed_raech")
    message = str(caught.value)
    assert message == (
        "unknown task 'delayed_raech' (did you mean 'delayed_reach'?); registered tasks: "
        "delayed_reach, target_switch"
    )
    with pytest.raises(UnknownComponentError, match="registered models: none"):
        registry.get("model", "ctrnn")


def test_register_rejects_non_config_classes_and_keeps_other_plugins():
    class BadPlugin:
        @mechscope.hookimpl
        def mechscope_register_models(self, register):
            register("bad", dict, lambda c: c)

    manager = PluginManager()
    manager.register(ToyPlugin(), name="toys")
    with pytest.raises(PluginLoadError, match="must subclass mechscope.Config"):
        manager.register(BadPlugin(), name="bad")
    assert "bad" not in manager.registry.names("model")
    assert manager.registry.names("model") == ["toy_model"]
    assert "bad" not in manager.plugin_names()


def test_unregister_removes_components():
    manager = PluginManager()
    manager.register(ToyPlugin(), name="toys")
    manager.unregister("toys")
    assert manager.registry.entries() == []


def test_cli_lists_broken_plugin_and_components(fake_site):
    environment = {**os.environ, "PYTHONPATH": str(fake_site)}
    environment.pop("MECHSCOPE_DISABLE_PLUGINS", None)
    completed = subprocess.run(
        [sys.executable, "-m", "mechscope.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    listing = json.loads(completed.stdout)
    by_name = {(item["kind"], item["name"]): item for item in listing}
    assert by_name[("task", "fake_task")]["distribution"] == "fakedist"
    assert by_name[("executor", "local")]["distribution"] == "mechscope"
    assert "missing dependency" in by_name[("load_error", "broken")]["error"]
    for item in listing:
        assert set(item) >= {"kind", "name", "distribution", "version", "description"}


class _DefaultTrainer:
    def __init__(self, name):
        self.name = name

    @mechscope.hookimpl
    def mechscope_register_trainers(self, register):
        from .toys import ToyTrainer, ToyTrainerConfig

        register(self.name, ToyTrainerConfig, ToyTrainer, default=True)


def test_defaults_come_from_the_plugins_not_the_core():
    installed = PluginManager()
    installed.load_entry_points(disabled=[])
    assert installed.registry.default("trainer") == "bptt"
    assert installed.registry.default("executor") == "local"

    manager = PluginManager()
    manager.register(ToyPlugin(), name="toys")
    with pytest.raises(
        mechscope.ConfigError, match="no default trainer is registered.*toy_trainer"
    ):
        mechscope.experiment.Experiment(task="toy_task", model="toy_model", plugins=manager)
    manager.register(_DefaultTrainer("first"), name="first")
    experiment = mechscope.experiment.Experiment(
        task="toy_task", model="toy_model", plugins=manager
    )
    assert experiment.config["trainer"]["name"] == "first"
    manager.register(_DefaultTrainer("second"), name="second")
    with pytest.raises(mechscope.ConfigError, match="several plugins.*'first'.*'second'"):
        manager.registry.default("trainer")


@pytest.fixture
def exiting_site(tmp_path, monkeypatch):
    """A plugin that calls sys.exit() on import, one whose import fails, and a good one."""
    make_distribution(
        tmp_path,
        "exitdist",
        {
            "exiting": ("fake_exiting_plugin", "import sys\nsys.exit(3)\n"),
            "h6": ("fake_h6_plugin", "raise ImportError('needs h6py')\n"),
            "good": ("fake_good_plugin", GOOD_PLUGIN.format(name="fake_task")),
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_plugin_calling_sys_exit_is_isolated_like_any_failure(exiting_site):
    manager = PluginManager()
    manager.load_entry_points(disabled=[])
    failures = {f.plugin: f.error for f in manager.failures}
    assert set(failures) == {"exiting", "h6"}
    assert failures["exiting"] == "SystemExit: the plugin called sys.exit(3) while loading"
    assert failures["h6"] == "ImportError: needs h6py"
    assert "fake_task" in manager.registry.names("task")
    assert "bptt" in manager.registry.names("trainer")


def test_a_registration_hook_calling_sys_exit_is_isolated():
    class Exiting:
        @mechscope.hookimpl
        def mechscope_register_models(self, register):
            raise SystemExit("no")

    manager = PluginManager()
    manager.register(ToyPlugin(), name="toys")
    with pytest.raises(PluginLoadError, match="plugin 'exiting' failed to register: SystemExit"):
        manager.register(Exiting(), name="exiting")
    assert manager.registry.names("model") == ["toy_model"]


def test_unknown_name_mentions_every_plugin_that_failed_to_load(exiting_site):
    manager = PluginManager()
    manager.load_entry_points(disabled=[])
    with pytest.raises(UnknownComponentError) as caught:
        manager.registry.get("task", "h6_task")
    message = str(caught.value)
    assert message.startswith("unknown task 'h6_task'")
    assert "plugin 'h6' failed to load: ImportError: needs h6py" in message
    assert "plugin 'exiting' failed to load: SystemExit" in message
    assert "\n" not in message
    # Without failures, nothing is added (negative control).
    clean = PluginManager()
    clean.register(ToyPlugin(), name="toys")
    with pytest.raises(UnknownComponentError) as caught:
        clean.registry.get("task", "h6_task")
    assert "failed to load" not in str(caught.value)


def test_cli_plugins_survives_sys_exit_and_names_the_plugin(exiting_site, capsys):
    from mechscope.cli import main
    from mechscope.plugins import reset_plugins

    reset_plugins()
    try:
        assert main(["plugins"]) == 0
    finally:
        reset_plugins()  # the next test loads the real entry points again
    captured = capsys.readouterr()
    listed = {tuple(line.split()[:2]) for line in captured.out.splitlines()}
    assert {("task", "fake_task"), ("trainer", "bptt"), ("executor", "local")} <= listed
    assert "FAILED    exiting: SystemExit" in captured.err
    assert "FAILED    h6: ImportError: needs h6py" in captured.err
