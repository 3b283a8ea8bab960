"""The report: findings first, every column explained, curves across seeds, honest small n."""

from __future__ import annotations

import base64
import dataclasses
import math
import re
from collections.abc import Mapping
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mechscope
from mechscope.comparison import AbstractComparison
from mechscope.experiment import Experiment
from mechscope.plugins import PluginManager
from mechscope.report import write_report
from mechscope.report._data import (
    learning_curves,
    loaded_by_suites,
    mean_and_ci,
    run_facts,
    sweeps,
)
from mechscope.report._figures import learning_figure, short
from mechscope.store import RunStore
from mechscope.suite import Suite
from mechscope.training import TrainedRun

from .toys import ToyPlugin, ToyTrainer, ToyTrainerConfig, _figure, _toy_outputs

REASON = "the loss became NaN or Inf at step 3; kept the last finite model (step 2)"


class DeclaringProbeConfig(mechscope.Config):
    """Output error on the condition trials, and at a few input gains."""

    levels: tuple[float, ...] = (0.0, 0.5, 1.0)


class DeclaringProbe(mechscope.AbstractProbe):
    """Declares its metrics (one of them a setting) and reports one column it does not."""

    config: DeclaringProbeConfig = eqx.field(static=True)

    def metrics(self):
        return (
            mechscope.Metric(
                "mse", "mean squared output error on the conditions", direction="lower = better"
            ),
            mechscope.Metric("gain_used", "the input gain the probe applied", kind="setting"),
            *(
                mechscope.Metric(f"error_at_{level:g}", "output error with inputs × the level")
                for level in self.config.levels
            ),
        )

    def run(self, trained, task, *, key, dependencies: Mapping | None = None):
        trials = task.conditions()
        outputs = np.asarray(_toy_outputs(trained.model, trials.inputs, trials.times))
        metrics = {
            "mse": float(np.mean((outputs - np.asarray(trials.targets)) ** 2)),
            "gain_used": 1.0,
            "extra": float(jax.random.uniform(key)),
        }
        for level in self.config.levels:
            scaled = np.asarray(_toy_outputs(trained.model, trials.inputs * level, trials.times))
            metrics[f"error_at_{level:g}"] = float(np.mean((scaled - trials.targets) ** 2))
        return mechscope.ProbeResult(metrics=metrics, figures={"outputs": lambda: _figure(outputs)})


class ReportTrainerConfig(ToyTrainerConfig):
    """The toy trainer, recording an R² too, and diverging when told to."""

    diverge: bool = False


class ReportTrainer(mechscope.AbstractTrainer):
    config: ReportTrainerConfig = eqx.field(static=True)

    def fit(self, model, task, *, key, callbacks=(), checkpoint_dir=None):
        run = ToyTrainer(config=self.config).fit(model, task, key=key, callbacks=callbacks)
        loss = np.asarray(run.history["loss"], float)
        history = {**run.history, "r2": 1 / (1 + loss)}
        if not self.config.diverge:
            return dataclasses.replace(run, history=history)
        history["loss"] = np.concatenate([loss[:-1], [np.nan]])
        return TrainedRun(
            model=run.model, history=history, status="diverged", reason=REASON, metadata={}
        )


class OutputsConfig(mechscope.Config):
    """Euclidean distance between two networks' condition outputs."""


class OutputsComparison(AbstractComparison):
    config: OutputsConfig = eqx.field(static=True)
    metrics = ("euclidean",)

    def represent(self, trained, task, *, key, conditions, probes):
        return {"outputs": np.asarray(conditions.outputs)}

    def distance(self, a, b):
        return {"euclidean": jnp.sqrt(jnp.sum((a["outputs"] - b["outputs"]) ** 2))}


class ReportPlugin:
    @mechscope.hookimpl
    def mechscope_register_probes(self, register):
        register("declaring_probe", DeclaringProbeConfig, DeclaringProbe)

    @mechscope.hookimpl
    def mechscope_register_trainers(self, register):
        register("report_trainer", ReportTrainerConfig, ReportTrainer)

    @mechscope.hookimpl
    def mechscope_register_comparisons(self, register):
        register("outputs", OutputsConfig, OutputsComparison)


BASE = {
    "task": "toy_task",
    "model": {"name": "toy_model", "n_units": 3},
    "trainer": {"name": "report_trainer", "steps": 4},
    "probes": ["declaring_probe"],
}
GREATER = {
    "kind": "greater",
    "title": "slower networks err more",
    "metric": "declaring_probe.mse",
    "by": "model.tau",
    "a": 0.2,
    "b": 0.1,
}
CLAIMS = [
    GREATER,
    {
        "kind": "exceeds",
        "title": "errors are positive",
        "metric": "declaring_probe.mse",
        "threshold": 0.0,
    },
    {
        "kind": "different_mechanism",
        "title": "taus differ in outputs",
        "comparison": "outputs",
        "metric": "euclidean",
        "by": "model.tau",
        "a": 0.1,
        "b": 0.2,
        "permutations": 99,
    },
]
ORDER = [
    "suite",
    "claims",
    "compare",
    "correlations",
    "mechanism",
    "training",
    "probes",
    "probe-declaring_probe",
    "not-completed",
    "tables",
    "glossary",
]


@pytest.fixture(scope="module")
def plugins():
    manager = PluginManager()
    manager.load_entry_points(disabled=[])
    manager.register(ToyPlugin(), name="toys")
    manager.register(ReportPlugin(), name="report-toys")
    return manager


@pytest.fixture(scope="module")
def store(plugins, tmp_path_factory):
    """Suite `pairs` (two seeds; one variant diverges) and `triples` (three seeds)."""
    root = tmp_path_factory.mktemp("report") / "store"
    pairs = Suite(
        name="pairs",
        base=BASE,
        vary=[{"model.tau": [0.1, 0.2]}, {"trainer.diverge": [True]}],
        seeds=2,
        statistics={
            "compare": ["declaring_probe.mse", "train.loss"],
            "correlate": [["declaring_probe.mse", "train.loss"]],
        },
        claims=CLAIMS,
        comparisons=["outputs"],
        plugins=plugins,
    )
    pairs.run(store=root, progress=False)
    triples = Suite(
        name="triples",
        base=BASE,
        vary={"model.tau": [0.1, 0.2]},
        seeds=3,
        statistics={"compare": ["declaring_probe.mse"]},
        claims=[GREATER],
        plugins=plugins,
    )
    triples.run(store=root, progress=False)
    report = write_report(root, plugins=plugins)
    return SimpleNamespace(root=root, report=report, page=report.read_text())


def section(page: str, anchor: str) -> str:
    """The page from heading `anchor` to the next heading of the same or a higher level."""
    match = re.search(rf'<h(\d) id="{re.escape(anchor)}"', page)
    assert match, f"no section #{anchor}"
    level = int(match.group(1))
    end = re.compile(rf"<h[1-{level}][ >]")
    following = end.search(page, match.end())
    return page[match.start() : following.start() if following else len(page)]


def cells(fragment: str, first: str) -> list[str]:
    """The cells of the table row whose first cell contains `first`, tags stripped."""
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", fragment, flags=re.S):
        found = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        if found and first in found[0]:
            return found
    raise AssertionError(f"no row starting with {first!r}")


def test_sections_come_in_reading_order_and_the_toc_links_them(store):
    positions = []
    for key in ORDER:
        anchor = f"pairs-{key}"
        assert (
            f'<h3 id="{anchor}"' in store.page
            or f'<h4 id="{anchor}"' in store.page
            or (f'<h2 id="{anchor}"' in store.page)
        ), anchor
        positions.append(store.page.index(f'id="{anchor}"'))
        assert f'href="#{anchor}"' in store.page.split("</nav>")[0], f"TOC lacks {anchor}"
    assert positions == sorted(positions)
    # Negative control: a suite without claims or comparisons has neither section.
    assert 'id="triples-claims"' in store.page
    assert 'id="triples-mechanism"' not in store.page and 'id="triples-not-completed"' not in (
        store.page
    )
    assert store.page.index('id="pairs-glossary"') < store.page.index('id="triples-suite"')


def test_no_ci_is_printed_or_written_below_three_networks(store):
    folder = store.report.parent
    # Two networks per variant in `pairs`: the cells give the mean and say why there is no CI.
    compare = section(store.page, "pairs-compare")
    row = cells(compare, "declaring_probe.mse")
    variant_cells = row[2:]
    assert len(variant_cells) == 3 and variant_cells[-1] == "–"  # the diverged variant
    for cell in variant_cells[:2]:
        assert "[" not in cell and "n = 2, no CI" in cell
    summary = pd.read_csv(folder / "pairs_summary.csv")
    few = summary[summary["n"] < 3]
    assert len(few) and few["ci_low"].isna().all() and few["ci_high"].isna().all()
    claims = pd.read_csv(folder / "pairs_claims.csv").set_index("title")
    assert claims.loc["slower networks err more", "smallest_group_n"] == 2
    assert np.isnan(claims.loc["slower networks err more", "ci_low"])
    claim_row = cells(section(store.page, "pairs-claims"), "slower networks err more")
    assert "no CI" in claim_row[3] and "[" not in claim_row[3]
    # Positive control: with three networks the same cell and claim carry their CI.
    triples = pd.read_csv(folder / "triples_summary.csv").set_index(["metric", "variant"])
    interval = triples.loc[("declaring_probe.mse", "model.tau=0.1")]
    assert interval["n"] == 3 and np.isfinite(interval["ci_low"])
    cell = cells(section(store.page, "triples-compare"), "declaring_probe.mse")[2]
    assert f"[{interval['ci_low']:.3g}, {interval['ci_high']:.3g}]" in cell
    assert np.isfinite(pd.read_csv(folder / "triples_claims.csv")["ci_low"]).all()
    # The page warns once that `pairs` has too few seeds.
    assert store.page.count("Too few seeds for inference") == 1
    assert "cannot give p below 0.33" in store.page


def test_permutation_tests_report_their_smallest_attainable_p(store):
    tests = pd.read_csv(store.report.parent / "pairs_comparisons.csv")
    pair = tests[(tests["n_a"] == 2) & (tests["n_b"] == 2)]
    assert len(pair)
    assert pair["smallest attainable p"].to_numpy() == pytest.approx(1 / 3)
    assert (pair["p_value"] >= pair["smallest attainable p"] - 1e-12).all()
    triples = pd.read_csv(store.report.parent / "triples_comparisons.csv")
    assert triples["smallest attainable p"].to_numpy() == pytest.approx(0.1)  # 2 / C(6, 3)


def test_learning_curve_mean_is_the_mean_of_the_stored_histories(store, plugins):
    runs = RunStore(store.root)
    table = runs.suite_table(next(r for r in runs.suite_records() if r.name == "pairs").runs)
    curves = pd.read_csv(store.report.parent / "pairs_learning_curves.csv")
    figure = learning_figure(curves, list(dict.fromkeys(table["variant"])))
    lines = {
        (axis.get_title(), line.get_label().split(" (")[0]): line.get_ydata()
        for axis in figure.axes
        for line in axis.get_lines()
    }
    for variant, frame in table[table["status"] == "completed"].groupby("variant"):
        histories = [
            TrainedRun.load(store.root / r / "trained", registry=plugins.registry).history
            for r in frame["run_id"]
        ]
        for quantity, title in (("loss", "training loss"), ("r2", "output R²")):
            expected = np.mean([h[quantity] for h in histories], axis=0)
            chosen = curves[(curves["variant"] == variant) & (curves["quantity"] == quantity)]
            np.testing.assert_allclose(chosen["mean"], expected, rtol=1e-12)
            np.testing.assert_allclose(chosen["step"], histories[0]["step"])
            assert (chosen["n"] == 2).all() and chosen["ci_low"].isna().all()
            np.testing.assert_allclose(lines[(title, short(variant))], expected, rtol=1e-12)
    # Diverged networks are not averaged in.
    assert "trainer.diverge=True" in set(table["variant"])
    assert "trainer.diverge=True" not in set(curves["variant"])
    assert (learning_curves(runs, table).columns == curves.columns).all()


def test_glossary_lists_every_column_of_the_table(store):
    folder = store.report.parent
    for suite in ("pairs", "triples"):
        columns = list(pd.read_csv(folder / f"{suite}_runs.csv").columns)
        glossary = section(store.page, f"{suite}-glossary")
        listed = re.findall(rf'<tr id="{suite}-column-([^"]+)">', glossary)
        assert listed == columns
    glossary = section(store.page, "pairs-glossary")
    assert (
        "mean squared output error on the conditions" in cells(glossary, "declaring_probe.mse")[2]
    )
    assert cells(glossary, "declaring_probe.gain_used")[1] == "probe setting"
    assert cells(glossary, "declaring_probe.extra")[1:3] == ["undeclared", "not declared"]
    assert cells(glossary, "model.tau")[1] == "varied setting"
    assert cells(glossary, "trainer.steps")[1] == "setting"


def test_meaning_beside_rows_and_settings_kept_out_of_the_findings(store):
    findings = section(store.page, "pairs-probe-declaring_probe")
    assert (
        "mean squared output error on the conditions" in cells(findings, "declaring_probe.mse")[1]
    )
    assert cells(findings, "declaring_probe.extra")[1] == "not declared by its probe"
    measured = findings.split("<details><summary>Settings")[0]
    assert "declaring_probe.gain_used" not in measured
    settings = findings.split("<details><summary>Settings")[1]
    assert cells(settings, "declaring_probe.gain_used")[2] == "1"
    every = section(store.page, "pairs-tables").split("<h4>Settings")[0]
    assert "declaring_probe.gain_used" not in every and "declaring_probe.mse" in every


def test_sweep_columns_become_curves_across_seeds(store):
    table = pd.read_csv(store.report.parent / "pairs_runs.csv")
    curves = pd.read_csv(store.report.parent / "pairs_curves.csv")
    assert set(curves["curve"]) == {"declaring_probe.error_at_{x}"}
    done = table[table["status"] == "completed"]
    for variant, frame in done.groupby("variant"):
        chosen = curves[curves["variant"] == variant].sort_values("x")
        assert chosen["x"].tolist() == [0.0, 0.5, 1.0]
        expected = [frame[f"declaring_probe.error_at_{x:g}"].mean() for x in (0, 0.5, 1)]
        np.testing.assert_allclose(chosen["mean"], expected, rtol=1e-12)
    found = sweeps(["p.a_1", "p.a_2", "p.a_3", "p.b_1", "p.b_2", "p.plane1", "q.c_0.1"])
    assert [(s.probe, s.stem, s.xs) for s in found] == [("p", "a", (1.0, 2.0, 3.0))]


def test_diverged_runs_are_listed_with_their_reason(store):
    table = pd.read_csv(store.report.parent / "pairs_runs.csv")
    diverged = table[table["status"] == "diverged"]
    assert len(diverged) == 2
    listing = section(store.page, "pairs-not-completed")
    for run_id in diverged["run_id"]:
        row = cells(listing, "trainer.diverge=True")
        assert row[3] == "diverged" and REASON in row[4]
        assert run_id in listing
    assert 'href="#pairs-not-completed"' in section(store.page, "pairs-suite")


def test_every_figure_is_inlined_and_enlarges_on_click(store):
    images = re.findall(
        r'<a href="#(figure-\d+)"[^>]*><img src="data:image/png;base64,([^"]+)"', (store.page)
    )
    assert len(images) == store.page.count("<img ")
    assert len(images) >= 10
    for identifier, data in images:
        assert '<figure class="fig' in store.page and f'id="{identifier}"' in store.page
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert len({i for i, _ in images}) == len(images)
    assert "figure.fig:target" in store.page  # the overlay that shows it full-size
    assert "<script" not in store.page and "http://" not in store.page
    assert re.search(r'src="(?!data:)', store.page) is None
    # Links to the tables beside the page point at files that exist.
    for link in re.findall(r'<a href="([^"#]+\.(?:csv|parquet))"', store.page):
        assert (store.report.parent / link).is_file(), link


def test_representative_network_has_the_median_final_r2(store):
    table = pd.read_csv(store.report.parent / "triples_runs.csv")
    probe = section(store.page, "triples-probe-declaring_probe")
    for variant, frame in table.groupby("variant"):
        ranked = frame.sort_values("train.r2", ascending=False)
        median_seed = ranked["seed"].iloc[1]
        assert f"<b>{variant}</b>: seed {median_seed} (median final R²" in probe
        others = probe.split(f"<b>{variant}</b>")[1].split("</details>")[0]
        assert others.count("<img ") == 3  # the representative, then the two others


def test_header_counts_runs_compute_and_cache(store, plugins):
    header = store.page.split("<nav")[0]
    runs = RunStore(store.root)
    shown = {r for record in runs.suite_records() for r in (x.run_id for x in record.runs)}
    # What the runs recorded about where they ran ("unknown" for stores that do not record it).
    for field in ("device", "host", "platform"):
        recorded = {
            str(getattr(runs.read_header(r), "environment", {}).get(field) or "unknown")
            for r in shown
        }
        assert f"{field} {', '.join(sorted(recorded))}" in header
    assert f"<b>{len(shown)} runs</b>" in header
    # `pairs` computed its 6 runs; `triples` loaded 4 of them and computed 2 more.
    assert "last <code>mechscope run</code>: 8 computed, 0 loaded from the store" in header
    total = sum(
        sum(v for v in runs.read_header(r).timings.values() if v is not None and math.isfinite(v))
        for r in shown
        if runs.read_header(r) is not None
    )
    assert f"<b>{total:.0f} s</b>" in header or f"<b>{total / 60:.1f} min</b>" in header


def test_run_facts_share_joint_training_and_read_the_environment():
    def header(run_id, train, probes, jointly=None, environment=None):
        return SimpleNamespace(
            run_id=run_id,
            timings={"train_s": train, "probes_s": probes},
            trained_jointly_with=jointly,
            environment=environment or {},
        )

    env = {"device": "cpu:0", "host": "lab1", "mechscope_version": "1.2", "platform": "linux"}
    headers = [header("a", 10.0, 1.0, 2, env), header("b", 10.0, 2.0, 2, env), header("c", 4.0, 0)]
    # Suite s1's last run loaded a and computed b; s2 loaded b; c is in no recorded suite.
    records = [
        SimpleNamespace(
            runs=[SimpleNamespace(run_id="a"), SimpleNamespace(run_id="b")], cached=["a"]
        ),
        SimpleNamespace(runs=[SimpleNamespace(run_id="b")], cached=["b"]),
        SimpleNamespace(runs=[SimpleNamespace(run_id="c")], cached=None),
    ]
    loaded = loaded_by_suites(records)
    assert loaded == {"a": True, "b": False}
    facts = run_facts(headers, loaded, ["a", "b", "c"])  # pyright: ignore[reportArgumentType]
    assert facts.compute_s == pytest.approx(10 / 2 + 1 + 10 / 2 + 2 + 4)
    assert (facts.cached, facts.computed, facts.unrecorded) == (1, 1, 1)
    assert facts.devices == ("cpu:0", "unknown") and facts.hosts == ("lab1", "unknown")
    assert loaded_by_suites(records[2:]) is None
    assert run_facts(headers[:1], None, ["a"]).cached is None  # pyright: ignore[reportArgumentType]


def test_mean_and_ci_hides_the_interval_below_three_networks():
    values = np.array([[1.0, 2.0, 5.0], [3.0, np.nan, 6.0], [5.0, np.nan, 7.0]])
    mean, low, high, n = mean_and_ci(values)
    np.testing.assert_allclose(mean, [3.0, 2.0, 6.0])
    assert n.tolist() == [3, 1, 3]
    assert np.isnan(low[1]) and np.isnan(high[1])
    assert low[0] < 3.0 < high[0] and 1.0 <= low[0] and high[0] <= 5.0


def test_report_of_runs_outside_suites_and_a_cached_rerun(plugins, tmp_path):
    experiment = Experiment(**BASE, seed=5, plugins=plugins)
    experiment.run(store=tmp_path, progress=False)
    page = write_report(tmp_path, plugins=plugins).read_text()
    assert 'id="loose-runs"' in page and experiment.run_id in page
    assert "data:image/png;base64," in page
    assert "loaded vs computed: not recorded" in page
    suite = Suite(name="again", base=BASE, seeds=[5], plugins=plugins)
    suite.run(store=tmp_path, progress=False)  # the run is in the store already
    header = write_report(tmp_path, plugins=plugins).read_text().split("<nav")[0]
    assert "0 computed, 1 loaded from the store" in header


def test_browser_check_on_the_report(store):
    from .browser_check import check, find_chromium, inspect_report

    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium installed (CI installs it and runs the check)")
    shot = store.report.parent / "shot.png"
    found = inspect_report(store.report, browser=browser, screenshot=shot)
    assert check(found, [f"pairs-{key}" for key in ORDER]) == []
    assert len(found["images"]) == store.page.count("<img ")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Negative control: the same check fails on a broken image and a missing section.
    broken = store.report.parent / "broken.html"
    broken.write_text(store.page.replace("base64,iVBOR", "base64,AAAA", 1))
    failures = check(inspect_report(broken, browser=browser), ["pairs-suite", "nowhere"])
    assert any("does not decode" in f for f in failures)
    assert any("#nowhere is missing" in f for f in failures)


def test_moved_report_files_exist(store):
    folder = store.report.parent
    for name in (
        "runs.csv",
        "runs.parquet",
        "pairs_runs.csv",
        "pairs_runs.parquet",
        "pairs_summary.csv",
        "pairs_comparisons.csv",
        "pairs_correlations.csv",
        "pairs_claims.csv",
        "pairs_distances.csv",
        "pairs_glossary.csv",
        "pairs_learning_curves.csv",
        "pairs_curves.csv",
    ):
        assert (folder / name).exists(), name
    parquet = pd.read_parquet(folder / "pairs_runs.parquet")
    assert len(parquet) == 6
    pngs = {p.stem for p in (folder / "figures").glob("*.png")}
    svgs = {p.stem for p in (folder / "figures").glob("*.svg")}
    assert pngs and pngs == svgs


def test_dot_plot_of_identical_values_draws_their_mean_with_an_empty_interval():
    """Three identical values (0.1 each): the bootstrap interval's ends miss their mean by
    rounding, which matplotlib refused as a negative error bar; the bar is now empty."""
    from mechscope.report._figures import dot_plots

    table = pd.DataFrame(
        {
            "variant": ["a"] * 3 + ["b"] * 3,
            "status": ["completed"] * 6,
            "probe.value": [0.1, 0.1, 0.1, 0.2, 0.4, 0.9],
        }
    )
    figure = dot_plots(table, ["probe.value"], ["a", "b"], {})
    axis = figure.axes[0]
    # Each variant's errorbar container: the mean marker sits at the variant's mean.
    bars = [c for c in axis.containers if hasattr(c, "lines")]
    means = [float(np.asarray(bar.lines[0].get_ydata())[0]) for bar in bars]
    np.testing.assert_allclose(means, [0.1, 0.5])
    spans = [
        np.ptp(np.concatenate([seg[:, 1] for seg in bar.lines[2][0].get_segments()]))
        for bar in bars
    ]
    assert spans[0] < 1e-12 < spans[1]
