"""Host-side batching for the fixed-point solver: rows padded to few compiled sizes, chunks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


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
    """`a` with its first row repeated up to `size` rows, as a JAX array of `dtype`."""
    # Converted by NumPy: a conversion on the device would compile once per shape.
    padded = np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])
    return jnp.asarray(padded.astype(np.dtype(dtype), copy=False))


def call_padded(
    function: Callable[..., Any], model: Any, x: np.ndarray, u: np.ndarray, dtype: Any, *args: Any
) -> Any:
    """Call a row-wise compiled `function` on rows padded to :func:`padded_size` rows.

    Returns:
        The function's output (an array or a tuple of arrays) cut back to the real rows, as
        float64 NumPy arrays.
    """
    m = len(x)
    size = padded_size(m)
    out = function(model, pad_rows(x, size, dtype), pad_rows(u, size, dtype), *args)
    if isinstance(out, tuple):
        return tuple(np.asarray(part, np.float64)[:m] for part in out)
    return np.asarray(out, np.float64)[:m]
