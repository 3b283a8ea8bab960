"""First-party executors.

``local`` runs items one after another in this process; ``dask`` sends them to a
dask.distributed cluster (an existing scheduler, or a local cluster it starts), e.g. one that
dask-jobqueue runs on SLURM or PBS (see :mod:`mechscope_executors.slurm`).

An item of a suite is a group of runs that train together (the seeds of a variant), so a
worker compiles one vmapped step for all of them; a worker is a long-lived process, so JAX's
in-memory caches carry compiled functions from one item to the next, and the persistent
compilation cache (a directory in the store by default) carries them across worker restarts
and suites.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import equinox as eqx
import pydantic

import mechscope
from mechscope_executors.slurm import SlurmConfig, options_from_config, start_slurm_cluster

Item = TypeVar("Item")
Value = TypeVar("Value")


class LocalExecutorConfig(mechscope.Config):
    """Run every item in this process, in order (the default)."""

    group_seeds: bool = pydantic.Field(
        default=True,
        description="Hand the seeds of one variant to the trainer together, so a trainer that "
        "can (bptt with parallel_seeds) trains them in one vmapped loop.",
    )
    compilation_cache: str | None = pydantic.Field(
        default="auto",
        description="JAX's persistent compilation cache: 'auto' (the environment variable "
        "MECHSCOPE_COMPILATION_CACHE if set, else <store>/compilation-cache), a directory, or "
        "'off'.",
    )


class LocalExecutor(mechscope.AbstractExecutor):
    """Runs items sequentially in the current process; failures are isolated per item."""

    config: LocalExecutorConfig = eqx.field(static=True)
    in_process = True

    @property
    def group_seeds(self) -> bool:
        """Whether seeds of one variant are trained together (from the config)."""
        return self.config.group_seeds

    @property
    def compilation_cache(self) -> str | None:
        """The persistent compilation cache setting (from the config)."""
        return self.config.compilation_cache

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
        description="Scheduler address (e.g. tcp://host:8786). None starts a cluster (local, "
        "or SLURM jobs with [slurm]) for the duration of the run.",
    )
    slurm: SlurmConfig | None = pydantic.Field(
        default=None,
        description="Start the workers as SLURM jobs (dask-jobqueue) instead of a local "
        "cluster; the store must be on a file system the nodes share.",
    )
    n_workers: int = pydantic.Field(default=2, ge=1, description="Workers of a local cluster.")
    threads_per_worker: int = pydantic.Field(
        default=1, ge=1, description="Threads per local worker (JAX uses the cores itself)."
    )
    compute_cores: int | None = pydantic.Field(
        default=None,
        ge=1,
        description="CPU cores each local worker may compute on: worker i is pinned to its own "
        "cores (sched_setaffinity; XLA's CPU thread pools follow the affinity, not "
        "threads_per_worker), so workers do not oversubscribe the machine. None: unpinned.",
    )
    group_seeds: bool = pydantic.Field(
        default=True,
        description="One item per variant: its seeds go to one worker and train together "
        "(one compiled, vmapped step), as with the local executor.",
    )
    retries: int = pydantic.Field(
        default=1,
        ge=0,
        description="Times an item that raised is resubmitted (dask's retries). An item whose "
        "worker died is rerun on another worker anyway (dask's allowed-failures, default 3).",
    )
    compilation_cache: str | None = pydantic.Field(
        default="auto",
        description="JAX's persistent compilation cache on the workers: 'auto' (the "
        "environment variable MECHSCOPE_COMPILATION_CACHE if set, else <store>/"
        "compilation-cache, which workers share with the store), a directory, or 'off'.",
    )


class DaskExecutor(mechscope.AbstractExecutor):
    """Submits every item to a dask.distributed cluster and yields outcomes as they finish.

    Items and the function travel to the workers by value; workers load plugins from their own
    entry points, so every worker needs mechscope and the plugins a run uses installed. A run
    a killed worker left unfinished is never half written (the store writes atomically, under
    a per-run lock that a dead holder does not keep), and dask reruns the item elsewhere.
    """

    config: DaskExecutorConfig = eqx.field(static=True)

    @property
    def group_seeds(self) -> bool:
        """Whether the seeds of one variant are one item (from the config)."""
        return self.config.group_seeds

    @property
    def compilation_cache(self) -> str | None:
        """The persistent compilation cache setting (from the config)."""
        return self.config.compilation_cache

    @property
    def parallelism(self) -> int:
        """Items that run at once: the local cluster's threads, or the SLURM jobs' cores.

        A scheduler given by address is not asked (1), so groups are never split for it.
        """
        if self.config.address is not None:
            return 1
        if self.config.slurm is not None:
            return self.config.slurm.max_jobs * self.config.slurm.cores
        return self.config.n_workers * self.config.threads_per_worker

    def job_script(self, store: str | Path) -> str:
        """The batch script of one SLURM worker job for a suite in `store` (no job submitted).

        Raises:
            ConfigError: if the executor has no ``slurm`` table, or `store` is relative.
        """
        if self.config.slurm is None:
            raise mechscope.ConfigError(
                "this dask executor has no [slurm] table: its workers are not SLURM jobs"
            )
        options = options_from_config(
            self.config.slurm, store=store, compilation_cache=self.config.compilation_cache
        )
        cluster = start_slurm_cluster(options)
        try:
            return cluster.job_script()
        finally:
            cluster.close()

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
        if self.config.address is None and self.config.slurm is not None:
            store = _store_of(function)
            cluster = start_slurm_cluster(
                options_from_config(
                    self.config.slurm, store=store, compilation_cache=self.config.compilation_cache
                )
            )
            cluster.adapt(minimum_jobs=1, maximum_jobs=self.config.slurm.max_jobs)
            client = Client(cluster)
        elif self.config.address is None:
            cores = self.config.compute_cores
            cluster = LocalCluster(
                n_workers=self.config.n_workers,
                threads_per_worker=self.config.threads_per_worker,
                processes=True,
                # None turns the dashboard off (dask's docs); the parameter is unannotated and
                # pyright infers `str` from its default.
                dashboard_address=None,  # pyright: ignore[reportArgumentType]
                env=single_thread_environment() if cores == 1 else {},
            )
            client = Client(cluster)
            if cores is not None:
                from mechscope_executors._dask import PinCores

                client.register_plugin(PinCores(cores_per_worker=cores), name="mechscope-pin")
        else:
            try:
                client = Client(self.config.address, timeout="20s")
            except OSError as error:
                raise mechscope.ConfigError(
                    f"cannot reach the dask scheduler at {self.config.address}: {error}"
                ) from None
        try:
            futures = {
                client.submit(function, item, pure=False, retries=self.config.retries): index
                for index, item in enumerate(items)
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


def _store_of(function: Callable[..., object]) -> Path:
    """The store a suite's items write to (SLURM jobs check that they can reach it).

    A suite's item function is a ``functools.partial`` with a ``store`` keyword; anything
    else gets this directory.
    """
    store = getattr(function, "keywords", {}).get("store")
    return Path(store if store is not None else ".").resolve()


def single_thread_environment() -> dict[str, str]:
    """Environment variables that keep a process's numerical libraries to one thread.

    XLA's Eigen pool and OpenMP/BLAS pools otherwise size themselves from the machine's cores.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        flags = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    return {
        "XLA_FLAGS": flags,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def pin_to_cores(cores: set[int]) -> None:
    """Restrict every thread of this process (and threads it starts later) to `cores`.

    Call it before JAX first computes: XLA sizes its CPU thread pools from the affinity then.
    """
    tasks = Path("/proc/self/task")
    threads = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for thread in threads:
        try:
            os.sched_setaffinity(thread, cores)
        except OSError:  # a thread that ended meanwhile
            continue


def worker_cores(index: int, cores_per_worker: int) -> set[int]:
    """The cores of local worker `index`: its own block of the cores this process may use."""
    available = sorted(os.sched_getaffinity(0))
    start = (index * cores_per_worker) % len(available)
    return {available[(start + i) % len(available)] for i in range(cores_per_worker)}


@mechscope.hookimpl
def mechscope_register_executors(register: mechscope.Register) -> None:
    """Register the ``local`` and ``dask`` executors."""
    register("local", LocalExecutorConfig, LocalExecutor, default=True)
    register("dask", DaskExecutorConfig, DaskExecutor)
