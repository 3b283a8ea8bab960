"""Tests of the robustness probe."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from mechscope_dynamics import RobustnessConfig, RobustnessProbe, area_under_curve

import mechscope

from .toys import toy_rnn


class RampConfig(mechscope.Config):
    """Two conditions; output = low-passed input; go at 0.5 s."""


class Ramp(mechscope.AbstractTask):
    config: RampConfig = eqx.field(static=True)

    @property
    def n_inputs(self):
        return 2

    @property
    def n_outputs(self):
        return 2

    @property
    def dt(self):
        return 0.01

    def conditions(self):
        times = jnp.arange(100) * 0.01
        levels = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
        inputs = jnp.broadcast_to(levels[:, None, :], (2, 100, 2))
        model = _model()
        targets = mechscope.simulate(model, inputs, times).outputs
        return mechscope.Trials(
            inputs=inputs,
            targets=targets,
            mask=jnp.ones_like(targets),
            times=times,
            events={"go": jnp.full(2, 0.5)},
            labels={"condition": jnp.arange(2)},
        )

    def sample(self, batch_size, *, key):
        return self.conditions()


def _model():
    """A linear leaky integrator (no recurrence), tau = 50 ms."""
    return toy_rnn(jnp.zeros((3, 3)), jnp.eye(3, 2), jnp.eye(2, 3), tau=0.05, activation="linear")


def _run(config, key):
    return RobustnessProbe(config).run(
        mechscope.TrainedRun(model=_model()), Ramp(RampConfig()), key=key
    )


def test_zero_noise_reproduces_clean_run(getkey):
    result = _run(RobustnessConfig(n_repeats=2), getkey())
    # The target is the clean output, so the clean run and every zero level have R² = 1.
    assert result.metrics["clean_r2"] == pytest.approx(1.0, abs=1e-6)
    for kind in ("input_noise", "recurrent_noise", "kick"):
        assert result.metrics[f"r2_{kind}_0"] == pytest.approx(1.0, abs=1e-6)
        assert result.metrics[f"endpoint_error_{kind}_0"] == pytest.approx(0.0, abs=1e-5)
        curve = result.arrays[f"r2_{kind}"]
        assert curve[-1] < curve[0] - 1e-3, f"{kind}: the largest level must hurt"
        assert 0 < result.metrics[f"auc_{kind}"] < 1


def test_same_key_same_curve_other_key_differs(getkey):
    config = RobustnessConfig(n_repeats=2, kick_direction="pc1")
    key = getkey()
    first, again = _run(config, key), _run(config, key)
    other = _run(config, getkey())
    for kind in ("input_noise", "recurrent_noise", "kick"):
        np.testing.assert_array_equal(first.arrays[f"r2_{kind}"], again.arrays[f"r2_{kind}"])
    assert not np.allclose(first.arrays["r2_input_noise"][1:], other.arrays["r2_input_noise"][1:])


def test_kick_size_is_in_trajectory_units(getkey):
    # A kick decays with tau = 0.05 s; its effect on R² grows with its size.
    result = _run(
        RobustnessConfig(input_noise=(), recurrent_noise=(), kick=(0.0, 0.5, 1.0)), getkey()
    )
    curve = result.arrays["r2_kick"]
    assert curve[0] > curve[1] > curve[2]
    assert "auc_input_noise" not in result.metrics


def test_area_under_curve_matches_trapezoid():
    levels = np.array([0.0, 0.1, 0.3])
    values = np.array([1.0, 0.8, 0.2])
    expected = (0.1 * 0.9 + 0.2 * 0.5) / 0.3
    assert area_under_curve(levels, values) == pytest.approx(expected)


def test_config_validation():
    with pytest.raises(ValueError, match="increasing"):
        RobustnessConfig(input_noise=(0.2, 0.1))
    with pytest.raises(ValueError, match="kick_direction"):
        RobustnessConfig(kick_direction="up")
