"""Tables and a self-contained HTML report over a store of finished runs and suites."""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mechscope import stats
from mechscope.errors import StoreError
from mechscope.store import RunStore, SuiteRecord

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;padding:1.5em 2em;
max-width:1400px;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:13px;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.scroll{overflow-x:auto;max-width:100%}
figure{display:inline-block;margin:6px;vertical-align:top;text-align:center}
figure img{max-width:420px;border:1px solid #eee}figcaption{font-size:12px;color:#555}
figure.wide{display:block}figure.wide img{max-width:100%}
.failed{color:#b00020}.note{color:#555;font-size:13px}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:12px}
"""


def write_report(store: str | Path, out: str | Path | None = None) -> Path:
    """Write the report for a store: HTML page, tables (CSV, Parquet) and figures (PNG, SVG).

    Each suite recorded in the store gets a section with per-variant means and bootstrap CIs,
    tests between variants, correlations across networks, every probe figure per variant,
    configs and timings. Runs that belong to no suite are listed at the end.

    Returns:
        The path of ``report.html``.
    """
    runs = RunStore(store)
    if not runs.root.is_dir():
        raise StoreError(f"{runs.root}: no such run store")
    store = runs.root
    out = Path(out) if out is not None else store / "report"
    figures_dir = out / "figures"
    if figures_dir.exists():
        shutil.rmtree(figures_dir)
    figures_dir.mkdir(parents=True)
    body = ["<h1>mechscope report</h1>"]
    all_runs = runs.runs_table()
    all_runs.to_csv(out / "runs.csv", index=False)
    _to_parquet(all_runs, out / "runs.parquet")
    in_suites: set[str] = set()
    records = runs.suite_records()
    for record in records:
        table = runs.suite_table(record.runs)
        in_suites.update(table["run_id"])
        body.append(_suite_section(record, table, runs, out))
    loose = all_runs[~all_runs["run_id"].isin(in_suites)] if len(all_runs) else all_runs
    if len(loose):
        body.append("<h2>Runs outside suites</h2>")
        body.append(_html_table(loose))
        for _, row in loose.iterrows():
            body.append(
                _figures_html(
                    runs.run_directory(row["run_id"]), f"run {row['run_id']}", out, row["run_id"]
                )
            )
    if not len(all_runs) and not records:
        body.append(f"<p>No runs in {html.escape(str(store))}.</p>")
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>mechscope report</title><style>{_STYLE}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path


def _suite_section(record: SuiteRecord, table: pd.DataFrame, runs: RunStore, out: Path) -> str:
    name = record.name
    definition = record.model_dump()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    table.to_csv(out / f"{safe}_runs.csv", index=False)
    _to_parquet(table, out / f"{safe}_runs.parquet")
    metrics = stats.metric_columns(table)
    parts = [f"<h2>Suite {html.escape(name)}</h2>"]
    if definition.get("description"):
        parts.append(f"<p>{html.escape(str(definition['description']))}</p>")
    counts = table["status"].value_counts().to_dict()
    wall = record.wall_time_s
    parts.append(
        f"<p class=note>{len(table)} runs ("
        + ", ".join(f"{v} {html.escape(str(k))}" for k, v in counts.items())
        + f"); {table['variant'].nunique()} variants × {len(record.seeds)} seeds"
        + (f"; last run took {wall:.0f} s" if isinstance(wall, int | float) else "")
        + ".</p>"
    )
    distances = _suite_pairs(runs, name)
    claims = definition.get("claims") or []
    if claims:
        from mechscope.claims import evaluate_all, parse_claims

        verdicts = evaluate_all(parse_claims(claims), table, distances)
        verdicts.to_csv(out / f"{safe}_claims.csv", index=False)
        parts.append(
            "<h3>Claims</h3><p class=note>Each claim is a hypothesis stated in the "
            "suite file and tested here on the completed runs; the verdict is what "
            "this suite measured, not what the literature says.</p>"
        )
        parts.append(_claims_html(verdicts))
    summary = stats.summarize(table, metrics)
    summary.to_csv(out / f"{safe}_summary.csv", index=False)
    if len(summary):
        parts.append("<h3>Per-variant mean [95% bootstrap CI] (n)</h3>")
        parts.append(_summary_pivot(summary))
    options = definition.get("statistics", {}) or {}
    if len(summary):
        # The metrics the suite asks to compare come first; the plot shows at most 16.
        chosen = [m for m in options.get("compare", []) if m in metrics]
        plotted = chosen + [m for m in metrics if m not in chosen and not m.startswith("time.")]
        figure = _summary_figure(table, plotted[:16], out / "figures" / f"{safe}_summary")
        if figure:
            parts.append(_img(figure, "each dot is one network; black: mean and 95% CI", wide=True))
    compared = [m for m in options.get("compare", metrics) if m in table]
    if table["variant"].nunique() > 1 and compared:
        comparisons = stats.compare(table, compared)
        comparisons.to_csv(out / f"{safe}_comparisons.csv", index=False)
        parts.append(
            "<h3>Between variants</h3><p class=note>Two-sided permutation test of the "
            "difference in means, Holm-corrected per metric; effect size Hedges' g.</p>"
        )
        parts.append(_html_table(comparisons))
    pairs = [tuple(p) for p in options.get("correlate", []) if p[0] in table and p[1] in table]
    if pairs:
        correlations = pd.DataFrame([stats.correlate(table, x, y) for x, y in pairs])
        correlations.to_csv(out / f"{safe}_correlations.csv", index=False)
        parts.append(
            "<h3>Across networks</h3><p class=note>Spearman correlation with a "
            "bootstrap 95% CI over networks.</p>"
        )
        parts.append(_html_table(correlations))
    if len(distances):
        distances.to_csv(out / f"{safe}_distances.csv", index=False)
        parts.append(_mechanism_section(table, distances, out / "figures" / f"{safe}_mechanism"))
    parts.append("<h3>Figures per variant</h3>")
    for variant, frame in table.groupby("variant", sort=False):
        done = frame[frame["status"] == "completed"]
        if not len(done):
            continue
        first = done.iloc[0]
        parts.append(f"<h4>{html.escape(str(variant))} (seed {first['seed']})</h4>")
        parts.append(
            _figures_html(
                runs.run_directory(first["run_id"]), str(variant), out, f"{safe}_{first['run_id']}"
            )
        )
    failed = table[table["status"] != "completed"]
    if len(failed):
        parts.append("<h3 class=failed>Runs not completed</h3>")
        parts.append(_html_table(failed[["variant", "seed", "run_id", "status", "reason"]]))
    parts.append("<h3>All runs</h3>" + _html_table(table))
    shown = {k: definition[k] for k in ("base", "vary", "seeds", "statistics") if k in definition}
    parts.append(
        "<details><summary>Suite configuration</summary><pre>"
        f"{html.escape(json.dumps(shown, indent=1))}</pre></details>"
    )
    return "".join(parts)


def _suite_pairs(runs: RunStore, name: str) -> pd.DataFrame:
    """The suite's comparison results, or an empty frame (a damaged file is reported)."""
    import warnings

    from mechscope.pairwise import read_suite_pairs
    from mechscope.store import PAIR_COLUMNS, empty_frame

    try:
        return read_suite_pairs(runs, name)
    except StoreError as error:
        warnings.warn(f"report: comparisons left out: {error}", stacklevel=2)
        return empty_frame(PAIR_COLUMNS)


def _mechanism_section(table: pd.DataFrame, pairs: pd.DataFrame, stem: Path) -> str:
    """Distance matrices, embeddings, dendrograms and label statistics per comparison metric."""
    from mechscope.pairwise import distance_matrix

    done = table[table["status"] == "completed"]
    # Networks ordered by variant (then seed), so blocks on the diagonal are variants.
    ordered = done.sort_values(["variant", "seed"], kind="stable")
    run_ids = [r for r in ordered["run_id"] if r in set(pairs["run_a"]) | set(pairs["run_b"])]
    labels = ordered.set_index("run_id").loc[run_ids, "variant"].astype(str).tolist()
    parts = [
        "<h3>Mechanism comparison</h3><p class=note>Distances between every pair of "
        "completed networks. PERMANOVA tests whether networks of one variant are closer to "
        "each other than to the rest (labels permuted); nearest-neighbour accuracy is the "
        "share of networks whose nearest other network has their variant.</p>"
    ]
    rows = []
    for (comparison, metric), chosen in pairs.groupby(["comparison", "metric"], sort=False):
        try:
            matrix = distance_matrix(chosen, str(metric), run_ids)
        except ValueError:
            continue
        test = stats.permanova(matrix, labels, permutations=1999)
        rows.append(
            {
                "comparison": comparison,
                "metric": metric,
                "pseudo_F": test["pseudo_f"],
                "p": test["p_value"],
                "smallest attainable p": test["min_p"],
                "nearest-neighbour accuracy": stats.nearest_neighbour_accuracy(matrix, labels),
                "networks": len(run_ids),
            }
        )
        figure = _mechanism_figure(
            matrix,
            labels,
            f"{comparison}: {metric}",
            stem.with_name(f"{stem.name}_{comparison}_{metric}"),
        )
        parts.append(
            _img(figure, f"{comparison} · {metric}: distances, MDS, dendrogram", wide=True)
        )
    if rows:
        parts.insert(1, _html_table(pd.DataFrame(rows)))
    return "".join(parts)


def _mechanism_figure(matrix: np.ndarray, labels: list[str], title: str, stem: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    variants = list(dict.fromkeys(labels))
    colours = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.6))
    image = left.imshow(matrix, cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=left, fraction=0.046)
    edges = [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
    for edge in edges:
        left.axhline(edge - 0.5, color="w", lw=0.8)
        left.axvline(edge - 0.5, color="w", lw=0.8)
    left.set_title("distance matrix (ordered by variant)", fontsize=9)
    left.set_xticks([])
    left.set_yticks([])
    coordinates = stats.mds(matrix)
    for variant in variants:
        chosen = [i for i, label in enumerate(labels) if label == variant]
        middle.scatter(*coordinates[chosen].T, color=colours[variant], label=_short(variant), s=30)
    middle.legend(fontsize=7, loc="best")
    middle.set_title("2-D MDS embedding", fontsize=9)
    middle.set_xticks([])
    middle.set_yticks([])
    if len(labels) > 2:
        tree = dendrogram(
            stats.linkage_of(matrix),
            ax=right,
            no_labels=True,
            color_threshold=0,
            above_threshold_color="#555",
        )
        for position, leaf in enumerate(tree.get("leaves") or []):
            right.scatter(5 + 10 * position, 0, color=colours[labels[leaf]], s=25, clip_on=False)
    right.set_title("average-linkage dendrogram (leaves coloured by variant)", fontsize=9)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    for extension in ("png", "svg"):
        figure.savefig(stem.with_suffix(f".{extension}"), dpi=100)
    plt.close(figure)
    return stem.with_suffix(".png")


def _claims_html(verdicts: pd.DataFrame) -> str:
    colours = {"held": "#1b7f3b", "did not hold": "#b00020", "inconclusive": "#8a6d00"}
    rows = []
    for _, claim in verdicts.iterrows():
        interval = (
            f"[{claim['ci_low']:.3g}, {claim['ci_high']:.3g}]"
            if math.isfinite(claim["ci_low"]) or math.isfinite(claim["ci_high"])
            else "–"
        )
        p_value = f"{claim['p_value']:.3g}" if math.isfinite(claim["p_value"]) else "–"
        effect = f"{claim['effect']:.3g}" if math.isfinite(claim["effect"]) else "–"
        colour = colours.get(claim["verdict"], "#222")
        rows.append(
            f"<tr><td><b>{html.escape(claim['title'])}</b><br><span class=note>"
            f"{html.escape(claim['statement'])}</span></td>"
            f"<td style='text-align:left'>{html.escape(claim['measured'])}</td>"
            f"<td>{effect}</td><td>{interval}</td><td>{p_value}</td><td>{claim['n']}</td>"
            f"<td style='color:{colour};font-weight:bold'>{html.escape(claim['verdict'])}</td>"
            "</tr>"
        )
    return (
        "<div class=scroll><table><tr><th>claim</th><th>measured</th><th>effect</th>"
        "<th>95% CI</th><th>p</th><th>n</th><th>verdict</th></tr>"
        + "".join(rows)
        + "</table></div>"
    )


def _summary_pivot(summary: pd.DataFrame) -> str:
    def cell(row: pd.Series) -> str:
        if row["n"] == 0:
            return "–"
        interval = (
            f" [{row['ci_low']:.3g}, {row['ci_high']:.3g}]" if math.isfinite(row["ci_low"]) else ""
        )
        return f"{row['mean']:.3g}{interval} ({row['n']})"

    frame = summary.assign(cell=summary.apply(cell, axis=1))
    pivot = frame.pivot(index="metric", columns="variant", values="cell")
    pivot = pivot.reindex(
        index=list(dict.fromkeys(summary["metric"])),
        columns=list(dict.fromkeys(summary["variant"])),
    )
    return "<div class=scroll>" + pivot.to_html(escape=True) + "</div>"


def _summary_figure(table: pd.DataFrame, metrics: list[str], stem: Path) -> Path | None:
    """Dot plots per metric: one dot per network, the mean and its CI per variant."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    shown = list(metrics)
    if not shown:
        return None
    done = table[table["status"] == "completed"]
    variants = list(dict.fromkeys(table["variant"]))
    columns = min(4, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows), squeeze=False)
    for axis, metric in zip(axes.flat, shown, strict=False):
        for position, variant in enumerate(variants):
            values = done.loc[done["variant"] == variant, metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            axis.scatter(position + np.asarray(jitter), values, s=14, alpha=0.7)
            if len(values):
                low, high = stats.bootstrap_ci(values)
                axis.errorbar(
                    position + 0.3,
                    values.mean(),
                    fmt="o",
                    color="k",
                    ms=4,
                    yerr=[[values.mean() - low], [high - values.mean()]]
                    if math.isfinite(low)
                    else None,
                )
        axis.set_title(metric, fontsize=9)
        axis.set_xticks(range(len(variants)))
        axis.set_xticklabels([_short(v) for v in variants], fontsize=7, rotation=20, ha="right")
        axis.tick_params(axis="y", labelsize=7)
    for axis in list(axes.flat)[len(shown) :]:
        axis.axis("off")
    figure.tight_layout()
    for extension in ("png", "svg"):
        figure.savefig(stem.with_suffix(f".{extension}"), dpi=100)
    plt.close(figure)
    return stem.with_suffix(".png")


def _short(label: str, limit: int = 28) -> str:
    label = ", ".join(part.split(".")[-1] for part in label.split(", "))
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _figures_html(run: Path, caption: str, out: Path, prefix: str) -> str:
    images = []
    for png in sorted(run.glob("probes/*/*.png")):
        probe = png.parent.name
        for extension in ("png", "svg"):
            source = png.with_suffix(f".{extension}")
            target = out / "figures" / f"{prefix}_{probe}_{png.stem}.{extension}"
            if source.exists():
                shutil.copyfile(source, target)
        images.append(_img(png, f"{probe}: {png.stem}"))
    return "".join(images) or "<p class=note>no figures</p>"


def _img(path: Path, caption: str, *, wide: bool = False) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    text = html.escape(caption)
    opening = "<figure class=wide>" if wide else "<figure>"
    return (
        f'{opening}<img src="data:image/png;base64,{data}" alt="{text}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def _html_table(frame: pd.DataFrame) -> str:
    return (
        "<div class=scroll>"
        + frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", escape=True)
        + "</div>"
    )


def _to_parquet(frame: pd.DataFrame, path: Path) -> None:
    # Mixed-type object columns (e.g. a varied field holding numbers and None) are written as
    # text so Parquet accepts them; the CSV keeps the originals.
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object:
            safe[column] = safe[column].map(
                lambda v: (
                    v
                    if v is None or isinstance(v, str)
                    else json.dumps(v)
                    if isinstance(v, list | dict)
                    else str(v)
                )
            )
    safe.to_parquet(path, index=False)
