"""Claims are tested against the table, with verdicts that follow the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mechscope.claims import evaluate, parse_claims
from mechscope.errors import ConfigError


def table_with(groups: dict[str, np.ndarray], metric="m", by="g") -> pd.DataFrame:
    rows = [
        {by: name, metric: value, "status": "completed"}
        for name, values in groups.items()
        for value in values
    ]
    return pd.DataFrame(rows)


def claim(**fields):
    return parse_claims([{"title": "t", **fields}])[0]


RNG = np.random.default_rng(0)
LOW = RNG.normal(0.0, 0.1, 8)
HIGH = RNG.normal(1.0, 0.1, 8)


def test_differs_follows_the_data():
    separated = table_with({"a": LOW, "b": HIGH})
    same = table_with({"a": LOW, "b": LOW[::-1]})
    assert evaluate(claim(kind="differs", metric="m", by="g"), separated)["verdict"] == "held"
    result = evaluate(claim(kind="differs", metric="m", by="g"), same)
    assert result["verdict"] == "did not hold"
    assert result["p_value"] == pytest.approx(1.0)


def test_greater_reports_difference_and_ci():
    data = table_with({"a": HIGH, "b": LOW})
    held = evaluate(claim(kind="greater", metric="m", by="g", a="a", b="b"), data)
    assert held["verdict"] == "held"
    assert held["effect"] == pytest.approx(HIGH.mean() - LOW.mean())
    assert held["ci_low"] < held["effect"] < held["ci_high"]
    reverse = evaluate(claim(kind="greater", metric="m", by="g", a="b", b="a"), data)
    assert reverse["verdict"] == "did not hold"
    tiny = table_with({"a": HIGH[:1], "b": LOW[:1]})
    assert (
        evaluate(claim(kind="greater", metric="m", by="g", a="a", b="b"), tiny)["verdict"]
        == "inconclusive"
    )


def test_similar_uses_margin():
    data = table_with({"a": LOW, "b": LOW + 0.02})
    assert evaluate(claim(kind="similar", metric="m", by="g", margin=0.5), data)["verdict"] == (
        "held"
    )
    far = table_with({"a": LOW, "b": HIGH})
    assert evaluate(claim(kind="similar", metric="m", by="g", margin=0.5), far)["verdict"] == (
        "did not hold"
    )


def test_correlates_checks_sign():
    x = np.linspace(0, 1, 12)
    data = pd.DataFrame({"x": x, "y": -2 * x + RNG.normal(0, 0.05, 12), "status": "completed"})
    negative = evaluate(claim(kind="correlates", x="x", y="y", sign="negative"), data)
    assert negative["verdict"] == "held" and negative["effect"] < -0.9
    positive = evaluate(claim(kind="correlates", x="x", y="y", sign="positive"), data)
    assert positive["verdict"] == "did not hold"


def test_exceeds_and_failed_runs_do_not_count():
    data = pd.DataFrame(
        {"m": [0.95, 0.96, 0.97, 0.94, 0.0], "status": ["completed"] * 4 + ["failed"]}
    )
    result = evaluate(claim(kind="exceeds", metric="m", threshold=0.9), data)
    assert result["verdict"] == "held" and result["n"] == 4
    assert evaluate(claim(kind="exceeds", metric="m", threshold=0.99), data)["verdict"] == (
        "did not hold"
    )


def test_missing_column_is_inconclusive():
    result = evaluate(claim(kind="exceeds", metric="nope", threshold=0), table_with({"a": LOW}))
    assert result["verdict"] == "inconclusive" and "nope" in result["measured"]


def test_bad_claims_are_one_line_errors():
    with pytest.raises(ConfigError, match="claims") as caught:
        parse_claims([{"title": "t", "kind": "bigger", "metric": "m"}])
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="margin"):
        parse_claims([{"title": "t", "kind": "similar", "metric": "m", "by": "g"}])


def test_where_restricts_rows():
    data = pd.concat(
        [
            table_with({"a": HIGH, "b": LOW}).assign(arm="x"),
            table_with({"a": LOW, "b": HIGH}).assign(arm="y"),
        ]
    )
    only_x = claim(kind="greater", metric="m", by="g", a="a", b="b", where={"arm": "x"})
    only_y = claim(kind="greater", metric="m", by="g", a="a", b="b", where={"arm": "y"})
    assert evaluate(only_x, data)["verdict"] == "held"
    assert evaluate(only_y, data)["verdict"] == "did not hold"
    assert evaluate(only_x, data)["n"] == 16


def test_named_columns_are_what_a_suite_checks_before_training():
    from mechscope.claims import named_columns

    assert named_columns(claim(kind="differs", metric="p.m", by="g")) == (["p.m"], ["g"])
    assert named_columns(
        claim(kind="exceeds", metric="p.m", threshold=0.5, where={"model.gain": 4.0})
    ) == (["p.m"], ["model.gain"])
    assert named_columns(claim(kind="correlates", x="p.x", y="q.y", sign="negative")) == (
        ["p.x", "q.y"],
        [],
    )
    # A mechanism claim's metric is its comparison's (checked against the comparison), not a
    # table column; its grouping column is.
    mechanism = claim(
        kind="different_mechanism", comparison="dsa", metric="angular", by="g", a=1, b=2
    )
    assert named_columns(mechanism) == ([], ["g"])
