"""The run store: the one place that knows how runs and suites are laid out on disk.

A store is a directory::

    <store>/<run id>/experiment.json     the run's header (config, status, probe list, timings)
    <store>/<run id>/trained/            the trained network (``TrainedRun.save``)
    <store>/<run id>/probes/<probe>/     each probe's result (``ProbeResult.save``)
    <store>/<run id>/manifest.json       SHA-256 of every file above
    <store>/.checkpoints/<run id>/       the trainer's checkpoints while the run trains
    <store>/.locks/<run id>.lock         who is computing the run now (pid, host, start time)
    <store>/suites/<suite name>.json     each suite's definition and run list

A run directory is written under a temporary name and renamed into place only when complete,
so a reader never sees a half-written run; a file changed or truncated later fails
verification. Every file read back is validated against a schema: a damaged one raises a
:class:`~mechscope.StoreError` naming it, so one bad run never takes a listing down.

The store is shared: several processes (two suites, dask workers on a shared filesystem) may
write it at once. Every temporary name is unique and carries its writer's pid and host, so a
killed writer's leftovers are recognised and swept when the store is opened (never a live
writer's); replacing a directory swaps it atomically and cannot collide with another writer;
and a per-run lock (:meth:`RunStore.try_lock`, :meth:`RunStore.lock`) lets one process compute
a run while the others wait and then reuse it. A lock whose holder died is broken.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import glob
import hashlib
import json
import math
import os
import re
import shutil
import socket
import threading
import time
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
LOCKS = ".locks"
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
        trained_jointly_with: how many networks were trained together in the fit that made
            this one (1: alone). Vmapped training agrees with training alone only to float
            tolerance, so this says which of the two a stored run is.
        environment: where it was trained: ``mechscope_version``, ``jax_version``,
            ``platform`` (the JAX backend, e.g. ``cpu``), ``device`` (the device kind) and
            ``host``. Empty for runs stored before this was recorded.
    """

    model_config = pydantic.ConfigDict(extra="ignore")

    run_id: str
    config: dict[str, Any]
    status: str
    reason: str = ""
    probe_errors: dict[str, str] = {}
    timings: dict[str, float | None] = {}
    probes: list[str] = []
    trained_jointly_with: int = 1
    environment: dict[str, str] = {}


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


HOST = socket.gethostname()


def _process_space() -> str:
    """What makes a pid meaningful: the host name, the boot and the pid namespace.

    Two containers can share a host name (host networking, ``--hostname``) yet not their pids;
    a pid is judged alive or dead only by a process that sees the same pid space.
    """
    parts = [HOST]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(
                os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip()
            )
        except OSError:
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


PROCESS_SPACE = _process_space()
# Host names may hold any character; temporary names carry a short digest of the pid space.
_HOST_TAG = PROCESS_SPACE[:8]
# `.<name>.tmp-<pid>-<host tag>-<random>` (or `.old-`, a replaced copy being deleted). Names
# without a host (`.<name>.tmp-<pid>-<random>`, a trainer's checkpoint files) or from older
# versions (`.<name>.tmp-<random>`) match too, and are judged by age alone.
_SCRATCH = re.compile(
    r"^\..+\.(?:tmp|old)-(?:(?P<pid>[0-9]+)-(?:(?P<host>[0-9a-f]{8})-)?)?[0-9a-f]+$"
)
#: Leftovers of a writer on another host (whose pid cannot be checked) older than this go.
STALE_SCRATCH_S = 1800.0


def scratch_path(path: Path, kind: str = "tmp") -> Path:
    """A unique sibling name for a temporary copy of `path`, naming this writer (pid, host).

    Args:
        path: the file or directory the temporary copy stands for.
        kind: ``"tmp"`` for a copy being written, ``"old"`` for a replaced copy being deleted.
    """
    path = Path(path)
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{_HOST_TAG}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if os.name == "nt":  # signal 0 would be CTRL_C_EVENT there: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _scratch_is_stale(path: Path, *, max_age_s: float) -> bool:
    """Whether a temporary entry was left by a dead writer (never true for a live one)."""
    match = _SCRATCH.match(path.name)
    if match is None:
        return False
    if match["host"] == _HOST_TAG and match["pid"] is not None:
        pid = int(match["pid"])
        # A writer on this host is judged by its pid alone: alive means still writing.
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > max_age_s


def remove_stale_scratch(
    folder: Path, *, name: str | None = None, max_age_s: float = STALE_SCRATCH_S
) -> list[Path]:
    """Delete the temporaries in `folder` that a killed writer left behind.

    An entry written on this host goes when its writer's pid is gone; one from another host
    (or with an old-style name) when it is older than `max_age_s`. A live writer's entries
    are never touched.

    Args:
        folder: the directory to sweep (nothing happens if it does not exist).
        name: only the temporaries of this file or directory name.
        max_age_s: the age beyond which another host's leftovers count as abandoned.

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    stem = "*" if name is None else glob.escape(name)
    removed: list[Path] = []
    try:
        entries = [*folder.glob(f".{stem}.tmp-*"), *folder.glob(f".{stem}.old-*")]
    except OSError:
        return removed
    for entry in entries:
        if not _scratch_is_stale(entry, max_age_s=max_age_s):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        if not entry.exists():
            removed.append(entry)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step, safe against concurrent writers.

    Each writer uses its own temporary name, so two processes writing the same file never
    trip over each other's half-written copy; the last complete write wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = scratch_path(path)
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Replace `path` with `frame` as Parquet in one step (unique temporary name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = scratch_path(path)
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
    any existing `target` is left untouched. Safe against concurrent writers of the same
    `target`: each has its own temporary name, and a replace (see :func:`replace_directory`)
    never collides with another; the last complete copy wins. Leftovers of killed writers of
    this `target` are swept first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(target.parent, name=target.name)
    temporary = scratch_path(target)
    temporary.mkdir()
    try:
        yield temporary
        write_manifest(temporary)
        replace_directory(temporary, target, overwrite=overwrite)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


_REPLACE_ATTEMPTS = 100
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns:
        False where the system or filesystem cannot (the caller then falls back).

    Raises:
        FileNotFoundError: if either path vanished.
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code == errno.ENOENT:
            raise FileNotFoundError(code, os.strerror(code), str(second))
        if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            return False
        raise OSError(code, os.strerror(code), str(second))
    return True


_RENAMEAT2: list[Any] = []


def _renameat2() -> Any:
    """The C library's ``renameat2`` (glibc), or None where there is none (macOS, musl)."""
    if not _RENAMEAT2:
        try:
            function = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError, TypeError):
            function = None
        _RENAMEAT2.append(function)
    return _RENAMEAT2[0]


def replace_directory(source: Path, target: Path, *, overwrite: bool = False) -> None:
    """Move the complete directory `source` to `target`, replacing any `target` there.

    Where the filesystem can swap two directories in one step, the old `target` ends up at
    `source` (for the caller to delete) and a reader never finds `target` missing. Elsewhere
    the old copy is renamed aside to a unique name first, then `source` is renamed in; a
    concurrent writer doing the same is never an error: whichever rename loses tries again.

    Raises:
        StoreError: if `target` exists and `overwrite` is false, or if other writers kept
            replacing `target` through every attempt and it is still not a complete copy.
    """
    for _ in range(_REPLACE_ATTEMPTS):
        try:
            os.rename(source, target)  # only succeeds when `target` is absent (or empty)
            return
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if not overwrite:
            raise StoreError(f"{target} already exists")
        try:
            if _exchange(source, target):
                return
        except FileNotFoundError:
            continue  # another writer moved `target` aside meanwhile: rename into the gap
        retired = scratch_path(target, "old")
        try:
            os.rename(target, retired)
        except FileNotFoundError:
            continue
        shutil.rmtree(retired, ignore_errors=True)
    # Another complete copy is in place: for content-addressed runs it is as good as ours.
    try:
        verify_manifest(target)
    except StoreError:
        raise StoreError(
            f"{target}: could not replace it; other writers kept replacing it"
        ) from None


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


class LockHolder(pydantic.BaseModel):
    """What a run's lock file holds: who is computing the run, and since when.

    Attributes:
        pid: the holder's process id (on `host`).
        host: the holder's host name.
        started: when the lock was taken (seconds since the epoch).
        token: unique to this taking of the lock, so a holder never releases another's.
        process_space: digest of host, boot and pid namespace; only a process in the same
            space may judge `pid` dead (others go by the lock's age).
    """

    model_config = pydantic.ConfigDict(extra="ignore")

    pid: int
    host: str
    started: float
    process_space: str = ""
    token: str

    def describe(self) -> str:
        """The holder in words: ``pid 123 on host-a since 2026-01-01 12:00:00``."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {since}"


def _read_lock(path: Path) -> tuple[bytes, LockHolder | None, float] | None:
    """A lock file's bytes, holder (None if unreadable) and age; None if there is no lock."""
    try:
        content = path.read_bytes()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        holder = LockHolder.model_validate_json(content)
    except pydantic.ValidationError:
        holder = None  # being written this instant, or damaged: judged by its age alone
    return content, holder, age


class RunLock:
    """A held per-run lock (see :meth:`RunStore.try_lock`); release it with :meth:`release`.

    While held, a background thread refreshes the lock file's modification time, so waiters on
    other hosts can tell a long computation from a dead one.

    Attributes:
        path: the lock file.
        holder: what the lock file holds.
    """

    def __init__(self, path: Path, holder: LockHolder, *, heartbeat_s: float) -> None:
        self.path = path
        self.holder = holder
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name=f"lock {path.name}", daemon=True
        )
        self._heartbeat.start()

    def __repr__(self) -> str:
        return f"RunLock({str(self.path)!r})"

    def _still_mine(self) -> bool:
        state = _read_lock(self.path)
        return state is not None and state[1] is not None and state[1].token == self.holder.token

    def _beat(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            if not self._still_mine():
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Give the lock back (a lock broken and retaken by another is left to its holder)."""
        self._stop.set()
        if self._still_mine():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _create_lock(path: Path, *, heartbeat_s: float) -> RunLock | None:
    """Take the lock at `path` if nobody holds it (O_CREAT | O_EXCL: one process wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = LockHolder(
        pid=os.getpid(),
        host=HOST,
        started=time.time(),
        token=uuid.uuid4().hex,
        process_space=PROCESS_SPACE,
    )
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(descriptor, "w") as handle:
        handle.write(holder.model_dump_json())
        handle.flush()
        os.fsync(handle.fileno())
    return RunLock(path, holder, heartbeat_s=heartbeat_s)


def _break_lock(path: Path, seen: bytes) -> None:
    """Remove a stale lock, unless it changed since it was judged stale (then leave it)."""
    aside = scratch_path(path, "old")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # released, or broken by another waiter
    try:
        if aside.read_bytes() != seen:
            # Someone took the lock afresh in between: put theirs back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)


def _env_seconds(name: str, default: float | None) -> float | None:
    """A duration in seconds from environment variable `name` ("none" for no limit)."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    if value.strip().lower() == "none":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise StoreError(f"{name}={value!r}: expected a number of seconds or 'none'") from None
    if not seconds >= 0:
        raise StoreError(f"{name}={value!r}: expected a number of seconds >= 0 or 'none'")
    return seconds


class RunStore:
    """A directory of runs and suite records (see the module docstring for the layout).

    Opening a store sweeps the temporaries that killed writers left (see
    :func:`remove_stale_scratch`).

    Args:
        root: the store's directory; created when the first thing is written.
        lock_timeout_s: how long :meth:`lock` waits for a run another process is computing
            before giving up. None: the environment variable ``MECHSCOPE_LOCK_TIMEOUT`` if it
            is set (seconds, or ``none``), else no limit (wait as long as the holder lives).
        stale_lock_s: a lock whose holder has not refreshed it for this long counts as
            abandoned (a holder refreshes it every ``stale_lock_s / 4`` seconds, at most every
            minute); a lock held by a dead process on this host is broken at once. None:
            ``MECHSCOPE_STALE_LOCK_AGE`` if set, else 600. The environment variables let
            suites started from the command line and dask workers be tuned without code.
        poll_s: how often a waiting process looks at the lock again.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        lock_timeout_s: float | None = None,
        stale_lock_s: float | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.root = Path(root)
        if lock_timeout_s is None:
            lock_timeout_s = _env_seconds("MECHSCOPE_LOCK_TIMEOUT", None)
        if stale_lock_s is None:
            stale_lock_s = _env_seconds("MECHSCOPE_STALE_LOCK_AGE", 600.0)
        self.lock_timeout_s = lock_timeout_s
        self.stale_lock_s = 600.0 if stale_lock_s is None else stale_lock_s
        self.poll_s = poll_s
        if self.root.is_dir():
            self.remove_stale_scratch()

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

    def remove_stale_scratch(self) -> list[Path]:
        """Sweep what killed writers left: temporary runs, records, caches and checkpoints.

        Never a live writer's (see :func:`remove_stale_scratch`). Run directories themselves
        are not walked (a store may hold thousands); a representation's leftovers go when it
        is next written.

        Returns:
            The paths removed.
        """
        folders = [self.root, self.root / SUITES, self.root / LOCKS, self.root / CHECKPOINTS]
        for parent in (self.root / COMPARISONS, self.root / CHECKPOINTS):
            with contextlib.suppress(OSError):
                folders += [d for d in parent.iterdir() if d.is_dir()]
        removed: list[Path] = []
        for folder in folders:
            removed += remove_stale_scratch(folder)
        return removed

    def lock_path(self, run_id: str) -> Path:
        """Where run `run_id`'s lock file lives."""
        return self.root / LOCKS / f"{run_id}.lock"

    def lock_holder(self, run_id: str) -> LockHolder | None:
        """Who holds run `run_id`'s lock, or None if nobody (or the lock is unreadable)."""
        state = _read_lock(self.lock_path(run_id))
        return None if state is None else state[1]

    def _stale_because(self, holder: LockHolder | None, age: float) -> str | None:
        """Why a lock is abandoned, or None if its holder may still be at work."""
        if (
            holder is not None
            and holder.process_space == PROCESS_SPACE
            and not _pid_alive(holder.pid)
        ):
            return "that process is gone"
        if age > self.stale_lock_s:
            return f"it has not been refreshed for {age:.0f} s"
        return None

    def try_lock(self, run_id: str) -> RunLock | None:
        """Take run `run_id`'s lock if nobody holds it; never waits.

        A stale lock (see ``stale_lock_s``) is broken, with a warning, and taken.

        Returns:
            The held lock, or None if a live process holds it.
        """
        path = self.lock_path(run_id)
        heartbeat_s = max(min(60.0, self.stale_lock_s / 4), 0.05)
        for _ in range(3):
            lock = _create_lock(path, heartbeat_s=heartbeat_s)
            if lock is not None:
                return lock
            state = _read_lock(path)
            if state is None:
                continue  # released just now: take it
            content, holder, age = state
            why = self._stale_because(holder, age)
            if why is None:
                return None
            who = "an unreadable holder" if holder is None else holder.describe()
            warnings.warn(f"breaking the lock on run {run_id} held by {who}: {why}", stacklevel=2)
            _break_lock(path, content)
        return None

    def lock(self, run_id: str, *, timeout_s: float | None = None) -> RunLock:
        """Take run `run_id`'s lock, waiting while another live process holds it.

        While waiting, a warning names the holder (again every minute).

        Args:
            run_id: the run.
            timeout_s: the longest wait; None uses the store's ``lock_timeout_s``.

        Raises:
            StoreError: if the lock is still held after the timeout.
        """
        timeout_s = self.lock_timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        announced: float | None = None
        while True:
            lock = self.try_lock(run_id)
            if lock is not None:
                return lock
            now = time.monotonic()
            holder = self.lock_holder(run_id)
            who = "another process" if holder is None else holder.describe()
            if timeout_s is not None and now - started >= timeout_s:
                raise StoreError(
                    f"run {run_id} is still being computed by {who} after waiting "
                    f"{now - started:.0f} s (lock {self.lock_path(run_id)})"
                )
            if announced is None or now - announced >= 60:
                warnings.warn(
                    f"run {run_id} is being computed by {who}; waiting for it "
                    f"({now - started:.0f} s so far)",
                    stacklevel=2,
                )
                announced = now
            time.sleep(self.poll_s)

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

    def stored_at(self, run_id: str) -> float | None:
        """When run `run_id` was stored (``time.time()`` seconds), or None if it is not."""
        try:
            return (self.run_directory(run_id) / MANIFEST).stat().st_mtime
        except OSError:
            return None

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

    def load(
        self, run_id: str, *, registry: Registry, report_damage: bool = True
    ) -> StoredRun | None:
        """The stored run, or None if it is absent; a damaged one is reported (and None).

        Args:
            run_id: the run.
            registry: where to find the model.
            report_damage: warn about a damaged run (off for a first look that is repeated).
        """
        directory = self.run_directory(run_id)
        if not directory.exists():
            return None
        try:
            return read_run(directory, registry=registry)
        except StoreError as error:
            if report_damage:
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
        """Where suite `name`'s record lives (an unsafe name is refused: StoreError)."""
        if Path(name).name != name or name.startswith(".") or "\0" in name:
            raise StoreError(f"suite name {name!r} is not a file name inside the store")
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
