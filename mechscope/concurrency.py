"""Independent JAX programs on the CPU cores at once: the one home of mechscope's threading.

On a CPU, XLA runs one program's operations on a few dozen to a few hundred rows barely
faster on two cores than on one: each operation is too short to split well. Independent
programs on Python threads do run at the same time (XLA releases the GIL while it computes),
so work that falls apart into independent pieces (rows of a batch of fixed-point searches,
trials of a training batch) runs faster as one program per piece, the pieces spread over the
cores. The fixed-point solver and the bptt trainer do this through :func:`run_concurrently`.

Two things make it safe:

* JAX's ``enable_x64``, ``default_matmul_precision`` and ``default_device`` settings are
  thread-local, so each call runs under the caller's settings, not the pool thread's.
* XLA's CPU runtime (jaxlib 0.10) deadlocks when two programs that each run a batched LAPACK
  call (``solve``, ``cholesky``, ``lu``) inside a loop run at the same time. A caller asks
  :func:`calls_lapack` of the lowered program first and runs such programs one after another,
  and holds :data:`LAPACK_LOCK` while one runs, so that no two run at once in the process
  (two solves in different threads, a training step with an implicit solver beside them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import jax
import numpy as np

T = TypeVar("T")


def runs_on_cpu() -> bool:
    """Whether this thread's JAX computations run on a CPU, where pieces pay (module docs).

    The platform of the default device where one is set (``jax.default_device``, a
    thread-local setting), else the default backend's.
    """
    device = jax.config.jax_default_device  # pyright: ignore[reportAttributeAccessIssue]
    if device is None:
        return jax.default_backend() == "cpu"
    platform = device if isinstance(device, str) else device.platform
    return platform == "cpu"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


#: Held while mechscope runs a program that may call LAPACK (the fixed-point solver's kernels,
#: a training step whose program does): two such programs at once deadlock XLA's CPU
#: runtime. Reentrant; never held while waiting for a call that needs it from another thread.
LAPACK_LOCK = threading.RLock()

_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()

#: Marks the pool's threads while they run a call: a call that itself runs calls
#: concurrently runs them inline (waiting on the pool from inside it could deadlock).
_IN_POOL = threading.local()


def _pool() -> ThreadPoolExecutor:
    """One thread per usable core, kept for the life of the process (idle between calls)."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(
                ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="mechscope")
            )
        return _POOL[0]


def run_concurrently(calls: Sequence[Callable[[], T]], *, concurrent: bool = True) -> list[T]:
    """Run the zero-argument `calls` on the process's thread pool; their results, in order.

    Each call runs under the caller's thread-local JAX settings for x64, the default matmul
    precision and the default device (other thread-local contexts, e.g. ``debug_nans``, are
    not passed on). The pool has one thread per usable core. With one call,
    ``concurrent=False``, or from inside a call already running on the pool, the calls run
    one after another in the calling thread. An exception in a call is raised here, once
    every call before it has finished.

    Args:
        calls: the work, e.g. one jitted program per piece of a batch.
        concurrent: False runs them one after another (for programs that call LAPACK, see
            :func:`calls_lapack`).
    """
    if not concurrent or len(calls) <= 1 or getattr(_IN_POOL, "active", False):
        return [call() for call in calls]
    x64 = bool(jax.config.read("jax_enable_x64"))
    precision = jax.config.jax_default_matmul_precision  # pyright: ignore[reportAttributeAccessIssue]
    device = jax.config.jax_default_device  # pyright: ignore[reportAttributeAccessIssue]

    def under_callers_settings(call: Callable[[], T]) -> T:
        _IN_POOL.active = True
        try:
            with jax.enable_x64(x64), jax.default_matmul_precision(precision):
                with jax.default_device(device):
                    return call()
        finally:
            _IN_POOL.active = False

    futures = [_pool().submit(under_callers_settings, call) for call in calls]
    return [future.result() for future in futures]


def program_key(tree: Any) -> Hashable | None:
    """What a program traced from `tree` depends on, as a dict key; None if unhashable.

    The tree's structure, the shape and dtype of each array leaf and the value of every
    other leaf (the values of arrays do not change a traced program).
    """
    leaves, structure = jax.tree_util.tree_flatten(tree)
    key = (structure, tuple(_leaf_key(leaf) for leaf in leaves))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _leaf_key(leaf: Any) -> Hashable:
    if isinstance(leaf, jax.Array | np.ndarray):
        return (leaf.shape, str(leaf.dtype))
    return leaf


#: Answers of :func:`calls_lapack`, by function, :func:`program_key` of the arguments and x64.
_CALLS_LAPACK: dict[Hashable, bool] = {}


def calls_lapack(function: Callable[..., Any], *args: Any) -> bool:
    """Whether the program of a jitted `function` for these arguments calls LAPACK.

    Read from the lowered program (tracing, not compiling), once per function, argument
    structure and shapes (:func:`program_key`). True where it cannot tell: a function
    without ``lower`` or one that fails to lower is treated as calling LAPACK, the safe
    answer for :func:`run_concurrently`.
    """
    arguments = program_key(args)
    key = None if arguments is None else (function, arguments, jax.config.read("jax_enable_x64"))
    if key is not None and key in _CALLS_LAPACK:
        return _CALLS_LAPACK[key]
    lower = getattr(function, "lower", None)
    try:
        answer = lower is None or "lapack" in lower(*args).as_text()
    except Exception:  # noqa: BLE001 - whatever fails to lower runs the safe way
        answer = True
    if key is not None:
        _CALLS_LAPACK[key] = answer
    return answer


__all__ = [
    "LAPACK_LOCK",
    "calls_lapack",
    "program_key",
    "run_concurrently",
    "runs_on_cpu",
    "usable_cores",
]
