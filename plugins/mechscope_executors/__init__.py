"""First-party executors.

``local`` runs items one after another in this process; ``dask`` sends them to a
dask.distributed cluster (an existing scheduler, or a local cluster it starts), e.g. one that
dask-jobqueue runs on SLURM or PBS.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import equinox as eqx
import pydantic

import mechscope

Item = TypeVar("Item")
Value = TypeVar("Value")


class LocalExecutorConfig(mechscope.Config):
    """Run every item in this process, in order (the default)."""

    group_seeds: bool = pydantic.Field(
        default=True,
        description="Hand the seeds of one variant to the trainer together, so a trainer that "
        "can (bptt with parallel_seeds) trains them in one vmapped loop.",
    )


class LocalExecutor(mechscope.AbstractExecutor):
    """Runs items sequentially in the current process; failures are isolated per item."""

    config: LocalExecutorConfig = eqx.field(static=True)
    in_process = True

    @property
    def group_seeds(self) -> bool:
        """Whether seeds of one variant are trained together (from the config)."""
        return self.config.group_seeds

    def map(
        self, function: Callable[[Item], Value], items: Sequence[Item]
    ) -> Iterator[mechscope.Outcome[Value]]:
        """Apply `function` to each item in order, yielding an outcome per item."""
        for index, item in enumerate(items):
            try:
                value = function(item)
            except Exception as error:  # noqa: BLE001 - one failing run must not stop the rest
                yield mechscope.Outcome(index, error=_describe(error))
            else:
                yield mechscope.Outcome(index, value=value)


def _describe(error: BaseException) -> str:
    last = traceback.extract_tb(error.__traceback__)[-1:]
    where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return f"{type(error).__name__}: {error}{where}"


class DaskExecutorConfig(mechscope.Config):
    """Run items on a dask.distributed cluster: a scheduler address, or a local cluster."""

    address: str | None = pydantic.Field(
        default=None,
        description="Scheduler address (e.g. tcp://host:8786). None starts a local cluster "
        "for the duration of the run.",
    )
    n_workers: int = pydantic.Field(default=2, ge=1, description="Workers of a local cluster.")
    threads_per_worker: int = pydantic.Field(
        default=1, ge=1, description="Threads per local worker (JAX uses the cores itself)."
    )


class DaskExecutor(mechscope.AbstractExecutor):
    """Submits every item to a dask.distributed cluster and yields outcomes as they finish.

    Items and the function travel to the workers by value; workers load plugins from their own
    entry points, so every worker needs mechscope and the plugins a run uses installed.
    """

    config: DaskExecutorConfig = eqx.field(static=True)

    def map(
        self, function: Callable[[Item], Value], items: Sequence[Item]
    ) -> Iterator[mechscope.Outcome[Value]]:
        """Submit all items at once; yield each outcome when its future completes."""
        if not items:
            return
        try:
            from dask.distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise mechscope.ConfigError(
                "the dask executor needs dask.distributed: pip install 'mechscope[dask]'"
            ) from None
        cluster = None
        if self.config.address is None:
            cluster = LocalCluster(
                n_workers=self.config.n_workers,
                threads_per_worker=self.config.threads_per_worker,
                processes=True,
                # None turns the dashboard off (dask's docs); the parameter is unannotated and
                # pyright infers `str` from its default.
                dashboard_address=None,  # pyright: ignore[reportArgumentType]
            )
            client = Client(cluster)
        else:
            try:
                client = Client(self.config.address, timeout="20s")
            except OSError as error:
                raise mechscope.ConfigError(
                    f"cannot reach the dask scheduler at {self.config.address}: {error}"
                ) from None
        try:
            futures = {
                client.submit(function, item, pure=False): index for index, item in enumerate(items)
            }
            for future in as_completed(futures):
                index = futures[future]
                try:
                    value = future.result()
                except Exception as error:  # noqa: BLE001 - a failed run is an outcome
                    yield mechscope.Outcome(index, error=_describe(error))
                else:
                    yield mechscope.Outcome(index, value=value)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


@mechscope.hookimpl
def mechscope_register_executors(register: mechscope.Register) -> None:
    """Register the ``local`` and ``dask`` executors."""
    register("local", LocalExecutorConfig, LocalExecutor, default=True)
    register("dask", DaskExecutorConfig, DaskExecutor)
