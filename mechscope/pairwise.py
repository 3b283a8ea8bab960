"""A suite's comparison stage: a representation per completed run, distances for every pair.

Representations are computed once per (run, comparison config) and stored beside the run;
pair distances are cached by (run ids, comparison config) in the store, so adding a variant
computes only the new networks' representations and the new pairs, and a killed stage resumes
where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd

from mechscope.comparison import AbstractComparison
from mechscope.config import ComponentSpec, Config, canonical_json
from mechscope.errors import ConfigError, MechscopeError, StoreError
from mechscope.executor import AbstractExecutor
from mechscope.plugins import ComponentEntry, PluginManager, Registry
from mechscope.store import PAIR_COLUMNS, RunStore, StoredRepresentation, empty_frame


@dataclasses.dataclass(frozen=True)
class ResolvedComparison:
    """A validated comparison of a suite: its registry entry, config and cache key."""

    entry: ComponentEntry
    config: Config

    @property
    def name(self) -> str:
        """The comparison's registered name."""
        return self.entry.name

    @property
    def canonical(self) -> dict[str, Any]:
        """Name and every config field, as plain JSON types."""
        from mechscope.config import config_to_json_dict

        return {"name": self.entry.name, **config_to_json_dict(self.config)}

    @property
    def key(self) -> str:
        """The cache key: a hash of the name and the full config (and mechscope's version)."""
        from mechscope import __version__

        # The plugin's own version too: a changed comparison must not reuse old distances.
        source = {"distribution": self.entry.distribution, "version": self.entry.version}
        payload = canonical_json(
            {"comparison": self.canonical, "source": source, "mechscope": __version__}
        )
        return f"{self.entry.name}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    def build(self) -> AbstractComparison:
        """Instantiate the comparison."""
        return self.entry.build(self.config)


def resolve_comparisons(
    specs: Sequence[Any], registry: Registry, *, probes: Sequence[str]
) -> list[ResolvedComparison]:
    """Validate a suite's ``[[comparisons]]`` before anything trains.

    Args:
        specs: names or tables (``{"name": "dsa", "rank": 10}``).
        registry: where the comparisons are registered.
        probes: the probes the suite runs (a comparison may require some).

    Raises:
        ConfigError: for an unknown comparison, bad settings, a comparison listed twice, or
            one that needs a probe the suite does not run.
    """
    resolved = []
    for spec in specs:
        try:
            entry, config = registry.resolve(ComponentSpec.parse("comparison", spec))
        except MechscopeError as error:
            raise ConfigError(f"comparisons: {error}") from None
        comparison = ResolvedComparison(entry, config)
        missing = [p for p in entry.build(config).requires if p not in probes]
        if missing:
            raise ConfigError(
                f"comparison '{entry.name}' needs the probe(s) {', '.join(missing)}; "
                f"add them to the suite's base probes ({', '.join(probes) or 'none'})"
            )
        resolved.append(comparison)
    keys = [c.key for c in resolved]
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"comparison '{duplicate.rsplit('-', 1)[0]}' is listed twice")
    return resolved


def compare_runs(
    comparisons: Sequence[ResolvedComparison],
    run_ids: Sequence[str],
    *,
    store: RunStore,
    plugins: PluginManager,
    progress: bool = False,
    executor: AbstractExecutor | None = None,
) -> pd.DataFrame:
    """Compare every pair of `run_ids` with every comparison, reusing what the store holds.

    Args:
        comparisons: the validated comparisons.
        run_ids: completed runs in `store` (at least two).
        store: the run store.
        plugins: the suite's plugin manager (its registry holds the models and tasks).
        progress: show a progress bar over representations and pair batches.
        executor: where missing representations and pair batches are computed (None: here).
            Each item is a few runs to represent or a batch of pairs; workers read the
            representations from the store and write the distances back to it.

    Returns:
        Long form: ``comparison, run_a, run_b, metric, value``, one row per unordered pair
        (``run_a < run_b``) and metric.
    """
    run_ids = sorted(set(run_ids))
    if len(run_ids) < 2:
        raise ConfigError(f"comparisons need at least two completed runs, got {len(run_ids)}")
    frames = []
    for comparison in comparisons:
        built = comparison.build()
        skipped: list[str] = []
        remote = executor is not None and not executor.in_process
        # What the store holds is read once: kept here, not loaded again below.
        represented: dict[str, StoredRepresentation] = {}
        missing = []
        for run_id in run_ids if remote else []:
            stored = store.comparisons.load_representation(run_id, comparison.key)
            if stored is None:
                missing.append(run_id)
            else:
                represented[run_id] = stored
        if executor is not None and missing:
            # Representing is per network, where the cost is: a few runs per item.
            step = _RUNS_PER_ITEM
            chunks = [missing[i : i + step] for i in range(0, len(missing), step)]
            item = functools.partial(
                _represent_item, comparison=comparison.canonical, store=str(store.root)
            )
            for outcome in executor.map(item, chunks):
                for run_id, error in (outcome.value or {}).items() if outcome.ok else []:
                    skipped.append(f"{run_id} ({error})")
                if not outcome.ok:
                    skipped += [f"{r} ({outcome.error})" for r in chunks[outcome.index]]
        for run_id in _bar(run_ids, f"represent ({comparison.name})", progress):
            if run_id in represented or any(entry.startswith(f"{run_id} ") for entry in skipped):
                continue
            try:
                represented[run_id] = represent_stored(
                    comparison, run_id, store=store, plugins=plugins
                )
            except Exception as error:  # noqa: BLE001 - one run must not sink the stage
                skipped.append(f"{run_id} ({type(error).__name__}: {error})")
        if skipped:
            warnings.warn(
                f"comparison '{comparison.name}' leaves out {len(skipped)} run(s): "
                + "; ".join(skipped),
                stacklevel=3,
            )
        if len(represented) < 2:
            continue
        frames.append(_pair_distances(built, comparison, represented, store, executor))
    if not frames:
        return empty_frame(PAIR_COLUMNS)
    return pd.concat(frames, ignore_index=True)


#: Runs represented per executor item (each loads its runs from the store).
_RUNS_PER_ITEM = 4


def represent_stored(
    comparison: ResolvedComparison,
    run_id: str,
    *,
    store: RunStore,
    plugins: PluginManager,
    result: Any = None,
) -> StoredRepresentation:
    """Run `run_id`'s stored representation, computing and storing it when missing.

    Args:
        comparison: the comparison.
        run_id: a completed run in `store`.
        store: the run store.
        plugins: the plugin manager whose registry builds the run's task and model.
        result: the run's :class:`~mechscope.experiment.ExperimentResult` when it is in
            memory (just trained), so it is not read back from the store.

    Raises:
        ConfigError: if the run is not complete, or lacks a probe result the comparison needs
            (e.g. its fixed_points probe failed).
    """
    stored = store.comparisons.load_representation(run_id, comparison.key)
    if stored is not None:
        return stored
    from mechscope.experiment import Experiment
    from mechscope.probe import condition_run

    built = comparison.build()
    if result is None:
        run = store.load(run_id, registry=plugins.registry)
        if run is None:
            raise ConfigError(f"run {run_id} is not complete in {store.root}")
        config, trained, probes = run.header.config, run.trained, run.probes
    else:
        config, trained, probes = result.config, result.trained, result.probes
    missing = [name for name in built.requires if name not in probes]
    if missing:
        raise ConfigError(f"its {', '.join(missing)} probe result is missing")
    # The task comes from the run's own config, through the suite's plugins.
    # Only its task is built here: a run trained elsewhere is not refused for this machine's
    # memory.
    experiment = Experiment.from_dict(dict(config), plugins=plugins, check_resources=False)
    task = experiment.build_task()
    conditions = condition_run(trained.model, task)
    seed_key = jax.random.fold_in(
        jax.random.key(int(config.get("seed", 0))), zlib.crc32(comparison.key.encode())
    )
    representation = built.represent(
        trained,
        task,
        key=seed_key,
        conditions=conditions,
        probes={name: probes[name] for name in built.requires},
    )
    arrays = {name: np.asarray(value) for name, value in representation.items()}
    return store.comparisons.save_representation(run_id, comparison.key, arrays)


def _worker_comparison(canonical: Mapping[str, Any]) -> tuple[ResolvedComparison, PluginManager]:
    """A comparison rebuilt from its canonical table with this process's plugins."""
    from mechscope.plugins import get_plugin_manager

    manager = get_plugin_manager()
    entry, config = manager.registry.resolve(ComponentSpec.parse("comparison", dict(canonical)))
    return ResolvedComparison(entry, config), manager


def _represent_item(
    run_ids: Sequence[str], *, comparison: Mapping[str, Any], store: str
) -> dict[str, str]:
    """An executor item: store the representations of `run_ids`; run id → why it failed."""
    resolved, manager = _worker_comparison(comparison)
    failed: dict[str, str] = {}
    for run_id in run_ids:
        try:
            represent_stored(resolved, run_id, store=RunStore(store), plugins=manager)
        except Exception as error:  # noqa: BLE001 - reported by the comparison stage
            failed[run_id] = f"{type(error).__name__}: {error}"
    return failed


def _pairs_item(
    chunk: Sequence[tuple[str, str]],
    *,
    comparison: Mapping[str, Any],
    store: str,
    digests: Mapping[str, str],
) -> int:
    """An executor item: distances of a batch of pairs, appended to the store's pair cache."""
    resolved, _ = _worker_comparison(comparison)
    runs = RunStore(store)
    names = sorted({run_id for pair in chunk for run_id in pair})
    represented = {}
    for run_id in names:
        stored = runs.comparisons.load_representation(run_id, resolved.key)
        if stored is None or stored.digest != digests[run_id]:
            raise StoreError(f"run {run_id}: its representation changed or vanished")
        represented[run_id] = stored
    _compute_pairs(resolved.build(), resolved, represented, list(chunk), runs)
    return len(chunk)


def _compute_pairs(
    comparison: AbstractComparison,
    resolved: ResolvedComparison,
    represented: Mapping[str, StoredRepresentation],
    chunk: Sequence[tuple[str, str]],
    store: RunStore,
) -> pd.DataFrame:
    """Distances of the pairs in `chunk`, saved to the pair cache; the rows saved."""
    run_ids = sorted(represented)
    index = {run_id: i for i, run_id in enumerate(run_ids)}
    arrays = [represented[run_id].arrays for run_id in run_ids]
    pairs = np.array([(index[a], index[b]) for a, b in chunk], dtype=np.int32)
    values = comparison.distances(arrays, pairs)
    frame = pd.DataFrame(
        [
            {
                "run_a": a,
                "run_b": b,
                "metric": name,
                "value": float(values[name][i]),
                "digest_a": represented[a].digest,
                "digest_b": represented[b].digest,
            }
            for name in values
            for i, (a, b) in enumerate(chunk)
        ]
    )
    store.comparisons.save_pairs(resolved.key, frame)
    return frame


def _pair_distances(
    comparison: AbstractComparison,
    resolved: ResolvedComparison,
    represented: Mapping[str, StoredRepresentation],
    store: RunStore,
    executor: AbstractExecutor | None = None,
) -> pd.DataFrame:
    """Every unordered pair's distances: cached ones read back, the rest computed in batches.

    A cached distance is reused only if it was computed from the very representations the
    runs have now (their digests), so a recomputed run is compared anew. With an executor
    that is not this process, each batch is an item of its own.
    """
    run_ids = sorted(represented)
    digests = {run_id: represented[run_id].digest for run_id in run_ids}
    wanted = {
        (a, b, digests[a], digests[b]) for i, a in enumerate(run_ids) for b in run_ids[i + 1 :]
    }
    have = _within(store.comparisons.load_pairs(resolved.key), wanted)
    metrics = set(comparison.metrics) if comparison.metrics else None
    found: dict[tuple[str, str], set[str]] = {}
    for a, b, metric in zip(have["run_a"], have["run_b"], have["metric"], strict=True):
        found.setdefault((a, b), set()).add(metric)
    done = {pair for pair, names in found.items() if metrics is None or metrics <= names}
    todo = sorted({(a, b) for a, b, _, _ in wanted} - done)
    # Computed and cached in batches, so a killed stage resumes from the last whole batch.
    batch = max(comparison.pair_batch, 1) * 4
    chunks = [todo[start : start + batch] for start in range(0, len(todo), batch)]
    if executor is not None and not executor.in_process and chunks:
        item = functools.partial(
            _pairs_item, comparison=resolved.canonical, store=str(store.root), digests=digests
        )
        failures = [o.error for o in executor.map(item, chunks) if not o.ok]
        if failures:
            warnings.warn(
                f"comparison '{resolved.name}': {len(failures)} pair batch(es) failed: "
                + "; ".join(str(f) for f in failures),
                stacklevel=3,
            )
        have = _within(store.comparisons.load_pairs(resolved.key), wanted)
    else:
        for chunk in chunks:
            frame = _compute_pairs(comparison, resolved, represented, chunk, store)
            have = pd.concat([have, frame], ignore_index=True)
    have = _within(have, wanted).drop_duplicates(["run_a", "run_b", "metric"], keep="last")
    have = have.assign(comparison=resolved.name)
    return have.loc[:, list(PAIR_COLUMNS)].sort_values(
        ["metric", "run_a", "run_b"], ignore_index=True
    )


def read_suite_pairs(store: RunStore, suite: str) -> pd.DataFrame:
    """A suite's saved comparison results (long form), or an empty frame if there are none.

    Raises:
        StoreError: if the file exists but cannot be read.
    """
    path = store.comparisons.suite_pairs_path(suite)
    if not path.exists():
        return empty_frame(PAIR_COLUMNS)
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises many types on bad files
        raise StoreError(f"{path}: unreadable ({error})") from None
    if list(frame.columns) != list(PAIR_COLUMNS):
        raise StoreError(f"{path}: columns {list(frame.columns)}, expected {PAIR_COLUMNS}")
    return frame


def _within(frame: pd.DataFrame, wanted: set[tuple[str, str, str, str]]) -> pd.DataFrame:
    """The rows of `frame` whose (run_a, run_b, digest_a, digest_b) is `wanted`."""
    columns = (frame[c] for c in ("run_a", "run_b", "digest_a", "digest_b"))
    keep = [row in wanted for row in zip(*columns, strict=True)]
    return frame[np.asarray(keep, dtype=bool)] if len(frame) else frame


def distance_matrix(pairs: pd.DataFrame, metric: str, run_ids: Sequence[str]) -> np.ndarray:
    """A symmetric matrix (zero diagonal) from the long-form pair distances of one metric.

    Raises:
        ValueError: if a pair of `run_ids` has no distance.
    """
    index = {run_id: i for i, run_id in enumerate(run_ids)}
    matrix = np.full((len(run_ids), len(run_ids)), np.nan)
    np.fill_diagonal(matrix, 0.0)
    chosen = pairs[pairs["metric"] == metric]
    for a, b, value in zip(chosen["run_a"], chosen["run_b"], chosen["value"], strict=True):
        if a in index and b in index:
            matrix[index[a], index[b]] = matrix[index[b], index[a]] = value
    if np.isnan(matrix).any():
        raise ValueError(f"metric '{metric}' lacks distances for some pairs of the runs given")
    return matrix


def _bar(items: Sequence[str], description: str, enabled: bool) -> Any:
    if not enabled:
        return items
    import sys

    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="run", file=sys.stderr, leave=False)


def comparisons_summary(pairs: pd.DataFrame) -> Mapping[str, list[str]]:
    """Comparison name → the metrics it produced (in order of appearance)."""
    summary: dict[str, list[str]] = {}
    for name, metric in zip(pairs["comparison"], pairs["metric"], strict=True):
        metrics = summary.setdefault(name, [])
        if metric not in metrics:
            metrics.append(metric)
    return summary
