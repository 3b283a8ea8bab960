"""Dask-side helpers, imported only when dask is (it is an optional dependency)."""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin

from mechscope_executors import pin_to_cores, worker_cores


class PinCores(WorkerPlugin):
    """Pins each worker of a local cluster to its own cores before it runs anything.

    Workers are numbered by their names (a local cluster names them 0, 1, ...).
    """

    name = "mechscope-pin"

    def __init__(self, *, cores_per_worker: int) -> None:
        self.cores_per_worker = cores_per_worker

    def setup(self, worker: Any) -> None:
        """Pin the worker's process (every thread; later threads inherit it)."""
        try:
            index = int(worker.name)
        except (TypeError, ValueError):
            index = 0
        pin_to_cores(worker_cores(index, self.cores_per_worker))
