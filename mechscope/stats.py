"""Statistics across seeds and variants: bootstrap CIs, permutation tests, correlations.

Built on scipy.stats; every resampling uses a fixed seed so a report is reproducible.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


def metric_columns(table: pd.DataFrame) -> list[str]:
    """Numeric ``probe.metric`` columns (and ``train.*``) of a suite table."""
    return [
        column
        for column in table.columns
        if "." in column
        and pd.api.types.is_numeric_dtype(table[column])
        and column.split(".")[0] not in ("task", "model", "trainer", "probes")
    ]


MIN_N_FOR_CI = 3
"""Fewest values a confidence interval (or a claim's verdict) is computed from.

A bootstrap over two values has only three distinct resamples, so its "95% CI" is the range
of the two values; below this, CIs are NaN, claims are inconclusive and the report says why.
"""


def bootstrap_ci(values: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap CI of the mean (BCa, falling back to percentile); NaN for n < MIN_N_FOR_CI."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < MIN_N_FOR_CI:
        return math.nan, math.nan
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    for method in ("BCa", "percentile"):
        result = stats.bootstrap(
            (values,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            method=method,
            random_state=np.random.default_rng(seed),
        )
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high)
    return math.nan, math.nan


def summarize(
    table: pd.DataFrame, metrics: Sequence[str] | None = None, *, by: str = "variant"
) -> pd.DataFrame:
    """Per group and metric: n, mean, sd and the bootstrap 95% CI of the mean.

    Only completed runs count; NaN values are left out of n.
    """
    metrics = list(metrics) if metrics is not None else metric_columns(table)
    usable = table[table["status"] == "completed"] if "status" in table else table
    rows = []
    for group, frame in usable.groupby(by, sort=False):
        for metric in metrics:
            values = frame[metric].to_numpy(dtype=float) if metric in frame else np.array([])
            finite = values[np.isfinite(values)]
            low, high = bootstrap_ci(finite)
            rows.append(
                {
                    by: group,
                    "metric": metric,
                    "n": int(finite.size),
                    "mean": float(finite.mean()) if finite.size else math.nan,
                    "sd": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows, columns=[by, "metric", "n", "mean", "sd", "ci_low", "ci_high"])


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Standardised mean difference (a − b) with the small-sample correction."""
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return math.nan
    pooled = math.sqrt(
        ((n_a - 1) * np.var(a, ddof=1) + (n_b - 1) * np.var(b, ddof=1)) / (n_a + n_b - 2)
    )
    if pooled == 0:
        return math.nan
    correction = 1 - 3 / (4 * (n_a + n_b) - 9)
    return float(correction * (np.mean(a) - np.mean(b)) / pooled)


def compare(table: pd.DataFrame, metrics: Sequence[str], *, by: str = "variant") -> pd.DataFrame:
    """Every pair of groups, per metric: difference of means, permutation p-value, Hedges' g.

    The p-value is a two-sided permutation test of the difference in means (exact when the
    groups are small enough to enumerate), Holm-corrected across the pairs of each metric.
    """
    usable = table[table["status"] == "completed"] if "status" in table else table
    groups = list(dict.fromkeys(usable[by]))
    rows = []
    for metric in metrics:
        block = []
        for first, second in itertools.combinations(groups, 2):
            a = usable.loc[usable[by] == first, metric].to_numpy(dtype=float)
            b = usable.loc[usable[by] == second, metric].to_numpy(dtype=float)
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            p_value = math.nan
            if len(a) >= 2 and len(b) >= 2 and np.ptp(np.concatenate([a, b])) > 0:
                test = stats.permutation_test(
                    (a, b),
                    lambda x, y: np.mean(x) - np.mean(y),
                    permutation_type="independent",
                    alternative="two-sided",
                    n_resamples=9999,
                    random_state=np.random.default_rng(0),
                )
                p_value = float(test.pvalue)
            block.append(
                {
                    "metric": metric,
                    "a": first,
                    "b": second,
                    "n_a": len(a),
                    "n_b": len(b),
                    "mean_a": float(a.mean()) if len(a) else math.nan,
                    "mean_b": float(b.mean()) if len(b) else math.nan,
                    "difference": float(a.mean() - b.mean()) if len(a) and len(b) else math.nan,
                    "hedges_g": hedges_g(a, b),
                    "p_value": p_value,
                }
            )
        for row, adjusted in zip(block, holm([r["p_value"] for r in block]), strict=True):
            row["p_holm"] = adjusted
        rows.extend(block)
    columns = [
        "metric",
        "a",
        "b",
        "n_a",
        "n_b",
        "mean_a",
        "mean_b",
        "difference",
        "hedges_g",
        "p_value",
        "p_holm",
    ]
    return pd.DataFrame(rows, columns=columns)


def permutation_min_p(n_a: int, n_b: int, *, resamples: int = 9999) -> float:
    """The smallest two-sided p :func:`compare`'s permutation test can return for these sizes.

    With few networks the test enumerates every split of the pooled values into groups of
    `n_a` and `n_b`; the observed split is one of them, so p ≥ 2 / C(n_a + n_b, n_a) however
    different the groups are (1/3 for two networks per group). With more splits than
    `resamples`, p ≥ 2 / (resamples + 1). NaN when the test does not run (a group under 2).
    """
    if n_a < 2 or n_b < 2:
        return math.nan
    splits = math.comb(n_a + n_b, n_a)
    return min(1.0, 2 / splits if splits <= resamples else 2 / (resamples + 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN and is not counted)."""
    indexed = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    indexed.sort()
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(indexed):
        running = max(running, min(1.0, (len(indexed) - rank) * p))
        adjusted[index] = running
    return adjusted


def correlate(table: pd.DataFrame, x: str, y: str, *, seed: int = 0) -> dict[str, float]:
    """Spearman and Pearson correlation of two metrics across networks, with a bootstrap CI.

    Returns:
        ``n``, ``spearman``, ``spearman_p``, ``spearman_ci_low``/``high`` (bootstrap over
        networks), ``pearson``, ``pearson_p``.
    """
    usable = table[table["status"] == "completed"] if "status" in table else table
    pairs = usable[[x, y]].to_numpy(dtype=float)
    pairs = pairs[np.all(np.isfinite(pairs), axis=1)]
    result = {"x": x, "y": y, "n": len(pairs)}
    nan = {
        k: math.nan
        for k in (
            "spearman",
            "spearman_p",
            "spearman_ci_low",
            "spearman_ci_high",
            "pearson",
            "pearson_p",
        )
    }
    if len(pairs) < 3 or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return {**result, **nan}
    spearman = stats.spearmanr(pairs[:, 0], pairs[:, 1])
    pearson = stats.pearsonr(pairs[:, 0], pairs[:, 1])
    low, high = _spearman_interval(pairs, seed=seed)
    return {
        **result,
        "spearman": float(spearman.statistic),
        "spearman_p": float(spearman.pvalue),
        "spearman_ci_low": low,
        "spearman_ci_high": high,
        "pearson": float(pearson.statistic),
        "pearson_p": float(pearson.pvalue),
    }


def _spearman_interval(
    pairs: np.ndarray, *, seed: int, resamples: int = 1000
) -> tuple[float, float]:
    """Percentile bootstrap CI of Spearman's ρ over networks (pairs resampled together).

    With few networks some resamples repeat one network so often that a column is constant
    and ρ is undefined; those resamples are skipped rather than poisoning the interval. If
    fewer than half are usable the interval is NaN (too little data to say).
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        sample = pairs[rng.integers(0, len(pairs), len(pairs))]
        if np.ptp(sample[:, 0]) > 0 and np.ptp(sample[:, 1]) > 0:
            values.append(stats.spearmanr(sample[:, 0], sample[:, 1]).statistic)
    if len(values) < resamples // 2:
        return math.nan, math.nan
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


# Statistics on distance matrices: is the distance between networks explained by a label
# (their variant, architecture, training regime)?


def _check_distances(distances: np.ndarray, labels: Sequence[object]) -> tuple[np.ndarray, list]:
    """A validated square distance matrix (a condensed vector is squared) and its labels."""
    distances = square_distances(distances)
    labels = list(labels)
    if len(labels) != distances.shape[0]:
        raise ValueError(f"{len(labels)} labels for {distances.shape[0]} networks")
    return distances, labels


def square_distances(distances: np.ndarray) -> np.ndarray:
    """A square distance matrix from a condensed vector (pairs i < j) or a square matrix.

    Raises:
        ValueError: for another shape, a non-finite entry, or a square matrix that is not
            symmetric with a zero diagonal.
    """
    from scipy.spatial.distance import squareform

    matrix = np.asarray(distances, dtype=float)
    if matrix.ndim == 1:
        matrix = squareform(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"distances must be a square matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("distances must be finite")
    if not np.allclose(matrix, matrix.T) or not np.allclose(np.diag(matrix), 0):
        raise ValueError("a distance matrix must be symmetric with a zero diagonal")
    return matrix


def _label_codes(labels: Sequence[object]) -> np.ndarray:
    return np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)[1].ravel()


def _pseudo_f_codes(squared: np.ndarray, codes: np.ndarray, groups: int) -> float:
    n = len(codes)
    total = squared.sum() / (2 * n)
    within = 0.0
    for group in range(groups):
        members = codes == group
        within += squared[np.ix_(members, members)].sum() / (2 * members.sum())
    between = total - within
    if within <= 0:
        return math.inf if between > 0 else math.nan
    return float((between / (groups - 1)) / (within / (n - groups)))


def pseudo_f(distances: np.ndarray, labels: Sequence[object]) -> float:
    """PERMANOVA's pseudo-F (Anderson 2001) of a distance matrix grouped by `labels`.

    F = (SS_between / (g − 1)) / (SS_within / (n − g)), with SS computed from squared
    distances (for Euclidean distances it is the one-way ANOVA F on the points); large when
    networks of one label are closer to each other than to the rest. NaN when it is undefined
    (one group, or every network its own group).
    """
    distances, labels = _check_distances(distances, labels)
    codes = _label_codes(labels)
    groups = int(codes.max()) + 1 if len(codes) else 0
    if groups < 2 or groups >= len(codes):
        return math.nan
    return _pseudo_f_codes(distances**2, codes, groups)


def _distinct_labellings(codes: np.ndarray) -> Iterator[np.ndarray]:
    """Every distinct arrangement of the same multiset of labels."""
    counts = Counter(codes.tolist())
    n = len(codes)

    def fill(current: list[int]) -> Iterator[np.ndarray]:
        if len(current) == n:
            yield np.asarray(current)
            return
        for label in sorted(counts):
            if counts[label]:
                counts[label] -= 1
                current.append(label)
                yield from fill(current)
                current.pop()
                counts[label] += 1

    yield from fill([])


def permanova(
    distances: np.ndarray,
    labels: Sequence[object],
    *,
    permutations: int = 9999,
    seed: int = 0,
) -> dict[str, Any]:
    """PERMANOVA: pseudo-F and its permutation p-value (labels permuted across networks).

    When the design has no more distinct labellings than ``permutations + 1``, every one is
    enumerated and the p-value is exact; otherwise `permutations` random ones are drawn.

    Returns:
        ``pseudo_f``; ``p_value`` (exact: the share of labellings with F ≥ the observed one;
        else (1 + #{F_perm ≥ F}) / (1 + permutations); NaN when F is undefined); ``min_p``
        (the smallest p this design can return: exact, the share of labellings reaching the
        largest F — swaps of equal-sized groups tie — else 1 / (1 + permutations));
        ``exact``; ``permutations`` (labellings evaluated besides the observed one); ``n`` and
        ``groups``.
    """
    distances, labels = _check_distances(distances, labels)
    codes = _label_codes(labels)
    n, groups = len(codes), int(codes.max()) + 1 if len(codes) else 0
    distinct = math.factorial(n) // math.prod(math.factorial(c) for c in Counter(codes).values())
    exact = distinct <= permutations + 1
    floor = 1 / distinct if exact else 1 / (1 + permutations)
    result: dict[str, Any] = {"n": n, "groups": groups, "exact": exact, "min_p": floor}
    if groups < 2 or groups >= n:
        return {**result, "pseudo_f": math.nan, "p_value": math.nan, "permutations": 0}
    squared = distances**2
    observed = _pseudo_f_codes(squared, codes, groups)
    if math.isnan(observed):  # e.g. every distance 0: nothing to test
        return {**result, "pseudo_f": math.nan, "p_value": math.nan, "permutations": 0}
    threshold = observed * (1 - 1e-12) if math.isfinite(observed) else observed
    if exact:
        values = [_pseudo_f_codes(squared, c, groups) for c in _distinct_labellings(codes)]
        # The enumeration includes the observed labelling, so p ≥ 1 / distinct; labellings
        # that only swap equal-sized groups share the largest F, so the floor can be higher.
        p_value = sum(v >= threshold for v in values) / distinct
        largest = max(v for v in values if not math.isnan(v))
        floor = sum(v >= largest * (1 - 1e-12) for v in values) / distinct
        return {
            **result,
            "pseudo_f": observed,
            "p_value": p_value,
            "min_p": floor,
            "permutations": distinct - 1,
        }
    rng = np.random.default_rng(seed)
    hits = sum(
        _pseudo_f_codes(squared, rng.permutation(codes), groups) >= threshold
        for _ in range(permutations)
    )
    p_value = (1 + hits) / (1 + permutations)
    return {**result, "pseudo_f": observed, "p_value": p_value, "permutations": permutations}


def nearest_neighbour_accuracy(distances: np.ndarray, labels: Sequence[object]) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of `labels` under `distances`.

    Each network is labelled by its nearest other network; ties count as the fraction of the
    tied neighbours that share the label (so a tie is never luck).
    """
    distances, labels = _check_distances(distances, labels)
    text = np.asarray(labels, dtype=object).astype(str)
    n = len(text)
    if n < 2:
        return math.nan
    scores = []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        row = distances[i, others]
        nearest = others[np.isclose(row, row.min(), rtol=1e-9, atol=1e-12)]
        scores.append(float(np.mean(text[nearest] == text[i])))
    return float(np.mean(scores))


def cluster(
    distances: np.ndarray, n_clusters: int, *, method: LinkageMethod = "average"
) -> np.ndarray:
    """Hierarchical clusters (scipy linkage on the condensed matrix) cut into `n_clusters`.

    Returns:
        One cluster number (1 … n_clusters) per network.
    """
    from scipy.cluster.hierarchy import fcluster

    return fcluster(linkage_of(distances, method=method), n_clusters, criterion="maxclust")


LinkageMethod = Literal["single", "complete", "average", "weighted", "centroid", "median", "ward"]


def linkage_of(distances: np.ndarray, *, method: LinkageMethod = "average") -> np.ndarray:
    """The scipy linkage matrix of a symmetric distance matrix (for clusters, dendrograms)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    distances = np.asarray(distances, dtype=float)
    symmetric = (distances + distances.T) / 2
    np.fill_diagonal(symmetric, 0.0)
    return linkage(squareform(symmetric, checks=False), method=method)


def mds(distances: np.ndarray, *, dimensions: int = 2) -> np.ndarray:
    """Classical (Torgerson) multidimensional scaling: coordinates whose distances fit.

    Returns:
        ``[n, dimensions]`` coordinates (axes of negative eigenvalues are zero).
    """
    distances = np.asarray(distances, dtype=float)
    n = len(distances)
    centring = np.eye(n) - np.ones((n, n)) / n
    gram = -0.5 * centring @ (distances**2) @ centring
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    order = np.argsort(values)[::-1][:dimensions]
    coordinates = vectors[:, order] * np.sqrt(np.clip(values[order], 0, None))
    if coordinates.shape[1] < dimensions:
        coordinates = np.pad(coordinates, ((0, 0), (0, dimensions - coordinates.shape[1])))
    return coordinates


def within_between(
    distances: np.ndarray,
    labels: Sequence[object],
    a: object | None = None,
    b: object | None = None,
) -> dict[str, Any]:
    """Distances between networks of different labels and within labels.

    Args:
        distances: square or condensed distance matrix.
        labels: one label per network.
        a: with `b`, restrict to networks of these two labels (between = a–b pairs).
        b: see `a`.

    Returns:
        ``between`` and ``within`` (mean distances), ``difference`` (between − within), and
        ``between_values`` / ``within_values`` (every such pair's distance, pairs i < j).
    """
    distances, labels = _check_distances(distances, labels)
    text = np.asarray(labels, dtype=object).astype(str)
    if (a is None) != (b is None):
        raise ValueError("give both labels a and b, or neither")
    chosen = (
        np.arange(len(text)) if a is None else np.flatnonzero((text == str(a)) | (text == str(b)))
    )
    i, j = np.triu_indices(len(chosen), k=1)
    i, j = chosen[i], chosen[j]
    same = text[i] == text[j]
    within, between = distances[i[same], j[same]], distances[i[~same], j[~same]]
    mean_between = float(between.mean()) if between.size else math.nan
    mean_within = float(within.mean()) if within.size else math.nan
    return {
        "between": mean_between,
        "within": mean_within,
        "difference": mean_between - mean_within,
        "between_values": between,
        "within_values": within,
    }
