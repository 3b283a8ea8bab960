"""Statistics across seeds and variants agree with direct computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mechscope import stats

RNG = np.random.default_rng(1)


def frame():
    a = RNG.normal(0.0, 1.0, 6)
    b = RNG.normal(3.0, 1.0, 6)
    rows = [{"variant": "a", "m.x": v, "status": "completed"} for v in a]
    rows += [{"variant": "b", "m.x": v, "status": "completed"} for v in b]
    rows += [{"variant": "b", "m.x": 100.0, "status": "failed"}]
    return pd.DataFrame(rows), a, b


def test_summarize_matches_numpy_and_ignores_failed_runs():
    table, a, b = frame()
    summary = stats.summarize(table).set_index("variant")
    assert summary.loc["a", "mean"] == pytest.approx(a.mean())
    assert summary.loc["b", "mean"] == pytest.approx(b.mean())
    assert summary.loc["b", "n"] == 6
    assert summary.loc["a", "sd"] == pytest.approx(a.std(ddof=1))
    for variant in ("a", "b"):
        row = summary.loc[variant]
        assert row["ci_low"] < row["mean"] < row["ci_high"]


def test_compare_detects_difference_and_effect_size():
    table, a, b = frame()
    result = stats.compare(table, ["m.x"]).iloc[0]
    assert result["p_value"] < 0.01
    assert result["difference"] == pytest.approx(a.mean() - b.mean())
    pooled = math.sqrt((5 * a.var(ddof=1) + 5 * b.var(ddof=1)) / 10)
    expected = (1 - 3 / (4 * 12 - 9)) * (a.mean() - b.mean()) / pooled
    assert result["hedges_g"] == pytest.approx(expected)
    same = pd.DataFrame(
        {"variant": ["a"] * 6 + ["b"] * 6, "m.x": np.tile(a, 2), "status": "completed"}
    )
    assert stats.compare(same, ["m.x"]).iloc[0]["p_value"] > 0.5


def test_holm_known_values():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.2, math.nan])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1])


def test_correlate_monotone_and_degenerate():
    x = np.arange(8.0)
    table = pd.DataFrame({"x": x, "y": x**3, "status": "completed"})
    result = stats.correlate(table, "x", "y")
    assert result["spearman"] == pytest.approx(1.0)
    assert result["spearman_ci_low"] > 0.8
    assert result["pearson"] < 1.0
    flat = pd.DataFrame({"x": x, "y": np.ones(8), "status": "completed"})
    assert math.isnan(stats.correlate(flat, "x", "y")["spearman"])
