"""Training callbacks the runner attaches: a progress bar and the lifecycle-hook bridge."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
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
        """Open the bar (once: networks trained together share it)."""
        if self._bar is not None:
            return
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
    """Forwards training events to the plugins' lifecycle hooks, each under its run's id.

    When seeds train together, ``fit_many`` sends each event once per network, in the order
    of its models, and tags evaluation rows with ``"seed"`` (the network's index); the bridge
    uses that to name the right run.

    Args:
        hook: the plugin manager's hook relay.
        run_ids: the runs this fit trains, in the order of the fit's models.
    """

    def __init__(self, hook: Any, run_ids: Sequence[str]) -> None:
        self.hook = hook
        self.run_ids = list(run_ids)
        self._started = 0
        self._ended = 0

    def _run_id(self, position: int) -> str:
        return self.run_ids[min(position, len(self.run_ids) - 1)]

    def on_train_start(self, *, model: AbstractModel, task: AbstractTask, n_steps: int) -> None:
        """Fire ``mechscope_train_start``."""
        self.hook.mechscope_train_start(run_id=self._run_id(self._started), n_steps=n_steps)
        self._started += 1

    def on_evaluation(self, *, step: int, metrics: Mapping[str, float]) -> None:
        """Fire ``mechscope_train_progress``."""
        position = int(metrics.get("seed", 0)) if len(self.run_ids) > 1 else 0
        self.hook.mechscope_train_progress(
            run_id=self._run_id(position), step=step, metrics=dict(metrics)
        )

    def on_train_end(self, *, run: TrainedRun) -> None:
        """Fire ``mechscope_train_end``."""
        self.hook.mechscope_train_end(
            run_id=self._run_id(self._ended), status=run.status, reason=run.reason
        )
        self._ended += 1

    def close_unfinished(self, *, reason: str) -> None:
        """Fire ``mechscope_train_end`` (status ``failed``) for runs still training.

        Called when the trainer raised, so every ``train_start`` gets its ``train_end``.
        """
        for position in range(self._ended, self._started):
            self.hook.mechscope_train_end(
                run_id=self._run_id(position), status="failed", reason=reason
            )
        self._ended = self._started
