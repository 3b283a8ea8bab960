"""Host-side batching for the fixed-point solver: rows padded to few compiled sizes, in pieces.

Two ways to call a row-wise compiled function (each row's result depends on that row only):

* :func:`call_padded`: one call on every row, padded to :func:`padded_size` (for cheap
  kernels, where a call's fixed cost is most of the work);
* :func:`call_in_pieces`: the rows cut into pieces (:func:`piece_bounds`), each padded and
  called on its own, the pieces spread over the CPU cores this process may use. On a CPU,
  XLA runs one program's operations on a few hundred rows barely faster on two cores than
  on one (each operation is too short to split well), so a program on the whole batch uses
  the cores poorly; independent pieces keep every core busy (the LM kernel on 9,216 rows of
  an N = 100 network: about 1.7× faster on two cores). The pieces depend on the number of
  rows only, never on the number of cores, so the result is the same on any machine with
  the same arithmetic. On an accelerator one call takes every row.

The pieces run through :func:`mechscope.run_concurrently`, and only programs without LAPACK
calls run concurrently (XLA's CPU runtime deadlocks on two at once, see
:mod:`mechscope.concurrency`). Whether a program has one depends on the kernel *and the
model* (a model's vector field may solve a system), so :func:`call_in_pieces` asks
:func:`mechscope.calls_lapack` once per kernel, model structure and argument shapes, and runs
such programs' pieces one after another. Every call of either function also holds
:data:`mechscope.LAPACK_LOCK`, so two solves in different threads of one process (user
threads, a dask worker with several threads), or a solve and a training step whose program
calls LAPACK, never run such kernels at the same time either.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

import mechscope

#: Most rows in one piece of :func:`call_in_pieces` (on a CPU): long enough that a call's
#: fixed cost is small, short enough that the pieces of a large batch keep the cores busy.
MAX_PIECE_ROWS = 512

#: Fewest rows in one piece (smaller batches are not cut).
MIN_PIECE_ROWS = 32

#: A batch is cut into at least this many pieces where each keeps MIN_PIECE_ROWS rows.
TARGET_PIECES = 4


#: Whether a kernel's program calls LAPACK, by kernel, model/argument structure and shapes.
_USES_LAPACK: dict[Hashable, bool] = {}


def padded_size(m: int) -> int:
    """Rows to pad `m` to, so that a compiled row-wise function sees few distinct sizes.

    Up to 1,024 rows: the next power of two (at least 8). Above: the next of
    2^k·{1, 5/4, 3/2, 7/4}, which wastes at most a quarter of the work where the work is
    large (a power of two would run 9,216 rows as 16,384).
    """
    size = 1 << max(3, math.ceil(math.log2(max(m, 1))))
    if size <= 1024:
        return size
    quarter = size // 8  # a quarter of the power of two below
    return size // 2 + quarter * math.ceil((m - size // 2) / quarter)


def pad_rows(a: np.ndarray, size: int, dtype: Any) -> Array:
    """`a` with its first row repeated up to `size` rows, as a JAX array.

    Floating-point rows are cast to `dtype`; integer rows (e.g. row numbers) keep theirs.
    """
    # Converted by NumPy: a conversion on the device would compile once per shape.
    padded = np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])
    if np.issubdtype(padded.dtype, np.floating):
        padded = padded.astype(np.dtype(dtype), copy=False)
    return jnp.asarray(padded)


def call_padded(
    function: Callable[..., Any], model: Any, x: np.ndarray, u: np.ndarray, dtype: Any, *args: Any
) -> Any:
    """Call a row-wise compiled `function` once, on rows padded to :func:`padded_size` rows.

    Returns:
        The function's output (an array or a tuple of arrays) cut back to the real rows, as
        float64 NumPy arrays.
    """
    m = len(x)
    size = padded_size(m)
    with mechscope.LAPACK_LOCK:
        out = function(model, pad_rows(x, size, dtype), pad_rows(u, size, dtype), *args)
        return _cut(out, m)


def piece_bounds(
    m: int, most: int = MAX_PIECE_ROWS, least: int = MIN_PIECE_ROWS
) -> list[tuple[int, int]]:
    """The ``(start, stop)`` rows of each piece that :func:`call_in_pieces` cuts `m` rows into.

    Pieces of ``clamp(padded_size(⌈m / TARGET_PIECES⌉), max(MIN_PIECE_ROWS, least), most)``
    rows (a compiled size), the last one shorter: a few hundred rows make several pieces, a
    large batch many pieces of `most` rows, and only the last piece is padded (to at least
    `least` rows, the smallest size the caller compiles).
    """
    if m == 0:
        return []
    size = padded_size(math.ceil(m / TARGET_PIECES))
    size = min(most, max(MIN_PIECE_ROWS, least, size))
    return [(start, min(start + size, m)) for start in range(0, m, size)]


def call_in_pieces(
    function: Callable[..., Any],
    model: Any,
    rows: Sequence[np.ndarray],
    dtype: Any,
    *args: Any,
    least: int = 8,
    most: int = MAX_PIECE_ROWS,
) -> Any:
    """Call a row-wise compiled `function` on pieces of the rows, spread over the CPU cores.

    The pieces run on several threads unless `function`'s program calls LAPACK (then one
    after another; see the module docstring).

    Args:
        function: an ``eqx.filter_jit`` function, called as
            ``function(model, *padded_rows, *args)``; every output has one row per input row.
        model: its first argument.
        rows: the arrays with one row per problem row (all the same length); floating-point
            ones are passed as `dtype`, integer ones (e.g. row numbers) as they are.
        dtype: the dtype floating-point rows are passed in.
        *args: further arguments, the same for every piece.
        least: the fewest rows a piece is padded to (a call on a few rows then shares the
            program of a few more, instead of compiling for every power of two below).
        most: the most rows in a piece (a power of two): a kernel that streams through
            memory (a few operations per row and step) wants longer pieces than one that
            computes much per row.

    Returns:
        The function's output (an array or a tuple of arrays) for the real rows, in order, as
        float64 NumPy arrays.
    """
    m = len(rows[0])
    bounds = piece_bounds(m, most, least) if mechscope.runs_on_cpu() else [(0, m)]
    if len(bounds) == 0:
        bounds = [(0, 0)]

    def padded(bound: tuple[int, int]) -> list[Array]:
        start, stop = bound
        size = padded_size(max(stop - start, least))
        return [pad_rows(a[start:stop], size, dtype) for a in rows]

    def piece(bound: tuple[int, int]) -> Callable[[], Any]:
        return lambda: _cut(function(model, *padded(bound), *args), bound[1] - bound[0])

    with mechscope.LAPACK_LOCK:
        concurrent = len(bounds) > 1 and mechscope.usable_cores() > 1
        first_piece = functools.partial(padded, bounds[0])
        if concurrent and _uses_lapack(function, model, rows, dtype, args, first_piece):
            concurrent = False
        outs = mechscope.run_concurrently([piece(bound) for bound in bounds], concurrent=concurrent)
    if not isinstance(outs[0], tuple):
        return np.concatenate(outs)
    return tuple(np.concatenate(column) for column in zip(*outs, strict=True))


def _uses_lapack(
    function: Callable[..., Any],
    model: Any,
    rows: Sequence[np.ndarray],
    dtype: Any,
    args: Sequence[Any],
    example: Callable[[], Sequence[Array]],
) -> bool:
    """Whether `function`'s program for these arguments calls LAPACK (cached; True if unsure).

    Read from the program lowered for the `example()` rows (padded, made only when the
    answer is not cached): tracing, not compiling.
    The answer does not depend on the number of rows, so the cache key leaves it out: the
    kernel, the structure and non-array values of the model and arguments, the shapes and
    dtypes of their arrays and of the rows, and the x64 setting.
    """
    structure = mechscope.program_key((model, tuple(args)))
    key = None
    if structure is not None:
        key = (
            function,
            structure,
            tuple((a.shape[1:], str(a.dtype)) for a in rows),
            str(np.dtype(dtype)),
            bool(jax.config.read("jax_enable_x64")),
        )
    if key is not None and key in _USES_LAPACK:
        return _USES_LAPACK[key]
    uses = mechscope.calls_lapack(function, model, *example(), *args)
    if key is not None:
        _USES_LAPACK[key] = uses
    return uses


def _cut(out: Any, m: int) -> Any:
    """`out` (an array or tuple of arrays) cut to its first `m` rows, as float64 NumPy."""
    if isinstance(out, tuple):
        return tuple(np.asarray(part, np.float64)[:m] for part in out)
    return np.asarray(out, np.float64)[:m]
