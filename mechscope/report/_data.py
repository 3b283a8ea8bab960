"""What the report shows, computed from the store: column meanings, curves and run facts.

Nothing here draws or writes HTML, so each quantity the page shows can be checked against an
independent computation from the stored runs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from mechscope.config import ComponentSpec
from mechscope.errors import MechscopeError, StoreError
from mechscope.plugins import Registry
from mechscope.probe import Metric, declared_columns
from mechscope.stats import CONFIDENCE, MIN_N_FOR_CI, RESAMPLES
from mechscope.store import RunHeader, RunStore

#: Fewest networks a CI is drawn or printed for: a bootstrap over two values only says
#: which of the two is larger, so the report shows the mean alone below this.

#: Columns every suite table starts with, and what they are.
RUN_COLUMNS = {
    "variant": "the variant's label: the varied settings of this run",
    "seed": "the random seed (initial weights, training trials, probe noise)",
    "run_id": "the run's content hash (its directory in the store)",
    "status": "completed, diverged (a value became NaN or Inf), stopped, failed or missing",
    "reason": "why training ended, in words (for a diverged run: at which step, and what)",
    "probes": "the probes run on this network, in order",
}
#: Timing columns (``time.<stage>``) the store writes.
TIMING_COLUMNS = {
    "time.train_s": "seconds spent training (seeds trained together each record the joint time)",
    "time.probes_s": "seconds spent running the probes",
}

Role = Literal["run", "varied", "config", "metric", "setting", "undeclared", "timing"]


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a suite's table, as the glossary explains it.

    Attributes:
        name: the column's name in the table.
        role: ``run`` (identity), ``varied`` or ``config`` (a setting of the experiment),
            ``metric`` (a declared measurement), ``setting`` (a value a probe used, declared
            as such), ``undeclared`` (a probe column without a declaration) or ``timing``.
        meaning: one line saying what it is; empty when nobody declared it.
        unit: its unit, if any.
        direction: what a larger value means, if anything.
    """

    name: str
    role: Role
    meaning: str = ""
    unit: str = ""
    direction: str = ""

    @property
    def is_finding(self) -> bool:
        """Whether the column is a measurement (declared or not), not a setting or identity."""
        return self.role in ("metric", "undeclared")


def varied_paths(definition: Mapping[str, Any]) -> list[str]:
    """The dotted paths a suite record's ``vary`` (a table or a list of tables) varies."""
    vary = definition.get("vary") or {}
    tables = [vary] if isinstance(vary, Mapping) else list(vary)
    return list(dict.fromkeys(path for table in tables for path in table))


def declarations(
    headers: Iterable[RunHeader], registry: Registry
) -> tuple[dict[str, Metric], list[str]]:
    """Every column the runs' probes declare (``train.*`` too), rebuilt from stored configs.

    A probe whose plugin is not installed, or whose stored config no longer validates, declares
    nothing here (its columns show as undeclared) and is named in the returned problems.

    Returns:
        Column name → declaration, and one line per probe that could not be rebuilt.
    """
    declared: dict[str, Metric] = {}
    problems: dict[str, str] = {}
    seen: set[str] = set()
    for header in headers:
        for spec in header.config.get("probes", []):
            if not isinstance(spec, Mapping):
                problems[str(spec)] = f"probe entry {spec!r} in a stored config is not a table"
                continue
            params = dict(spec)
            name = str(params.pop("name", ""))
            key = repr(sorted(params.items()))
            if f"{name}:{key}" in seen:
                continue
            seen.add(f"{name}:{key}")
            try:
                entry, config = registry.resolve(
                    ComponentSpec.parse("probe", {"name": name, **params})
                )
                probe = entry.build(config)
                declared.update(declared_columns({name: probe}))
            except Exception as error:  # noqa: BLE001 - a third-party probe may raise anything
                problems[name] = f"probe '{name}': declarations unavailable ({error})"
    if not declared:
        declared.update(declared_columns({}))
    return declared, list(problems.values())


def _config_meaning(column: str, table: pd.DataFrame, registry: Registry) -> str:
    """The config field's description (pydantic ``Field(description=...)``), if it has one."""
    parts = column.split(".")
    if parts[0] == "probes" and len(parts) >= 3:
        kind, names, field = "probe", [parts[1]], parts[2]
    elif parts[0] in ("task", "model", "trainer") and len(parts) >= 2:
        kind, field = parts[0], parts[1]
        if field == "name":
            return f"the registered {kind} component"
        name_column = f"{kind}.name"
        names = list(dict.fromkeys(table[name_column].dropna())) if name_column in table else []
    else:
        return ""
    for name in names:
        try:
            fields = registry.get(kind, str(name)).config_class.model_fields
        except MechscopeError:
            continue
        if field in fields:
            description = fields[field].description or f"{kind} '{name}' setting"
            return description if len(parts) <= 2 + (kind == "probe") else f"part of: {description}"
    return f"{kind} setting"


def column_catalog(
    table: pd.DataFrame,
    declared: Mapping[str, Metric],
    registry: Registry,
    varied: Sequence[str] = (),
) -> dict[str, Column]:
    """Every column of `table` with its role and meaning, in the table's order."""
    catalog: dict[str, Column] = {}
    for name in table.columns:
        name = str(name)
        if name in RUN_COLUMNS:
            catalog[name] = Column(name, "run", RUN_COLUMNS[name])
        elif name in declared:
            metric = declared[name]
            role: Role = "setting" if metric.kind == "setting" else "metric"
            catalog[name] = Column(name, role, metric.meaning, metric.unit, metric.direction)
        elif name.startswith("time."):
            meaning = TIMING_COLUMNS.get(name, f"seconds spent in stage '{name[5:]}'")
            catalog[name] = Column(name, "timing", meaning, "s")
        elif name.split(".")[0] in ("task", "model", "trainer", "probes") or name == "seed":
            role = "varied" if name in varied else "config"
            catalog[name] = Column(name, role, _config_meaning(name, table, registry))
        else:
            catalog[name] = Column(name, "undeclared")
    return catalog


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Columns that are one curve per network: ``<probe>.<stem>_<x>`` for several numbers x.

    Probes report a quantity at each level of a sweep as one column per level (e.g.
    ``robustness.r2_input_noise_0.1``); the report draws those as a curve over x.
    """

    probe: str
    stem: str
    xs: tuple[float, ...]
    columns: tuple[str, ...]

    @property
    def label(self) -> str:
        """How the curve is named: the column pattern with ``{x}`` for the level."""
        return f"{self.probe}.{self.stem}_{{x}}"


_LEVEL = re.compile(r"^(?P<stem>.+?)_(?P<x>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$")


def sweeps(columns: Iterable[str], *, minimum: int = 3) -> list[Sweep]:
    """Group ``<probe>.<stem>_<number>`` columns into curves (at least `minimum` levels)."""
    groups: dict[tuple[str, str], dict[float, str]] = {}
    for column in columns:
        probe, _, metric = column.partition(".")
        match = _LEVEL.match(metric)
        if not probe or not match:
            continue
        groups.setdefault((probe, match["stem"]), {})[float(match["x"])] = column
    found = []
    for (probe, stem), levels in groups.items():
        if len(levels) >= minimum:
            xs = tuple(sorted(levels))
            found.append(Sweep(probe, stem, xs, tuple(levels[x] for x in xs)))
    return found


def mean_and_ci(
    values: np.ndarray, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over networks of each column, with a percentile bootstrap 95% CI over networks.

    Args:
        values: ``[network, point]``; NaN where a network has no value at that point.
        seed: the resampling seed (fixed, so a report is reproducible).

    Returns:
        ``mean``, ``ci_low``, ``ci_high`` and ``n`` (networks with a value), one per point;
        the CI is NaN where fewer than :data:`MIN_N_FOR_CI` networks have a value.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be [network, point], got shape {values.shape}")
    finite = np.isfinite(values)
    n = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(values, axis=0) / np.maximum(n, 1), np.nan)
    low = np.full(values.shape[1], np.nan)
    high = np.full(values.shape[1], np.nan)
    if values.shape[0] >= MIN_N_FOR_CI:
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, values.shape[0], (RESAMPLES, values.shape[0]))
        resampled = values[picks]  # [resample, network, point]
        counts = np.isfinite(resampled).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.nansum(resampled, axis=1) / np.where(counts > 0, counts, np.nan)
        alpha = (1 - CONFIDENCE) / 2
        enough = n >= MIN_N_FOR_CI
        if enough.any():
            low[enough] = np.nanquantile(means[:, enough], alpha, axis=0)
            high[enough] = np.nanquantile(means[:, enough], 1 - alpha, axis=0)
    return mean, low, high, n


def completed(table: pd.DataFrame) -> pd.DataFrame:
    """The completed runs of a suite table."""
    return table[table["status"] == "completed"] if "status" in table else table


def variants_of(table: pd.DataFrame) -> list[str]:
    """The table's variants in their order of appearance."""
    return [str(v) for v in dict.fromkeys(table["variant"])] if "variant" in table else []


def learning_curves(
    runs: RunStore, table: pd.DataFrame, quantities: Sequence[str] = ("loss", "r2")
) -> pd.DataFrame:
    """Training histories per variant: mean and 95% CI over its completed networks per step.

    Histories are aligned on their ``step`` values (a network that stopped early simply has
    no value at later steps); a history without ``step`` counts evaluations from 1.

    Returns:
        Columns ``variant, quantity, step, n, mean, ci_low, ci_high``.
    """
    rows = []
    done = completed(table)
    for variant in variants_of(done):
        histories = []
        for run_id in done.loc[done["variant"].astype(str) == variant, "run_id"]:
            try:
                histories.append(runs.read_history(str(run_id)))
            except StoreError:
                continue
        for quantity in quantities:
            series = []
            for history in histories:
                if quantity not in history or not len(history[quantity]):
                    continue
                values = np.asarray(history[quantity], float).ravel()
                steps = np.asarray(history.get("step", np.arange(1, len(values) + 1)), float)
                series.append(dict(zip(steps.ravel()[: len(values)], values, strict=False)))
            if not series:
                continue
            steps = sorted({step for curve in series for step in curve})
            grid = np.array([[curve.get(step, np.nan) for step in steps] for curve in series])
            mean, low, high, n = mean_and_ci(grid)
            rows += [
                {
                    "variant": variant,
                    "quantity": quantity,
                    "step": step,
                    "n": int(n[i]),
                    "mean": mean[i],
                    "ci_low": low[i],
                    "ci_high": high[i],
                }
                for i, step in enumerate(steps)
            ]
    return pd.DataFrame(
        rows, columns=["variant", "quantity", "step", "n", "mean", "ci_low", "ci_high"]
    )


def sweep_curves(table: pd.DataFrame, found: Sequence[Sweep]) -> pd.DataFrame:
    """Each sweep per variant: mean and 95% CI over completed networks at each level.

    Returns:
        Columns ``curve, variant, x, n, mean, ci_low, ci_high``.
    """
    rows = []
    done = completed(table)
    for sweep in found:
        for variant in variants_of(done):
            frame = done[done["variant"].astype(str) == variant]
            grid = frame[list(sweep.columns)].to_numpy(dtype=float)
            if not len(grid):
                continue
            mean, low, high, n = mean_and_ci(grid)
            rows += [
                {
                    "curve": sweep.label,
                    "variant": variant,
                    "x": x,
                    "n": int(n[i]),
                    "mean": mean[i],
                    "ci_low": low[i],
                    "ci_high": high[i],
                }
                for i, x in enumerate(sweep.xs)
            ]
    return pd.DataFrame(rows, columns=["curve", "variant", "x", "n", "mean", "ci_low", "ci_high"])


def representatives(table: pd.DataFrame) -> dict[str, list[str]]:
    """Per variant, its completed run ids with the representative network first.

    The representative is the network of median final R² (``train.r2``; the median final
    loss without it; the lower middle one for an even count), so the figures shown are
    neither the best nor the worst network of the variant.
    """
    chosen: dict[str, list[str]] = {}
    done = completed(table)
    for variant in variants_of(done):
        frame = done[done["variant"].astype(str) == variant].sort_values("seed", kind="stable")
        ids = [str(r) for r in frame["run_id"]]
        order = ids
        for column, ascending in (("train.r2", False), ("train.loss", True)):
            if column in frame and np.isfinite(frame[column].to_numpy(dtype=float)).any():
                ranked = frame.sort_values(column, ascending=ascending, kind="stable")
                order = [str(r) for r in ranked["run_id"]]
                break
        middle = order[(len(order) - 1) // 2] if order else None
        chosen[variant] = [middle, *[r for r in ids if r != middle]] if middle else []
    return chosen


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What the report's header says about the runs it shows.

    Attributes:
        runs: how many runs the report shows.
        compute_s: training plus probing seconds summed over them (a joint fit's time is
            shared among the seeds trained together when the header says how many).
        cached: stored runs that the last ``mechscope run`` of every suite listing them loaded
            from the store; None when no suite record says.
        computed: stored runs that the last run of some suite listing them computed.
        unrecorded: runs shown that no suite record with this information lists.
        mechscope_versions, devices, hosts, platforms: the distinct values the run headers
            record ("unknown" for runs that do not).
    """

    runs: int
    compute_s: float
    cached: int | None
    computed: int | None
    unrecorded: int
    mechscope_versions: tuple[str, ...]
    devices: tuple[str, ...]
    hosts: tuple[str, ...]
    platforms: tuple[str, ...]


def loaded_by_suites(records: Iterable[Any]) -> dict[str, bool] | None:
    """Run id → whether the last run of every suite listing it loaded it from the store.

    Only suite records that kept this (``cached``) count; None when none did.
    """
    loaded: dict[str, bool] = {}
    recorded = False
    for record in records:
        cached = getattr(record, "cached", None)
        if cached is None:
            continue
        recorded = True
        for run in record.runs:
            loaded[run.run_id] = loaded.get(run.run_id, True) and run.run_id in cached
    return loaded if recorded else None


def _environment(header: RunHeader) -> dict[str, Any]:
    # ``environment`` is recorded by newer stores; older headers have none.
    environment = getattr(header, "environment", None)
    if hasattr(environment, "model_dump"):
        environment = environment.model_dump()  # pyright: ignore[reportOptionalMemberAccess]
    return dict(environment) if isinstance(environment, Mapping) else {}


def run_seconds(header: RunHeader) -> float:
    """The compute time one run accounts for: its share of training plus its probing."""
    timings = header.timings
    train = timings.get("train_s")
    probes = timings.get("probes_s")
    jointly = getattr(header, "trained_jointly_with", None)
    share = max(int(jointly), 1) if isinstance(jointly, int | float) and jointly else 1
    total = 0.0
    if train is not None and math.isfinite(train):
        total += train / share
    if probes is not None and math.isfinite(probes):
        total += probes
    return total


def run_facts(
    headers: Sequence[RunHeader], loaded: Mapping[str, bool] | None, shown: Sequence[str]
) -> RunFacts:
    """The header's facts over the runs shown (`loaded`: :func:`loaded_by_suites`)."""

    def distinct(field: str) -> tuple[str, ...]:
        values = [str(_environment(h).get(field) or "unknown") for h in headers]
        return tuple(dict.fromkeys(values)) or ("unknown",)

    stored = {h.run_id for h in headers}
    cached = computed = None
    unrecorded = len(shown)
    if loaded is not None:
        cached = sum(1 for r in shown if r in stored and loaded.get(r) is True)
        computed = sum(1 for r in shown if r in stored and loaded.get(r) is False)
        unrecorded = sum(1 for r in shown if r not in loaded)
    return RunFacts(
        runs=len(shown),
        compute_s=float(sum(run_seconds(h) for h in headers)),
        cached=cached,
        computed=computed,
        unrecorded=unrecorded,
        mechscope_versions=distinct("mechscope_version"),
        devices=distinct("device"),
        hosts=distinct("host"),
        platforms=distinct("platform"),
    )
