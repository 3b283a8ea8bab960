"""Crash-safe files: atomic directory writes and checksum manifests.

Every saved result directory carries ``manifest.json`` with the SHA-256 of each file. A
directory is written under a temporary name and renamed into place only when complete, so a
reader never sees a half-written result; a file changed or truncated later fails verification.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from mechscope.errors import StoreError

MANIFEST = "manifest.json"


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
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))


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
    try:
        listed = json.loads((directory / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError) as error:
        raise StoreError(f"{directory}: no readable {MANIFEST} ({error})") from None
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
