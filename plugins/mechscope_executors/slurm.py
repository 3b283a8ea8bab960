"""A SLURM recipe: the dask-jobqueue job script whose workers run a suite.

The workers of a :class:`dask_jobqueue.SLURMCluster` are batch jobs; each must find the same
Python environment (mechscope and the suite's plugins installed), the run store on a file
system every node mounts, and the persistent compilation cache, which lives beside the store
so every job (and the next suite) reuses what the first one compiled.
"""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic

import mechscope
from mechscope.experiment import COMPILATION_CACHE_ENV, compilation_cache_directory


class SlurmConfig(mechscope.Config):
    """The SLURM jobs that run a dask executor's workers (through dask-jobqueue)."""

    cores: int = pydantic.Field(
        default=4, ge=1, description="Cores per job; each runs one one-thread worker."
    )
    memory: str = pydantic.Field(default="16GB", description="Memory per job (--mem).")
    walltime: str = pydantic.Field(default="04:00:00", description="Time limit per job.")
    queue: str | None = pydantic.Field(default=None, description="The partition (-p).")
    account: str | None = pydantic.Field(default=None, description="The account (-A).")
    max_jobs: int = pydantic.Field(
        default=8, ge=1, description="Jobs the cluster grows to while items wait (adapt)."
    )
    python: str | None = pydantic.Field(
        default=None,
        description="The environment's interpreter on the nodes (default: this one); a "
        "virtual environment's bin/activate beside it is sourced.",
    )
    job_extra_directives: tuple[str, ...] = pydantic.Field(
        default=(), description="More #SBATCH options, e.g. '--gres=gpu:1'."
    )
    prologue: tuple[str, ...] = pydantic.Field(
        default=(), description="Shell lines run before the worker starts (module load ...)."
    )


def slurm_cluster_options(
    *,
    store: str | Path,
    python: str | Path | None = None,
    cores: int = 4,
    memory: str = "16GB",
    walltime: str = "04:00:00",
    queue: str | None = None,
    account: str | None = None,
    compilation_cache: str | None = "auto",
    job_extra_directives: Sequence[str] = (),
    prologue: Sequence[str] = (),
) -> dict[str, Any]:
    """Keyword arguments for :class:`dask_jobqueue.SLURMCluster` that run mechscope workers.

    Each job runs `cores` one-thread worker processes, one per core, with XLA and BLAS kept to
    one thread each (their pools would otherwise follow the node's core count and
    oversubscribe it).

    Args:
        store: the run store, an absolute path on a file system every node mounts.
        python: the environment's interpreter (default: this one, ``sys.executable``); its
            ``bin/activate`` is sourced when it is a virtual environment's.
        cores: cores (and one-thread workers) per job.
        memory: memory per job (SLURM ``--mem``).
        walltime: time limit per job.
        queue: the SLURM partition.
        account: the SLURM account to charge.
        compilation_cache: as the executors' field: ``"auto"`` (``<store>/compilation-cache``,
            or ``MECHSCOPE_COMPILATION_CACHE`` if set here), a directory, or ``"off"``.
        job_extra_directives: more ``#SBATCH`` options (e.g. ``"--gres=gpu:1"``).
        prologue: more shell lines run before the worker starts (``module load ...``).

    Raises:
        ConfigError: if `store` is relative (a compute node would resolve it elsewhere).
    """
    store = Path(store)
    if not store.is_absolute():
        raise mechscope.ConfigError(
            f"store {store} must be an absolute path on a file system every node mounts "
            "(e.g. /shared/runs)"
        )
    python = Path(python or sys.executable)
    lines = []
    activate = python.parent / "activate"
    if activate.exists():
        lines.append(f"source {shlex.quote(str(activate))}")
    lines += list(prologue)
    # A node that cannot see the store would train runs nobody ever reads: stop at once.
    quoted = shlex.quote(str(store))
    lines.append(
        f'test -d {quoted} || {{ echo "run store {store} is not mounted here" >&2; exit 1; }}'
    )
    from mechscope_executors import single_thread_environment, worker_dask_environment

    cache = compilation_cache_directory(compilation_cache, store)
    environment = {
        **single_thread_environment(),
        **worker_dask_environment(),
        COMPILATION_CACHE_ENV: str(cache or "off"),
    }
    lines += [f"export {name}={shlex.quote(value)}" for name, value in environment.items()]
    options: dict[str, Any] = {
        "cores": cores,
        "processes": cores,
        "memory": memory,
        "walltime": walltime,
        "python": str(python),
        "job_script_prologue": lines,
        "job_extra_directives": list(job_extra_directives),
        # The nodes' own scratch for dask's spill files, not the shared store.
        "local_directory": "$TMPDIR",
    }
    if queue is not None:
        options["queue"] = queue
    if account is not None:
        options["account"] = account
    return options


def options_from_config(
    config: SlurmConfig, *, store: str | Path, compilation_cache: str | None = "auto"
) -> dict[str, Any]:
    """:func:`slurm_cluster_options` for a :class:`SlurmConfig`."""
    return slurm_cluster_options(
        store=store,
        python=config.python,
        cores=config.cores,
        memory=config.memory,
        walltime=config.walltime,
        queue=config.queue,
        account=config.account,
        compilation_cache=compilation_cache,
        job_extra_directives=config.job_extra_directives,
        prologue=config.prologue,
    )


def start_slurm_cluster(options: dict[str, Any]) -> Any:
    """A :class:`dask_jobqueue.SLURMCluster` with `options` (no job submitted yet).

    Raises:
        ConfigError: if dask-jobqueue is not installed.
    """
    try:
        from dask_jobqueue.slurm import SLURMCluster
    except ImportError:
        raise mechscope.ConfigError(
            "the SLURM recipe needs dask-jobqueue: pip install 'mechscope[dask]'"
        ) from None
    return SLURMCluster(**options)


def slurm_job_script(**options: Any) -> str:
    """The batch script one worker job runs (see :func:`slurm_cluster_options` for options).

    Building it starts (and stops) a local dask scheduler, as dask-jobqueue does; no job is
    submitted.

    Raises:
        ConfigError: if dask-jobqueue is not installed.
    """
    cluster = start_slurm_cluster(slurm_cluster_options(**options))
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def job_memory(peak_bytes: float, workers: int) -> str:
    """SLURM memory for `workers` processes of `peak_bytes` each, with room for Python/JAX.

    Each worker process needs about 1 GB besides its runs' arrays (interpreter, JAX, XLA).
    """
    per_worker = peak_bytes * 1.5 + 1e9
    return f"{math.ceil(per_worker * workers / 1e9)}GB"
