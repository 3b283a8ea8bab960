"""Tests of the generalization probe with an oracle and a switch-ignoring model."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mechscope_dynamics import GeneralizationConfig, GeneralizationProbe, matching_task

import mechscope

REACH = {"condition_delays": (0.4,), "n_targets": 4}


class LookupConfig(mechscope.Config):
    """A test double."""

    ignore_switch: bool = False


class Lookup(mechscope.AbstractModel):
    """Outputs the target trajectory of the stored trial whose inputs match.

    The oracle matches the whole input; the switch-ignoring double matches only the first
    target shown, i.e. it reaches to where the target first appeared. Its state is the target
    it is heading for (so the preparatory state of target j is target j).
    """

    config: LookupConfig = eqx.field(static=True)
    table_inputs: jax.Array
    table_targets: jax.Array
    table_first: jax.Array
    table_final: jax.Array

    @property
    def n_inputs(self):
        return 3

    @property
    def n_outputs(self):
        return 4

    @property
    def n_units(self):
        return 2

    def vector_field(self, t, x, u):
        return -x

    def rates(self, x):
        return x

    def readout(self, r):
        return jnp.concatenate([r, r])

    def initial_state(self):
        return jnp.zeros(2)

    def __call__(self, inputs, times, *, key=None, noise=None, x0=None):
        shown = jnp.linalg.norm(inputs[:, :2], axis=1) > 0
        first = inputs[jnp.argmax(shown), :2]
        if self.config.ignore_switch:
            row = jnp.argmin(
                jnp.sum((self.table_first - first) ** 2, axis=1)
                + 1e3 * jnp.sum((self.table_final - self.table_first) ** 2, axis=1)
            )
            # Heads for the first target the whole time.
            heading = jnp.where(shown[:, None], first, 0.0)
        else:
            row = jnp.argmin(jnp.sum((self.table_inputs - inputs) ** 2, axis=(1, 2)))
            heading = inputs[:, :2]
        return mechscope.Trajectory(
            times=times, states=heading, rates=heading, outputs=self.table_targets[row]
        )


def _model(ignore_switch):
    registry = mechscope.get_registry()
    base = registry.get("task", "delayed_reach")
    reach = base.build(base.validate(REACH))
    tables = [reach.conditions()] + [
        matching_task(reach, name, registry=registry).conditions()
        for name in ("target_switch", "target_relocation")
    ]
    inputs = jnp.concatenate([t.inputs for t in tables])
    targets = jnp.concatenate([t.targets for t in tables])
    first = jnp.concatenate(
        [
            jnp.where(
                jnp.isfinite(t.labels["switched_from"]),
                t.labels["switched_from"],
                t.labels["target"],
            )
            for t in tables
        ]
    )
    final = jnp.concatenate([t.labels["target"] for t in tables])
    model = Lookup(LookupConfig(ignore_switch=ignore_switch), inputs, targets, first, final)
    return model, reach


@pytest.fixture(scope="module")
def results():
    probe = GeneralizationProbe(GeneralizationConfig())
    out = {}
    for ignore in (False, True):
        model, reach = _model(ignore)
        out[ignore] = probe.run(
            mechscope.TrainedRun(model=model),
            reach,
            key=jax.random.key(0),
            registry=mechscope.get_registry(),
        )
    return out


def test_oracle_is_perfect(results):
    metrics = results[False].metrics
    for tag in ("switch", "relocation"):
        assert metrics[f"{tag}_endpoint_error"] == pytest.approx(0.0, abs=1e-5)
        assert metrics[f"{tag}_success_rate"] == 1.0
    # Reaction time: the synthetic reach crosses 20 % of peak speed shortly after the
    # 0.15 s reaction time of the task.
    assert 0.15 <= metrics["switch_reaction_time"] <= 0.3
    assert metrics["switch_preparation_index"] == pytest.approx(1.0)
    assert metrics["switch_reprepared_fraction"] == 1.0


def test_switch_ignoring_model_is_poor(results):
    metrics = results[True].metrics
    assert metrics["switch_success_rate"] == 0.0
    # Reaching to the first of 4 targets on the unit circle misses by at least √2.
    assert metrics["switch_endpoint_error"] >= np.sqrt(2) - 1e-4
    assert metrics["switch_preparation_index"] == pytest.approx(-1.0)
    assert metrics["switch_reprepared_fraction"] == 0.0
    assert metrics["relocation_success_rate"] < 1.0


def test_matching_task_copies_geometry():
    registry = mechscope.get_registry()
    base = registry.get("task", "delayed_reach")
    reach = base.build(base.validate({**REACH, "radius": 2.0}))
    switch = matching_task(reach, "target_switch", {"switch_epoch": "after_go"}, registry=registry)
    assert switch.config.radius == 2.0 and switch.config.n_targets == 4
    assert switch.config.switch_epoch == "after_go"
