"""Clustering for the fixed-point solver: merging candidates and unique-ing points per input."""

from __future__ import annotations

import numpy as np
from scipy.spatial import KDTree

from mechscope_dynamics._fp_types import Candidates


def representatives(points: np.ndarray, score: np.ndarray, tol: float) -> np.ndarray:
    """Leaders of a greedy clustering of `points` ``[m, n]`` at radius `tol`, sorted.

    Points are visited by increasing `score`; each point not yet claimed becomes a leader and
    claims every unclaimed point within `tol` of it.

    Only leaders' distances are needed, so they are computed for the next few unclaimed
    points at a time (one matrix product per batch of rows, the batch growing fourfold):
    where the points collapse onto a few clusters (relaxed starts) this costs a few rows
    instead of the whole ``[m, m]`` matrix, and where they do not it costs that matrix in
    blocks. In the state spaces here (tens to hundreds of dimensions) a k-d tree degenerates
    to brute force in Python-level loops.
    """
    m = len(points)
    if m == 0:
        return np.zeros(0, dtype=int)
    centred = points - points.mean(axis=0)
    squared = np.sum(centred**2, axis=1)
    # float32 products are twice as fast; their rounding of ‖a‖² + ‖b‖² − 2a·b (≈ 1e-7 of the
    # squared norms, ≤ 4 % of tol² here) is negligible unless `tol` is tiny next to the spread:
    # only a pair within a few per cent of `tol` can fall on the other side of it.
    if tol**2 > 5e-6 * squared.max(initial=0.0):
        centred, squared = centred.astype(np.float32), squared.astype(np.float32)
    order = np.argsort(score, kind="stable")
    claimed = np.zeros(m, dtype=bool)
    leaders = []
    # The first batch takes ≈ 256 k distances (all of them for up to 512 points).
    batch, visited = max(16, 2**18 // m), 0
    while visited < m:
        ahead = order[visited:]
        open_rows = np.flatnonzero(~claimed[ahead])[:batch]
        if len(open_rows) == 0:
            break
        pending = ahead[open_rows]
        visited += int(open_rows[-1]) + 1  # everything before it is claimed or visited now
        distance = squared[pending, None] + squared[None, :] - 2.0 * centred[pending] @ centred.T
        near = distance <= tol**2
        # Every pending point was unclaimed when the batch began, so it leads unless a
        # pending point before it leads and claims it: only rows with pending neighbours
        # need the sequential pass.
        within = near[:, pending]
        np.fill_diagonal(within, False)
        taken = np.zeros(len(pending), dtype=bool)
        for row in np.flatnonzero(within.any(axis=1)):
            if not taken[row]:
                taken[row + 1 :] |= within[row, row + 1 :]
        leaders.extend(pending[~taken])
        claimed |= near[~taken].any(axis=0)
        claimed[pending] = True
        batch = min(4 * batch, max(16, 2**22 // m))  # at most ≈ 4 M distances at a time
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
