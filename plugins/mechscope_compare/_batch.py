"""Batching over pairs of networks: every pairwise part runs as one vectorised program."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int


def condensed_pairs(n: int) -> tuple[Int[Array, " pair"], Int[Array, " pair"]]:
    """Index arrays (i, j) of every pair i < j, in ``scipy.spatial.distance.squareform`` order."""
    i, j = jnp.triu_indices(n, k=1)
    return i, j


def batched_map(fn: Callable, args: tuple, batch_size: int | None):
    """Map `fn` over the leading axis of `args`: one ``vmap``, or vectorised batches in turn."""
    if batch_size is None:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda x: fn(*x), args, batch_size=batch_size)
