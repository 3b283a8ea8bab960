"""registry.toml matches what the first-party entry points actually register."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import mechscope
from mechscope.catalog import Catalog, load_catalog
from mechscope.config import ComponentSpec
from mechscope.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def first_party_entry_points():
    return {
        ep.name: ep
        for ep in importlib.metadata.entry_points(group="mechscope")
        if ep.dist is not None and ep.dist.name == "mechscope"
    }


def test_repository_file_is_the_installed_catalog():
    raw = tomllib.loads((ROOT / "registry.toml").read_text())
    assert Catalog.model_validate(raw) == load_catalog()


def test_catalog_lists_every_first_party_plugin_and_its_module():
    catalog = load_catalog()
    entry_points = first_party_entry_points()
    assert set(catalog.plugins) == set(entry_points)
    for name, plugin in catalog.plugins.items():
        assert entry_points[name].value == plugin.module


def test_catalog_components_match_registrations():
    manager = mechscope.get_plugin_manager()
    assert not [f for f in manager.failures if f.distribution == "mechscope"]
    for name, plugin in load_catalog().plugins.items():
        registered = {
            (entry.kind, entry.name) for entry in manager.registry.entries() if entry.plugin == name
        }
        assert registered == plugin.components(), f"registry.toml is out of date for '{name}'"


def test_presets_validate_against_their_components():
    registry = mechscope.get_registry()
    for name, preset in load_catalog().presets.items():
        spec = ComponentSpec.parse(preset.kind, {"preset": name})
        entry, config = registry.resolve(spec)
        assert entry.name == preset.component
        for field, value in preset.params.items():
            assert getattr(config, field) == (tuple(value) if isinstance(value, list) else value)


def test_unknown_preset_is_a_one_line_error():
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        mechscope.get_registry().resolve(ComponentSpec.parse("model", {"preset": "nope"}))


def test_invalid_catalog_is_rejected(tmp_path):
    bad = tmp_path / "registry.toml"
    bad.write_text('[plugins.x]\nmodule = "m"\ndescription = "d"\nmodelz = ["a"]\n')
    with pytest.raises(ConfigError, match="unknown field 'plugins.x.modelz'"):
        load_catalog(bad)
