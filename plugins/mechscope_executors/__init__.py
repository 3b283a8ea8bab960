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

import contextlib
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

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


#: dask settings of a local cluster's processes (the scheduler's and its workers'), so a
#: worker computes as fast as a plain process on the same core. Measured on a one-core worker
#: (an item of the scaling suite): about 20 % more CPU time with dask's defaults than
#: in-process, none with these.
WORKER_DASK_CONFIG: dict[str, Any] = {
    # The statistical profiler samples every thread of a worker every 10 ms and the event
    # loop's watchdog wakes every 20 ms: on a pinned worker both take the compute core.
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    # dask sets glibc's MALLOC_TRIM_THRESHOLD_ to 64 KiB in its workers, which also fixes
    # glibc's mmap threshold: XLA's temporaries are then mapped and unmapped (page-faulted
    # anew) on every call. Workers keep glibc's defaults, as any other process does.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


def worker_dask_environment() -> dict[str, str]:
    """:data:`WORKER_DASK_CONFIG` as ``DASK_*`` variables, for workers started elsewhere.

    A SLURM job's workers read dask's settings from their environment. The malloc setting
    is left out: a variable can change but not remove an entry of the Nanny's environment.
    """
    return {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in WORKER_DASK_CONFIG.items()
        if value is not None
    }


class DaskConnection:
    """The client of one session of a dask executor, and the cluster it started, if any.

    Nothing starts until :meth:`client` is first called; :meth:`close` closes what was
    started here: the cluster this session started, and its own connection to a scheduler
    given by address (never that scheduler or its workers).
    """

    def __init__(self, config: DaskExecutorConfig) -> None:
        self.config = config
        self._client: Any = None
        self._cluster: Any = None

    @property
    def started(self) -> bool:
        """Whether a client is connected (a cluster started or a scheduler reached)."""
        return self._client is not None

    def client(self, function: Callable[..., object] | None = None) -> Any:
        """The session's ``distributed.Client``, connecting (starting a cluster) on first use.

        Args:
            function: the first item function (a SLURM cluster checks its store).

        Raises:
            ConfigError: if dask.distributed is missing or the scheduler cannot be reached.
        """
        if self._client is None:
            self._client, self._cluster = _connect(self.config, function)
        return self._client

    def close(self) -> None:
        """Close the client, then the cluster this session started (both, even if one fails)."""
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()


def _connect(config: DaskExecutorConfig, function: Callable[..., object] | None) -> tuple[Any, Any]:
    """A client and the cluster started for it (None for a scheduler given by address)."""
    try:
        import dask.config
        from dask import distributed
    except ImportError:
        raise mechscope.ConfigError(
            "the dask executor needs dask.distributed: pip install 'mechscope[dask]'"
        ) from None
    if config.address is not None:
        try:
            return distributed.Client(config.address, timeout="20s"), None
        except OSError as error:
            raise mechscope.ConfigError(
                f"cannot reach the dask scheduler at {config.address}: {error}"
            ) from None
    if config.slurm is not None:
        store = _store_of(function) if function is not None else Path(".").resolve()
        cluster = start_slurm_cluster(
            options_from_config(
                config.slurm, store=store, compilation_cache=config.compilation_cache
            )
        )
        cluster.adapt(minimum_jobs=1, maximum_jobs=config.slurm.max_jobs)
    else:
        from mechscope_executors._dask import PinCores

        cores = config.compute_cores
        # The Nanny hands these settings and environment to each worker it spawns.
        with dask.config.set(WORKER_DASK_CONFIG):
            cluster = distributed.LocalCluster(
                n_workers=config.n_workers,
                threads_per_worker=config.threads_per_worker,
                processes=True,
                # None turns the dashboard off (dask's docs); the parameter is unannotated and
                # pyright infers `str` from its default.
                dashboard_address=None,  # pyright: ignore[reportArgumentType]
                env=single_thread_environment() if cores == 1 else {},
                # Pinned as each worker starts, before it computes (XLA sizes its pools then).
                plugins=[PinCores(cores_per_worker=cores)] if cores is not None else [],
            )
    try:
        return distributed.Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


class DaskExecutor(mechscope.AbstractExecutor):
    """Submits every item to a dask.distributed cluster and yields outcomes as they finish.

    Items and the function travel to the workers by value; workers load plugins from their own
    entry points, so every worker needs mechscope and the plugins a run uses installed. A run
    a killed worker left unfinished is never half written (the store writes atomically, under
    a per-run lock that a dead holder does not keep), and dask reruns the item elsewhere.

    Inside :meth:`session` (a suite's run) every :meth:`map` shares one cluster, started on
    the first; a bare :meth:`map` starts and closes its own.
    """

    config: DaskExecutorConfig = eqx.field(static=True)
    #: The session's connection (None outside a session).
    connection: DaskConnection | None = eqx.field(static=True, default=None)

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

        A scheduler given by address is asked for its workers' threads inside a session
        (connecting if need be); outside one it is not asked (1: groups are not split).
        """
        if self.config.address is not None:
            if self.connection is None:
                return 1
            return max(sum(self.connection.client().nthreads().values()), 1)
        if self.config.slurm is not None:
            return self.config.slurm.max_jobs * self.config.slurm.cores
        return self.config.n_workers * self.config.threads_per_worker

    @contextlib.contextmanager
    def session(self) -> Iterator[DaskExecutor]:
        """This executor with one connection for every :meth:`map`, closed at the end.

        Nothing starts until something needs the cluster; the end of the session (also on an
        error) closes the cluster it started. Inside a session, yields itself.
        """
        if self.connection is not None:
            yield self
            return
        connection = DaskConnection(self.config)
        try:
            yield DaskExecutor(self.config, connection=connection)
        finally:
            connection.close()

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
        if self.connection is None:
            with self.session() as bound:
                yield from bound.map(function, items)
            return
        from dask.distributed import as_completed

        client = self.connection.client(function)
        futures = {
            client.submit(function, item, pure=False, retries=self.config.retries): index
            for index, item in enumerate(items)
        }
        try:
            for future in as_completed(futures):
                index = futures[future]
                try:
                    value = future.result()
                except Exception as error:  # noqa: BLE001 - a failed run is an outcome
                    yield mechscope.Outcome(index, error=_describe(error))
                else:
                    yield mechscope.Outcome(index, value=value)
        finally:
            # A caller that stops early leaves nothing running on a cluster that lives on
            # (unless the session already closed the client, and the cluster with it).
            unfinished = [future for future in futures if not future.done()]
            if unfinished and client.status == "running":
                client.cancel(unfinished)


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
