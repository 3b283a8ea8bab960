"""The memory estimate: sizes read from configs, refusals before anything is built."""

from __future__ import annotations

import time

import pytest

import mechscope
import mechscope.resources
from mechscope.errors import ConfigError
from mechscope.experiment import Experiment
from mechscope.resources import (
    RunShape,
    available_memory,
    check_memory,
    estimate_memory,
)
from mechscope.suite import Suite

from .toys import ToyModelConfig, ToyTaskConfig, ToyTrainerConfig

GIB = 2.0**30


def test_available_memory_is_a_plausible_number():
    available = available_memory()
    assert available is not None  # Linux CI: /proc/meminfo is there
    assert 2**20 < available < 2**50


def test_default_estimate_follows_the_dominant_terms():
    task, trainer = ToyTaskConfig(n_times=10), ToyTrainerConfig(batch_size=4)
    small = estimate_memory(task=task, model=ToyModelConfig(n_units=100), trainer=trainer)
    wide = estimate_memory(task=task, model=ToyModelConfig(n_units=200), trainer=trainer)
    # Parameters grow as N², activations as batch × time × N: both terms are counted.
    n = 100
    expected_training = 4 * (8 * 4 * 10 * n + 6 * (n * n + 16 * n))
    assert small.terms["trainer"] == expected_training
    assert small.terms["model"] == 4 * (n * n + 16 * n)
    assert 2 < wide.terms["model"] / small.terms["model"] < 4.1
    longer = estimate_memory(
        task=ToyTaskConfig(n_times=1000), model=ToyModelConfig(n_units=100), trainer=trainer
    )
    assert longer.terms["trainer"] > 10 * small.terms["trainer"]
    together = estimate_memory(
        task=task, model=ToyModelConfig(n_units=100), trainer=trainer, n_networks=3
    )
    assert together.terms["trainer"] == 3 * small.terms["trainer"]


class _Declared(mechscope.Config):
    """A config that says what it needs."""

    def peak_memory_bytes(self, shape: RunShape) -> float:
        return 1000.0 * (shape.n_units or 0)


def test_a_component_may_give_its_own_estimate():
    estimate = estimate_memory(
        task=ToyTaskConfig(),
        model=ToyModelConfig(n_units=10),
        trainer=_Declared(),
        probes={"p": _Declared(), "q": ToyTrainerConfig()},
    )
    assert estimate.terms["trainer"] == 10_000.0
    assert estimate.terms["probe p"] == 10_000.0
    assert estimate.terms["probe q"] == 0.0  # a probe without an estimate needs little
    # Training and probing run one after the other: the peak is the larger, plus the model.
    assert estimate.peak_bytes == estimate.terms["model"] + 10_000.0


def test_bptt_counts_joint_seeds_only_when_it_trains_them_together():
    registry = mechscope.get_registry()
    task = registry.get("task", "delayed_reach").validate({})
    model = registry.get("model", "ctrnn").validate({"n_units": 64})
    joint = registry.get("trainer", "bptt").validate({})
    alone = registry.get("trainer", "bptt").validate({"parallel_seeds": False})

    def training(trainer, n):
        return estimate_memory(task=task, model=model, trainer=trainer, n_networks=n).terms[
            "trainer"
        ]

    assert training(joint, 4) == 4 * training(joint, 1)
    assert training(alone, 4) == training(alone, 1)


def test_check_refuses_with_one_line_naming_sizes():
    kwargs = {
        "task": ToyTaskConfig(n_times=10),
        "model": ToyModelConfig(n_units=1000),
        "trainer": ToyTrainerConfig(),
    }
    estimate = check_memory(**kwargs, available=64 * GIB)
    with pytest.raises(ConfigError) as caught:
        check_memory(**kwargs, available=estimate.peak_bytes / 2, where="variant [x]")
    message = str(caught.value)
    assert message.startswith("variant [x] needs ≈ ")
    assert "GiB available" in message and "n_units = 1000" in message
    assert "\n" not in message


def test_huge_network_is_refused_fast_without_building_anything(monkeypatch):
    built = []
    monkeypatch.setattr(Experiment, "build_model", lambda *a, **k: built.append(1))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="needs ≈ .* of memory"):
        Experiment(task="delayed_reach", model={"name": "ctrnn", "n_units": 10**9})
    assert time.perf_counter() - started < 1.0
    assert built == []


def test_quickstart_fits_and_joint_seeds_are_checked(monkeypatch):
    suite = Suite.from_toml("suites/quickstart.toml")  # a normal config passes
    assert len(suite.runs) == 4
    one = suite.runs[0].experiment
    alone = one.check_memory().peak_bytes
    together = one.check_memory(n_networks=2).peak_bytes
    assert together > alone
    # Where the seeds of a variant fit alone but not together, the suite is refused.
    monkeypatch.setattr(mechscope.resources, "available_memory", lambda: (alone + together) / 2)
    with pytest.raises(ConfigError, match=r"variant \[model.activation=tanh\] \(2 seeds"):
        Suite.from_toml("suites/quickstart.toml")
