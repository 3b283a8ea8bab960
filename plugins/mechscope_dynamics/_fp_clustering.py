"""Clustering for the fixed-point solver: merging candidates and unique-ing points per input."""

from __future__ import annotations

import numpy as np
from scipy.spatial import KDTree

from mechscope_dynamics._fp_types import Candidates


def _neighbours(points: np.ndarray, tol: float, block: int = 2048) -> np.ndarray:
    """Boolean ``[m, m]`` matrix of pairs within `tol` (dense, from matrix products).

    In the state spaces here (tens to hundreds of dimensions) a k-d tree degenerates to brute
    force in Python-level loops; one matrix product per block of rows is much faster.
    """
    points = points - points.mean(axis=0)
    squared = np.sum(points**2, axis=1)
    # float32 products are twice as fast; their rounding of ‖a‖² + ‖b‖² − 2a·b (≈ 1e-7 of the
    # squared norms, ≤ 4 % of tol² here) is negligible unless `tol` is tiny next to the spread.
    if tol**2 > 5e-6 * squared.max(initial=0.0):
        points, squared = points.astype(np.float32), squared.astype(np.float32)
    near = np.empty((len(points), len(points)), dtype=bool)
    for lo in range(0, len(points), block):
        rows = points[lo : lo + block]
        distance = squared[lo : lo + block, None] + squared[None, :] - 2.0 * rows @ points.T
        near[lo : lo + block] = distance <= tol**2
    return near


def representatives(points: np.ndarray, score: np.ndarray, tol: float) -> np.ndarray:
    """Leaders of a greedy clustering of `points` ``[m, n]`` at radius `tol`, sorted.

    Points are visited by increasing `score`; each point not yet claimed becomes a leader and
    claims every unclaimed point within `tol` of it. Points with no neighbour lead themselves
    at once; only the others take the greedy pass.
    """
    m = len(points)
    if m == 0:
        return np.zeros(0, dtype=int)
    if m > 8192:  # keep the dense neighbour matrix under 64 MB
        return representatives_tree(points, score, tol)
    near = _neighbours(points, tol)
    alone = near.sum(axis=1) <= 1
    claimed = alone.copy()
    leaders = list(np.flatnonzero(alone))
    for i in np.argsort(score, kind="stable"):
        if claimed[i]:
            continue
        leaders.append(i)
        claimed |= near[i]
        claimed[i] = True
    return np.sort(np.asarray(leaders, dtype=int))


def representatives_tree(points: np.ndarray, score: np.ndarray, tol: float) -> np.ndarray:
    """:func:`representatives` with a k-d tree (for many points; only leaders query it)."""
    tree = KDTree(points)
    claimed = np.zeros(len(points), dtype=bool)
    leaders = []
    for i in np.argsort(score, kind="stable"):
        if claimed[i]:
            continue
        leaders.append(i)
        claimed[tree.query_ball_point(points[i], tol)] = True
        claimed[i] = True
    return np.sort(np.asarray(leaders, dtype=int))


def unique_per_input(
    points: np.ndarray, input_index: np.ndarray, score: np.ndarray, tol: float
) -> np.ndarray:
    """Rows that lead their cluster (radius `tol`, lowest `score`) within their input, sorted."""
    keep = []
    for k in np.unique(input_index):
        rows = np.flatnonzero(input_index == k)
        keep.extend(rows[representatives(points[rows], score[rows], tol)])
    return np.sort(np.asarray(keep, dtype=int))


def merge_indices(
    x: np.ndarray, row_input: np.ndarray, score: np.ndarray, radius: float
) -> np.ndarray:
    """Rows that represent their cluster (radius `radius`, per input, lowest `score`), sorted.

    Non-finite rows are dropped.
    """
    finite = np.flatnonzero(np.all(np.isfinite(x), axis=1) & np.isfinite(score))
    if len(finite) == 0:
        return finite
    keep = unique_per_input(x[finite], row_input[finite], score[finite], radius)
    return finite[keep]


def merged(candidates: Candidates, radius: float) -> Candidates:
    """One candidate per cluster of radius `radius` and input (lowest ‖f‖ leads)."""
    return candidates.take(merge_indices(candidates.x, candidates.input, candidates.norm, radius))


def near_known(
    x: np.ndarray, row_input: np.ndarray, known: list[Candidates], radius: float
) -> np.ndarray:
    """Whether each row lies within `radius` of a known point of the same input."""
    near = np.zeros(len(x), dtype=bool)
    if len(x) == 0 or not known:
        return near
    points = np.concatenate([part.x for part in known])
    inputs = np.concatenate([part.input for part in known])
    for k in np.unique(row_input):
        mine = points[inputs == k]
        if len(mine) == 0:
            continue
        rows = np.flatnonzero(row_input == k)
        distance, _ = KDTree(mine).query(x[rows], k=1, distance_upper_bound=radius)
        near[rows] = np.isfinite(distance)
    return near


def survivors(
    candidates: Candidates, leaving: np.ndarray, known: list[Candidates], merge_radius: float
) -> np.ndarray:
    """Rows that go on to the next block of a search, sorted.

    These are the rows not `leaving`, minus those within `merge_radius` of a `known` point of
    their input (they would find it again), one per cluster of the rest (lowest ‖f‖ leads).
    """
    x, row_input, norm = candidates.x, candidates.input, candidates.norm
    going = np.flatnonzero(~leaving)
    going = going[~near_known(x[going], row_input[going], known, merge_radius)]
    return going[merge_indices(x[going], row_input[going], norm[going], merge_radius)]
