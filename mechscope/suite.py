"""Comparison suites: a base experiment, a grid of variants and several seeds.

A suite expands to one :class:`~mechscope.experiment.Experiment` per (variant, seed), validates
all of them before anything trains, runs the missing ones on an executor, and returns a tidy
table (one row per run: status, config columns, every probe metric). Finished runs live in the
store and are reused; failed ones are recorded and redone next time.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mechscope.config import (
    PROBES_EXAMPLE,
    SEED_LIMIT,
    ComponentSpec,
    canonical_json,
    check_keys,
    validate_list,
    validate_seed,
)
from mechscope.errors import ConfigError, MechscopeError, close_matches
from mechscope.executor import AbstractExecutor
from mechscope.experiment import (
    DEFAULT_STORE,
    Experiment,
    ExperimentResult,
    RunFailure,
    compilation_cache_directory,
    read_toml,
    run_experiments,
    use_compilation_cache,
)
from mechscope.pairwise import (
    compare_runs,
    read_suite_pairs,
    represent_stored,
    resolve_comparisons,
)
from mechscope.plugins import PluginManager, Registry, get_plugin_manager
from mechscope.probe import Metric, declared_columns
from mechscope.progress import SuiteProgress
from mechscope.store import (
    RunStore,
    SuiteRecord,
    SuiteRun,
    atomic_write_parquet,
    cell,
    config_columns,
)

_SUITE_KEYS = (
    "comparisons",
    "name",
    "description",
    "base",
    "vary",
    "seeds",
    "executor",
    "statistics",
    "claims",
)
_COMPONENTS = ("task", "model", "trainer")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One point of the grid: its label and the dotted-path values that define it."""

    label: str
    values: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One (variant, seed) run of a suite."""

    variant: Variant
    seed: int
    experiment: Experiment

    @property
    def run_id(self) -> str:
        """The run's content hash."""
        return self.experiment.run_id

    @property
    def record(self) -> SuiteRun:
        """The run as the suite's record lists it."""
        return SuiteRun(
            run_id=self.run_id,
            variant=self.variant.label,
            seed=self.seed,
            values=dict(self.variant.values),
        )


class Suite:
    """Variants × seeds of one base experiment.

    Args:
        base: the experiment without its seed: ``{"task": ..., "model": ..., "trainer": ...,
            "probes": [...]}`` (each component as a name or a table).
        vary: dotted path → values, e.g. ``{"model.activation": ["tanh", "relu"]}``. Paths
            start with ``task``, ``model`` or ``trainer`` (a config field, or ``name`` to swap
            the component) or ``probes.<probe name>``. The grid is their Cartesian product.
            A list of such tables is the union of several grids (variants that two grids
            share run once).
        seeds: a number of seeds (``3`` means 0, 1, 2) or an explicit list.
        name: the suite's name (used for its record in the store and the report).
        description: free text shown in the report.
        executor: default executor (name or table) for :meth:`run`; None means the one a
            plugin registers as the default (``local``, in-process).
        statistics: options for the report: ``compare`` (metrics tested between variants)
            and ``correlate`` (pairs of metrics correlated across networks).
        claims: hypotheses the report tests (see :mod:`mechscope.claims`), each a table with
            ``kind`` (differs, greater, similar, correlates, exceeds), ``title`` and its fields.
        plugins: the plugin manager (default: the process-wide one).

    Raises:
        ConfigError: for an empty grid, an unknown path, or any invalid experiment — before
            anything runs.
    """

    def __init__(
        self,
        *,
        base: Mapping[str, Any],
        vary: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]] | None = None,
        seeds: int | Sequence[int] = 3,
        name: str = "suite",
        description: str = "",
        executor: Any = None,
        statistics: Mapping[str, Any] | None = None,
        claims: Sequence[Mapping[str, Any]] = (),
        comparisons: Sequence[Any] = (),
        plugins: PluginManager | None = None,
    ) -> None:
        from mechscope.claims import parse_claims

        self.plugins = plugins or get_plugin_manager()
        self.name = validate_suite_name(name)
        self.description = description
        self.executor = executor
        self.statistics = dict(statistics or {})
        check_keys(self.statistics, ("compare", "correlate"), where="statistics")
        parse_claims(claims)
        self.claims = [dict(c) for c in claims]
        if "seed" in base:
            raise ConfigError("suite base must not set 'seed'; use the suite's 'seeds'")
        self.base = _normalise_base(base, self.plugins.registry)
        tables = [vary or {}] if isinstance(vary, Mapping | None) else list(vary)
        if not tables:
            raise ConfigError("vary is an empty list: give at least one grid")
        self.grids = []
        for table in tables:
            if not isinstance(table, Mapping):
                raise ConfigError(f"vary must be a table or a list of tables, got {table!r}")
            grid = {str(path): _vary_values(str(path), values) for path, values in table.items()}
            for path in grid:
                self._check_path(path)
            self.grids.append(grid)
        self.vary_definition = tables[0] if isinstance(vary, Mapping | None) else tables
        self.seeds = _seeds(seeds)
        self.runs = self._plan()
        probes = [p["name"] for p in self.runs[0].experiment.config["probes"]]
        self.comparisons = resolve_comparisons(comparisons, self.plugins.registry, probes=probes)
        self._check_mechanism_claims()
        self._check_metric_names()

    def _check_mechanism_claims(self) -> None:
        """Mechanism claims must name a comparison the suite runs, and one of its metrics."""
        from mechscope.claims import MECHANISM_CLAIMS, parse_claims

        metrics = {c.name: list(c.build().metrics) for c in self.comparisons}
        for claim in parse_claims(self.claims):
            if not isinstance(claim, MECHANISM_CLAIMS):
                continue
            if claim.comparison not in metrics:
                raise ConfigError(
                    f"claim '{claim.title}': comparison '{claim.comparison}' is not in the "
                    f"suite's [[comparisons]] ({', '.join(metrics) or 'none'})"
                )
            known = metrics[claim.comparison]
            if known and claim.metric not in known:
                raise ConfigError(
                    f"claim '{claim.title}': comparison '{claim.comparison}' has no metric "
                    f"'{claim.metric}'{close_matches(claim.metric, known)}; it has "
                    f"{', '.join(known)}"
                )

    def _check_metric_names(self) -> None:
        """Every column ``statistics`` and the claims name must exist, before anything trains.

        Metric names are checked against what the variants' probes declare
        (:func:`~mechscope.probe.declared_columns`); a probe that declares nothing leaves its
        names unchecked. Claims group and filter by varied paths, ``variant`` or config
        columns.

        Raises:
            ConfigError: naming the unknown column and what its probe does declare.
        """
        from mechscope.claims import named_columns, parse_claims

        declared: dict[str, Metric] = {}
        unchecked = {"time"}  # timings, and probes that declare nothing
        config: set[str] = {"variant", "seed", "run_id", "status", "reason", *self.vary}
        for planned in {run.variant.label: run for run in self.runs}.values():
            built = planned.experiment.build_probes()
            declared.update(declared_columns(built))
            unchecked.update(name for name, probe in built.items() if not probe.metrics())
            config.update(config_columns(planned.experiment.config))
        prefixes = {column.split(".", 1)[0] for column in declared}

        def check(column: Any, where: str, *, settings_too: bool = False) -> None:
            column = str(column)
            prefix = column.split(".", 1)[0]
            if column in declared:
                if declared[column].kind == "setting" and not settings_too:
                    raise ConfigError(
                        f"{where}: '{column}' is a setting, not a metric "
                        f"({declared[column].meaning})"
                    )
                return
            if prefix in unchecked or (settings_too and column in config):
                return
            if prefix not in prefixes:
                probes = sorted((prefixes | unchecked) - {"train", "time"})
                raise ConfigError(
                    f"{where}: '{column}' names no probe of the suite"
                    f"{close_matches(column, declared)}; columns are train.loss, train.r2 "
                    f"or <probe>.<metric> with probes {', '.join(probes) or 'none'}"
                )
            known = [
                name
                for name, metric in declared.items()
                if metric.kind == "metric" and name.startswith(f"{prefix}.")
            ]
            owner = "training" if prefix == "train" else f"probe '{prefix}'"
            raise ConfigError(
                f"{where}: {owner} declares no metric '{column}'"
                f"{close_matches(column, known)}; it declares "
                f"{', '.join(name.split('.', 1)[1] for name in known)}"
            )

        compare = self.statistics.get("compare", [])
        if not isinstance(compare, list | tuple) or not all(isinstance(c, str) for c in compare):
            raise ConfigError(
                f'statistics.compare = {compare!r}: expected a list of columns, ["jpca.r2_skew"]'
            )
        for column in compare:
            check(column, "statistics.compare")
        correlate = self.statistics.get("correlate", [])
        if not isinstance(correlate, list | tuple):
            raise ConfigError(f"statistics.correlate = {correlate!r}: expected a list of [x, y]")
        for pair in correlate:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ConfigError(f"statistics.correlate: {pair!r} is not a pair [x, y]")
            for column in pair:
                # Correlating a metric with a setting of the run (a gain, say) is legitimate.
                check(column, "statistics.correlate", settings_too=True)
        for claim in parse_claims(self.claims):
            metrics, groupings = named_columns(claim)
            for column in metrics:
                check(column, f"claim '{claim.title}'")
            for column in groupings:
                if column not in config:
                    options = sorted(c for c in config if not c.startswith("probes"))
                    raise ConfigError(
                        f"claim '{claim.title}': no column '{column}' to group or filter by"
                        f"{close_matches(column, options)}; use a varied path "
                        f"({', '.join(self.vary) or 'none'}), 'variant' or a config column"
                    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "suite", **kwargs: Any) -> Suite:
        """Build from the mapping a suite TOML file holds."""
        check_keys(data, _SUITE_KEYS, where=source)
        if "base" not in data:
            raise ConfigError(f"{source}: missing [base] table (the experiment to vary)")
        _check_suite_types(data, source=source)
        arguments = {k: data[k] for k in _SUITE_KEYS if k in data}
        # A file name may hold characters a suite name may not (spaces): those become '-'.
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(source).stem).lstrip(".")
        arguments.setdefault("name", stem if source != "suite" and stem else "suite")
        return cls(**arguments, **kwargs)

    @classmethod
    def from_toml(cls, path: str | Path, **kwargs: Any) -> Suite:
        """Read a suite TOML file ([base], [vary], seeds, ...)."""
        return cls.from_dict(read_toml(path), source=str(path), **kwargs)

    @property
    def vary(self) -> dict[str, list[Any]]:
        """Every varied path with the values it takes in any grid."""
        merged: dict[str, list[Any]] = {}
        for grid in self.grids:
            for path, values in grid.items():
                merged.setdefault(path, [])
                merged[path] += [v for v in values if v not in merged[path]]
        return merged

    @property
    def variants(self) -> list[Variant]:
        """The grid points, in order; a point two grids share appears once."""
        variants: dict[str, Variant] = {}
        for grid in self.grids:
            paths = list(grid)
            points = itertools.product(*(grid[p] for p in paths)) if paths else [()]
            for point in points:
                values = dict(zip(paths, point, strict=True))
                label = ", ".join(f"{p}={cell(v)}" for p, v in values.items()) or "base"
                variants.setdefault(label, Variant(label=label, values=values))
        return list(variants.values())

    def _check_path(self, path: str) -> None:
        parts = path.split(".")
        head = parts[0]
        if head not in (*_COMPONENTS, "probes"):
            raise ConfigError(
                f"unknown path in vary '{path}'{close_matches(head, (*_COMPONENTS, 'probes'))}: "
                f"paths start with task, model, trainer or probes.<name>"
            )
        if head == "probes":
            if len(parts) != 3:
                raise ConfigError(f"vary path '{path}' must look like probes.<probe>.<field>")
            names = [p["name"] for p in self.base["probes"]]
            if parts[1] not in names:
                raise ConfigError(
                    f"vary path '{path}': probe '{parts[1]}' is not in the base probes "
                    f"({', '.join(names) or 'none'})"
                )
            kind, name, field = "probe", parts[1], parts[2]
        else:
            if len(parts) != 2:
                raise ConfigError(f"vary path '{path}' must look like {head}.<field>")
            kind, name, field = head, self.base[head]["name"], parts[1]
            if field == "name":
                return
        if name.startswith("<preset"):
            return  # the preset's component decides the fields; validation catches typos
        fields = list(self.plugins.registry.get(kind, name).config_class.model_fields)
        if field not in fields:
            prefix = path.rsplit(".", 1)[0]
            hint = close_matches(path, [f"{prefix}.{f}" for f in fields])
            raise ConfigError(
                f"unknown path in vary '{path}'{hint}: {kind} '{name}' has fields "
                f"{', '.join(fields)}"
            )

    def _plan(self) -> list[PlannedRun]:
        runs: dict[str, PlannedRun] = {}
        for variant in self.variants:
            config = _apply(self.base, variant.values)
            experiments = []
            for seed in self.seeds:
                try:
                    experiment = Experiment(**config, seed=seed, plugins=self.plugins)
                except MechscopeError as error:
                    raise ConfigError(f"variant [{variant.label}]: {error}") from None
                experiments.append(experiment)
                # Grids that overlap (e.g. both contain the base settings) share runs.
                runs.setdefault(experiment.run_id, PlannedRun(variant, seed, experiment))
            if len(experiments) > 1:  # the trainer may train a variant's seeds together
                experiments[0].check_memory(
                    n_networks=len(self.seeds),
                    where=f"variant [{variant.label}] ({len(self.seeds)} seeds trained together)",
                )
        return list(runs.values())

    @property
    def definition(self) -> dict[str, Any]:
        """The suite as plain data (what is saved with its runs)."""
        return {
            "name": self.name,
            "description": self.description,
            "base": self.base,
            "vary": self.vary_definition,
            "seeds": self.seeds,
            "statistics": self.statistics,
            "claims": self.claims,
            "comparisons": [c.canonical for c in self.comparisons],
        }

    def run(
        self,
        *,
        executor: Any = None,
        store: str | Path = DEFAULT_STORE,
        force: bool = False,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Run every missing (or failed) run and return the table of all of them.

        Args:
            executor: an executor name, table or instance (default: the suite's, ``local``).
            store: the run store; finished runs there are reused.
            force: recompute every run.
            progress: show an overall progress bar (runs done / total, time left).

        Returns:
            One row per run: ``variant``, ``seed``, ``run_id``, ``status``, ``reason``, the
            varied paths, and every metric (``probe.metric``).
        """
        runs = RunStore(store)
        # One session for every stage: a cluster starts once, when first needed, and is
        # closed when the suite ends, also on an error.
        with self.build_executor(executor).session() as session:
            return self._run(runs, session, force=force, progress=progress)

    def _run(
        self, runs: RunStore, executor: AbstractExecutor, *, force: bool, progress: bool
    ) -> pd.DataFrame:
        """:meth:`run` inside the executor's session."""
        runs.root.mkdir(parents=True, exist_ok=True)
        outcomes: dict[str, dict[str, Any]] = {}
        pending: list[PlannedRun] = []
        for planned in self.runs:
            # Checksums only: loading every stored model just to skip it would be wasted I/O.
            if not force and runs.is_complete(planned.run_id):
                outcomes[planned.run_id] = {"status": "cached"}
            else:
                pending.append(planned)
        groups = self._group(pending, executor)
        cache = compilation_cache_directory(executor.compilation_cache, runs.root)
        run_groups = functools.partial(
            run_configs,
            store=str(runs.root),
            force=force,
            # Only an in-process executor can share this process's plugin manager.
            plugins=self.plugins if executor.in_process else None,
            compilation_cache=None if cache is None else str(cache),
            # Each run's representations are computed where the run is, while it is loaded.
            comparisons=[c.canonical for c in self.comparisons],
        )
        phases = self._progress(len(self.runs) - len(pending)) if progress else None
        # The phase comes from the lifecycle hooks, which fire here only for in-process runs.
        watching = None
        if phases is not None and executor.in_process:
            watching = f"suite-progress-{id(phases)}"
        if watching:
            self.plugins.register(phases, name=watching)
        started = time.perf_counter()
        try:
            units = [[planned.experiment.config for planned in group] for group in groups]
            for outcome in executor.map(run_groups, units):
                group = groups[outcome.index]
                if outcome.ok:
                    for planned, status in zip(group, outcome.value or (), strict=True):
                        outcomes[planned.run_id] = status
                else:
                    for planned in group:
                        outcomes[planned.run_id] = {"status": "failed", "reason": outcome.error}
                if phases is not None:
                    phases.finished(
                        [
                            "cached" if o.get("loaded") else o["status"]
                            for o in (outcomes[planned.run_id] for planned in group)
                        ]
                    )
        finally:
            if watching:
                self.plugins.unregister(watching)
            if phases is not None:
                phases.close()
        cached = [
            run_id
            for run_id, o in outcomes.items()
            if o.get("status") == "cached" or o.get("loaded")
        ]
        runs.write_suite_record(
            self.record(wall_time_s=time.perf_counter() - started, cached=cached)
        )
        table = self.table(runs.root, outcomes)
        if self.comparisons:
            self._compare(runs, table, progress, executor)
        else:  # results of an earlier definition of this suite no longer describe it
            runs.comparisons.suite_pairs_path(self.name).unlink(missing_ok=True)
        return table

    def _progress(self, loaded: int) -> SuiteProgress:
        """The overall bar: runs done of all, the phase of the group computing, cache reuse."""
        labels = {p.run_id: (p.variant.label, p.seed) for p in self.runs}
        return SuiteProgress(labels, total=len(self.runs), loaded=loaded)

    def _compare(
        self, runs: RunStore, table: pd.DataFrame, progress: bool, executor: AbstractExecutor
    ) -> None:
        """The comparison stage: every pair of completed runs, saved beside the suite record."""
        completed = list(table.loc[table["status"] == "completed", "run_id"])
        path = runs.comparisons.suite_pairs_path(self.name)
        if len(completed) < 2:
            warnings.warn(
                f"suite '{self.name}': comparisons skipped: {len(completed)} completed run(s), "
                "at least two are needed",
                stacklevel=3,
            )
            path.unlink(missing_ok=True)
            return
        pairs = compare_runs(
            self.comparisons,
            completed,
            store=runs,
            plugins=self.plugins,
            progress=progress,
            executor=executor,
        )
        atomic_write_parquet(path, pairs)

    def pairs(self, store: str | Path = DEFAULT_STORE) -> pd.DataFrame:
        """The comparison stage's results saved by the last :meth:`run` (long form).

        Columns: ``comparison, run_a, run_b, metric, value``; empty if nothing was compared.
        """
        return read_suite_pairs(RunStore(store), self.name)

    def record(
        self, *, wall_time_s: float | None = None, cached: list[str] | None = None
    ) -> SuiteRecord:
        """The suite's definition and run list, as the store keeps them."""
        return SuiteRecord(
            **self.definition,
            runs=[planned.record for planned in self.runs],
            wall_time_s=wall_time_s,
            cached=cached,
        )

    def table(
        self,
        store: str | Path = DEFAULT_STORE,
        outcomes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> pd.DataFrame:
        """The suite's table from what the store holds (runs not there are ``missing``)."""
        table = RunStore(store).suite_table([planned.record for planned in self.runs], outcomes)
        first = ["variant", "seed", "run_id", "status", "reason", *self.vary]
        return table[first + [c for c in table.columns if c not in first]]

    def build_executor(self, spec: Any = None) -> AbstractExecutor:
        """The executor `spec` names (a name, table or instance); None: the suite's own."""
        spec = spec if spec is not None else self.executor
        if isinstance(spec, AbstractExecutor):
            return spec
        if spec is None:
            spec = self.plugins.registry.default("executor")
        entry, config = self.plugins.registry.resolve(ComponentSpec.parse("executor", spec))
        return entry.build(config)

    def _group(
        self, pending: list[PlannedRun], executor: AbstractExecutor
    ) -> list[list[PlannedRun]]:
        """Seeds of one variant form one unit when the executor trains them together.

        With an executor that runs several items at once, units are split (the largest
        first, in halves) while there are fewer than two per item it runs at once, so no
        worker idles while another trains a whole variant; the largest units come first, so
        they start first. One item at a time (``local``) keeps every variant whole.
        """
        if not executor.group_seeds:
            return [[p] for p in pending]
        groups: dict[str, list[PlannedRun]] = {}
        for planned in pending:
            groups.setdefault(planned.variant.label, []).append(planned)
        parallelism = executor.parallelism
        return balance_groups(list(groups.values()), 2 * parallelism if parallelism > 1 else 1)


def balance_groups(groups: list[list[Any]], at_least: int) -> list[list[Any]]:
    """Split the largest group in halves until there are `at_least` groups (or all are single).

    Returns:
        The groups, largest first (stable among equals).
    """
    groups = [list(g) for g in groups if g]
    while len(groups) < at_least:
        largest = max(range(len(groups)), key=lambda i: len(groups[i]), default=None)
        if largest is None or len(groups[largest]) < 2:
            break
        group = groups.pop(largest)
        half = (len(group) + 1) // 2
        groups[largest:largest] = [group[:half], group[half:]]
    return sorted(groups, key=len, reverse=True)


def run_configs(
    configs: Sequence[Mapping[str, Any]],
    *,
    store: str,
    force: bool = False,
    plugins: PluginManager | None = None,
    compilation_cache: str | None = None,
    comparisons: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Run experiments given as validated config dicts; seeds of one variant train together.

    This is what executors call: one call is one item, a group of runs that train together
    (on a worker, ``plugins`` is None and the worker's own entry points are loaded). A failure
    in one run is recorded and does not stop the others. A worker keeps JAX's compiled
    functions between items (they are keyed on static config, not on the item), so only its
    first item of a configuration compiles; `compilation_cache` keeps them on disk too.

    Args:
        configs: the runs' validated configs.
        store: the run store's directory.
        force: recompute finished runs.
        plugins: the plugin manager (None: this process's entry points).
        compilation_cache: JAX's persistent compilation cache directory (None: leave JAX's
            setting alone).
        comparisons: canonical comparison tables (``ResolvedComparison.canonical``) whose
            representation each completed run gets here, where it is in memory.

    Returns:
        One ``{"status": ..., "reason": ..., "loaded": ...}`` per config.
    """
    use_compilation_cache(compilation_cache)
    experiments = [Experiment.from_dict(c, plugins=plugins) for c in configs]
    statuses = []
    outcomes = run_experiments(experiments, store=store, force=force, progress=False)
    if comparisons and experiments:
        # The runs are stored: nothing here may turn them into failures (or the item into
        # an error, which would mark every run of it failed). What fails is left to the
        # comparison stage, which represents the run again and reports why it cannot.
        with contextlib.suppress(Exception):
            _represent_in_memory(outcomes, comparisons, experiments[0], store=store)
    for outcome in outcomes:
        if isinstance(outcome, RunFailure):
            statuses.append({"status": "failed", "reason": outcome.reason})
        else:
            statuses.append(
                {
                    "status": outcome.status,
                    "reason": outcome.trained.reason,
                    # Read back from the store (e.g. another process finished it meanwhile).
                    "loaded": outcome.loaded,
                }
            )
    return statuses


def _represent_in_memory(
    outcomes: Sequence[ExperimentResult | RunFailure],
    comparisons: Sequence[Mapping[str, Any]],
    first: Experiment,
    *,
    store: str,
) -> None:
    """Store each completed run's representation for `comparisons` while it is in memory.

    Raises:
        Exception: whatever resolving the comparisons raises (one run's failure to be
            represented does not stop the others).
    """
    manager = first.plugins
    probes = [p["name"] for p in first.config["probes"]]
    resolved = resolve_comparisons(comparisons, manager.registry, probes=probes)
    completed = [o for o in outcomes if isinstance(o, ExperimentResult) and o.status == "completed"]
    runs = RunStore(store)
    for comparison in resolved:
        for outcome in completed:
            with contextlib.suppress(Exception):
                represent_stored(
                    comparison, outcome.run_id, store=runs, plugins=manager, result=outcome
                )


#: The form of each top-level entry of a suite file that has one, with an example.
_SUITE_FORMS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "description": (str, '"what this suite asks"'),
    "base": (Mapping, '[base] with task = "delayed_reach" and [base.model]'),
    "vary": ((Mapping, list), '[vary] with "model.activation" = ["tanh", "relu"]'),
    "statistics": (Mapping, '[statistics] with compare = ["jpca.r2_skew"]'),
    "claims": (list, "[[claims]] tables"),
    "comparisons": (list, '[[comparisons]] tables, or ["dsa", "shape"]'),
}


def _check_suite_types(data: Mapping[str, Any], *, source: str) -> None:
    """Each top-level entry of a suite file has its form (a table, a list, text)."""
    for key, (form, example) in _SUITE_FORMS.items():
        if key in data and not isinstance(data[key], form):
            raise ConfigError(
                f"{source}: '{key}' = {data[key]!r} has the wrong form; expected {example}"
            )
    for index, claim in enumerate(data.get("claims", [])):
        if not isinstance(claim, Mapping):
            raise ConfigError(f"{source}: claims[{index}] = {claim!r}: expected a table")


#: Suite names become file names in the store: one path component, never hidden.
SUITE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def validate_suite_name(name: Any) -> str:
    """A suite's name, safe as a file name: letters, digits, ``-``, ``_`` and ``.``.

    It must not start with ``.`` (so no ``..`` or hidden files) and holds no path separator or
    NUL, so the suite's record always lands inside the store.

    Raises:
        ConfigError: naming the rejected name.
    """
    if not isinstance(name, str) or not SUITE_NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"suite name {name!r} is not a safe file name: use letters, digits, '-', '_' and "
            "'.', not starting with '.' (e.g. 'kao2019-small')"
        )
    return name


def _vary_values(path: str, values: Any) -> list[Any]:
    """The values of one varied path: a non-empty list without repeats."""
    if not isinstance(values, list | tuple):
        raise ConfigError(
            f'vary \'{path}\' = {values!r}: expected a list of values, e.g. ["relu", "tanh"]'
        )
    values = list(values)
    if not values:
        raise ConfigError(f"vary '{path}' has no values: the grid would be empty")
    repeated = [v for i, v in enumerate(values) if _canonical(v) in map(_canonical, values[:i])]
    if repeated:
        raise ConfigError(f"vary '{path}' lists {repeated[0]!r} more than once: {values!r}")
    return values


def _canonical(value: Any) -> str:
    # 1 and 1.0 are one setting of a float field; True and 1 are not one setting.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"number:{float(value)!r}"
    return f"{type(value).__name__}:{canonical_json(value)}"


def _seeds(seeds: Any) -> list[int]:
    """A seed count (``3`` means 0, 1, 2) or a list of distinct seeds."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"seeds must be at least 1, got {seeds}")
        if seeds > SEED_LIMIT:
            raise ConfigError(f"seeds = {seeds}: more seeds than distinct PRNG keys")
        return list(range(seeds))
    if not isinstance(seeds, list | tuple) or not seeds:
        raise ConfigError(
            f"seeds = {seeds!r}: expected a count (an integer ≥ 1) or a non-empty list of "
            "integers, e.g. 3 or [0, 1, 2]"
        )
    seeds = [validate_seed(s, where=f"seeds[{i}]") for i, s in enumerate(seeds)]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds repeat: {seeds}")
    return seeds


def _normalise_base(base: Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """Every component as a table, probes as a list of tables (so paths can be applied)."""
    check_keys(base, (*_COMPONENTS, "probes"), where="suite base")
    for required in ("task", "model"):
        if required not in base:
            raise ConfigError(f"suite base: missing [base.{required}] table")
    normal: dict[str, Any] = {}
    for kind in _COMPONENTS:
        if kind in base:
            normal[kind] = ComponentSpec.parse(kind, base[kind]).to_dict()
    normal.setdefault("trainer", {"name": registry.default("trainer")})
    probes = validate_list(base.get("probes", []), where="base.probes", example=PROBES_EXAMPLE)
    normal["probes"] = [ComponentSpec.parse("probe", p).to_dict() for p in probes]
    return normal


def _apply(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(dict(base))
    for path, value in values.items():
        parts = path.split(".")
        if parts[0] == "probes":
            target = next(p for p in config["probes"] if p["name"] == parts[1])
            target[parts[2]] = value
        else:
            config[parts[0]][parts[1]] = value
    return config


def suite_or_experiment(path: str | Path) -> Suite | Experiment:
    """Read a TOML file as a suite (it has [base]) or a single experiment."""
    data = read_toml(path)
    if "base" in data or "vary" in data:
        return Suite.from_dict(data, source=str(path))
    return Experiment.from_dict(data, source=str(path))
