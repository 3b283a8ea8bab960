"""Checkpoints: the training state (equinox leaves) plus a JSON header, written atomically.

Layout of a checkpoint directory::

    checkpoint.json        header: format, step, payload file name, configs, status, history
    state-000001000.eqx    TrainState leaves (eqx.tree_serialise_leaves)

The payload is written first under a new name, then the header is replaced with
``os.replace``; the header is the commit point, so a crash at any moment leaves the previous
complete checkpoint readable. Older payloads are deleted only after the header is replaced.
No pickle is involved: loading reads arrays into the structure of a freshly built state.

A checkpoint directory belongs to one training at a time (the run store's per-run lock sees
to that), so leftovers of a killed write are removed when training starts, and a checkpoint
that cannot be read (pickled or object arrays, a damaged header) is moved aside with a warning
and the run trains from the start instead of failing until someone deletes it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import numpy as np

import mechscope

from ._step import TrainState

FORMAT = 1
HEADER = "checkpoint.json"
_HEADER_KEYS = ("step", "payload", "status", "reason", "trainer_config", "model_config", "history")

#: Trainer fields that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = frozenset(
    {"steps", "target_r2", "eval_every", "checkpoint_every", "parallel_seeds"}
)


def _write_atomically(path: Path, data: bytes) -> None:
    # Unique per writer and call, in the store's `.<name>.tmp-<pid>-...` form.
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def history_to_json(history: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """History columns as plain JSON lists (NaN kept; Python's json writes it as NaN)."""
    return {name: [float(v) for v in values] for name, values in history.items()}


def save_checkpoint(
    directory: Path,
    state: TrainState,
    *,
    history: Mapping[str, list[float]],
    trainer_config: Mapping[str, Any],
    model_config: Mapping[str, Any],
    status: str,
    reason: str,
) -> Path:
    """Write `state` and the history so far into `directory`; returns the payload path."""
    import io

    directory.mkdir(parents=True, exist_ok=True)
    step = int(np.asarray(state.step))
    payload = f"state-{step:09d}.eqx"
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, state)
    _write_atomically(directory / payload, buffer.getvalue())
    header = {
        "format": FORMAT,
        "mechscope_version": mechscope.__version__,
        "step": step,
        "payload": payload,
        "status": status,
        "reason": reason,
        "trainer_config": dict(trainer_config),
        "model_config": dict(model_config),
        "model_class": type(state.model).__name__,
        "history": history_to_json(history),
    }
    _write_atomically(directory / HEADER, json.dumps(header, indent=1).encode())
    for stale in directory.glob("state-*.eqx"):
        if stale.name != payload:
            stale.unlink(missing_ok=True)
    return directory / payload


def read_header(directory: Path) -> dict[str, Any] | None:
    """The checkpoint header in `directory`, or None if there is no checkpoint.

    Raises:
        mechscope.StoreError: if the header exists but cannot be read.
    """
    path = Path(directory) / HEADER
    if not path.exists():
        return None
    try:
        header = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise mechscope.StoreError(f"unreadable checkpoint header {path}: {error}") from None
    if not isinstance(header, dict):
        raise mechscope.StoreError(f"unreadable checkpoint header {path}: not a JSON object")
    if header.get("format") != FORMAT:
        raise mechscope.StoreError(
            f"checkpoint {path} has format {header.get('format')!r}; this trainer reads {FORMAT}"
        )
    missing = [key for key in _HEADER_KEYS if key not in header]
    if missing:
        raise mechscope.StoreError(f"checkpoint header {path} lacks {', '.join(missing)}")
    return header


def load_checkpoint(directory: Path, like: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    """Read the checkpoint in `directory` into the structure of `like`.

    Returns:
        The state and the header, or None when `directory` holds no checkpoint.

    Raises:
        mechscope.StoreError: if the checkpoint is unreadable or does not fit `like`.
    """
    header = read_header(directory)
    if header is None:
        return None
    path = Path(directory) / header["payload"]
    try:
        with open(path, "rb") as handle:
            state = eqx.tree_deserialise_leaves(handle, like)
    except (OSError, ValueError, RuntimeError) as error:
        raise mechscope.StoreError(
            f"checkpoint {path} does not match this model and trainer: {error}"
        ) from None
    return state, header


def resume_or_restart(
    directory: Path, like: TrainState
) -> tuple[TrainState, dict[str, Any]] | None:
    """:func:`load_checkpoint`, except that a refused checkpoint does not block the run.

    Leftover temporaries of a killed write are removed first. A checkpoint that cannot be
    read into `like` (unreadable or unknown-format header, pickled or object arrays, a
    truncated payload) is moved into ``refused-<time>-<random>/`` inside `directory`, with a
    warning, and None is returned so training starts from scratch.
    """
    directory = Path(directory)
    for leftover in directory.glob(".*.tmp-*"):
        leftover.unlink(missing_ok=True)
    try:
        return load_checkpoint(directory, like)
    except mechscope.StoreError as error:
        aside = directory / f"refused-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        aside.mkdir()
        for path in [directory / HEADER, *directory.glob("state-*.eqx")]:
            if path.exists():
                os.replace(path, aside / path.name)
        warnings.warn(
            f"{error}; moved it to {aside} and training this run from the start", stacklevel=2
        )
        return None


def check_compatible(
    header: Mapping[str, Any],
    *,
    trainer_config: Mapping[str, Any],
    model_config: Mapping[str, Any],
    directory: Path,
) -> None:
    """Refuse to resume from a checkpoint written by a different training setup.

    Raises:
        mechscope.ConfigError: naming the fields that differ.
    """
    saved = header["trainer_config"]
    differing = sorted(
        name
        for name in set(saved) | set(trainer_config)
        if name not in RESUMABLE_FIELDS and saved.get(name) != trainer_config.get(name)
    )
    if differing:
        raise mechscope.ConfigError(
            f"checkpoint in {directory} was written with different trainer settings "
            f"({', '.join(differing)}); use another checkpoint_dir or the same settings"
        )
    if dict(header["model_config"]) != dict(model_config):
        raise mechscope.ConfigError(
            f"checkpoint in {directory} was written for a different model configuration; "
            f"use another checkpoint_dir"
        )
