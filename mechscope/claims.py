"""Claims: hypotheses a suite states up front and the report tests against its table.

A claim never hard-codes an outcome: it names the metric, the grouping and the expected
direction, and the report says what was measured, the effect with its 95% CI, and whether the
claim held here ("held", "did not hold", or "inconclusive" when there is too little data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import pydantic
from scipy import stats as scipy_stats

from mechscope.errors import ConfigError
from mechscope.stats import MIN_N_FOR_CI, RESAMPLES, bootstrap_ci


class _Claim(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    title: str = pydantic.Field(description="One line naming the claim.")
    statement: str = pydantic.Field(default="", description="The hypothesis in words.")
    alpha: float = pydantic.Field(default=0.05, gt=0, lt=1, description="Significance level.")
    where: dict[str, Any] = pydantic.Field(
        default_factory=dict,
        description="Only rows whose columns equal these values (e.g. one activation).",
    )


class Differs(_Claim):
    """A metric differs between the groups of a column (Kruskal–Wallis test)."""

    kind: Literal["differs"]
    metric: str
    by: str


class Greater(_Claim):
    """The mean of a metric is larger in group `a` than in group `b` of a column."""

    kind: Literal["greater"]
    metric: str
    by: str
    a: Any
    b: Any


class Similar(_Claim):
    """A metric's group means all lie within `margin` of each other (CI of the range)."""

    kind: Literal["similar"]
    metric: str
    by: str
    margin: float = pydantic.Field(gt=0)


class Correlates(_Claim):
    """Two metrics correlate across networks with the given sign (Spearman, bootstrap CI)."""

    kind: Literal["correlates"]
    x: str
    y: str
    sign: Literal["positive", "negative"]


class Exceeds(_Claim):
    """The mean of a metric exceeds a threshold (lower CI bound above it)."""

    kind: Literal["exceeds"]
    metric: str
    threshold: float


class _MechanismClaim(_Claim):
    comparison: str = pydantic.Field(description="The comparison's name (e.g. dsa).")
    metric: str = pydantic.Field(description="Which of its distances (e.g. angular).")
    by: str = pydantic.Field(description="The table column whose groups are compared.")
    a: Any
    b: Any
    permutations: int = pydantic.Field(default=4999, ge=99, description="Label permutations.")


class SameMechanism(_MechanismClaim):
    """Networks of groups `a` and `b` are no farther apart than networks within a group.

    Held when the upper (1 − α) bootstrap bound (networks resampled within each group) of
    mean(between) − mean(within) is below the equivalence `margin`.
    """

    kind: Literal["same_mechanism"]
    margin: float = pydantic.Field(gt=0, description="Equivalence margin (distance units).")


class DifferentMechanism(_MechanismClaim):
    """Networks of groups `a` and `b` are farther apart than networks within a group.

    Held when mean(between) > mean(within) and PERMANOVA's permutation p (labels `a`/`b`
    permuted over their networks) is below `alpha`.
    """

    kind: Literal["different_mechanism"]


Claim = Annotated[
    Differs | Greater | Similar | Correlates | Exceeds | SameMechanism | DifferentMechanism,
    pydantic.Field(discriminator="kind"),
]
MECHANISM_CLAIMS = (SameMechanism, DifferentMechanism)
_ADAPTER = pydantic.TypeAdapter(list[Claim])


def parse_claims(raw: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Validate a list of claim tables (one-line ConfigError on a bad one)."""
    try:
        return _ADAPTER.validate_python(list(raw))
    except pydantic.ValidationError as error:
        detail = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in detail["loc"])
        raise ConfigError(f"claims: {where}: {detail['msg']}") from None


def named_columns(claim: Any) -> tuple[list[str], list[str]]:
    """The table columns a parsed claim names, so a suite can check them before training.

    Returns:
        The metric columns it tests (``metric``, or ``x`` and ``y``; none for mechanism
        claims, whose metric is the comparison's) and the columns it groups or filters by
        (``by`` and the keys of ``where``).
    """
    if isinstance(claim, MECHANISM_CLAIMS):
        metrics: list[str] = []
    elif isinstance(claim, Correlates):
        metrics = [claim.x, claim.y]
    else:
        metrics = [claim.metric]
    by = getattr(claim, "by", None)  # every kind but correlates and exceeds groups
    return metrics, [*([by] if by is not None else []), *claim.where]


def _completed(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == "completed"] if "status" in table else table


def _groups(table: pd.DataFrame, metric: str, by: str) -> dict[Any, np.ndarray]:
    for column in (metric, by):
        if column not in table:
            raise KeyError(column)
    groups = {}
    for value, frame in _completed(table).groupby(by, sort=True):
        values = frame[metric].to_numpy(dtype=float)
        groups[value] = values[np.isfinite(values)]
    return groups


def cell_matches(value: Any, wanted: Any) -> bool:
    """Whether a table cell equals a value a config names (``where``, ``a``/``b``).

    TOML gives ``0.0`` where the table may hold ``0`` or ``"0.0"``; equal values, or equal
    text, match.
    """
    try:
        return bool(value == wanted) or str(value) == str(wanted)
    except (TypeError, ValueError):
        return False


def _difference_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if len(a) < MIN_N_FOR_CI or len(b) < MIN_N_FOR_CI:
        return math.nan, math.nan
    result = scipy_stats.bootstrap(
        (a, b),
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        n_resamples=RESAMPLES,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def evaluate(claim: Any, table: pd.DataFrame, pairs: pd.DataFrame | None = None) -> dict[str, Any]:
    """Test one claim on a suite table (and, for mechanism claims, its pair distances).

    Args:
        claim: a parsed claim.
        table: the suite's table (one row per run).
        pairs: the comparison stage's long-form distances (``comparison, run_a, run_b,
            metric, value``); mechanism claims are inconclusive without them.

    Returns:
        ``title``, ``statement``, ``measured`` (what was computed, in words), ``effect``,
        ``ci_low``, ``ci_high``, ``p_value``, ``n`` and ``verdict``.
    """
    out: dict[str, Any] = {
        "title": claim.title,
        "statement": claim.statement,
        "effect": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p_value": math.nan,
        "n": 0,
    }
    for column, value in claim.where.items():
        if column not in table:
            return {
                **out,
                "measured": f"column '{column}' (in where) is not in the table",
                "verdict": "inconclusive",
            }
        table = table[[cell_matches(cell, value) for cell in table[column]]]
    try:
        if isinstance(claim, MECHANISM_CLAIMS):
            return {**out, **_evaluate_mechanism(claim, table, pairs)}
        return {**out, **_evaluate(claim, table)}
    except KeyError as missing:
        return {
            **out,
            "measured": f"column {missing} is not in the table",
            "verdict": "inconclusive",
        }


def _evaluate(claim: Any, table: pd.DataFrame) -> dict[str, Any]:
    if isinstance(claim, Exceeds):
        values = _completed(table)[claim.metric].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        low, high = bootstrap_ci(values)
        mean = float(values.mean()) if len(values) else math.nan
        verdict = (
            "inconclusive"
            if not math.isfinite(low)
            else "held"
            if low > claim.threshold
            else "did not hold"
        )
        return {
            "measured": f"mean {claim.metric} vs threshold {claim.threshold:g}",
            "effect": mean,
            "ci_low": low,
            "ci_high": high,
            "n": len(values),
            "verdict": verdict,
        }
    if isinstance(claim, Correlates):
        from mechscope.stats import correlate

        result = correlate(table, claim.x, claim.y)
        low, high = result["spearman_ci_low"], result["spearman_ci_high"]
        if not math.isfinite(low):
            verdict = "inconclusive"
        elif claim.sign == "positive":
            verdict = "held" if low > 0 else "did not hold"
        else:
            verdict = "held" if high < 0 else "did not hold"
        return {
            "measured": f"Spearman ρ({claim.x}, {claim.y}) across networks",
            "effect": result["spearman"],
            "ci_low": low,
            "ci_high": high,
            "p_value": result["spearman_p"],
            "n": result["n"],
            "verdict": verdict,
        }
    groups = _groups(table, claim.metric, claim.by)
    n = int(sum(len(v) for v in groups.values()))
    if isinstance(claim, Differs):
        usable = [v for v in groups.values() if len(v) >= MIN_N_FOR_CI]
        if len(usable) < 2:
            return {
                "measured": f"{claim.metric} across {claim.by}",
                "n": n,
                "verdict": "inconclusive",
            }
        pooled = np.concatenate(usable)
        if np.ptp(pooled) == 0:
            return {
                "measured": f"{claim.metric} across {claim.by} (all values equal)",
                "n": n,
                "effect": 0.0,
                "p_value": 1.0,
                "verdict": "did not hold",
            }
        test = scipy_stats.kruskal(*usable)
        # ε² = H / (n − 1): the share of rank variance explained by the grouping.
        effect = float(test.statistic / (len(pooled) - 1))
        means = ", ".join(f"{k}: {np.mean(v):.3g}" for k, v in groups.items() if len(v))
        return {
            "measured": f"{claim.metric} across {claim.by} (Kruskal–Wallis; ε²; means {means})",
            "effect": effect,
            "p_value": float(test.pvalue),
            "n": n,
            "verdict": "held" if test.pvalue < claim.alpha else "did not hold",
        }
    if isinstance(claim, Greater):
        a = next((v for k, v in groups.items() if cell_matches(k, claim.a)), np.array([]))
        b = next((v for k, v in groups.items() if cell_matches(k, claim.b)), np.array([]))
        low, high = _difference_ci(a, b)
        effect = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
        verdict = (
            "inconclusive" if not math.isfinite(low) else "held" if low > 0 else "did not hold"
        )
        return {
            "measured": f"mean {claim.metric}: {claim.by}={claim.a} minus {claim.by}={claim.b}",
            "effect": effect,
            "ci_low": low,
            "ci_high": high,
            "n": len(a) + len(b),
            "verdict": verdict,
        }
    if isinstance(claim, Similar):
        usable = {k: v for k, v in groups.items() if len(v) >= MIN_N_FOR_CI}
        if len(usable) < 2:
            return {
                "measured": f"{claim.metric} across {claim.by}",
                "n": n,
                "verdict": "inconclusive",
            }
        rng = np.random.default_rng(0)
        spreads = []
        for _ in range(RESAMPLES):
            means = [rng.choice(v, size=len(v)).mean() for v in usable.values()]
            spreads.append(max(means) - min(means))
        means = [v.mean() for v in usable.values()]
        high = float(np.quantile(spreads, 1 - claim.alpha))
        return {
            "measured": f"range of {claim.metric} group means across {claim.by} "
            f"(upper 95% bound vs margin {claim.margin:g})",
            "effect": float(max(means) - min(means)),
            "ci_low": math.nan,
            "ci_high": high,
            "n": n,
            "verdict": "held" if high < claim.margin else "did not hold",
        }
    raise ConfigError(f"unknown claim kind {type(claim).__name__}")


def _evaluate_mechanism(
    claim: SameMechanism | DifferentMechanism, table: pd.DataFrame, pairs: pd.DataFrame | None
) -> dict[str, Any]:
    from mechscope.pairwise import distance_matrix
    from mechscope.stats import permanova, within_between

    measured = f"{claim.comparison}.{claim.metric}: {claim.by}={claim.a} vs {claim.b}"
    chosen = (
        pairs[(pairs["comparison"] == claim.comparison) & (pairs["metric"] == claim.metric)]
        if pairs is not None and len(pairs)
        else None
    )
    if chosen is None or not len(chosen):
        return {"measured": f"{measured}: no such distances", "verdict": "inconclusive"}
    done = _completed(table)
    if claim.by not in done:
        raise KeyError(claim.by)
    chosen_rows = [
        (run_id, "a" if cell_matches(g, claim.a) else "b")
        for run_id, g in zip(done["run_id"], done[claim.by], strict=True)
        if cell_matches(g, claim.a) or cell_matches(g, claim.b)
    ]
    runs = [run_id for run_id, _ in chosen_rows]
    labels = [label for _, label in chosen_rows]
    n_a, n_b = labels.count("a"), labels.count("b")
    if n_a < 2 or n_b < 2:
        return {"measured": measured, "n": n_a + n_b, "verdict": "inconclusive"}
    if isinstance(claim, SameMechanism) and min(n_a, n_b) < MIN_N_FOR_CI:
        # Equivalence rests on a bootstrap bound, meaningless over two networks per group;
        # PERMANOVA (different_mechanism) stays honest at any n through its smallest p.
        return {
            "measured": f"{measured}: fewer than {MIN_N_FOR_CI} networks per group",
            "n": n_a + n_b,
            "verdict": "inconclusive",
        }
    try:
        matrix = distance_matrix(chosen, claim.metric, runs)
    except ValueError:
        return {"measured": f"{measured}: some pairs were not compared", "verdict": "inconclusive"}
    observed = within_between(matrix, labels, "a", "b")
    if isinstance(claim, DifferentMechanism):
        test = permanova(matrix, labels, permutations=claim.permutations)
        held = observed["difference"] > 0 and test["p_value"] < claim.alpha
        # With too few networks no labelling can reach alpha: the test cannot say "no".
        powerless = test["min_p"] >= claim.alpha
        return {
            "measured": f"{measured}: mean between − mean within distance "
            f"(PERMANOVA pseudo-F {test['pseudo_f']:.3g}; smallest attainable p "
            f"{test['min_p']:.2g}"
            + (f", not below α = {claim.alpha:g} with these group sizes)" if powerless else ")"),
            "effect": observed["difference"],
            "p_value": test["p_value"],
            "n": n_a + n_b,
            "verdict": "inconclusive" if powerless else "held" if held else "did not hold",
        }
    rng = np.random.default_rng(0)
    index_a = np.flatnonzero(np.asarray(labels) == "a")
    index_b = np.flatnonzero(np.asarray(labels) == "b")
    resampled = []
    for _ in range(RESAMPLES):
        chosen_a = rng.choice(index_a, size=len(index_a))
        chosen_b = rng.choice(index_b, size=len(index_b))
        resampled.append(_resampled_difference(matrix, chosen_a, chosen_b))
    finite = np.asarray(resampled)[np.isfinite(resampled)]
    # One-sided equivalence bound at 1 − α, as for `similar`.
    low, high = (
        (float(np.quantile(finite, claim.alpha)), float(np.quantile(finite, 1 - claim.alpha)))
        if finite.size
        else (math.nan, math.nan)
    )
    return {
        "measured": f"{measured}: mean between − mean within distance "
        f"(upper {1 - claim.alpha:.0%} bound vs margin {claim.margin:g})",
        "effect": observed["difference"],
        "ci_low": low,
        "ci_high": high,
        "n": n_a + n_b,
        "verdict": "inconclusive"
        if not math.isfinite(high)
        else "held"
        if high < claim.margin
        else "did not hold",
    }


def _resampled_difference(matrix: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Mean between − mean within distance for resampled networks (indices may repeat).

    A network drawn twice sits at distance 0 from itself, which says nothing about the spread,
    so pairs of a network with itself are left out; NaN if no within-pair is left.
    """
    between = matrix[np.ix_(a, b)].ravel()
    within = [
        matrix[i, j]
        for group in (a, b)
        for x, i in enumerate(group)
        for j in group[x + 1 :]
        if i != j
    ]
    if not within or not between.size:
        return math.nan
    return float(between.mean() - np.mean(within))


def evaluate_all(
    claims: Sequence[Any], table: pd.DataFrame, pairs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Evaluate every claim; one row each (`pairs`: the comparison stage's distances)."""
    columns = [
        "title",
        "statement",
        "measured",
        "effect",
        "ci_low",
        "ci_high",
        "p_value",
        "n",
        "verdict",
    ]
    return pd.DataFrame([evaluate(c, table, pairs) for c in claims], columns=columns)


__all__ = ["Claim", "evaluate", "evaluate_all", "named_columns", "parse_claims"]
