"""The trainer interface, training callbacks and the saved result of training."""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import equinox as eqx
import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from mechscope.config import Config, config_to_json_dict
from mechscope.errors import StoreError
from mechscope.model import AbstractModel
from mechscope.task import AbstractTask

if TYPE_CHECKING:
    from mechscope.plugins import Registry

RunStatus = Literal["completed", "diverged", "stopped"]


class Callback:
    """Receives training events from a trainer's Python loop (never from jitted code).

    Subclass and override what you need; every method is a no-op by default.
    """

    def on_train_start(self, *, model: AbstractModel, task: AbstractTask, n_steps: int) -> None:
        """Called once before the first step."""

    def on_evaluation(self, *, step: int, metrics: Mapping[str, float]) -> None:
        """Called after each evaluation with the history row just recorded."""

    def on_train_end(self, *, run: TrainedRun) -> None:
        """Called once with the finished (or diverged) run."""


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained model with its training history.

    Attributes:
        model: the trained model (an equinox module).
        history: per-evaluation arrays keyed by quantity (``"step"``, ``"loss"``, ...), all of
            the same length.
        status: ``"completed"``, ``"diverged"`` (a NaN/Inf appeared) or ``"stopped"``.
        reason: why training ended, in words.
        metadata: JSON-serialisable extras (wall time, steps run, trainer config, ...).
        model_name: the registered name of the model, needed to rebuild it when loading.
    """

    model: AbstractModel
    history: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    status: RunStatus = "completed"
    reason: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_name: str | None = None

    def save(self, directory: str | Path, *, registry: Registry | None = None) -> None:
        """Write ``trained.json``, ``model.eqx`` and ``history.npz`` into `directory`.

        No pickle: the model's leaves go through ``eqx.tree_serialise_leaves`` and its
        structure is rebuilt from the config when loading.

        Args:
            directory: where to write (created if needed).
            registry: the registry to look the model's name up in when ``model_name`` is
                unset (e.g. ``experiment.plugins.registry``).

        Raises:
            StoreError: if ``model_name`` is unset and no registry is given to find it.
        """
        if self.model_name is None and registry is None:
            raise StoreError(
                "cannot save a trained run without its model's name: set model_name or pass "
                "the registry that holds the model"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = self.model_name
        if name is None:
            assert registry is not None  # checked above
            name = registry.name_for_config("model", self.model.config)
        header = {
            "model_name": name,
            "model_config": config_to_json_dict(self.model.config),
            "n_inputs": self.model.n_inputs,
            "n_outputs": self.model.n_outputs,
            "status": self.status,
            "reason": self.reason,
            "metadata": self.metadata,
        }
        (directory / "trained.json").write_text(json.dumps(header, indent=1, default=str))
        eqx.tree_serialise_leaves(directory / "model.eqx", self.model)
        # Typed Any: pyright matches **arrays against savez's keyword `allow_pickle`.
        history: dict[str, Any] = {k: np.asarray(v) for k, v in self.history.items()}
        np.savez(directory / "history.npz", **history)

    @classmethod
    def load(cls, directory: str | Path, *, registry: Registry) -> TrainedRun:
        """Load a run written by :meth:`save`, rebuilding the model from its registered name.

        Args:
            directory: the directory :meth:`save` wrote.
            registry: where to find the model (e.g. ``experiment.plugins.registry``).

        Raises:
            StoreError: if a file is missing or unreadable.
        """
        directory = Path(directory)
        try:
            header = json.loads((directory / "trained.json").read_text())
            entry = registry.get("model", header["model_name"])
            config = entry.validate(header["model_config"])
            like = eqx.filter_eval_shape(
                entry.factory,
                config,
                n_inputs=header["n_inputs"],
                n_outputs=header["n_outputs"],
                key=jax.random.key(0),
            )
            model = eqx.tree_deserialise_leaves(directory / "model.eqx", like)
            with np.load(directory / "history.npz", allow_pickle=False) as data:
                history = {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise StoreError(f"cannot load trained run from {directory}: {error}") from None
        return cls(
            model=model,
            history=history,
            status=header["status"],
            reason=header["reason"],
            metadata=header["metadata"],
            model_name=header["model_name"],
        )


class AbstractTrainer(eqx.Module):
    """Fits a model to a task. The loop is Python around one jitted step."""

    config: eqx.AbstractVar[Config]

    @abc.abstractmethod
    def fit(
        self,
        model: AbstractModel,
        task: AbstractTask,
        *,
        key: PRNGKeyArray,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: Path | None = None,
    ) -> TrainedRun:
        """Train `model` on `task`.

        Args:
            model: the initial model.
            task: the task to sample training trials from.
            key: PRNG key for trial sampling and training noise.
            callbacks: receivers of training events (progress, logging, hooks).
            checkpoint_dir: where to keep checkpoints; if it holds one, training resumes from
                it. None disables checkpointing.
        """

    def fit_many(
        self,
        models: Sequence[AbstractModel],
        task: AbstractTask,
        *,
        keys: Sequence[PRNGKeyArray],
        callbacks: Sequence[Callback] = (),
        checkpoint_dirs: Sequence[Path | None] | None = None,
    ) -> list[TrainedRun]:
        """Train several networks (e.g. seeds) on the same task.

        The default trains them one after another; trainers may override this to train them
        together (e.g. vmapped), which must give the same result as separate calls.
        """
        if checkpoint_dirs is None:
            checkpoint_dirs = [None] * len(models)
        return [
            self.fit(model, task, key=key, callbacks=callbacks, checkpoint_dir=directory)
            for model, key, directory in zip(models, keys, checkpoint_dirs, strict=True)
        ]
