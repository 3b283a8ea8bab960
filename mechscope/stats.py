"""Statistics across seeds and variants: bootstrap CIs, permutation tests, correlations.

Built on scipy.stats; every resampling uses a fixed seed so a report is reproducible.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

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


def bootstrap_ci(values: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap CI of the mean (BCa, falling back to percentile); NaN for n < 2."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
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
