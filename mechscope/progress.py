"""Training callbacks the runner attaches: a progress bar and the lifecycle-hook bridge."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from mechscope.model import AbstractModel
from mechscope.task import AbstractTask
from mechscope.training import Callback, TrainedRun


class ProgressBar(Callback):
    """A tqdm bar over training steps showing loss, output R² and time left."""

    def __init__(self, description: str = "training", *, leave: bool = False) -> None:
        self.description = description
        self.leave = leave
        self._bar: Any = None

    def on_train_start(self, *, model: AbstractModel, task: AbstractTask, n_steps: int) -> None:
        """Open the bar."""
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=n_steps,
            desc=self.description,
            leave=self.leave,
            file=sys.stderr,
            unit="step",
            dynamic_ncols=True,
        )

    def on_evaluation(self, *, step: int, metrics: Mapping[str, float]) -> None:
        """Advance to `step` and show the latest loss and R²."""
        if self._bar is None:
            return
        self._bar.update(max(0, step - self._bar.n))
        shown = {k: f"{metrics[k]:.4g}" for k in ("loss", "r2") if k in metrics}
        self._bar.set_postfix(shown, refresh=False)

    def on_train_end(self, *, run: TrainedRun) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class HookBridge(Callback):
    """Forwards training events to the plugins' lifecycle hooks."""

    def __init__(self, hook: Any, run_id: str) -> None:
        self.hook = hook
        self.run_id = run_id

    def on_train_start(self, *, model: AbstractModel, task: AbstractTask, n_steps: int) -> None:
        """Fire ``mechscope_train_start``."""
        self.hook.mechscope_train_start(run_id=self.run_id, n_steps=n_steps)

    def on_evaluation(self, *, step: int, metrics: Mapping[str, float]) -> None:
        """Fire ``mechscope_train_progress``."""
        self.hook.mechscope_train_progress(run_id=self.run_id, step=step, metrics=dict(metrics))

    def on_train_end(self, *, run: TrainedRun) -> None:
        """Fire ``mechscope_train_end``."""
        self.hook.mechscope_train_end(run_id=self.run_id, status=run.status, reason=run.reason)
