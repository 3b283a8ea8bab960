"""Tables and a self-contained HTML report over a store of finished runs."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from mechscope.errors import StoreError
from mechscope.store import verify_manifest


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = value


def stored_runs(store: str | Path) -> list[Path]:
    """Directories of complete, uncorrupted runs in `store` (others are skipped)."""
    store = Path(store)
    if not store.is_dir():
        raise StoreError(f"{store}: no such run store")
    runs = []
    for directory in sorted(store.iterdir()):
        if directory.name.startswith(".") or not (directory / "experiment.json").exists():
            continue
        try:
            verify_manifest(directory)
        except StoreError:
            continue
        runs.append(directory)
    return runs


def runs_table(store: str | Path) -> pd.DataFrame:
    """One row per stored run: id, status, config columns (dotted) and every probe metric."""
    rows = []
    for directory in stored_runs(store):
        header = json.loads((directory / "experiment.json").read_text())
        row: dict[str, Any] = {"run_id": header["run_id"], "status": header["status"]}
        config = dict(header["config"])
        config["probes"] = [p["name"] for p in config.get("probes", [])]
        _flatten("", config, row)
        for probe in header["probes"]:
            metrics = json.loads((directory / "probes" / probe / "metrics.json").read_text())
            for name, value in metrics.items():
                row[f"{probe}.{name}"] = math.nan if value is None else value
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(store: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` (self-contained, figures inlined) and ``runs.csv``.

    Returns:
        The path of the HTML page.
    """
    store = Path(store)
    out = Path(out) if out is not None else store / "report"
    table = runs_table(store)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "runs.csv", index=False)
    sections = []
    for directory in stored_runs(store):
        header = json.loads((directory / "experiment.json").read_text())
        images = []
        for probe in header["probes"]:
            for png in sorted((directory / "probes" / probe).glob("*.png")):
                data = base64.b64encode(png.read_bytes()).decode()
                caption = html.escape(f"{probe}: {png.stem}")
                images.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
        errors = "".join(
            f"<p class=error>probe {html.escape(k)} failed: {html.escape(v)}</p>"
            for k, v in header.get("probe_errors", {}).items()
        )
        sections.append(
            f"<section><h2>run {header['run_id']} ({html.escape(header['status'])})</h2>"
            f"<details><summary>config</summary><pre>"
            f"{html.escape(json.dumps(header['config'], indent=1))}</pre></details>"
            f"{errors}{''.join(images)}</section>"
        )
    page = (
        "<!doctype html><html><head><meta charset=utf-8><title>mechscope report</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
        "padding:2px 6px}figure{display:inline-block;margin:6px}img{max-width:380px}"
        ".error{color:#b00}</style></head><body><h1>mechscope report</h1>"
        f"<p>{len(table)} runs from {html.escape(str(store))}</p>"
        f"{table.to_html(index=False, float_format=lambda v: f'{v:.4g}', na_rep='')}"
        f"{''.join(sections)}</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path
