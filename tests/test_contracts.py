"""Contract checks over every registered component, and proof that the checks can fail."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import mechscope
from mechscope.testing import check_model, check_probe, check_task, check_trainer

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
    }[entry.kind]
    if entry.kind != "model":
        assert isinstance(entry.build(config), interface)


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
