"""Statistics on a distance matrix between networks: do the labels explain the distances?

All functions take a square, symmetric distance matrix with a zero diagonal (see
:func:`square`) and plain NumPy labels; none needs the networks themselves.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.cluster.hierarchy
import scipy.spatial.distance
from jaxtyping import Float, Int


def square(distances: np.ndarray) -> Float[np.ndarray, "network network"]:
    """A square distance matrix from a condensed vector (pairs i < j) or a square matrix.

    Raises:
        ValueError: if a square matrix is not symmetric with a zero diagonal.
    """
    d = np.asarray(distances, dtype=float)
    if d.ndim == 1:
        return scipy.spatial.distance.squareform(d)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"expected a condensed vector or a square matrix, got shape {d.shape}")
    if not np.allclose(d, d.T) or not np.allclose(np.diag(d), 0):
        raise ValueError("a distance matrix must be symmetric with a zero diagonal")
    return d


def _codes(labels: Sequence) -> np.ndarray:
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.ravel()


@dataclasses.dataclass(frozen=True)
class Permanova:
    """A PERMANOVA result (Anderson 2001).

    Attributes:
        pseudo_f: (SS_between / (g − 1)) / (SS_within / (N − g)).
        p_value: (1 + #{F_perm ≥ F}) / (1 + n_perm), or the exact fraction when every
            distinct relabelling was enumerated.
        min_p_value: the smallest p this test could have returned (its resolution).
        n_permutations: relabellings evaluated (the observed one excluded).
        exact: True when every distinct relabelling was enumerated.
    """

    pseudo_f: float
    p_value: float
    min_p_value: float
    n_permutations: int
    exact: bool


def _pseudo_f(sq: np.ndarray, codes: np.ndarray, n_groups: int) -> float:
    n = codes.shape[0]
    total = sq.sum() / (2 * n)
    within = 0.0
    for g in range(n_groups):
        members = codes == g
        within += sq[np.ix_(members, members)].sum() / (2 * members.sum())
    between = total - within
    if within == 0:
        return math.inf if between > 0 else math.nan
    return (between / (n_groups - 1)) / (within / (n - n_groups))


def _distinct_relabellings(codes: np.ndarray) -> Iterator[np.ndarray]:
    """Every distinct assignment of the same multiset of labels (multiset permutations)."""
    counts = Counter(codes.tolist())
    n = codes.shape[0]

    def fill(position, remaining, current):
        if position == n:
            yield np.asarray(current)
            return
        for label in sorted(remaining):
            if remaining[label]:
                remaining[label] -= 1
                current.append(label)
                yield from fill(position + 1, remaining, current)
                current.pop()
                remaining[label] += 1

    yield from fill(0, counts, [])


def permanova(
    distances: np.ndarray,
    labels: Sequence,
    *,
    n_permutations: int = 999,
    seed: int = 0,
) -> Permanova:
    """Permutational ANOVA on distances: are within-label distances smaller than between?

    The pseudo-F uses squared distances (for Euclidean distances it is the one-way ANOVA F on
    the points). Labels are permuted; when there are no more distinct relabellings than
    `n_permutations`, all are enumerated and the p-value is exact.

    Args:
        distances: square or condensed distance matrix.
        labels: one label per network (at least two groups, one with two or more members).
        n_permutations: random relabellings when not enumerating.
        seed: seed of the permutations.

    Returns:
        The pseudo-F, its p-value and the smallest attainable p-value.
    """
    sq = square(distances) ** 2
    codes = _codes(labels)
    n_groups = int(codes.max()) + 1
    if n_groups < 2 or n_groups >= codes.shape[0]:
        raise ValueError(
            f"PERMANOVA needs 2 ≤ groups < networks, got {n_groups} groups of {codes.shape[0]}"
        )
    observed = _pseudo_f(sq, codes, n_groups)
    n_distinct = math.factorial(codes.shape[0]) // math.prod(
        math.factorial(c) for c in Counter(codes.tolist()).values()
    )
    if n_distinct <= n_permutations + 1:
        stats = [_pseudo_f(sq, p, n_groups) for p in _distinct_relabellings(codes)]
        # The enumeration includes the observed labelling, so p ≥ 1 / n_distinct.
        hits = sum(f >= observed * (1 - 1e-12) for f in stats)
        return Permanova(observed, hits / n_distinct, 1 / n_distinct, n_distinct - 1, True)
    rng = np.random.default_rng(seed)
    stats = [_pseudo_f(sq, rng.permutation(codes), n_groups) for _ in range(n_permutations)]
    hits = sum(f >= observed * (1 - 1e-12) for f in stats)
    return Permanova(
        observed,
        (1 + hits) / (1 + n_permutations),
        1 / (1 + n_permutations),
        n_permutations,
        False,
    )


def nearest_neighbour_accuracy(distances: np.ndarray, labels: Sequence) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of the labels under the distances.

    Each network is given the label of its nearest other network (ties: the lowest index).
    """
    d = square(distances).copy()
    np.fill_diagonal(d, np.inf)
    codes = _codes(labels)
    return float(np.mean(codes[np.argmin(d, axis=1)] == codes))


def cluster(
    distances: np.ndarray, n_clusters: int, *, method: str = "average"
) -> Int[np.ndarray, " network"]:
    """Hierarchical clustering of the networks into `n_clusters` classes (scipy linkage).

    Args:
        distances: square or condensed distance matrix.
        n_clusters: number of classes to cut the tree into.
        method: linkage method (``average`` = UPGMA; ``complete``, ``single``, ``ward``, …).

    Returns:
        Class labels 0 … n_clusters − 1, one per network.
    """
    condensed = scipy.spatial.distance.squareform(square(distances), checks=False)
    tree = scipy.cluster.hierarchy.linkage(condensed, method=method)
    return scipy.cluster.hierarchy.fcluster(tree, n_clusters, criterion="maxclust") - 1


def linkage(distances: np.ndarray, *, method: str = "average") -> np.ndarray:
    """The scipy linkage matrix (for a dendrogram) of the distance matrix."""
    condensed = scipy.spatial.distance.squareform(square(distances), checks=False)
    return scipy.cluster.hierarchy.linkage(condensed, method=method)


def classical_mds(
    distances: np.ndarray, n_components: int = 2
) -> tuple[Float[np.ndarray, "network component"], Float[np.ndarray, " component"]]:
    """Classical (Torgerson) multidimensional scaling.

    B = −½ J D² J with J the centring matrix; the embedding is the top eigenvectors of B
    scaled by the square roots of their eigenvalues (negative ones, from non-Euclidean
    distances, are clipped to zero).

    Args:
        distances: square or condensed distance matrix.
        n_components: embedding dimension.

    Returns:
        The coordinates ``[network, n_components]`` and, per component, the fraction of the
        positive eigenvalue mass it carries.
    """
    d = square(distances)
    n = d.shape[0]
    j = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * j @ (d**2) @ j
    values, vectors = np.linalg.eigh(b)
    order = np.argsort(values)[::-1][:n_components]
    top = np.maximum(values[order], 0.0)
    coordinates = vectors[:, order] * np.sqrt(top)[None, :]
    positive = np.sum(np.maximum(values, 0.0))
    return coordinates, (top / positive if positive > 0 else top)


def within_between(
    distances: np.ndarray, labels: Sequence
) -> tuple[Float[np.ndarray, " within"], Float[np.ndarray, " between"]]:
    """All within-label and all between-label pair distances (pairs i < j)."""
    d = square(distances)
    codes = _codes(labels)
    i, j = np.triu_indices(d.shape[0], k=1)
    same = codes[i] == codes[j]
    return d[i[same], j[same]], d[i[~same], j[~same]]


__all__ = [
    "Permanova",
    "classical_mds",
    "cluster",
    "linkage",
    "nearest_neighbour_accuracy",
    "permanova",
    "square",
    "within_between",
]
