"""Tests of the example plugin, written as a third party would: public API + contract checks."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from mechscope_example import OutputError, OutputErrorConfig, PulseMemory, PulseMemoryConfig

import mechscope
from mechscope.errors import ConfigError
from mechscope.testing import check_task


def test_task_contract():
    check_task(PulseMemory(PulseMemoryConfig()), key=jax.random.key(0))


def test_registered_through_entry_point():
    registry = mechscope.get_registry()
    task = registry.get("task", "pulse_memory")
    probe = registry.get("probe", "output_error")
    assert task.distribution == probe.distribution == "mechscope-example"
    assert task.plugin == "example"


def test_pulse_and_target_timing():
    config = PulseMemoryConfig(pulse_start=0.1, pulse_duration=0.05, duration=0.3)
    trials = PulseMemory(config).conditions()
    times = np.asarray(trials.times)
    amplitude = np.asarray(trials.labels["amplitude"])
    inputs = np.asarray(trials.inputs[..., 0])
    targets = np.asarray(trials.targets[..., 0])
    in_pulse = (times > 0.1 - 1e-6) & (times < 0.15 - 1e-6)
    assert in_pulse.sum() == 5
    np.testing.assert_allclose(inputs[:, in_pulse], np.repeat(amplitude[:, None], 5, axis=1))
    np.testing.assert_array_equal(inputs[:, ~in_pulse], 0.0)
    held = times >= 0.15 - 1e-6
    np.testing.assert_allclose(
        targets[:, held], np.broadcast_to(amplitude[:, None], targets[:, held].shape)
    )
    np.testing.assert_array_equal(targets[:, ~held], 0.0)


def test_invalid_config_is_rejected():
    registry = mechscope.get_registry()
    with pytest.raises(ConfigError, match="the pulse must end before the trial does"):
        registry.get("task", "pulse_memory").validate({"pulse_start": 0.9, "duration": 0.5})


def test_probe_scores_against_closed_form():
    """A model whose readout is zero has RMSE = RMS of the targets and R² = −SST'/SST."""
    task = PulseMemory(PulseMemoryConfig())
    registry = mechscope.get_registry()
    entry = registry.get("model", "ctrnn")
    model = entry.build(
        entry.validate({"n_units": 8}), n_inputs=1, n_outputs=1, key=jax.random.key(0)
    )
    zeroed = jax.tree.map(lambda leaf: leaf * 0 if hasattr(leaf, "shape") else leaf, model)
    result = OutputError(OutputErrorConfig(figure=False)).run(
        mechscope.TrainedRun(model=zeroed), task, key=jax.random.key(1)
    )
    targets = np.asarray(task.conditions().targets, dtype=np.float64)
    assert result.metrics["rmse"] == pytest.approx(np.sqrt(np.mean(targets**2)), rel=1e-6)
    expected_r2 = 1 - np.sum(targets**2) / np.sum((targets - targets.mean()) ** 2)
    assert result.metrics["r2"] == pytest.approx(expected_r2, rel=1e-6)


def test_works_in_an_experiment(tmp_path):
    from mechscope.experiment import Experiment

    def experiment(steps):
        return Experiment(
            task="pulse_memory",
            model={"name": "ctrnn", "n_units": 32},
            trainer={"name": "bptt", "steps": steps, "batch_size": 32, "learning_rate": 1e-2},
            probes=["output_error"],
            seed=0,
        )

    untrained = experiment(0).run(store=None, progress=False).metrics()
    trained = experiment(300).run(store=tmp_path, progress=False)
    assert trained.metrics()["output_error.r2"] > 0.8
    assert trained.metrics()["output_error.rmse"] < 0.5 * untrained["output_error.rmse"]
    assert (trained.directory / "probes" / "output_error" / "outputs.png").exists()
