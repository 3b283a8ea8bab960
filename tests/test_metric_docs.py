"""Each probe page's metrics table is generated from the probe's declarations and kept current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mechscope

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "probes" / "make_metric_tables.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_metric_tables", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_pages_list_exactly_the_declared_metrics():
    generator = load_generator()
    for probe in generator.PROBES:
        path, expected = generator.updated_page(probe)
        assert path.read_text() == expected, (
            f"{path.name} is out of date: run python docs/probes/make_metric_tables.py"
        )
        entry = mechscope.get_registry().get("probe", probe)
        declared = entry.build(entry.validate({})).metrics()
        section = expected.split(generator.BEGIN, 1)[1].split(generator.END, 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        listed = [row.split("`")[1] for row in rows]
        assert listed == [m.name for m in declared if m.kind == "metric"] + [
            m.name for m in declared if m.kind == "setting"
        ]


def test_a_stale_page_is_detected(tmp_path, monkeypatch):
    generator = load_generator()
    page = tmp_path / "jpca.md"
    page.write_text("# jpca\n")
    monkeypatch.setattr(generator, "HERE", tmp_path)
    monkeypatch.setattr(generator, "PROBES", ("jpca",))
    assert generator.main(["--check"]) == 1, "a page without its table is stale"
    assert generator.main([]) == 0
    assert "| `r2_skew` |" in page.read_text()
    assert generator.main(["--check"]) == 0
