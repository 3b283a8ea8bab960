"""The comparison stage of a suite: validation before training, caching, resumption, claims."""

from __future__ import annotations

import itertools
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mechscope
from mechscope.comparison import AbstractComparison, stack_representations
from mechscope.errors import ConfigError
from mechscope.plugins import PluginManager
from mechscope.report import write_report
from mechscope.store import RunStore
from mechscope.suite import Suite

from .toys import ToyPlugin

REPRESENTED: list[str] = []


class OutputsConfig(mechscope.Config):
    """Distance between two networks' condition outputs."""

    scale: float = 1.0


class OutputsComparison(AbstractComparison):
    """A transparent comparison: Euclidean and max distance between condition outputs."""

    config: OutputsConfig = eqx.field(static=True)
    metrics = ("euclidean", "largest")
    pair_batch = 2  # small, so batching, padding and resumption are exercised

    def represent(self, trained, task, *, key, conditions, probes):
        REPRESENTED.append(str(id(trained)))
        return {"outputs": self.config.scale * np.asarray(conditions.outputs)}

    def distance(self, a, b):
        difference = a["outputs"] - b["outputs"]
        return {
            "euclidean": jnp.sqrt(jnp.sum(difference**2)),
            "largest": jnp.max(jnp.abs(difference)),
        }


class NeedsProbeComparison(OutputsComparison):
    requires = ("fixed_points",)


class ComparisonPlugin:
    @mechscope.hookimpl
    def mechscope_register_comparisons(self, register):
        register("outputs", OutputsConfig, OutputsComparison)
        register("needs_fixed_points", OutputsConfig, NeedsProbeComparison)


@pytest.fixture
def plugins():
    manager = PluginManager()
    manager.load_entry_points(disabled=[])
    manager.register(ToyPlugin(), name="toys")
    manager.register(ComparisonPlugin(), name="toy-comparisons")
    return manager


BASE = {
    "task": "toy_task",
    "model": {"name": "toy_model", "n_units": 3},
    "trainer": {"name": "toy_trainer", "steps": 3},
    "probes": ["toy_probe"],
}


def suite(plugins, taus=(0.1, 0.2), **kwargs):
    return Suite(
        base=BASE,
        vary={"model.tau": list(taus)},
        seeds=2,
        comparisons=kwargs.pop("comparisons", ["outputs"]),
        plugins=plugins,
        **kwargs,
    )


def direct_distances(store, plugins, run_ids):
    """Distances computed here from the stored networks, independently of the stage."""
    outputs = {}
    for run_id in run_ids:
        run = store.load(run_id, registry=plugins.registry)
        experiment = mechscope.experiment.Experiment.from_dict(run.header.config, plugins=plugins)
        task = experiment.build_task()
        trials = task.conditions()
        outputs[run_id] = np.asarray(
            mechscope.simulate(run.trained.model, trials.inputs, trials.times).outputs
        )
    return {
        (a, b): float(np.sqrt(np.sum((outputs[a] - outputs[b]) ** 2)))
        for a, b in itertools.combinations(sorted(run_ids), 2)
    }


def test_every_pair_is_compared_once_and_matches_a_direct_computation(plugins, tmp_path):
    REPRESENTED.clear()
    job = suite(plugins)
    table = job.run(store=tmp_path, progress=False)
    pairs = job.pairs(tmp_path)
    assert list(pairs.columns) == ["comparison", "run_a", "run_b", "metric", "value"]
    assert set(pairs["metric"]) == {"euclidean", "largest"}
    euclidean = pairs[pairs["metric"] == "euclidean"]
    assert len(euclidean) == math.comb(4, 2)
    assert (euclidean["run_a"] < euclidean["run_b"]).all()
    expected = direct_distances(RunStore(tmp_path), plugins, table["run_id"])
    got = {
        (a, b): v for a, b, v in zip(euclidean.run_a, euclidean.run_b, euclidean.value, strict=True)
    }
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5)
    assert len(REPRESENTED) == 4, "one representation per network"


def test_adding_a_variant_computes_only_new_representations_and_pairs(plugins, tmp_path):
    suite(plugins).run(store=tmp_path, progress=False)
    REPRESENTED.clear()
    bigger = suite(plugins, taus=(0.1, 0.2, 0.3))
    bigger.run(store=tmp_path, progress=False)
    assert len(REPRESENTED) == 2, "only the new variant's two networks are represented"
    cache = RunStore(tmp_path).comparisons.load_pairs(bigger.comparisons[0].key)
    # 6 old pairs + 9 new (2 new networks × 4 old + 1 between them), two metrics each.
    assert len(cache) == 2 * math.comb(6, 2)
    assert len(bigger.pairs(tmp_path)) == 2 * math.comb(6, 2)


def test_a_killed_stage_resumes_from_its_cached_batches(plugins, tmp_path, monkeypatch):
    job = suite(plugins, taus=(0.1, 0.2, 0.3))
    calls = []
    original = OutputsComparison.distances

    def die_after_first_batch(self, representations, pairs):
        calls.append(len(pairs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, representations, pairs)

    monkeypatch.setattr(OutputsComparison, "distances", die_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        job.run(store=tmp_path, progress=False)
    monkeypatch.setattr(OutputsComparison, "distances", original)
    cached = RunStore(tmp_path).comparisons.load_pairs(job.comparisons[0].key)
    assert len(cached) == 2 * calls[0], "the first batch was kept"
    REPRESENTED.clear()
    job.run(store=tmp_path, progress=False)
    assert REPRESENTED == [], "representations were stored beside the runs"
    assert len(job.pairs(tmp_path)) == 2 * math.comb(6, 2)


def test_bad_comparison_settings_fail_before_training(plugins, tmp_path):
    with pytest.raises(ConfigError, match="unknown comparison 'outptus'.*did you mean 'outputs'"):
        suite(plugins, comparisons=["outptus"])
    with pytest.raises(ConfigError, match="needs the probe.*fixed_points.*toy_probe"):
        suite(plugins, comparisons=["needs_fixed_points"])
    with pytest.raises(ConfigError, match="scale"):
        suite(plugins, comparisons=[{"name": "outputs", "scale": "big"}])
    with pytest.raises(ConfigError, match="listed twice"):
        suite(plugins, comparisons=["outputs", {"name": "outputs"}])
    claim = {
        "kind": "different_mechanism",
        "title": "t",
        "comparison": "outputs",
        "metric": "euclidian",
        "by": "model.tau",
        "a": 0.1,
        "b": 0.2,
    }
    with pytest.raises(ConfigError, match="no metric 'euclidian'.*did you mean 'euclidean'"):
        suite(plugins, claims=[claim])
    with pytest.raises(ConfigError, match="comparison 'dsa' is not in"):
        suite(plugins, claims=[{**claim, "comparison": "dsa", "metric": "angular"}])
    assert not any(tmp_path.iterdir()), "nothing ran"


def test_fewer_than_two_completed_runs_skips_the_stage_with_one_line(plugins, tmp_path):
    job = Suite(base=BASE, seeds=1, comparisons=["outputs"], plugins=plugins)
    with pytest.warns(UserWarning, match="comparisons skipped: 1 completed run"):
        table = job.run(store=tmp_path, progress=False)
    assert (table["status"] == "completed").all()
    assert job.pairs(tmp_path).empty


def test_mechanism_claims_and_report(plugins, tmp_path):
    claims = [
        {
            "kind": "different_mechanism",
            "title": "taus differ",
            "comparison": "outputs",
            "metric": "euclidean",
            "by": "model.tau",
            "a": 0.1,
            "b": 0.2,
            "permutations": 199,
        },
        {
            "kind": "same_mechanism",
            "title": "taus alike",
            "comparison": "outputs",
            "metric": "euclidean",
            "by": "model.tau",
            "a": 0.1,
            "b": 0.2,
            "margin": 1e-9,
        },
    ]
    job = Suite(
        base=BASE,
        vary={"model.tau": [0.1, 0.2]},
        seeds=2,
        comparisons=["outputs"],
        claims=claims,
        plugins=plugins,
        name="mech",
    )
    job.run(store=tmp_path, progress=False)
    page = write_report(tmp_path).read_text()
    assert "Mechanism comparison" in page and "outputs · euclidean" in page
    verdicts = pd.read_csv(tmp_path / "report" / "mech_claims.csv")
    # Two networks per group: 6 labellings, two per value of F (the groups swap), so p ≥ 1/3
    # and the claim cannot hold at α = 0.05 whatever the networks: inconclusive, and why.
    different = verdicts[verdicts["title"] == "taus differ"].iloc[0]
    assert different["p_value"] >= 1 / 3 - 1e-12
    assert "smallest attainable p 0.33" in different["measured"]
    assert "not below α = 0.05" in different["measured"]
    assert different["verdict"] == "inconclusive"
    same = verdicts[verdicts["title"] == "taus alike"].iloc[0]
    # Two networks per group: no bootstrap bound, so no CI and no verdict.
    assert np.isnan(same["ci_high"]) and same["n"] == 4 and same["smallest_group_n"] == 2
    assert same["verdict"] == "inconclusive"


def claim_inputs(separation, *, per_group=5, seed=0):
    """A table of two groups and long-form distances between points `separation` apart."""
    rng = np.random.default_rng(seed)
    offset = np.array([separation, 0.0, 0.0])
    points = np.concatenate(
        [rng.normal(size=(per_group, 3)), rng.normal(size=(per_group, 3)) + offset]
    )
    run_ids = [f"r{i:02d}" for i in range(len(points))]
    table = pd.DataFrame(
        {"run_id": run_ids, "status": "completed", "group": ["a"] * per_group + ["b"] * per_group}
    )
    rows = [
        {
            "comparison": "c",
            "run_a": run_ids[i],
            "run_b": run_ids[j],
            "metric": "d",
            "value": float(np.linalg.norm(points[i] - points[j])),
        }
        for i, j in itertools.combinations(range(len(points)), 2)
    ]
    return table, pd.DataFrame(rows)


@pytest.mark.parametrize("separation", [0.0, 6.0])
def test_mechanism_claims_positive_and_negative_controls(separation):
    from mechscope.claims import evaluate, parse_claims

    table, pairs = claim_inputs(separation)
    common = {"comparison": "c", "metric": "d", "by": "group", "a": "a", "b": "b"}
    different, same = parse_claims(
        [
            {"kind": "different_mechanism", "title": "differ", **common},
            {"kind": "same_mechanism", "title": "alike", "margin": 0.5, **common},
        ]
    )
    verdict_different = evaluate(different, table, pairs)
    verdict_same = evaluate(same, table, pairs)
    if separation:
        assert verdict_different["verdict"] == "held"
        assert verdict_different["p_value"] < 0.01
        assert verdict_same["verdict"] == "did not hold"
    else:
        assert verdict_different["verdict"] == "did not hold"
        assert verdict_same["verdict"] == "held", verdict_same
    assert evaluate(different, table, None)["verdict"] == "inconclusive"


def test_mechanism_claims_with_two_networks_per_group_are_inconclusive():
    """However far apart, 2 vs 2 networks cannot reach α (PERMANOVA) or bound a bootstrap."""
    from mechscope.claims import evaluate, parse_claims

    common = {"comparison": "c", "metric": "d", "by": "group", "a": "a", "b": "b"}
    different, same = parse_claims(
        [
            {"kind": "different_mechanism", "title": "differ", **common},
            {"kind": "same_mechanism", "title": "alike", "margin": 1.0, **common},
        ]
    )
    table, pairs = claim_inputs(50.0, per_group=2)
    assert evaluate(different, table, pairs)["verdict"] == "inconclusive"
    assert evaluate(same, table, pairs)["verdict"] == "inconclusive"
    # Three per group: a bootstrap bound exists, but PERMANOVA's floor is still 2/20 = 0.1.
    table, pairs = claim_inputs(50.0, per_group=3)
    assert evaluate(different, table, pairs)["verdict"] == "inconclusive"
    assert evaluate(same, table, pairs)["verdict"] == "did not hold"
    # Four per group: the floor is 2/70 < 0.05, and the separation is found.
    table, pairs = claim_inputs(50.0, per_group=4)
    assert evaluate(different, table, pairs)["verdict"] == "held"


def test_stacking_names_the_array_whose_shape_differs():
    with pytest.raises(ValueError, match="shape of 'x'"):
        stack_representations([{"x": np.zeros(3)}, {"x": np.zeros(4)}])
    with pytest.raises(ValueError, match="arrays"):
        stack_representations([{"x": np.zeros(3)}, {"y": np.zeros(3)}])


class NeedsBrokenProbe(OutputsComparison):
    requires = ("broken_probe",)


class BrokenNeedsPlugin:
    @mechscope.hookimpl
    def mechscope_register_comparisons(self, register):
        register("needs_broken", OutputsConfig, NeedsBrokenProbe)


def test_runs_without_a_needed_probe_result_are_left_out_not_fatal(plugins, tmp_path):
    plugins.register(BrokenNeedsPlugin(), name="needs-broken")
    base = {**BASE, "probes": ["toy_probe", "broken_probe"]}
    job = Suite(base=base, seeds=2, comparisons=["needs_broken", "outputs"], plugins=plugins)
    with pytest.warns(UserWarning, match="'needs_broken' leaves out 2 run.*broken_probe"):
        table = job.run(store=tmp_path, progress=False)
    assert (table["status"] == "completed").all()
    pairs = job.pairs(tmp_path)
    assert set(pairs["comparison"]) == {"outputs"}, "the other comparison still ran"


def test_cached_pairs_follow_the_representations_they_came_from(plugins, tmp_path, monkeypatch):
    job = suite(plugins)
    table = job.run(store=tmp_path, progress=False)
    store = RunStore(tmp_path)
    key = job.comparisons[0].key
    changed = table["run_id"][0]
    old = store.comparisons.load_representation(changed, key)
    store.comparisons.save_representation(changed, key, {"outputs": 2 * old.arrays["outputs"]})
    computed = []
    original = OutputsComparison.distances

    def counting(self, representations, pairs):
        computed.extend(map(tuple, pairs))
        return original(self, representations, pairs)

    monkeypatch.setattr(OutputsComparison, "distances", counting)
    job.run(store=tmp_path, progress=False)
    assert len(computed) == 3, "only the changed run's three pairs are recomputed"
    pairs = job.pairs(tmp_path)
    assert len(pairs) == 2 * 6 and not pairs.duplicated(["run_a", "run_b", "metric"]).any()


def test_a_suite_without_comparisons_leaves_no_stale_results(plugins, tmp_path):
    suite(plugins).run(store=tmp_path, progress=False)
    plain = Suite(base=BASE, vary={"model.tau": [0.1, 0.2]}, seeds=2, plugins=plugins)
    plain.run(store=tmp_path, progress=False)
    assert plain.pairs(tmp_path).empty
