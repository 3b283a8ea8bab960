"""Checkpoints: the training state (equinox leaves) plus a JSON header, written atomically.

Layout of a checkpoint directory::

    checkpoint.json        header: format, step, payload file name, configs, status, history
    state-000001000.eqx    TrainState leaves (eqx.tree_serialise_leaves)

The payload is written first under a new name, then the header is replaced with
``os.replace``; the header is the commit point, so a crash at any moment leaves the previous
complete checkpoint readable. Older payloads are deleted only after the header is replaced.
No pickle is involved: loading reads arrays into the structure of a freshly built state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import numpy as np

import mechscope

from ._step import TrainState

FORMAT = 1
HEADER = "checkpoint.json"

#: Trainer fields that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = frozenset(
    {"steps", "target_r2", "eval_every", "checkpoint_every", "parallel_seeds"}
)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
    if header.get("format") != FORMAT:
        raise mechscope.StoreError(
            f"checkpoint {path} has format {header.get('format')!r}; this trainer reads {FORMAT}"
        )
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
