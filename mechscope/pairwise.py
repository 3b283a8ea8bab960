"""A suite's comparison stage: a representation per completed run, distances for every pair.

Representations are computed once per (run, comparison config) and stored beside the run;
pair distances are cached by (run ids, comparison config) in the store, so adding a variant
computes only the new networks' representations and the new pairs, and a killed stage resumes
where it stopped.
"""

from __future__ import annotations

import dataclasses
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
) -> pd.DataFrame:
    """Compare every pair of `run_ids` with every comparison, reusing what the store holds.

    Args:
        comparisons: the validated comparisons.
        run_ids: completed runs in `store` (at least two).
        store: the run store.
        plugins: the suite's plugin manager (its registry holds the models and tasks).
        progress: show a progress bar over representations and pair batches.

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
        represented: dict[str, StoredRepresentation] = {}
        skipped: list[str] = []
        for run_id in _bar(run_ids, f"represent ({comparison.name})", progress):
            try:
                represented[run_id] = _representation(
                    built, comparison.key, run_id, store=store, plugins=plugins
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
        frames.append(_pair_distances(built, comparison, represented, store))
    if not frames:
        return empty_frame(PAIR_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _representation(
    comparison: AbstractComparison,
    key: str,
    run_id: str,
    *,
    store: RunStore,
    plugins: PluginManager,
) -> StoredRepresentation:
    """Run `run_id`'s stored representation, computing and storing it when missing.

    Raises:
        ConfigError: if the run is not complete, or lacks a probe result the comparison needs
            (e.g. its fixed_points probe failed).
    """
    stored = store.comparisons.load_representation(run_id, key)
    if stored is not None:
        return stored
    from mechscope.experiment import Experiment
    from mechscope.probe import condition_run

    run = store.load(run_id, registry=plugins.registry)
    if run is None:
        raise ConfigError(f"run {run_id} is not complete in {store.root}")
    missing = [name for name in comparison.requires if name not in run.probes]
    if missing:
        raise ConfigError(f"its {', '.join(missing)} probe result is missing")
    # The task comes from the run's own config, through the suite's plugins.
    # Only its task is built here: a run trained elsewhere is not refused for this machine's
    # memory.
    experiment = Experiment.from_dict(
        dict(run.header.config), plugins=plugins, check_resources=False
    )
    task = experiment.build_task()
    conditions = condition_run(run.trained.model, task)
    seed_key = jax.random.fold_in(
        jax.random.key(int(run.header.config.get("seed", 0))), zlib.crc32(key.encode())
    )
    representation = comparison.represent(
        run.trained,
        task,
        key=seed_key,
        conditions=conditions,
        probes={name: run.probes[name] for name in comparison.requires},
    )
    arrays = {name: np.asarray(value) for name, value in representation.items()}
    return store.comparisons.save_representation(run_id, key, arrays)


def _pair_distances(
    comparison: AbstractComparison,
    resolved: ResolvedComparison,
    represented: Mapping[str, StoredRepresentation],
    store: RunStore,
) -> pd.DataFrame:
    """Every unordered pair's distances: cached ones read back, the rest computed in batches.

    A cached distance is reused only if it was computed from the very representations the
    runs have now (their digests), so a recomputed run is compared anew.
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
    index = {run_id: i for i, run_id in enumerate(run_ids)}
    arrays = [represented[run_id].arrays for run_id in run_ids]
    todo = sorted({(a, b) for a, b, _, _ in wanted} - done)
    # Computed and cached in batches, so a killed stage resumes from the last whole batch.
    batch = max(comparison.pair_batch, 1) * 4
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        pairs = np.array([(index[a], index[b]) for a, b in chunk], dtype=np.int32)
        values = comparison.distances(arrays, pairs)
        frame = pd.DataFrame(
            [
                {
                    "run_a": a,
                    "run_b": b,
                    "metric": name,
                    "value": float(values[name][i]),
                    "digest_a": digests[a],
                    "digest_b": digests[b],
                }
                for name in values
                for i, (a, b) in enumerate(chunk)
            ]
        )
        store.comparisons.save_pairs(resolved.key, frame)
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
