"""The documentation covers the plugin API."""

from __future__ import annotations

import inspect
from pathlib import Path

from mechscope import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def hookspec_names():
    return [
        name
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("mechscope_") and hasattr(function, "mechscope_spec")
    ]


def test_every_hookspec_is_documented():
    names = hookspec_names()
    assert len(names) >= 11  # five registration hooks and six lifecycle hooks
    page = (DOCS / "reference" / "hooks.md").read_text()
    missing = [name for name in names if f"::: mechscope.hookspecs.{name}" not in page]
    assert not missing, f"hooks missing from docs/reference/hooks.md: {missing}"


def test_every_hookspec_has_args_docstring():
    for name in hookspec_names():
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Args:" in doc, f"{name} needs an Args: section"
