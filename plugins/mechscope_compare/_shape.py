"""Shape distances for many pairs at once; the metric itself lives in :mod:`mechscope.shape`."""

from __future__ import annotations

import functools

import jax
from jaxtyping import Array, Float

from mechscope import pad_units, shape_distance, shape_represent, whiten
from mechscope_compare._batch import batched_map

__all__ = ["pad_units", "shape_distance", "shape_pairwise", "shape_represent", "whiten"]


@functools.partial(jax.jit, static_argnames=("batch_size",))
def shape_pairwise(
    representations: Float[Array, "network sample unit"],
    pairs: tuple[Array, Array],
    *,
    batch_size: int | None = None,
) -> dict[str, Float[Array, " pair"]]:
    """Shape distances for many pairs at once (vmapped over pairs).

    Args:
        representations: stacked representations, ``[network, sample, unit]``.
        pairs: index arrays (i, j), e.g. from :func:`condensed_pairs`.
        batch_size: pairs per vectorised batch; None: all in one.

    Returns:
        One array ``[pair]`` per score.
    """
    i, j = pairs
    return batched_map(
        lambda a, b: shape_distance(representations[a], representations[b]), (i, j), batch_size
    )
