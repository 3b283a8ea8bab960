"""Contract checks over every registered component, and proof that the checks can fail."""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mechscope
from mechscope.testing import (
    check_comparison,
    check_executor,
    check_model,
    check_probe,
    check_task,
    check_trainer,
)

from .toys import (
    ToyModel,
    ToyModelConfig,
    ToyProbe,
    ToyProbeConfig,
    ToyTask,
    ToyTaskConfig,
    ToyTrainer,
    ToyTrainerConfig,
)

REGISTRY = mechscope.get_registry()


def ids(entries):
    return [f"{e.kind}:{e.name}" for e in entries]


@pytest.mark.parametrize("entry", REGISTRY.entries("task"), ids=ids(REGISTRY.entries("task")))
def test_registered_tasks_meet_contract(entry, getkey):
    task = entry.build(entry.validate({}))
    check_task(task, key=getkey())


@pytest.mark.parametrize("entry", REGISTRY.entries("model"), ids=ids(REGISTRY.entries("model")))
def test_registered_models_meet_contract(entry, getkey):
    model = entry.build(entry.validate({}), n_inputs=3, n_outputs=2, key=getkey())
    check_model(model, key=getkey())


@pytest.mark.parametrize("entry", REGISTRY.entries(), ids=ids(REGISTRY.entries()))
def test_registered_configs_roundtrip_and_build(entry):
    from mechscope.testing import check_config_roundtrip

    config = entry.validate({})
    check_config_roundtrip(config)
    schema = entry.config_class.model_json_schema()
    assert set(schema.get("properties", {})) == set(entry.config_class.model_fields)
    interface = {
        "task": mechscope.AbstractTask,
        "model": mechscope.AbstractModel,
        "trainer": mechscope.AbstractTrainer,
        "probe": mechscope.AbstractProbe,
        "executor": mechscope.AbstractExecutor,
        "comparison": mechscope.AbstractComparison,
    }[entry.kind]
    if entry.kind != "model":
        assert isinstance(entry.build(config), interface)


#: Settings that keep each probe's contract check cheap on the tiny network (a few seconds).
CHEAP_PROBE_SETTINGS = {
    "fixed_points": {"n_starts": 8},
    "robustness": {
        "input_noise": (0.0, 0.1),
        "recurrent_noise": (0.0, 0.1),
        "kick": (0.0, 0.2),
        "n_repeats": 1,
    },
    "delay_generalization": {"delay_noise": (0.0, 0.1), "n_repeats": 1},
}


@pytest.fixture(scope="module")
def tiny_reach_run():
    """A tiny ctrnn briefly trained on a coarse delayed reach: every first-party probe needs
    a reach task (events, target labels; generalization builds switch/relocation trials that
    match it), and a trained network gives the probes non-degenerate trajectories."""
    task_entry = REGISTRY.get("task", "delayed_reach")
    task = task_entry.build(task_entry.validate({"dt": 0.02}))
    model_entry = REGISTRY.get("model", "ctrnn")
    model = model_entry.build(
        model_entry.validate({"n_units": 8}),
        n_inputs=task.n_inputs,
        n_outputs=task.n_outputs,
        key=jax.random.key(0),
    )
    trainer_entry = REGISTRY.get("trainer", "bptt")
    trainer = trainer_entry.build(
        trainer_entry.validate({"steps": 10, "batch_size": 8, "eval_every": 10})
    )
    return task, trainer.fit(model, task, key=jax.random.key(1))


@pytest.mark.parametrize("entry", REGISTRY.entries("probe"), ids=ids(REGISTRY.entries("probe")))
def test_registered_probes_meet_contract(entry, tiny_reach_run, getkey, tmp_path):
    task, trained = tiny_reach_run
    probe = entry.build(entry.validate(CHEAP_PROBE_SETTINGS.get(entry.name, {})))
    dependencies = {}
    for name in probe.requires:
        needed = REGISTRY.get("probe", name)
        dependencies[name] = needed.build(needed.validate({})).run(trained, task, key=getkey())
    result = check_probe(
        probe,
        trained,
        task,
        key=getkey(),
        dependencies=dependencies,
        tmp_path=tmp_path,
        registry=REGISTRY,
    )
    assert any(np.isfinite(v) for v in result.metrics.values()), "every metric is NaN"


def _cheap_trainer_settings(entry) -> dict:
    fields = entry.config_class.model_fields
    return {k: v for k, v in {"steps": 3, "batch_size": 4}.items() if k in fields}


@pytest.mark.parametrize("entry", REGISTRY.entries("trainer"), ids=ids(REGISTRY.entries("trainer")))
def test_registered_trainers_meet_contract(entry, getkey):
    task, model = toy_setup(getkey())
    trainer = entry.build(entry.validate(_cheap_trainer_settings(entry)))
    check_trainer(trainer, model, task, key=getkey())


@pytest.mark.parametrize(
    "entry", REGISTRY.entries("executor"), ids=ids(REGISTRY.entries("executor"))
)
def test_registered_executors_meet_contract(entry):
    if entry.name == "dask":
        pytest.importorskip("dask.distributed")
    outcomes = check_executor(entry.build(entry.validate({})))
    assert [o.index for o in outcomes if not o.ok] == [3]


def toy_setup(key):
    task = ToyTask(ToyTaskConfig())
    model = ToyModel(ToyModelConfig(), n_inputs=1, n_outputs=1, key=key)
    return task, model


def test_toy_components_meet_contract(getkey, tmp_path):
    task, model = toy_setup(getkey())
    check_task(task, key=getkey())
    check_model(model, key=getkey())
    trained = check_trainer(ToyTrainer(ToyTrainerConfig(steps=3)), model, task, key=getkey())
    result = check_probe(ToyProbe(ToyProbeConfig()), trained, task, key=getkey(), tmp_path=tmp_path)
    assert result.metrics["mse"] >= 0


_CALLS: list = []


class KeyIgnoringTask(ToyTask):
    """Breaks determinism in reverse: every key gives the same batch."""

    def sample(self, batch_size, *, key):
        return super().sample(batch_size, key=jax.random.key(0))


class WrongShapeTask(ToyTask):
    @property
    def n_outputs(self):
        return 2


def test_check_task_catches_broken_tasks(getkey):
    with pytest.raises(AssertionError, match="different keys gave identical"):
        check_task(KeyIgnoringTask(ToyTaskConfig()), key=getkey())
    with pytest.raises(AssertionError, match="targets shape"):
        check_task(WrongShapeTask(ToyTaskConfig()), key=getkey())


class NoiseIgnoringModel(ToyModel):
    def __call__(self, inputs, times, *, key=None, noise=None, x0=None):
        return super().__call__(inputs, times, key=key, noise=None, x0=x0)


class StaticNoiseModel(ToyModel):
    """Breaks the no-recompile rule: noise levels become Python floats (static)."""

    def __call__(self, inputs, times, *, key=None, noise=None, x0=None):
        level = float(noise.input) if noise else 0.0  # fails under jit: levels must be arrays
        return super().__call__(inputs, times, key=key, noise=mechscope.Noise(input=level), x0=x0)


class WrongJacobianModel(ToyModel):
    def jacobian(self, t, x, u):
        return jnp.zeros((x.shape[0], x.shape[0]))


def test_check_model_catches_broken_models(getkey):
    config = ToyModelConfig()
    build = dict(n_inputs=1, n_outputs=1, key=getkey())
    with pytest.raises(AssertionError, match="noise had no effect"):
        check_model(NoiseIgnoringModel(config, **build), key=getkey())
    with pytest.raises(AssertionError, match="jacobian"):
        check_model(WrongJacobianModel(config, **build), key=getkey())
    with pytest.raises(jax.errors.ConcretizationTypeError):
        check_model(StaticNoiseModel(config, **build), key=getkey())


class RandomProbe(ToyProbe):
    """Breaks determinism: ignores the key."""

    def run(self, trained, task, *, key, dependencies=None):
        _CALLS.append(1)
        result = super().run(trained, task, key=key)
        result.metrics["mse"] += len(_CALLS)
        return result


def test_check_probe_catches_nondeterminism(getkey):
    task, model = toy_setup(getkey())
    with pytest.raises(AssertionError, match="differs for the same key"):
        check_probe(
            RandomProbe(ToyProbeConfig()), mechscope.TrainedRun(model=model), task, key=getkey()
        )


class SharedRunMisusingProbe(ToyProbe):
    """Breaks the shared-run rule: its metric changes when it is handed the condition run."""

    def run(self, trained, task, *, key, dependencies=None, conditions=None):
        result = super().run(trained, task, key=key)
        if conditions is not None:
            result.metrics["mse"] = float(np.mean(conditions.outputs**2))
        return result


def test_check_probe_catches_probe_that_misuses_the_shared_run(getkey):
    task, model = toy_setup(getkey())
    with pytest.raises(AssertionError, match="when given the shared condition run"):
        check_probe(
            SharedRunMisusingProbe(ToyProbeConfig()),
            mechscope.TrainedRun(model=model),
            task,
            key=getkey(),
        )


class KeyIgnoringTrainer(ToyTrainer):
    """Breaks determinism in reverse: every key trains the same weights."""

    def fit(self, model, task, *, key, callbacks=(), checkpoint_dir=None):
        return super().fit(model, task, key=jax.random.key(0), callbacks=callbacks)


class LazyTrainer(ToyTrainer):
    """Claims to train but returns the initial weights."""

    def fit(self, model, task, *, key, callbacks=(), checkpoint_dir=None):
        run = super().fit(model, task, key=key, callbacks=callbacks)
        return mechscope.TrainedRun(model=model, history=run.history)


class SilentTrainer(ToyTrainer):
    """Never tells its callbacks anything."""

    def fit(self, model, task, *, key, callbacks=(), checkpoint_dir=None):
        return super().fit(model, task, key=key)


def test_check_trainer_catches_broken_trainers(getkey):
    task, model = toy_setup(getkey())
    config = ToyTrainerConfig(steps=3)
    with pytest.raises(AssertionError, match="different keys gave identical"):
        check_trainer(KeyIgnoringTrainer(config), model, task, key=getkey())
    with pytest.raises(AssertionError, match="does it train"):
        check_trainer(LazyTrainer(config), model, task, key=getkey())
    with pytest.raises(AssertionError, match="on_train_start"):
        check_trainer(SilentTrainer(config), model, task, key=getkey())


class StopAtFirstFailureExecutor(mechscope.AbstractExecutor):
    """Breaks failure isolation: the first raising item ends the whole map."""

    config: mechscope.Config

    def map(self, function, items):
        for index, item in enumerate(items):
            try:
                value = function(item)
            except Exception:  # noqa: BLE001 - the broken behaviour under test
                return
            yield mechscope.Outcome(index, value=value)


class OffByOneExecutor(mechscope.AbstractExecutor):
    """Reports every value under the wrong index."""

    config: mechscope.Config

    def map(self, function, items):
        for index in range(len(items)):
            try:
                yield mechscope.Outcome(index, value=function(items[(index + 1) % len(items)]))
            except Exception as error:  # noqa: BLE001
                yield mechscope.Outcome(index, error=str(error))


def test_check_executor_catches_broken_executors():
    config = ToyProbeConfig()  # any hashable Config
    with pytest.raises(AssertionError, match="one outcome per item"):
        check_executor(StopAtFirstFailureExecutor(config))
    with pytest.raises(AssertionError, match="gave|must be an error|failed"):
        check_executor(OffByOneExecutor(config))


CHEAP_COMPARISON_SETTINGS = {"dsa": {"iters": 200, "rank": 6}}


@pytest.fixture(scope="module")
def tiny_reach_networks(tiny_reach_run):
    """Two tiny reach networks (different initial weights) with their fixed points."""
    task, first = tiny_reach_run
    model_entry = REGISTRY.get("model", "ctrnn")
    other = model_entry.build(
        model_entry.validate({"n_units": 8}),
        n_inputs=task.n_inputs,
        n_outputs=task.n_outputs,
        key=jax.random.key(7),
    )
    second = mechscope.TrainedRun(model=other)
    probe_entry = REGISTRY.get("probe", "fixed_points")
    probe = probe_entry.build(probe_entry.validate(CHEAP_PROBE_SETTINGS["fixed_points"]))
    probes = [
        {"fixed_points": probe.run(trained, task, key=jax.random.key(3))}
        for trained in (first, second)
    ]
    return [(first, task), (second, task)], probes


@pytest.mark.parametrize(
    "entry", REGISTRY.entries("comparison"), ids=ids(REGISTRY.entries("comparison"))
)
def test_registered_comparisons_meet_contract(entry, tiny_reach_networks, getkey):
    runs, probes = tiny_reach_networks
    comparison = entry.build(entry.validate(CHEAP_COMPARISON_SETTINGS.get(entry.name, {})))
    distances = check_comparison(comparison, runs, key=getkey(), probes=probes, atol=1e-4)
    assert any(np.any(v > 0) for v in distances.values()), "two different networks at 0"


class _AsymmetricComparison(mechscope.AbstractComparison):
    config: ToyProbeConfig = eqx.field(static=True)
    metrics = ("gap",)

    def represent(self, trained, task, *, key, conditions, probes):
        return {"mean": np.asarray(conditions.outputs.mean())}

    def distance(self, a, b):
        return {"gap": a["mean"] - b["mean"]}  # signed: not a distance


def test_check_comparison_fails_an_asymmetric_distance(tiny_reach_networks, getkey):
    runs, _ = tiny_reach_networks
    with pytest.raises(AssertionError, match="not symmetric"):
        check_comparison(_AsymmetricComparison(ToyProbeConfig()), runs, key=getkey())


class _GapComparison(mechscope.AbstractComparison):
    config: ToyProbeConfig = eqx.field(static=True)
    metrics = ("gap",)
    pair_batch = 16

    def represent(self, trained, task, *, key, conditions, probes):
        raise NotImplementedError

    def distance(self, a, b):
        return {"gap": jnp.abs(a["value"] - b["value"])}


def test_a_few_pairs_cost_a_few_distances_not_a_whole_pair_batch(monkeypatch):
    """Batches are padded to the next power of two (at most pair_batch), not to pair_batch:
    one pair of an expensive comparison once cost 256 distances."""
    import mechscope.comparison as comparison_module

    shapes = []
    original = comparison_module._pair_distances

    def recording(comparison, stacked, pairs):
        shapes.append(tuple(pairs.shape))
        return original(comparison, stacked, pairs)

    monkeypatch.setattr(comparison_module, "_pair_distances", recording)
    values = np.arange(12.0) ** 2
    representations = [{"value": np.asarray(v)} for v in values]
    comparison = _GapComparison(ToyProbeConfig())
    cases = [(1, [(1, 2)]), (3, [(4, 2)]), (37, [(16, 2), (16, 2), (8, 2)])]
    for n_pairs, expected_shapes in cases:
        shapes.clear()
        pairs = np.array(list(itertools.combinations(range(12), 2))[:n_pairs])
        gaps = comparison.distances(representations, pairs)["gap"]
        assert shapes == expected_shapes
        np.testing.assert_allclose(gaps, np.abs(values[pairs[:, 0]] - values[pairs[:, 1]]))


class DeclaredToyProbe(ToyProbe):
    """Declares the toy probe's two metrics correctly (the positive control)."""

    def metrics(self):
        return (
            mechscope.Metric("mse", "mean squared output error on the condition trials"),
            mechscope.Metric("noise_draw", "a uniform draw from the probe's key", kind="setting"),
        )


class UndeclaredNameProbe(ToyProbe):
    """Reports ``noise_draw`` but declares only ``mse``."""

    def metrics(self):
        return (mechscope.Metric("mse", "mean squared output error on the condition trials"),)


class UnreportedNameProbe(DeclaredToyProbe):
    """Declares a metric that its run never reports."""

    def metrics(self):
        return (*super().metrics(), mechscope.Metric("rmse", "root of mse"))


class BadMeaningProbe(ToyProbe):
    """Declares both names, one with a blank and one with a two-line meaning."""

    def metrics(self):
        return (
            mechscope.Metric("mse", "  "),
            mechscope.Metric("noise_draw", "a draw\nfrom the key"),
        )


def test_check_probe_holds_declared_probes_to_their_declarations(getkey):
    task, model = toy_setup(getkey())
    trained = mechscope.TrainedRun(model=model)
    result = check_probe(DeclaredToyProbe(ToyProbeConfig()), trained, task, key=getkey())
    assert set(result.metrics) == {"mse", "noise_draw"}
    with pytest.raises(AssertionError, match="does not declare: noise_draw"):
        check_probe(UndeclaredNameProbe(ToyProbeConfig()), trained, task, key=getkey())
    with pytest.raises(AssertionError, match="did not report .*: rmse"):
        check_probe(UnreportedNameProbe(ToyProbeConfig()), trained, task, key=getkey())
    with pytest.raises(AssertionError, match="'mse' has an empty meaning"):
        check_probe(BadMeaningProbe(ToyProbeConfig()), trained, task, key=getkey())


def test_every_first_party_probe_declares_its_metrics():
    """First-party probes all declare; config-dependent names follow the config."""
    first_party = [e for e in REGISTRY.entries("probe") if e.distribution == "mechscope"]
    assert {e.name for e in first_party} >= {"jpca", "tuning", "population", "fixed_points"}
    for entry in first_party:
        declared = entry.build(entry.validate({})).metrics()
        assert declared, f"probe '{entry.name}' declares no metrics"
        assert all(m.meaning.strip() for m in declared)

    def names(probe, settings):
        entry = REGISTRY.get("probe", probe)
        return {m.name for m in entry.build(entry.validate(settings)).metrics()}

    assert {"var_plane3", "freq_hz_plane3"} <= names("jpca", {"n_pcs": 6})
    assert "var_plane2" in names("jpca", {"n_pcs": 4})
    assert "var_plane3" not in names("jpca", {"n_pcs": 4})
    robustness = names("robustness", {"input_noise": (0.0, 0.3), "recurrent_noise": (), "kick": ()})
    assert robustness == {
        "clean_r2",
        "auc_input_noise",
        "auc_endpoint_error_input_noise",
        "r2_input_noise_0",
        "r2_input_noise_0.3",
        "endpoint_error_input_noise_0",
        "endpoint_error_input_noise_0.3",
    }
    assert names("generalization", {"tasks": ("target_switch",)}) == {
        "switch_endpoint_error",
        "switch_success_rate",
        "switch_reaction_time",
        "switch_preparation_index",
        "switch_reprepared_fraction",
    }
    settings = {
        (probe, m.name)
        for probe in ("jpca", "fixed_points")
        for m in REGISTRY.get("probe", probe)
        .build(REGISTRY.get("probe", probe).validate({}))
        .metrics()
        if m.kind == "setting"
    }
    assert settings == {("jpca", "soften_norm_used"), ("fixed_points", "n_inputs")}


class NoGoTask(ToyTask):
    """The toy task without any event: nothing to kick at, no preparatory state."""

    def conditions(self):
        trials = super().conditions()
        return mechscope.Trials(
            inputs=trials.inputs,
            targets=trials.targets,
            mask=trials.mask,
            times=trials.times,
            labels=trials.labels,
        )


def test_robustness_reports_its_declared_kick_metrics_as_nan_without_a_go_event(getkey):
    task, model = toy_setup(getkey())
    task = NoGoTask(task.config)
    entry = REGISTRY.get("probe", "robustness")
    probe = entry.build(
        entry.validate(
            {"input_noise": (0.0, 0.1), "recurrent_noise": (), "kick": (0.0, 0.2), "n_repeats": 1}
        )
    )
    result = check_probe(probe, mechscope.TrainedRun(model=model), task, key=getkey())
    kick = {name: value for name, value in result.metrics.items() if "kick" in name}
    assert set(kick) == {m.name for m in probe.metrics() if "kick" in m.name}
    assert len(kick) == 6 and all(np.isnan(value) for value in kick.values())
    assert np.isfinite(result.metrics["r2_input_noise_0.1"])
