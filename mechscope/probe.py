"""The probe interface and the result every probe returns."""

from __future__ import annotations

import abc
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import equinox as eqx
import numpy as np
from jaxtyping import PRNGKeyArray

from mechscope.config import Config
from mechscope.errors import StoreError
from mechscope.task import AbstractTask
from mechscope.training import TrainedRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclasses.dataclass
class ProbeResult:
    """What a probe measured.

    Attributes:
        metrics: scalar results; each becomes a column of a suite's table.
        arrays: array results, saved as ``.npz`` (no pickle).
        figures: figure name → a function drawing a matplotlib Figure. Drawing is lazy so a
            suite that only wants the table never pays for plotting.
        figure_files: figure name → saved image path; filled when a result is loaded.
    """

    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    figures: dict[str, Callable[[], Figure]] = dataclasses.field(default_factory=dict)
    figure_files: dict[str, Path] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = {str(k): float(v) for k, v in self.metrics.items()}
        self.arrays = {str(k): np.asarray(v) for k, v in self.arrays.items()}

    def save(self, directory: str | Path, *, formats: tuple[str, ...] = ("png", "svg")) -> None:
        """Write ``metrics.json``, ``arrays.npz`` and each figure in each of `formats`."""
        import matplotlib.pyplot as plt

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # NaN is a legitimate "not measurable" value; JSON has no NaN, so store it as null.
        metrics = {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()}
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        np.savez(directory / "arrays.npz", **self.arrays)
        for name, draw in self.figures.items():
            figure = draw()
            try:
                for extension in formats:
                    figure.savefig(directory / f"{name}.{extension}", dpi=110, bbox_inches="tight")
            finally:
                plt.close(figure)

    @classmethod
    def load(cls, directory: str | Path) -> ProbeResult:
        """Load a result written by :meth:`save` (figures come back as files)."""
        directory = Path(directory)
        try:
            raw = json.loads((directory / "metrics.json").read_text())
            with np.load(directory / "arrays.npz", allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot load probe result from {directory}: {error}") from None
        metrics = {k: (math.nan if v is None else float(v)) for k, v in raw.items()}
        files = {path.stem: path for path in sorted(directory.glob("*.png"))}
        return cls(metrics=metrics, arrays=arrays, figure_files=files)


class AbstractProbe(eqx.Module):
    """An analysis of a trained network on a task.

    Attributes:
        requires: names of probes whose results this probe needs; they run first and arrive
            in ``dependencies``.
    """

    config: eqx.AbstractVar[Config]
    requires: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def run(
        self,
        trained: TrainedRun,
        task: AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, ProbeResult] | None = None,
    ) -> ProbeResult:
        """Measure `trained` on `task`.

        Args:
            trained: the trained run (model, history).
            task: the task the network was trained on; probes use ``task.conditions()``.
            key: PRNG key for anything random (noise, initial states).
            dependencies: results of the probes named in ``requires``.
        """
