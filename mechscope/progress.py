"""Progress: the training bar and hook bridge a runner attaches, and a suite's overall bar.

:class:`SuiteProgress` is a plugin of the lifecycle hooks: registered with the suite's plugin
manager while an in-process executor runs, it shows which group is training (step, loss) and
which probe runs, and how many runs were loaded from the store or computed.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mechscope.hookspecs import hookimpl
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
    uses that to name the right run. Untagged rows belong to the network started last (a
    ``fit_many`` that trains its networks one after another).

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
        # Networks trained together tag their rows with their index; a trainer that trains
        # them one after another (the default fit_many) reports on the one it started last.
        position = int(metrics["seed"]) if "seed" in metrics else max(self._started - 1, 0)
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


class SuiteProgress:
    """A suite's bar over runs, with the current phase and how much came from the cache.

    The bar counts finished runs; its status reads, e.g., ``4 loaded, 2 computed | training
    [model.tau=0.1] (2 seeds): step 200/600, loss 0.0123`` or ``... | probing
    [model.tau=0.1] seed 1: jpca``. The phase comes from the lifecycle hooks, so it is shown
    only where the runs execute in this process (register the object with the suite's plugin
    manager); the counts come from :meth:`finished` and work with any executor.

    Args:
        labels: run id → (variant label, seed), for the runs of the suite.
        total: the number of runs.
        loaded: runs already complete in the store (they are not recomputed).
        file: the stream to draw on (default: ``sys.stderr``).
    """

    def __init__(
        self,
        labels: Mapping[str, tuple[str, int]],
        *,
        total: int,
        loaded: int,
        file: Any = None,
    ) -> None:
        from tqdm.auto import tqdm

        self.labels = dict(labels)
        self.loaded = loaded
        self.computed = 0
        self.failed = 0
        self.phase = ""
        self._training: dict[str, int] = {}  # run id → its step count
        self._latest: dict[str, tuple[int, float]] = {}  # run id → (step, loss)
        self._bar = tqdm(
            total=total,
            initial=loaded,
            desc="suite",
            unit="run",
            file=file if file is not None else sys.stderr,
            dynamic_ncols=True,
        )
        self._show()

    @property
    def status(self) -> str:
        """The bar's status text: the counts, then the phase."""
        counts = f"{self.loaded} loaded, {self.computed} computed"
        if self.failed:
            counts += f", {self.failed} failed"
        return f"{counts} | {self.phase}" if self.phase else counts

    def _show(self) -> None:
        # refresh=True draws now: phases change less often than the bar's own redraw interval.
        self._bar.set_postfix_str(self.status, refresh=True)

    def _group(self, run_id: str) -> str:
        variant, seed = self.labels.get(run_id, (run_id[:8], 0))
        others = [r for r in self._training if self.labels.get(r, ("",))[0] == variant]
        return (
            f"[{variant}] ({len(others)} seeds)" if len(others) > 1 else f"[{variant}] seed {seed}"
        )

    @hookimpl
    def mechscope_train_start(self, run_id: str, n_steps: int) -> None:
        """A network of the group starts training."""
        self._training[run_id] = n_steps
        self._latest.pop(run_id, None)
        self.phase = f"training {self._group(run_id)}: step 0/{n_steps}"
        self._show()

    @hookimpl
    def mechscope_train_progress(
        self, run_id: str, step: int, metrics: Mapping[str, float]
    ) -> None:
        """Show the step and the group's mean loss over the networks at this step."""
        if "loss" in metrics:
            self._latest[run_id] = (step, float(metrics["loss"]))
        at_step = [loss for s, loss in self._latest.values() if s == step]
        loss = f", loss {sum(at_step) / len(at_step):.4g}" if at_step else ""
        total = self._training.get(run_id, step)
        self.phase = f"training {self._group(run_id)}: step {step}/{total}{loss}"
        self._show()

    @hookimpl
    def mechscope_train_end(self, run_id: str) -> None:
        """Training of one network ended; the group stays shown until its probes start."""
        self._training.pop(run_id, None)
        if not self._training:
            self._latest.clear()

    @hookimpl
    def mechscope_probe_start(self, run_id: str, probe: str) -> None:
        """Show which probe runs on which network."""
        variant, seed = self.labels.get(run_id, (run_id[:8], 0))
        self.phase = f"probing [{variant}] seed {seed}: {probe}"
        self._show()

    def finished(self, statuses: Sequence[str]) -> None:
        """Count the runs an executor reported as failed, loaded or computed.

        ``cached`` means read back from the store (e.g. finished meanwhile by another
        process); any status but ``failed`` and ``cached`` means computed.
        """
        failed = sum(status == "failed" for status in statuses)
        loaded = sum(status == "cached" for status in statuses)
        self.failed += failed
        self.loaded += loaded
        self.computed += len(statuses) - failed - loaded
        self.phase = ""
        self._bar.set_postfix_str(self.status, refresh=False)
        self._bar.update(len(statuses))
        self._bar.refresh()

    def close(self) -> None:
        """Close the bar (its last status stays on screen)."""
        self._bar.close()
