"""The comparison interface: how two networks' mechanisms are told apart.

A comparison has two parts. The per-network part, :meth:`AbstractComparison.represent`, turns
one trained network into a few arrays (a delay-embedded linear operator, whitened condition
averages, a fixed-point summary); it is where the cost is, so it runs once per network and is
stored beside the run. The pairwise part, :meth:`AbstractComparison.distance`, maps two
representations to named distances; it is traced once and ``vmap``-ed over every pair, never
looped over in Python.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from mechscope.config import Config
from mechscope.task import AbstractTask
from mechscope.training import TrainedRun

#: A network's representation: named NumPy arrays (saved as ``.npz``, no pickle).
Representation = dict[str, np.ndarray]


class AbstractComparison(eqx.Module):
    """Distances between networks: a representation per network, distances per pair.

    Attributes:
        requires: names of probes whose stored results :meth:`represent` reads (e.g. the
            fixed points); a suite that compares with it must run them.
        metrics: the names of the distances :meth:`distance` returns.
        pair_batch: most pairs per compiled call of :meth:`distances` (bounds memory). A
            smaller batch is padded to the next power of two, so that a few pairs cost a few
            distances (not ``pair_batch`` of them) while calls share a handful of compilations.
    """

    config: eqx.AbstractVar[Config]
    requires: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()
    pair_batch: ClassVar[int] = 256

    @abc.abstractmethod
    def represent(
        self,
        trained: TrainedRun,
        task: AbstractTask,
        *,
        key: PRNGKeyArray,
        conditions: Any,
        probes: Mapping[str, Any],
    ) -> Representation:
        """Summarise one network for comparison.

        Args:
            trained: the trained run.
            task: the task it was trained on.
            key: PRNG key for anything random.
            conditions: the network's noise-free condition run (``mechscope.ConditionRun``).
            probes: the stored results of the probes named in ``requires``.

        Returns:
            Named arrays whose shapes depend only on the comparison's config and the task,
            so that the representations of a suite's networks stack.
        """

    @abc.abstractmethod
    def distance(self, a: Mapping[str, Array], b: Mapping[str, Array]) -> dict[str, Array]:
        """Distances between two representations (traceable: it runs under ``vmap``).

        Returns:
            One scalar per name in ``metrics``.
        """

    def distances(
        self, representations: Sequence[Mapping[str, np.ndarray]], pairs: Int[np.ndarray, "p 2"]
    ) -> dict[str, Float[np.ndarray, " p"]]:
        """Distances for many pairs at once: ``distance`` vmapped over pairs, in batches.

        Args:
            representations: one representation per network (same keys and shapes).
            pairs: rows of indices into `representations`.

        Returns:
            Metric name → one distance per row of `pairs`.
        """
        pairs = np.asarray(pairs, dtype=np.int32).reshape(-1, 2)
        stacked = stack_representations(representations)
        out: dict[str, list[np.ndarray]] = {}
        batch = max(self.pair_batch, 1)
        for start in range(0, len(pairs), batch):
            chunk = pairs[start : start + batch]
            size = min(batch, 1 << max(len(chunk) - 1, 0).bit_length())
            padded = np.zeros((size, 2), np.int32)
            padded[: len(chunk)] = chunk
            values = _pair_distances(self, stacked, jnp.asarray(padded))
            for name, value in values.items():
                out.setdefault(name, []).append(np.asarray(value)[: len(chunk)])
        return {
            name: np.concatenate(out.get(name, [np.zeros(0)])).astype(np.float64)
            for name in self.metrics or out
        }


def stack_representations(
    representations: Sequence[Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Stack representations along a new leading axis (one row per network).

    Raises:
        ValueError: naming the array whose keys or shapes differ between networks.
    """
    if not representations:
        raise ValueError("no representations to stack")
    names = sorted(representations[0])
    for index, representation in enumerate(representations):
        if sorted(representation) != names:
            raise ValueError(
                f"representation {index} has arrays {sorted(representation)}, expected {names}"
            )
    stacked = {}
    for name in names:
        shapes = {np.shape(r[name]) for r in representations}
        if len(shapes) != 1:
            raise ValueError(
                f"representations differ in the shape of '{name}' ({sorted(shapes)}): "
                "networks compared together must give arrays of one shape"
            )
        stacked[name] = np.stack([np.asarray(r[name]) for r in representations])
    return stacked


@eqx.filter_jit
def _pair_distances(
    comparison: AbstractComparison, stacked: Mapping[str, Any], pairs: Int[Array, "p 2"]
) -> dict[str, Array]:
    def one(pair: Int[Array, " 2"]) -> dict[str, Array]:
        a = {name: value[pair[0]] for name, value in stacked.items()}
        b = {name: value[pair[1]] for name, value in stacked.items()}
        return comparison.distance(a, b)

    return jax.vmap(one)(pairs)
