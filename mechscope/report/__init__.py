"""Tables and a self-contained HTML report over a store of finished runs and suites.

The page leads with what a suite found and ends with the data behind it. Per suite, in order:
its claims and verdicts; the metrics it compares, per variant (each network a dot, the mean and
its CI); the mechanism comparison (distance matrices, embeddings); training (learning curves);
one section per probe (its metrics with their meanings, curves over seeds, the figures of a
representative network per variant and a gallery of the others); runs that did not complete
and why; the full tables; and a glossary of every column. Everything the page shows is also
written beside it as CSV (and Parquet for the run tables).
"""

from __future__ import annotations

import datetime
import json
import math
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechscope import stats
from mechscope.claims import cell_matches
from mechscope.errors import StoreError
from mechscope.plugins import PluginManager, Registry, get_plugin_manager
from mechscope.probe import ProbeResult
from mechscope.report import _figures
from mechscope.report._data import (
    MIN_N_FOR_CI,
    RunFacts,
    Sweep,
    column_catalog,
    completed,
    declarations,
    learning_curves,
    loaded_by_suites,
    representatives,
    run_facts,
    run_seconds,
    sweep_curves,
    sweeps,
    variants_of,
    varied_paths,
)
from mechscope.report._html import Figures, escape, frame_table, heading, number, page, table, toc
from mechscope.store import (
    PROBES,
    RunHeader,
    RunStore,
    SuiteRecord,
    atomic_write_parquet,
    atomic_write_text,
)

__all__ = ["write_report"]


def write_report(
    store: str | Path, out: str | Path | None = None, *, plugins: PluginManager | None = None
) -> Path:
    """Write the report for a store: one HTML page, tables (CSV, Parquet), figures (PNG, SVG).

    Args:
        store: the run store.
        out: the report folder (default ``<store>/report``).
        plugins: the plugin manager whose registry rebuilds each run's probes to read their
            metric declarations (default: the process-wide one). A probe it does not know
            still has its columns shown, as undeclared.

    Returns:
        The path of ``report.html``.

    Raises:
        StoreError: if `store` is not a run store.
    """
    runs = RunStore(store)
    if not runs.root.is_dir():
        raise StoreError(f"{runs.root}: no such run store")
    registry = (plugins or get_plugin_manager()).registry
    out = Path(out) if out is not None else runs.root / "report"
    figures_dir = out / "figures"
    if figures_dir.exists():
        shutil.rmtree(figures_dir)
    figures_dir.mkdir(parents=True)
    all_runs = runs.runs_table()
    all_runs.to_csv(out / "runs.csv", index=False)
    _to_parquet(all_runs, out / "runs.parquet")
    figures = Figures()
    entries: list[tuple[int, str, str]] = []
    body: list[str] = []
    shown: list[str] = []
    smallest: list[tuple[int, str]] = []
    records = runs.suite_records()
    for record in records:
        section = _SuiteSection(record, runs, registry, out, figures)
        body.append(section.render())
        entries += section.entries
        shown += [r for r in section.table["run_id"] if r not in shown]
        if section.smallest_n is not None:
            smallest.append((section.smallest_n, record.name))
    loose = all_runs[~all_runs["run_id"].isin(shown)] if len(all_runs) else all_runs
    if len(loose):
        entries.append((0, "loose-runs", "Runs outside suites"))
        body.append(_loose_section(loose, runs, out, figures))
        shown += list(loose["run_id"])
    if not len(all_runs) and not records:
        body.append(f"<p>No runs in {escape(runs.root)}.</p>")
    headers = [h for r in shown if (h := runs.read_header(str(r))) is not None]
    facts = run_facts(headers, loaded_by_suites(records), [str(r) for r in shown])
    title = "mechscope report" + (f": {records[0].name}" if len(records) == 1 else "")
    head = [f"<h1>{escape(title)}</h1>", _meta(facts)]
    if smallest and min(smallest)[0] < MIN_N_FOR_CI:
        head.append(_small_sample_banner(*min(smallest)))
    path = out / "report.html"
    atomic_write_text(path, page(title, [*head, toc(entries) if entries else "", *body]))
    return path


def _meta(facts: RunFacts) -> str:
    from mechscope import __version__

    written = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if facts.cached is None or facts.computed is None:
        cache = "loaded vs computed: not recorded"
    else:
        cache = (
            f"last <code>mechscope run</code>: {facts.computed} computed, "
            f"{facts.cached} loaded from the store"
            + (f", {facts.unrecorded} not recorded" if facts.unrecorded else "")
        )
    minutes = facts.compute_s / 60
    compute = f"{minutes:.1f} min" if minutes >= 1 else f"{facts.compute_s:.0f} s"
    return (
        "<p class=meta>"
        f"<b>{facts.runs} runs</b> · total compute of these runs <b>{compute}</b> "
        "(training and probing, as each run recorded it) · "
        f"{cache}<br>ran on: device {escape(', '.join(facts.devices))} · host "
        f"{escape(', '.join(facts.hosts))} · platform {escape(', '.join(facts.platforms))} · "
        f"mechscope {escape(', '.join(facts.mechscope_versions))}<br>"
        f"report written {written} by mechscope {escape(__version__)}</p>"
    )


def _small_sample_banner(n: int, suite: str) -> str:
    floor = stats.permutation_min_p(n, n)
    floor_text = (
        f", a permutation test between two variants cannot give p below {floor:.2g}"
        if math.isfinite(floor)
        else ""
    )
    return (
        "<div class=banner><b>Too few seeds for inference.</b> "
        f"Suite {escape(suite)} has {n} completed network{'s' if n != 1 else ''} in its "
        f"smallest variant. Below {MIN_N_FOR_CI} networks no confidence interval is drawn or "
        f"printed{floor_text}, and the verdicts are descriptive, not evidence. Run more seeds "
        "(five or more per variant) before drawing conclusions.</div>"
    )


def _slug(name: str) -> str:
    # Suite names are validated file names (letters, digits, "-", "_", "."), all valid in ids
    # and file names, so the name is kept as is: mapping "." to "_" made "a.b" and "a_b" clash.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _estimate(mean: float, low: float, high: float, n: int) -> str:
    """A mean with its CI and n; below MIN_N_FOR_CI the cell says why there is no CI."""
    if n == 0 or not math.isfinite(mean):
        return "–"
    if n < MIN_N_FOR_CI:
        return (
            f"{mean:.3g} <span class=small title='too few networks for a confidence "
            f"interval'>(n = {n}, no CI)</span>"
        )
    interval = f" [{low:.3g}, {high:.3g}]" if math.isfinite(low) and math.isfinite(high) else ""
    return f"{mean:.3g}{interval} <span class=small>(n = {n})</span>"


def _honest_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with its CI removed where n is below MIN_N_FOR_CI."""
    summary = summary.copy()
    few = summary["n"] < MIN_N_FOR_CI
    summary.loc[few, ["ci_low", "ci_high"]] = np.nan
    return summary


class _SuiteSection:
    """Everything the page says about one suite, rendered in reading order."""

    def __init__(
        self,
        record: SuiteRecord,
        runs: RunStore,
        registry: Registry,
        out: Path,
        figures: Figures,
    ) -> None:
        self.record = record
        self.definition = record.model_dump()
        self.runs = runs
        self.registry = registry
        self.out = out
        self.figures = figures
        self.slug = _slug(record.name)
        self.table = runs.suite_table(record.runs)
        self.entries: list[tuple[int, str, str]] = []
        self.curve_frames: list[pd.DataFrame] = []
        self.variants = variants_of(self.table)
        self.headers: dict[str, RunHeader] = {
            str(r): h for r in self.table["run_id"] if (h := runs.read_header(str(r))) is not None
        }
        self.varied = varied_paths(self.definition)
        declared, self.problems = declarations(self.headers.values(), registry)
        self.catalog = column_catalog(self.table, declared, registry, self.varied)
        self.findings = [
            c.name
            for c in self.catalog.values()
            if c.is_finding and pd.api.types.is_numeric_dtype(self.table[c.name])
        ]
        self.settings = [c.name for c in self.catalog.values() if c.role == "setting"]
        self.sweeps = sweeps(self.findings)
        in_sweeps = {c for s in self.sweeps for c in s.columns}
        self.scalars = [c for c in self.findings if c not in in_sweeps]
        self.summary = _honest_summary(stats.summarize(self.table, self.findings))
        self.options = self.definition.get("statistics", {}) or {}
        self.compared = [m for m in self.options.get("compare", []) if m in self.findings]
        # The smallest variant that has any completed network (one with none has no numbers
        # to mislead anyone, and is listed under the runs that did not complete).
        sizes = [int(n) for n in completed(self.table).groupby("variant").size() if n]
        self.smallest_n = min(sizes) if sizes else None

    # -- helpers ---------------------------------------------------------------------------

    def _file(self, name: str) -> Path:
        return self.out / f"{self.slug}_{name}"

    def _figure(self, figure: Any, name: str, caption: str, *, wide: bool = True) -> str:
        png = _figures.save(figure, self.out / "figures" / f"{self.slug}_{name}")
        return self.figures.html(png, caption, wide=wide)

    def _heading(self, level: int, key: str, title: str) -> str:
        identifier = f"{self.slug}-{key}"
        self.entries.append((level - 2, identifier, title))
        return heading(level, identifier, title)

    def _title(self, column: str) -> str:
        unit = self.catalog[column].unit if column in self.catalog else ""
        return f"{column} ({unit})" if unit else column

    def _meaning(self, column: str) -> str:
        entry = self.catalog.get(column)
        if entry is None or entry.role == "undeclared":
            return "<span class=small>not declared by its probe</span>"
        text = escape(entry.meaning)
        if entry.direction:
            text += f" <span class=small>({escape(entry.direction)})</span>"
        return text

    def _per_variant_table(self, metrics: Sequence[str]) -> str:
        cells = {
            (row["metric"], row["variant"]): _estimate(
                row["mean"], row["ci_low"], row["ci_high"], int(row["n"])
            )
            for row in self.summary.to_dict("records")
        }
        header = ["metric", "meaning", *[escape(v) for v in self.variants]]
        empty = [m for m in metrics if all(cells.get((m, v), "–") == "–" for v in self.variants)]
        rows = [
            [
                f"<code>{escape(m)}</code>",
                self._meaning(m),
                *[cells.get((m, v), "–") for v in self.variants],
            ]
            for m in metrics
            if m not in empty
        ]
        note = (
            "<p class=small>No value in any completed run (not measurable here): "
            + ", ".join(f"<code>{escape(m)}</code>" for m in empty)
            + "</p>"
            if empty
            else ""
        )
        return (table(header, rows, text_columns=(0, 1)) if rows else "") + note

    def _dot_plots(self, metrics: Sequence[str], name: str, what: str) -> str:
        parts = []
        size = _figures.PANELS_PER_FIGURE
        chunks = [metrics[i : i + size] for i in range(0, len(metrics), size)]
        for index, chunk in enumerate(chunks):
            figure = _figures.dot_plots(
                self.table, chunk, self.variants, {m: self._title(m) for m in chunk}
            )
            part = f" ({index + 1} of {len(chunks)})" if len(chunks) > 1 else ""
            parts.append(
                self._figure(
                    figure,
                    f"{name}_{index + 1}",
                    f"{what}{part}: each dot is one completed network; black: the variant's "
                    f"mean and, with at least {MIN_N_FOR_CI} networks, its 95% bootstrap CI",
                )
            )
        return "".join(parts)

    def _tests(self, metrics: Sequence[str], name: str) -> str:
        if len(self.variants) < 2 or not metrics:
            return ""
        tests = stats.compare(self.table, metrics)
        tests["smallest attainable p"] = [
            stats.permutation_min_p(int(a), int(b))
            for a, b in zip(tests["n_a"], tests["n_b"], strict=True)
        ]
        tests.to_csv(self._file(name), index=False)
        return (
            "<p class=note>Two-sided permutation test of the difference in means (exact when "
            "every split can be enumerated), Holm-corrected per metric; effect size Hedges' g. "
            "The smallest attainable p is the lowest p the test can return with these group "
            "sizes, however different the groups are.</p>" + frame_table(tests)
        )

    # -- sections, in reading order --------------------------------------------------------

    def render(self) -> str:
        """The suite's part of the page."""
        self.table.to_csv(self._file("runs.csv"), index=False)
        _to_parquet(self.table, self._file("runs.parquet"))
        self.summary.to_csv(self._file("summary.csv"), index=False)
        glossary = pd.DataFrame([vars(c) for c in self.catalog.values()])
        glossary.to_csv(self._file("glossary.csv"), index=False)
        distances = _suite_pairs(self.runs, self.record.name)
        parts = [
            self._heading(2, "suite", f"Suite {self.record.name}"),
            self._intro(),
            self._claims(distances),
            self._compare(),
            self._correlations(),
            self._mechanism(distances),
            self._training(),
            self._probes(),
            self._not_completed(),
            self._tables(),
            self._glossary(),
        ]
        if self.curve_frames:
            pd.concat(self.curve_frames).to_csv(self._file("curves.csv"), index=False)
        return "".join(parts)

    def _intro(self) -> str:
        parts = []
        if self.definition.get("description"):
            parts.append(f"<p>{escape(self.definition['description'])}</p>")
        counts = self.table["status"].value_counts().to_dict() if len(self.table) else {}
        status = ", ".join(f"{v} {escape(k)}" for k, v in counts.items())
        seconds = sum(run_seconds(h) for h in self.headers.values())
        parts.append(
            f"<p class=note>{len(self.table)} runs ({status}): {len(self.variants)} variants × "
            f"{len(self.record.seeds)} seeds; compute of these runs {seconds / 60:.1f} min.</p>"
        )
        unfinished = self.table[self.table["status"] != "completed"] if len(self.table) else []
        if len(unfinished):
            parts.append(
                f"<p class=alert>{len(unfinished)} run(s) did not complete and are left out of "
                f'the statistics: see <a href="#{self.slug}-not-completed">Runs that did not '
                "complete</a>.</p>"
            )
        for problem in self.problems:
            parts.append(f"<p class=note>{escape(problem)}: its columns show as undeclared.</p>")
        files = [
            f"{self.slug}_{name}"
            for name in ("runs.csv", "runs.parquet", "summary.csv", "glossary.csv")
        ]
        parts.append(
            "<p class=note>Files beside this page: "
            + ", ".join(f'<a href="{escape(f)}">{escape(f)}</a>' for f in files)
            + ' and <a href="runs.csv">runs.csv</a> (every stored run); figures as PNG and SVG '
            'in <a href="figures/">figures/</a>.</p>'
        )
        return "".join(parts)

    def _claims(self, distances: pd.DataFrame) -> str:
        raw = self.definition.get("claims") or []
        if not raw:
            return ""
        from mechscope.claims import evaluate_all, parse_claims

        claims = parse_claims(raw)
        verdicts = evaluate_all(claims, self.table, distances)
        groups = [_smallest_group(claim, self.table) for claim in claims]
        verdicts["smallest_group_n"] = groups
        few = np.asarray(groups) < MIN_N_FOR_CI
        verdicts.loc[few, ["ci_low", "ci_high"]] = np.nan
        verdicts.to_csv(self._file("claims.csv"), index=False)
        rows = []
        for claim, row, n_group in zip(claims, verdicts.to_dict("records"), groups, strict=True):
            if n_group < MIN_N_FOR_CI:
                interval = f"<span class=small>n = {n_group} per group: no CI</span>"
            elif math.isfinite(row["ci_low"]) or math.isfinite(row["ci_high"]):
                interval = f"[{number(row['ci_low'])}, {number(row['ci_high'])}]"
            else:
                interval = "–"
            verdict = str(row["verdict"])
            caveat = (
                "<br><span class=small>too few networks for inference</span>"
                if n_group < MIN_N_FOR_CI
                else ""
            )
            rows.append(
                [
                    f"<b>{escape(row['title'])}</b><br><span class=note>"
                    f"{escape(row['statement'])}</span>",
                    f"{escape(_reading(claim, row, n_group))}<br><span class=small>measured: "
                    f"{escape(row['measured'])}</span>",
                    number(row["effect"]),
                    interval,
                    number(row["p_value"]),
                    str(row["n"]),
                    f"<span class={verdict.replace(' ', '-')}>{escape(verdict)}</span>{caveat}",
                ]
            )
        return (
            self._heading(3, "claims", "Claims and verdicts")
            + "<p class=note>Each claim is a hypothesis stated in the suite file and tested "
            "here on the completed runs; the verdict is what this suite measured, not what the "
            "literature says.</p>"
            + table(
                ["claim", "reading", "effect", "95% CI", "p", "n", "verdict"],
                rows,
                text_columns=(0, 1, 6),
            )
        )

    def _compare(self) -> str:
        if not self.compared:
            return ""
        return (
            self._heading(3, "compare", "Compared metrics")
            + "<p class=note>The metrics the suite's <code>[statistics] compare</code> names, "
            "per variant: mean, 95% bootstrap CI of the mean (with at least "
            f"{MIN_N_FOR_CI} networks) and n.</p>"
            + self._dot_plots(self.compared, "compare", "Compared metrics")
            + self._per_variant_table(self.compared)
            + "<h4>Between variants</h4>"
            + self._tests(self.compared, "comparisons.csv")
        )

    def _correlations(self) -> str:
        pairs = [
            tuple(p)
            for p in self.options.get("correlate", [])
            if p[0] in self.table and p[1] in self.table
        ]
        if not pairs:
            return ""
        frame = pd.DataFrame([stats.correlate(self.table, x, y) for x, y in pairs])
        frame.to_csv(self._file("correlations.csv"), index=False)
        return (
            self._heading(3, "correlations", "Across networks")
            + "<p class=note>Spearman correlation between two metrics over completed networks, "
            "with a bootstrap 95% CI over networks (none below 3 networks).</p>"
            + frame_table(frame)
        )

    def _mechanism(self, pairs: pd.DataFrame) -> str:
        if not len(pairs):
            return ""
        from mechscope.pairwise import distance_matrix

        pairs.to_csv(self._file("distances.csv"), index=False)
        done = completed(self.table)
        position = {v: i for i, v in enumerate(self.variants)}
        # Networks ordered by variant (the suite's order), then seed: blocks on the diagonal.
        ordered = done.assign(_order=done["variant"].astype(str).map(position)).sort_values(
            ["_order", "seed"], kind="stable"
        )
        involved = set(pairs["run_a"]) | set(pairs["run_b"])
        run_ids = [r for r in ordered["run_id"] if r in involved]
        labels = ordered.set_index("run_id").loc[run_ids, "variant"].astype(str).tolist()
        rows, parts = [], []
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
            figure = _figures.mechanism_figure(
                matrix, labels, f"{comparison}: {metric}", self.variants
            )
            parts.append(
                self._figure(
                    figure,
                    f"mechanism_{comparison}_{metric}",
                    f"{comparison} · {metric}: distances, MDS, dendrogram",
                )
            )
        summary = frame_table(pd.DataFrame(rows)) if rows else ""
        return (
            self._heading(3, "mechanism", "Mechanism comparison")
            + "<p class=note>Distances between every pair of completed networks. PERMANOVA "
            "tests whether networks of one variant are closer to each other than to the rest "
            "(labels permuted); nearest-neighbour accuracy is the share of networks whose "
            "nearest other network has their variant.</p>" + summary + "".join(parts)
        )

    def _training(self) -> str:
        curves = learning_curves(self.runs, self.table)
        curves.to_csv(self._file("learning_curves.csv"), index=False)
        final = [c for c in ("train.loss", "train.r2") if c in self.findings]
        if not len(curves) and not final:
            return ""
        parts = [self._heading(3, "training", "Training")]
        if len(curves):
            figure = _figures.learning_figure(curves, self.variants)
            parts.append(
                self._figure(
                    figure,
                    "learning_curves",
                    "Learning curves of completed networks: per variant the mean over seeds "
                    f"and, with at least {MIN_N_FOR_CI} networks, its 95% bootstrap CI",
                )
            )
        if final:
            parts.append(self._per_variant_table(final))
        return "".join(parts)

    def _probes(self) -> str:
        names: list[str] = []
        for header in self.headers.values():
            names += [p for p in header.probes if p not in names]
        columns = [c for c in self.catalog if "." in c]
        extra = [
            c.split(".")[0]
            for c in columns
            if self.catalog[c].role in ("metric", "undeclared", "setting")
            and c.split(".")[0] not in ("train", "time", *names)
        ]
        names += list(dict.fromkeys(extra))
        if not names:
            return ""
        parts = [self._heading(3, "probes", "Probes")]
        representative = representatives(self.table)
        for name in names:
            parts.append(self._probe(name, representative))
        return "".join(parts)

    def _probe(self, probe: str, representative: Mapping[str, list[str]]) -> str:
        mine = [c for c in self.scalars if c.startswith(f"{probe}.")]
        declared = [c for c in mine if self.catalog[c].role == "metric"]
        undeclared = [c for c in mine if self.catalog[c].role == "undeclared"]
        settings = [c for c in self.settings if c.startswith(f"{probe}.")]
        curves = [s for s in self.sweeps if s.probe == probe]
        parts = [self._heading(4, f"probe-{probe}", f"Probe {probe}")]
        errors = {
            run_id: h.probe_errors[probe]
            for run_id, h in self.headers.items()
            if probe in h.probe_errors
        }
        if errors:
            listing = "".join(
                f"<li><code>{escape(r)}</code>: {escape(e)}</li>" for r, e in errors.items()
            )
            parts.append(
                f"<div class=alert>Failed on {len(errors)} run(s):<ul>{listing}</ul></div>"
            )
        if curves:
            parts.append(self._sweeps(probe, curves))
        if declared:
            parts.append(self._per_variant_table(declared))
        if undeclared:
            parts.append(
                "<p class=note>Columns this probe does not declare (no meaning available):</p>"
                + self._per_variant_table(undeclared)
            )
        if mine:
            parts.append(self._dot_plots(declared + undeclared, f"{probe}_metrics", probe))
        if settings:
            parts.append(
                "<details><summary>Settings the probe used (not findings)</summary>"
                + self._settings_table(settings)
                + "</details>"
            )
        parts.append(self._gallery(probe, representative))
        return "".join(parts)

    def _sweeps(self, probe: str, curves: Sequence[Sweep]) -> str:
        frame = sweep_curves(self.table, curves)
        self.curve_frames.append(frame)
        titles = {}
        for sweep in curves:
            unit = self.catalog[sweep.columns[0]].unit
            titles[sweep.label] = sweep.label + (f" ({unit})" if unit else "")
        figure = _figures.curves_figure(frame, [s.label for s in curves], self.variants, titles)
        meanings = "; ".join(
            f"{s.label}: {self.catalog[s.columns[0]].meaning or 'not declared'}" for s in curves
        )
        return self._figure(
            figure,
            f"{probe}_curves",
            "Per-network curves, one column per level {x} (per variant the mean over seeds and,"
            f" with at least {MIN_N_FOR_CI} networks, its 95% bootstrap CI). {meanings}",
        )

    def _settings_table(self, columns: Sequence[str]) -> str:
        done = completed(self.table)
        rows = []
        for column in columns:
            cells = []
            for variant in self.variants:
                values = done.loc[done["variant"].astype(str) == variant, column].dropna()
                distinct = list(dict.fromkeys(values.tolist()))
                cells.append(", ".join(number(v) for v in distinct[:4]) or "–")
            rows.append([f"<code>{escape(column)}</code>", self._meaning(column), *cells])
        return table(
            ["setting", "meaning", *[escape(v) for v in self.variants]], rows, text_columns=(0, 1)
        )

    def _gallery(self, probe: str, representative: Mapping[str, list[str]]) -> str:
        parts = []
        seeds = dict(zip(self.table["run_id"].astype(str), self.table["seed"], strict=True))
        criterion = next(
            (
                f"median final {name} of the variant"
                for column, name in (("train.r2", "R²"), ("train.loss", "loss"))
                if column in self.table
                and np.isfinite(completed(self.table)[column].to_numpy(float)).any()
            ),
            "middle seed of the variant",
        )
        for variant, run_ids in representative.items():
            if not run_ids:
                continue
            first, *others = run_ids
            shown = self._run_figures(first, probe, f"{variant}, seed {seeds.get(first)}")
            if not shown:
                continue
            parts.append(
                f"<p class=note><b>{escape(variant)}</b>: seed {escape(seeds.get(first))} "
                f"({criterion})</p><div class=gallery>" + shown + "</div>"
            )
            if others:
                gallery = "".join(
                    f"<p class=small>seed {escape(seeds.get(r))} (<code>{escape(r)}</code>)</p>"
                    "<div class=gallery>"
                    + self._run_figures(r, probe, f"{variant}, seed {seeds.get(r)}")
                    + "</div>"
                    for r in others
                )
                parts.append(
                    f"<details><summary>the other {len(others)} network(s) of "
                    f"{escape(variant)}</summary>{gallery}</details>"
                )
        return "".join(parts)

    def _run_figures(self, run_id: str, probe: str, label: str) -> str:
        return _run_figures(self.runs, run_id, probe, label, self.out, self.figures)

    def _not_completed(self) -> str:
        if not len(self.table):
            return ""
        failed = self.table[self.table["status"] != "completed"]
        if not len(failed):
            return ""
        columns = [c for c in ("variant", "seed", "run_id", "status", "reason") if c in failed]
        return (
            self._heading(3, "not-completed", "Runs that did not complete")
            + "<p class=note>Left out of every statistic above. For a diverged run the reason "
            "says at which step training stopped and which value became non-finite.</p>"
            + frame_table(failed[columns])
        )

    def _tables(self) -> str:
        parts = [self._heading(3, "tables", "Full tables")]
        scalars_first = [c for c in self.findings if not c.startswith("time.")]
        parts.append(
            "<h4>Every measurement per variant</h4><p class=note>Mean, 95% bootstrap CI (with "
            f"at least {MIN_N_FOR_CI} networks) and n over completed networks.</p>"
            + self._per_variant_table(scalars_first)
        )
        if self.settings:
            parts.append("<h4>Settings the probes used</h4>" + self._settings_table(self.settings))
        if not self.compared and len(self.variants) > 1 and self.scalars:
            parts.append(
                "<h4>Between variants (every metric)</h4>"
                + self._tests(self.scalars, "comparisons.csv")
            )
        parts.append("<h4>Runs</h4>" + self._runs_table())
        parts.append(self._shared_config())
        transposed = self._every_value()
        if transposed:
            parts.append(
                "<details><summary>Every value of every run</summary>" + transposed + "</details>"
            )
        shown = {
            k: self.definition[k]
            for k in ("base", "vary", "seeds", "statistics", "comparisons")
            if k in self.definition
        }
        parts.append(
            "<details><summary>Suite definition</summary><pre>"
            f"{escape(json.dumps(shown, indent=1, default=str))}</pre></details>"
        )
        return "".join(parts)

    def _runs_table(self) -> str:
        wanted = ["variant", "seed", "run_id", "status", *self.varied, "train.loss", "train.r2"]
        frame = self.table[[c for c in dict.fromkeys(wanted) if c in self.table]].copy()
        frame["compute (s)"] = [
            run_seconds(self.headers[r]) if r in self.headers else math.nan
            for r in self.table["run_id"]
        ]
        return frame_table(frame)

    def _shared_config(self) -> str:
        config = [c.name for c in self.catalog.values() if c.role == "config"]
        rows = []
        for column in config:
            values = list(dict.fromkeys(self.table[column].dropna().astype(str)))
            if len(values) == 1:
                rows.append(
                    [f"<code>{escape(column)}</code>", escape(values[0]), self._meaning(column)]
                )
        if not rows:
            return ""
        return "<h4>Configuration shared by every run</h4>" + table(
            ["field", "value", "meaning"], rows, text_columns=(0, 1, 2)
        )

    def _every_value(self) -> str:
        done = self.table
        if not len(done):
            return ""
        labels = [f"{v} · seed {s}" for v, s in zip(done["variant"], done["seed"], strict=True)]
        columns = [c for c in self.catalog if self.catalog[c].role != "run"]
        rows = [
            [f"<code>{escape(c)}</code>", *[number(v, 4) for v in done[c].tolist()]]
            for c in columns
        ]
        return table(["column", *[escape(label) for label in labels]], rows)

    def _glossary(self) -> str:
        names = {
            "run": "run",
            "varied": "varied setting",
            "config": "setting",
            "metric": "metric",
            "setting": "probe setting",
            "undeclared": "undeclared",
            "timing": "timing",
        }
        rows = [
            [
                f"<code>{escape(c.name)}</code>",
                names[c.role],
                escape(c.meaning) if c.meaning else "<span class=small>not declared</span>",
                escape(c.unit),
                escape(c.direction),
            ]
            for c in self.catalog.values()
        ]
        return (
            self._heading(3, "glossary", "Glossary")
            + "<p class=note>Every column of the suite's table (the runs CSV), with what it "
            "means as its probe or config declares it.</p>"
            + table(
                ["column", "kind", "meaning", "unit", "larger means"],
                rows,
                text_columns=(0, 1, 2, 4),
                row_ids=[f"{self.slug}-column-{c.name}" for c in self.catalog.values()],
            )
        )


def _smallest_group(claim: Any, table: pd.DataFrame) -> int:
    """The fewest networks behind any group the claim compares (its n for one group)."""
    done = completed(table)
    for column, value in claim.where.items():
        if column not in done:
            return 0
        done = done[[cell_matches(cell, value) for cell in done[column]]]

    def finite(frame: pd.DataFrame, column: str) -> int:
        if column not in frame:
            return 0
        return int(np.isfinite(frame[column].to_numpy(float)).sum())

    if hasattr(claim, "x") and hasattr(claim, "y"):
        if claim.x not in done or claim.y not in done:
            return 0
        pairs = done[[claim.x, claim.y]].to_numpy(float)
        return int(np.all(np.isfinite(pairs), axis=1).sum())
    by = getattr(claim, "by", None)
    if by is None:
        return finite(done, claim.metric)
    if by not in done:
        return 0
    mechanism = hasattr(claim, "comparison")
    groups = {}
    for value, frame in done.groupby(by, sort=True):
        groups[value] = len(frame) if mechanism else finite(frame, claim.metric)
    if hasattr(claim, "a") and hasattr(claim, "b"):
        chosen = [
            n
            for value, n in groups.items()
            if cell_matches(value, claim.a) or cell_matches(value, claim.b)
        ]
        return min(chosen) if len(chosen) == 2 else 0
    used = [n for n in groups.values() if n]
    return min(used) if used else 0


def _reading(claim: Any, row: Mapping[Any, Any], n_group: int) -> str:
    """One sentence saying what the measurement means for the claim."""
    from mechscope.claims import (
        Correlates,
        DifferentMechanism,
        Differs,
        Exceeds,
        Greater,
        SameMechanism,
        Similar,
    )

    effect, low, high, p = (row[k] for k in ("effect", "ci_low", "ci_high", "p_value"))
    verdict = str(row["verdict"])
    show_ci = n_group >= MIN_N_FOR_CI and math.isfinite(low) and math.isfinite(high)
    ci = f" (95% CI {low:.3g} to {high:.3g})" if show_ci else ""
    if not math.isfinite(effect) and verdict == "inconclusive":
        return f"Inconclusive: too few usable networks (n = {row['n']}) to measure this."
    if isinstance(claim, Exceeds):
        sentence = (
            f"The mean {claim.metric} is {effect:.3g}{ci}; the claim needs the whole CI above "
            f"{claim.threshold:g}."
        )
    elif isinstance(claim, Differs):
        sentence = (
            f"{claim.metric} {'differs' if p < claim.alpha else 'does not differ clearly'} "
            f"across {claim.by}: ε² = {effect:.3g}, Kruskal–Wallis p = {p:.2g} "
            f"(α = {claim.alpha:g})."
        )
    elif isinstance(claim, Greater):
        sentence = (
            f"{claim.metric} is {effect:+.3g}{ci} higher with {claim.by} = {claim.a} than with "
            f"{claim.b}; the claim needs the CI above 0."
        )
    elif isinstance(claim, Similar):
        bound = (
            f"; upper bound {high:.3g}" if math.isfinite(high) and n_group >= MIN_N_FOR_CI else ""
        )
        sentence = (
            f"The group means of {claim.metric} span {effect:.3g}{bound}; the claim needs the "
            f"upper bound below the margin {claim.margin:g}."
        )
    elif isinstance(claim, Correlates):
        sentence = (
            f"Spearman ρ between {claim.x} and {claim.y} is {effect:.2f}{ci}; the claim needs "
            f"the CI {'above' if claim.sign == 'positive' else 'below'} 0."
        )
    elif isinstance(claim, DifferentMechanism):
        sentence = (
            f"On {claim.comparison}.{claim.metric}, networks of {claim.a} and {claim.b} are "
            f"{effect:.3g} farther apart between groups than within; PERMANOVA p = {p:.2g} "
            f"(α = {claim.alpha:g})."
        )
    elif isinstance(claim, SameMechanism):
        sentence = (
            f"On {claim.comparison}.{claim.metric}, between-group minus within-group distance "
            f"is {effect:.3g}{ci}; the claim needs the upper bound below {claim.margin:g}."
        )
    else:
        sentence = f"Effect {effect:.3g}{ci}."
    prefix = {"held": "Held.", "did not hold": "Did not hold.", "inconclusive": "Inconclusive."}
    caveat = (
        f" With {n_group} network(s) per group this is descriptive only."
        if n_group < MIN_N_FOR_CI
        else ""
    )
    return f"{prefix.get(verdict, verdict)} {sentence}{caveat}"


def _run_figures(
    runs: RunStore, run_id: str, probe: str, label: str, out: Path, figures: Figures
) -> str:
    """A run's figures for one probe (copied into ``figures/`` as PNG and SVG, and inlined)."""
    directory = runs.run_directory(run_id) / PROBES / probe
    if not directory.is_dir():
        return ""
    try:
        files = ProbeResult.load(directory).figure_files
    except StoreError as error:
        warnings.warn(f"report: figures left out: {error}", stacklevel=2)
        return ""
    parts = []
    for stem, png in files.items():
        for extension in ("png", "svg"):
            source = png.with_suffix(f".{extension}")
            if source.exists():
                shutil.copyfile(source, out / "figures" / f"{run_id}_{probe}_{stem}.{extension}")
        parts.append(figures.html(png, f"{probe}: {stem} ({label})"))
    return "".join(parts)


def _loose_section(loose: pd.DataFrame, runs: RunStore, out: Path, figures: Figures) -> str:
    wanted = ["run_id", "status", "reason", "task.name", "model.name", "trainer.name", "seed"]
    wanted += [c for c in loose.columns if c.startswith("train.")]
    parts = [
        heading(2, "loose-runs", "Runs outside suites"),
        frame_table(loose[[c for c in wanted if c in loose]]),
        "<p class=note>Every value of these runs is in "
        '<a href="runs.csv">runs.csv</a> / <a href="runs.parquet">runs.parquet</a>.</p>',
    ]
    for run_id in loose["run_id"].astype(str):
        header = runs.read_header(run_id)
        images = "".join(
            _run_figures(runs, run_id, probe, f"run {run_id}", out, figures)
            for probe in (header.probes if header is not None else [])
        )
        if images:
            parts.append(
                f"<h4>run <code>{escape(run_id)}</code></h4><div class=gallery>{images}</div>"
            )
    return "".join(parts)


def _suite_pairs(runs: RunStore, name: str) -> pd.DataFrame:
    """The suite's comparison results, or an empty frame (a damaged file is reported)."""
    from mechscope.pairwise import read_suite_pairs
    from mechscope.store import PAIR_COLUMNS, empty_frame

    try:
        return read_suite_pairs(runs, name)
    except StoreError as error:
        warnings.warn(f"report: comparisons left out: {error}", stacklevel=2)
        return empty_frame(PAIR_COLUMNS)


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
    atomic_write_parquet(path, safe)
