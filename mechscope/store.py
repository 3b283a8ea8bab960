"""The run store: the one place that knows how runs and suites are laid out on disk.

A store is a directory::

    <store>/<run id>/experiment.json     the run's header (config, status, probe list, timings)
    <store>/<run id>/trained/            the trained network (``TrainedRun.save``)
    <store>/<run id>/probes/<probe>/     each probe's result (``ProbeResult.save``)
    <store>/<run id>/manifest.json       SHA-256 of every file above
    <store>/.checkpoints/<run id>/       the trainer's checkpoints while the run trains
    <store>/suites/<suite name>.json     each suite's definition and run list

A run directory is written under a temporary name and renamed into place only when complete,
so a reader never sees a half-written run; a file changed or truncated later fails
verification. Every file read back is validated against a schema: a damaged one raises a
:class:`~mechscope.StoreError` naming it, so one bad run never takes a listing down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic

from mechscope.errors import StoreError

if TYPE_CHECKING:
    import pandas as pd

    from mechscope.plugins import Registry
    from mechscope.probe import ProbeResult
    from mechscope.training import TrainedRun

MANIFEST = "manifest.json"
RUN_HEADER = "experiment.json"
TRAINED = "trained"
PROBES = "probes"
CHECKPOINTS = ".checkpoints"
SUITES = "suites"


class _Manifest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    files: dict[str, str]


class RunHeader(pydantic.BaseModel):
    """What ``experiment.json`` holds: everything about a run except its arrays.

    Attributes:
        run_id: the run's content hash.
        config: the fully validated experiment config (task, model, trainer, probes, seed).
        status: the training status (``completed``, ``diverged``, ``stopped``).
        reason: why training ended, in words.
        probe_errors: probe name → why it failed.
        timings: seconds spent per stage (``train_s``, ``probes_s``).
        probes: the probes whose results are stored, in the order they ran.
    """

    model_config = pydantic.ConfigDict(extra="ignore")

    run_id: str
    config: dict[str, Any]
    status: str
    reason: str = ""
    probe_errors: dict[str, str] = {}
    timings: dict[str, float | None] = {}
    probes: list[str] = []


class SuiteRun(pydantic.BaseModel):
    """One (variant, seed) entry of a suite record."""

    run_id: str
    variant: str
    seed: int
    values: dict[str, Any] = {}


class SuiteRecord(pydantic.BaseModel):
    """What ``suites/<name>.json`` holds: the suite's definition and its planned runs."""

    model_config = pydantic.ConfigDict(extra="allow")

    name: str
    runs: list[SuiteRun]
    seeds: list[int] = []
    wall_time_s: float | None = None
    #: Run ids the last ``Suite.run`` loaded from the store instead of computing; None in
    #: records written before this was kept.
    cached: list[str] | None = None


_METRICS = pydantic.TypeAdapter(dict[str, float | None])


def _read_json(path: Path, schema: Any) -> Any:
    """Read and validate one JSON file; any problem is a StoreError naming the file."""
    try:
        text = path.read_text()
    except OSError as error:
        raise StoreError(f"{path}: unreadable ({error.strerror or error})") from None
    try:
        # Strict: a stored "1.5" where a number belongs is damage, not something to coerce.
        if isinstance(schema, pydantic.TypeAdapter):
            return schema.validate_json(text, strict=True)
        return schema.model_validate_json(text, strict=True)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        raise StoreError(f"{path}: invalid ({where}: {first['msg']})") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step, safe against concurrent writers.

    Each writer uses its own temporary name, so two processes writing the same file never
    trip over each other's half-written copy; the last complete write wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Replace `path` with `frame` as Parquet in one step (unique temporary name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        frame.to_parquet(temporary, index=False)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record the checksum of every file below `directory` (except the manifest itself)."""
    directory = Path(directory)
    files = {
        path.relative_to(directory).as_posix(): file_digest(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    text = _Manifest(files=files).model_dump_json(indent=1)
    (directory / MANIFEST).write_text(text)


def verify_manifest(directory: Path, *, under: str | None = None) -> None:
    """Check every file listed in the manifest (or only those in one subdirectory).

    Args:
        directory: a directory written by :func:`atomic_directory`.
        under: check only the files below this subdirectory (e.g. ``"trained"``), of which
            the manifest must list at least one.

    Raises:
        StoreError: naming the first missing or corrupted file, or a missing manifest.
    """
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise StoreError(f"{directory}: no {MANIFEST} (the run is incomplete)")
    listed = _read_json(directory / MANIFEST, _Manifest).files
    if under is not None:
        listed = {
            name: digest
            for name, digest in listed.items()
            if name.startswith(f"{under.rstrip('/')}/")
        }
        if not listed:
            raise StoreError(f"{directory}: {MANIFEST} lists no file under '{under}'")
    for name, expected in listed.items():
        path = directory / name
        if not path.is_file():
            raise StoreError(f"{directory}: file '{name}' is missing")
        if file_digest(path) != expected:
            raise StoreError(f"{directory}: file '{name}' is corrupted (checksum mismatch)")


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `target` only if the block succeeds.

    A manifest is written before the rename. On error the temporary directory is removed and
    any existing `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        yield temporary
        write_manifest(temporary)
        if target.exists():
            if not overwrite:
                raise StoreError(f"{target} already exists")
            # Move the old result aside first so there is never a moment with neither.
            retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, retired)
            os.replace(temporary, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def metric_columns(
    history: Mapping[str, np.ndarray], probe_metrics: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """A run's metrics under their table names.

    Training's final loss and R² become ``train.loss`` and ``train.r2``; probe metrics become
    ``<probe>.<metric>``. This is the one place those names are made.
    """
    flat: dict[str, float] = {}
    for key in ("loss", "r2"):
        values = history.get(key)
        if values is not None and len(values):
            flat[f"train.{key}"] = float(np.asarray(values)[-1])
    for probe, metrics in probe_metrics.items():
        for name, value in metrics.items():
            flat[f"{probe}.{name}"] = value
    return flat


def config_columns(config: Mapping[str, Any]) -> dict[str, Any]:
    """An experiment config as table columns (``model.activation``; lists as JSON text)."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = cell(value)

    config = dict(config)
    probes = config.pop("probes", [])
    visit("", config)
    flat["probes"] = ",".join(p["name"] for p in probes)
    return flat


def cell(value: Any) -> Any:
    """A value as it appears in labels and table cells (lists and tables become JSON text)."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def planned_row(
    run: SuiteRun, stored: Mapping[str, Any] | None, outcome: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One row of a suite's table: the plan's variant and seed, then what the store holds.

    Args:
        run: the planned run.
        stored: the stored run's row (:meth:`RunStore.read_row`), or None if it is not there.
        outcome: what the executor reported for the run this time, if it ran.
    """
    row: dict[str, Any] = {"variant": run.variant, "seed": run.seed}
    row.update({path: cell(value) for path, value in run.values.items()})
    if stored is not None:
        row.update(stored)
        return row
    failed = (outcome or {}).get("status") == "failed"
    row.update(
        run_id=run.run_id,
        status="failed" if failed else "missing",
        reason=(outcome or {}).get("reason", "") if failed else "",
    )
    return row


@dataclasses.dataclass(frozen=True)
class StoredRun:
    """A run read back from the store: its header, trained network and probe results."""

    header: RunHeader
    trained: TrainedRun
    probes: dict[str, ProbeResult]
    directory: Path


def write_run(
    directory: Path,
    header: RunHeader,
    trained: TrainedRun,
    probes: Mapping[str, ProbeResult],
    *,
    registry: Registry,
) -> None:
    """Write one run into `directory`, atomically replacing whatever was there."""
    with atomic_directory(Path(directory), overwrite=True) as temporary:
        (temporary / RUN_HEADER).write_text(header.model_dump_json(indent=1))
        trained.save(temporary / TRAINED, registry=registry)
        for name, result in probes.items():
            result.save(temporary / PROBES / name)


def read_run(directory: Path, *, registry: Registry) -> StoredRun:
    """Read a run written by :func:`write_run`, verifying every checksum first.

    Raises:
        StoreError: if the run is incomplete or any file is missing, corrupted or invalid.
    """
    from mechscope.probe import ProbeResult
    from mechscope.training import TrainedRun

    directory = Path(directory)
    verify_manifest(directory)
    header = _read_json(directory / RUN_HEADER, RunHeader)
    return StoredRun(
        header=header,
        trained=TrainedRun.load(directory / TRAINED, registry=registry),
        probes={name: ProbeResult.load(directory / PROBES / name) for name in header.probes},
        directory=directory,
    )


class RunStore:
    """A directory of runs and suite records (see the module docstring for the layout).

    Args:
        root: the store's directory; created when the first thing is written.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def run_directory(self, run_id: str) -> Path:
        """Where run `run_id` lives."""
        return self.root / run_id

    def checkpoint_directory(self, run_id: str) -> Path:
        """Where the trainer keeps run `run_id`'s checkpoints while it trains."""
        return self.root / CHECKPOINTS / run_id

    def discard_checkpoints(self, run_id: str) -> None:
        """Remove a finished run's checkpoints."""
        shutil.rmtree(self.checkpoint_directory(run_id), ignore_errors=True)

    def is_complete(self, run_id: str) -> bool:
        """Whether run `run_id` is stored with every checksum intact.

        Cheap (no model is deserialised); a damaged run is reported and counts as missing.
        """
        directory = self.run_directory(run_id)
        if not directory.exists():
            return False
        try:
            verify_manifest(directory)
        except StoreError as error:
            warnings.warn(f"recomputing run: {error}", stacklevel=2)
            return False
        return True

    def save(
        self,
        header: RunHeader,
        trained: TrainedRun,
        probes: Mapping[str, ProbeResult],
        *,
        registry: Registry,
    ) -> Path:
        """Store a finished run (atomically) and drop its checkpoints; returns its directory."""
        directory = self.run_directory(header.run_id)
        write_run(directory, header, trained, probes, registry=registry)
        self.discard_checkpoints(header.run_id)
        return directory

    def load(self, run_id: str, *, registry: Registry) -> StoredRun | None:
        """The stored run, or None if it is absent; a damaged one is reported (and None)."""
        directory = self.run_directory(run_id)
        if not directory.exists():
            return None
        try:
            return read_run(directory, registry=registry)
        except StoreError as error:
            warnings.warn(f"recomputing run: {error}", stacklevel=2)
            return None

    def salvage_trained(self, run_id: str, *, registry: Registry) -> TrainedRun | None:
        """The trained network of a damaged run, if every file under ``trained/`` is intact.

        Probe results are cheap next to training, so a run that fails verification elsewhere
        (a truncated probe file, a lost figure) is re-probed rather than retrained.
        """
        from mechscope.training import TrainedRun

        directory = self.run_directory(run_id)
        if not directory.exists():
            return None
        try:
            verify_manifest(directory, under=TRAINED)
            trained = TrainedRun.load(directory / TRAINED, registry=registry)
        except Exception:  # noqa: BLE001 - anything that stops the reload means: retrain
            return None
        warnings.warn(
            f"{directory}: the trained network is intact; recomputing only the probes",
            stacklevel=2,
        )
        return trained

    def run_ids(self) -> list[str]:
        """The ids of the runs in the store (complete or not), sorted.

        Raises:
            StoreError: if the store does not exist.
        """
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: no such run store")
        return [
            d.name
            for d in sorted(self.root.iterdir())
            if d.is_dir() and not d.name.startswith(".") and (d / RUN_HEADER).exists()
        ]

    def read_row(self, run_id: str) -> dict[str, Any] | None:
        """A stored run as one table row, or None if it is missing, incomplete or damaged.

        The row has ``run_id``, ``status``, ``reason``, config columns (``model.activation``,
        ...), ``probes``, the final training loss/R², every probe metric (``probe.metric``)
        and timings (``time.train_s``, ...). No model is deserialised.
        """
        directory = self.run_directory(run_id)
        if not (directory / RUN_HEADER).exists():
            return None
        try:
            verify_manifest(directory)
            header = _read_json(directory / RUN_HEADER, RunHeader)
            try:
                with np.load(directory / TRAINED / "history.npz", allow_pickle=False) as data:
                    history = {key: data[key] for key in ("loss", "r2") if key in data.files}
            except (OSError, ValueError) as error:
                raise StoreError(f"{directory}: unreadable training history ({error})") from None
            metrics = {
                probe: {
                    name: math.nan if value is None else value
                    for name, value in _read_json(
                        directory / PROBES / probe / "metrics.json", _METRICS
                    ).items()
                }
                for probe in header.probes
            }
        except StoreError as error:
            warnings.warn(f"skipping damaged run: {error}", stacklevel=2)
            return None
        row: dict[str, Any] = {
            "run_id": header.run_id,
            "status": header.status,
            "reason": header.reason,
        }
        row.update(config_columns(header.config))
        row.update(metric_columns(history, metrics))
        for name, seconds in header.timings.items():
            row[f"time.{name}"] = math.nan if seconds is None else seconds
        return row

    def read_header(self, run_id: str) -> RunHeader | None:
        """A stored run's header (``experiment.json``), or None if it is absent or damaged."""
        path = self.run_directory(run_id) / RUN_HEADER
        if not path.exists():
            return None
        try:
            return _read_json(path, RunHeader)
        except StoreError as error:
            warnings.warn(f"skipping damaged run header: {error}", stacklevel=2)
            return None

    def read_history(self, run_id: str) -> dict[str, np.ndarray]:
        """A stored run's training history (quantity → one value per evaluation), no model.

        Raises:
            StoreError: if the history is missing or unreadable.
        """
        path = self.run_directory(run_id) / TRAINED / "history.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError) as error:
            raise StoreError(f"{path}: unreadable training history ({error})") from None

    def runs_table(self) -> pd.DataFrame:
        """One row per complete, undamaged run in the store."""
        import pandas as pd

        rows = [row for run_id in self.run_ids() if (row := self.read_row(run_id)) is not None]
        return pd.DataFrame(rows)

    @property
    def comparisons(self) -> RunStoreComparisons:
        """Representations and pair distances of the comparison stage."""
        return RunStoreComparisons(self)

    def suite_record_path(self, name: str) -> Path:
        """Where suite `name`'s record lives."""
        return self.root / SUITES / f"{name}.json"

    def write_suite_record(self, record: SuiteRecord) -> None:
        """Save a suite's record (atomically; safe when two processes write it at once)."""
        atomic_write_text(self.suite_record_path(record.name), record.model_dump_json(indent=1))

    def suite_records(self) -> list[SuiteRecord]:
        """The suites that ran into this store; a damaged record is reported and skipped."""
        folder = self.root / SUITES
        records = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                records.append(_read_json(path, SuiteRecord))
            except StoreError as error:
                warnings.warn(f"skipping suite record: {error}", stacklevel=2)
        return records

    def suite_table(
        self, runs: Sequence[SuiteRun], outcomes: Mapping[str, Mapping[str, Any]] | None = None
    ) -> pd.DataFrame:
        """A suite's table: one :func:`planned_row` per planned run."""
        import pandas as pd

        outcomes = outcomes or {}
        return pd.DataFrame(
            [planned_row(run, self.read_row(run.run_id), outcomes.get(run.run_id)) for run in runs]
        )


COMPARISONS = "comparisons"
#: The long form of a suite's comparison results.
PAIR_COLUMNS = ("comparison", "run_a", "run_b", "metric", "value")
#: The pair cache also keeps which representations each distance was computed from.
_CACHE_COLUMNS = ("run_a", "run_b", "metric", "value", "digest_a", "digest_b")


def empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    """An empty frame with these columns (object-typed)."""
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


@dataclasses.dataclass(frozen=True)
class StoredRepresentation:
    """A network's representation for one comparison, and the digest of its file.

    The digest ties cached pair distances to the exact representations they came from, so a
    run that is recomputed (and so represented anew) never reuses distances of its old self.
    """

    arrays: dict[str, np.ndarray]
    digest: str


class RunStoreComparisons:
    """The comparison part of a store: per-run representations and cached pair distances.

    Layout::

        <store>/<run id>/comparisons/<comparison key>/   one representation (arrays.npz)
        <store>/comparisons/<comparison key>/*.parquet   pair distances, one file per batch

    A representation is written atomically beside its run (with its own manifest: the run's
    manifest is untouched). Pair distances are appended as uniquely named Parquet files (run_a,
    run_b, metric, value and the digests of both representations), so a killed stage loses at
    most the batch in flight and two processes never write the same file; reading merges them.
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def representation_directory(self, run_id: str, key: str) -> Path:
        """Where run `run_id`'s representation for comparison `key` lives."""
        return self.store.run_directory(run_id) / COMPARISONS / key

    def save_representation(
        self, run_id: str, key: str, arrays: Mapping[str, Any]
    ) -> StoredRepresentation:
        """Store one representation (NumPy arrays only; no pickle)."""
        directory = self.representation_directory(run_id, key)
        with atomic_directory(directory, overwrite=True) as temporary:
            # Typed Any: pyright matches **arrays against savez's keyword `allow_pickle`.
            contents: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
            np.savez(temporary / "arrays.npz", **contents)
        stored = self.load_representation(run_id, key)
        if stored is None:
            raise StoreError(f"{directory}: representation could not be read back")
        return stored

    def load_representation(self, run_id: str, key: str) -> StoredRepresentation | None:
        """A stored representation, or None if absent; a damaged one is reported (and None)."""
        directory = self.representation_directory(run_id, key)
        if not directory.exists():
            return None
        try:
            verify_manifest(directory)
            with np.load(directory / "arrays.npz", allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            return StoredRepresentation(arrays, file_digest(directory / "arrays.npz"))
        except (StoreError, OSError, ValueError) as error:
            warnings.warn(f"recomputing representation: {directory}: {error}", stacklevel=2)
            return None

    def pair_directory(self, key: str) -> Path:
        """Where comparison `key`'s pair distances are cached."""
        return self.store.root / COMPARISONS / key

    def save_pairs(self, key: str, frame: pd.DataFrame) -> None:
        """Append a batch of pair distances (columns as the cache keeps them)."""
        name = uuid.uuid4().hex[:16]
        atomic_write_parquet(
            self.pair_directory(key) / f"{name}.parquet", frame.loc[:, list(_CACHE_COLUMNS)]
        )

    def load_pairs(self, key: str) -> pd.DataFrame:
        """Every cached pair distance of comparison `key`; unreadable batches are skipped."""
        import pandas as pd

        frames = []
        for path in sorted(self.pair_directory(key).glob("*.parquet")):
            try:
                frame = pd.read_parquet(path)
                if list(frame.columns) != list(_CACHE_COLUMNS):
                    raise ValueError(f"columns {list(frame.columns)}")
            except Exception as error:  # noqa: BLE001 - pyarrow raises many types on bad files
                warnings.warn(f"skipping damaged pair cache {path}: {error}", stacklevel=2)
                continue
            frames.append(frame)
        if not frames:
            return empty_frame(_CACHE_COLUMNS)
        merged = pd.concat(frames, ignore_index=True)
        return merged.drop_duplicates(
            ["run_a", "run_b", "metric", "digest_a", "digest_b"], keep="last"
        )

    def suite_pairs_path(self, suite: str) -> Path:
        """Where a suite's comparison results are saved beside its record."""
        return self.store.root / SUITES / f"{suite}.comparisons.parquet"
