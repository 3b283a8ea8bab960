"""Tests of the ``bptt`` trainer plugin (mechscope_bptt), on tiny test doubles."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import pytest
from mechscope_bptt import (
    HISTORY_COLUMNS,
    BPTTConfig,
    BPTTTrainer,
    Hyperparameters,
    apply_pieces,
    batch_pieces,
    compile_config,
    init_train_state,
    load_checkpoint,
    loss_terms,
    make_train_step,
    piece_gradient,
    read_header,
    simple_dynamics_penalty,
    step_function,
    train_step,
    weight_matrices,
)

import mechscope

from .toys import ToyRNNConfig, make_toy_rnn

# ---------------------------------------------------------------------------------------------
# Test doubles: a tiny reach task and a tiny Euler CT-RNN, written against the public interface.
# ---------------------------------------------------------------------------------------------


class TinyReachConfig(mechscope.Config):
    """Tiny centre-out reach: point to one of a few targets after a go cue."""

    n_targets: int = 4
    dt: float = 0.02
    duration: float = 0.6
    target_on: float = 0.1
    go: float = 0.3
    reach: float = 0.2


class TinyReach(mechscope.AbstractTask):
    """Inputs: target x, y (from target_on) and a go step; outputs: hand position x, y."""

    config: TinyReachConfig = eqx.field(static=True)

    @property
    def n_inputs(self) -> int:
        return 3

    @property
    def n_outputs(self) -> int:
        return 2

    @property
    def dt(self) -> float:
        return self.config.dt

    def _trials(self, angles):
        c = self.config
        times = jnp.arange(round(c.duration / c.dt)) * c.dt
        xy = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)  # [B, 2]
        shown = (times >= c.target_on).astype(float)[None, :, None]
        go = (times >= c.go).astype(float)[None, :, None]
        inputs = jnp.concatenate(
            [shown * xy[:, None, :], jnp.broadcast_to(go, (xy.shape[0], times.size, 1))], -1
        )
        s = jnp.clip((times - c.go) / c.reach, 0.0, 1.0)
        profile = 10 * s**3 - 15 * s**4 + 6 * s**5  # minimum-jerk displacement
        targets = profile[None, :, None] * xy[:, None, :]
        batch = angles.shape[0]
        return mechscope.Trials(
            inputs=inputs,
            targets=targets,
            mask=jnp.ones_like(targets),
            times=times,
            events={"go": jnp.full((batch,), c.go)},
            labels={"angle": angles},
        )

    def sample(self, batch_size, *, key):
        index = jax.random.randint(key, (batch_size,), 0, self.config.n_targets)
        return self._trials(2 * jnp.pi * index / self.config.n_targets)

    def conditions(self):
        return self._trials(2 * jnp.pi * jnp.arange(self.config.n_targets) / self.config.n_targets)


class _TestDoubles:
    @mechscope.hookimpl
    def mechscope_register_tasks(self, register):
        register("bptt_test_reach", TinyReachConfig, TinyReach)

    @mechscope.hookimpl
    def mechscope_register_models(self, register):
        register("bptt_test_rnn", ToyRNNConfig, make_toy_rnn)


@pytest.fixture
def doubles_registered():
    manager = mechscope.get_plugin_manager()
    manager.register(_TestDoubles(), name="bptt-test-doubles")
    try:
        yield
    finally:
        manager.unregister("bptt-test-doubles")


TASK = TinyReach(TinyReachConfig())
QUIET = {"input_noise": 0.0, "recurrent_noise": 0.0}


def tiny_model(key, **params):
    return make_toy_rnn(ToyRNNConfig(**params), n_inputs=3, n_outputs=2, key=key)


def trainer(**params):
    base = {"batch_size": 16, "learning_rate": 1e-2, "eval_every": 25, "checkpoint_every": None}
    return BPTTTrainer(BPTTConfig(**{**base, **params}))


def leaves(model):
    return jax.tree.leaves(eqx.filter(model, eqx.is_array))


def condition_stats(model):
    conditions = TASK.conditions()
    trajectory = mechscope.simulate(model, conditions.inputs, conditions.times)
    r2 = mechscope.masked_r2(trajectory.outputs, conditions.targets, conditions.mask)
    return float(r2), float(jnp.mean(trajectory.rates**2))


class Recorder(mechscope.Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, *, model, task, n_steps):
        self.events.append(("start", n_steps))

    def on_evaluation(self, *, step, metrics):
        self.events.append(("eval", step, dict(metrics)))

    def on_train_end(self, *, run):
        self.events.append(("end", run.status))


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_config_defaults_follow_science_and_reject_bad_values():
    config = BPTTConfig()
    assert (config.optimizer, config.learning_rate, config.batch_size) == ("adam", 1e-3, 64)
    assert config.clip_norm is not None and config.target_r2 is None
    hash(config)
    with pytest.raises(pydantic.ValidationError, match="optax has no optimiser"):
        BPTTConfig(optimizer="adamm")
    with pytest.raises(pydantic.ValidationError, match="does not accept"):
        BPTTConfig(optimizer_args={"beta1": 0.9})
    with pytest.raises(pydantic.ValidationError, match="does not accept"):
        BPTTConfig(schedule="cosine_decay_schedule")  # decay_steps is required
    with pytest.raises(pydantic.ValidationError, match="at most 1"):
        BPTTConfig(target_r2=1.5)
    with pytest.raises(pydantic.ValidationError):
        BPTTConfig(batch_size=0)


def test_config_tables_become_hashable_and_round_trip_through_json():
    config = BPTTConfig(
        optimizer="adamw",
        optimizer_args={"b1": 0.8, "weight_decay": 1e-4},
        schedule="piecewise_constant_schedule",
        schedule_args={"boundaries_and_scales": {"100": 0.1}},
    )
    hash(config)
    again = BPTTConfig.model_validate(json.loads(config.model_dump_json()))
    assert again == config
    from mechscope_bptt import build_schedule

    schedule = build_schedule(config)
    # learning_rate fills init_value; the table became {100: 0.1}.
    assert float(schedule(50)) == pytest.approx(1e-3)
    assert float(schedule(150)) == pytest.approx(1e-4)
    warmup = BPTTConfig(
        learning_rate=0.1,
        schedule="warmup_cosine_decay_schedule",
        schedule_args={"init_value": 0.0, "warmup_steps": 10, "decay_steps": 100},
    )
    # init_value is given, so learning_rate becomes the peak.
    assert float(build_schedule(warmup)(0)) == 0.0
    assert float(build_schedule(warmup)(10)) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# Loss terms
# ---------------------------------------------------------------------------------------------


def test_weight_matrices_are_the_two_dimensional_arrays(getkey):
    model = tiny_model(getkey())
    found = weight_matrices(model)
    assert sorted(w.shape for w in found) == sorted([(16, 16), (16, 3), (2, 16)])


def test_simple_dynamics_penalty_matches_explicit_jacobian_form(getkey):
    model = tiny_model(getkey(), n_units=6)
    states = jax.random.normal(getkey(), (3, 5, 6))
    expected = np.mean(
        [
            np.mean((np.asarray(model.w_rec) * (1 - np.tanh(np.asarray(x)) ** 2)[None, :]) ** 2)
            for x in states.reshape(-1, 6)
        ]
    )
    penalty = eqx.filter_jit(simple_dynamics_penalty)(model, states)
    assert float(penalty) == pytest.approx(expected, rel=1e-5)


def test_simple_dynamics_needs_recurrent_weights(getkey):
    class NoWeights(eqx.Module):
        def rates(self, x):
            return x

    with pytest.raises(TypeError, match="recurrent_weights"):
        simple_dynamics_penalty(NoWeights(), jnp.zeros((2, 3)))


def test_regulariser_gradients_match_finite_differences(getkey):
    terms = ("rate_penalty", "weight_penalty", "dynamics_penalty")
    with jax.enable_x64(True):
        to64 = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree
        )
        model = to64(tiny_model(getkey(), n_units=8))
        trials = to64(TASK.sample(4, key=getkey()))
        hyper = Hyperparameters(
            learning_rate=1.0,
            rate_reg=0.7,
            weight_reg=0.3,
            simple_dynamics_reg=0.5,
            input_noise=0.0,
            recurrent_noise=0.0,
        )
        params, static = eqx.partition(model, eqx.is_inexact_array)
        key = getkey()

        def values(p):
            found = loss_terms(eqx.combine(p, static), trials, hyper, key=key, simple_dynamics=True)
            return jnp.stack([found[1][term] for term in terms])

        # One compilation serves the gradients and the finite differences.
        both = jax.jit(lambda p: (values(p), jax.jacrev(values)(p)))
        jacobian = both(params)[1]
        eps = 1e-6
        for _ in range(2):
            direction = jax.tree.map(
                lambda x: jax.random.normal(getkey(), x.shape, jnp.float64), params
            )
            plus = both(jax.tree.map(lambda p, d: p + eps * d, params, direction))[0]
            minus = both(jax.tree.map(lambda p, d: p - eps * d, params, direction))[0]
            numeric = np.asarray((plus - minus) / (2 * eps))
            analytic = np.asarray(
                sum(
                    jnp.tensordot(g, d, axes=d.ndim)
                    for g, d in zip(
                        jax.tree.leaves(jacobian), jax.tree.leaves(direction), strict=True
                    )
                )
            )
            assert np.all(np.abs(analytic) > 1e-6)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def test_tiny_network_learns_tiny_reach(getkey):
    recorder = Recorder()
    run = trainer(steps=300, rate_reg=0.0, **QUIET).fit(
        tiny_model(getkey()), TASK, key=getkey(), callbacks=[recorder]
    )
    assert run.status == "completed"
    r2, _ = condition_stats(run.model)
    assert r2 > 0.95
    history = run.history
    assert list(history) == list(HISTORY_COLUMNS)
    assert {len(v) for v in history.values()} == {12}
    np.testing.assert_array_equal(history["step"], np.arange(25, 301, 25))
    assert history["r2"][-1] == pytest.approx(r2, abs=1e-5)
    assert history["mse"][-1] < 0.2 * history["mse"][0]
    np.testing.assert_allclose(history["learning_rate"], 1e-2)
    # Callbacks saw every event, in order, with the history rows.
    assert recorder.events[0] == ("start", 300) and recorder.events[-1] == ("end", "completed")
    evals = [e for e in recorder.events if e[0] == "eval"]
    assert [e[1] for e in evals] == list(history["step"])
    assert evals[-1][2]["r2"] == pytest.approx(history["r2"][-1])


def test_target_r2_stops_early(getkey):
    run = trainer(steps=1000, target_r2=0.8, **QUIET).fit(tiny_model(getkey()), TASK, key=getkey())
    assert run.status == "completed" and "target" in run.reason
    assert run.history["r2"][-1] >= 0.8
    assert np.all(run.history["r2"][:-1] < 0.8)
    assert run.history["step"][-1] < 1000


def test_larger_rate_regularisation_lowers_rates(getkey):
    init, key = tiny_model(getkey()), getkey()
    weak = trainer(steps=300, rate_reg=0.0, **QUIET).fit(init, TASK, key=key)
    strong = trainer(steps=300, rate_reg=1.0, **QUIET).fit(init, TASK, key=key)
    r2_weak, rates_weak = condition_stats(weak.model)
    r2_strong, rates_strong = condition_stats(strong.model)
    assert r2_weak > 0.9 and r2_strong > 0.9
    assert rates_strong < 0.7 * rates_weak
    assert strong.history["rate_penalty"][-1] == pytest.approx(
        strong.history["mean_rate_sq"][-1], rel=1e-5
    )
    assert np.all(weak.history["rate_penalty"] == 0)


def test_schedule_is_followed_and_recorded(getkey):
    run = trainer(
        steps=50,
        eval_every=10,
        schedule="linear_schedule",
        schedule_args={"end_value": 0.0, "transition_steps": 50},
        **QUIET,
    ).fit(tiny_model(getkey()), TASK, key=getkey())
    # The update that produced step k used the rate at count k - 1.
    np.testing.assert_allclose(
        run.history["learning_rate"], 1e-2 * (1 - (run.history["step"] - 1) / 50), rtol=1e-5
    )


def test_training_is_deterministic_in_the_key(getkey):
    init, key = tiny_model(getkey()), getkey()
    first = trainer(steps=20, eval_every=10).fit(init, TASK, key=key)
    second = trainer(steps=20, eval_every=10).fit(init, TASK, key=key)
    other = trainer(steps=20, eval_every=10).fit(init, TASK, key=getkey())
    for a, b in zip(leaves(first.model), leaves(second.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(leaves(first.model), leaves(other.model), strict=True)
    )


# ---------------------------------------------------------------------------------------------
# Checkpoints, divergence, save/load
# ---------------------------------------------------------------------------------------------


def test_resume_equals_uninterrupted_run(getkey, tmp_path):
    init, key = tiny_model(getkey()), getkey()
    full = trainer(steps=60, eval_every=10).fit(init, TASK, key=key)
    # An "interrupted" run: the same settings, but only 30 of the 60 steps.
    directory = tmp_path / "ckpt"
    first = trainer(steps=30, eval_every=10, checkpoint_every=20).fit(
        init, TASK, key=key, checkpoint_dir=directory
    )
    assert read_header(directory)["step"] == 30
    assert len(list(directory.glob("state-*.eqx"))) == 1
    resumed = trainer(steps=60, eval_every=10, checkpoint_every=20).fit(
        init, TASK, key=key, checkpoint_dir=directory
    )
    assert resumed.metadata["resumed_from_step"] == 30
    assert first.status == resumed.status == "completed"
    for a, b in zip(leaves(full.model), leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in HISTORY_COLUMNS:
        np.testing.assert_array_equal(full.history[name], resumed.history[name])
    # A finished checkpoint is not trained again.
    again = trainer(steps=60, eval_every=10, checkpoint_every=20).fit(
        init, TASK, key=key, checkpoint_dir=directory
    )
    assert again.metadata["loop_iterations"] == 0
    for a, b in zip(leaves(full.model), leaves(again.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_a_different_setup(getkey, tmp_path):
    init, key = tiny_model(getkey()), getkey()
    trainer(steps=10, eval_every=5).fit(init, TASK, key=key, checkpoint_dir=tmp_path)
    with pytest.raises(mechscope.ConfigError, match="learning_rate"):
        trainer(steps=20, learning_rate=0.5).fit(init, TASK, key=key, checkpoint_dir=tmp_path)
    with pytest.raises(mechscope.ConfigError, match="different key"):
        trainer(steps=20, eval_every=5).fit(init, TASK, key=getkey(), checkpoint_dir=tmp_path)


def test_absurd_learning_rate_diverges_and_keeps_its_checkpoint(getkey, tmp_path):
    init, key = tiny_model(getkey()), getkey()
    # Adam moves every weight by about the learning rate per step: 1e25 overflows float32
    # outputs within a step or two.
    config = {"steps": 200, "learning_rate": 1e25, "eval_every": 1, "checkpoint_every": 1}
    t = trainer(**config)
    run = t.fit(init, TASK, key=key, checkpoint_dir=tmp_path)
    assert run.status == "diverged"
    assert "NaN or Inf" in run.reason
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves(run.model))
    header = read_header(tmp_path)
    assert header["step"] == run.metadata["steps"] >= 1
    assert f"at step {header['step'] + 1}" in run.reason
    state, _ = load_checkpoint(tmp_path, init_train_state(t.config, init, key=key))
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves(state.model))
    for a, b in zip(leaves(state.model), leaves(run.model), strict=True):
        np.testing.assert_array_equal(a, b)
    # Every recorded step was accepted, so its loss and gradient are finite (R² of a wildly
    # wrong but finite model may be -inf).
    assert np.all(np.isfinite(run.history["loss"]))
    assert np.all(np.isfinite(run.history["grad_norm"]))
    assert len(run.history["step"]) == header["step"]


def test_save_load_gives_identical_outputs(getkey, tmp_path, doubles_registered):
    run = trainer(steps=20, eval_every=10).fit(tiny_model(getkey()), TASK, key=getkey())
    registry = mechscope.get_registry()
    run.save(tmp_path / "run", registry=registry)
    loaded = mechscope.TrainedRun.load(tmp_path / "run", registry=registry)
    conditions = TASK.conditions()
    before = mechscope.simulate(run.model, conditions.inputs, conditions.times)
    after = mechscope.simulate(loaded.model, conditions.inputs, conditions.times)
    np.testing.assert_array_equal(before.outputs, after.outputs)
    assert loaded.status == run.status and loaded.model_name == "bptt_test_rnn"
    for name in HISTORY_COLUMNS:
        np.testing.assert_array_equal(loaded.history[name], run.history[name])


# ---------------------------------------------------------------------------------------------
# Several seeds together
# ---------------------------------------------------------------------------------------------


def test_vmapped_seeds_equal_separate_runs(getkey, tmp_path):
    models = [tiny_model(getkey()) for _ in range(2)]
    keys = [getkey() for _ in range(2)]
    t = trainer(steps=80, eval_every=20, checkpoint_every=40)
    together = t.fit_many(
        models, TASK, keys=keys, checkpoint_dirs=[tmp_path / str(i) for i in range(2)]
    )
    assert together[0].metadata["parallel_seeds"] == 2
    for model, key, run in zip(models, keys, together, strict=True):
        alone = t.fit(model, TASK, key=key)
        assert alone.metadata["parallel_seeds"] == 1
        for a, b in zip(leaves(alone.model), leaves(run.model), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(alone.history["loss"], run.history["loss"], rtol=1e-3)
    for i in range(2):
        assert read_header(tmp_path / str(i))["step"] == 80
    # Resuming vmapped training from step-40 checkpoints gives the uninterrupted weights.
    partial = [tmp_path / f"partial{i}" for i in range(2)]
    trainer(steps=40, eval_every=20, checkpoint_every=40).fit_many(
        models, TASK, keys=keys, checkpoint_dirs=partial
    )
    resumed = t.fit_many(models, TASK, keys=keys, checkpoint_dirs=partial)
    for run, again in zip(together, resumed, strict=True):
        assert again.metadata["resumed_from_step"] == 40
        for a, b in zip(leaves(run.model), leaves(again.model), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(run.history["loss"], again.history["loss"])


def test_vmapped_seeds_stop_and_diverge_independently(getkey):
    healthy = tiny_model(getkey())
    # Outputs of ~1e20 overflow the float32 loss at once.
    doomed = eqx.tree_at(lambda m: m.w_out, healthy, healthy.w_out * 1e20)
    keys = [getkey(), getkey()]
    t = trainer(steps=200, eval_every=10, target_r2=0.5, **QUIET)
    good, bad = t.fit_many([healthy, doomed], TASK, keys=keys)
    assert bad.status == "diverged" and "at step 1;" in bad.reason
    assert len(bad.history["step"]) == 0
    for a, b in zip(leaves(doomed), leaves(bad.model), strict=True):
        np.testing.assert_array_equal(a, b)
    alone = t.fit(healthy, TASK, key=keys[0])
    assert good.status == alone.status == "completed" and "target" in good.reason
    assert good.reason == alone.reason
    np.testing.assert_array_equal(alone.history["step"], good.history["step"])
    assert 10 <= good.history["step"][-1] < 200
    for a, b in zip(leaves(alone.model), leaves(good.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_check_trainer_contract(getkey):
    testing = pytest.importorskip("mechscope.testing")
    if not hasattr(testing, "check_trainer"):
        pytest.skip("mechscope.testing.check_trainer is not written yet")
    testing.check_trainer(trainer(steps=5, eval_every=5), tiny_model(getkey()), TASK, key=getkey())


def test_make_train_step_is_the_step_fit_uses(getkey):
    config = BPTTConfig(batch_size=16, learning_rate=1e-2, steps=3, eval_every=3)
    init, key = tiny_model(getkey()), getkey()
    step = make_train_step(config, TASK)
    state = init_train_state(config, init, key=key)
    for _ in range(3):
        state = step(state)
    run = BPTTTrainer(config).fit(init, TASK, key=key)
    assert int(state.step) == 3
    for a, b in zip(leaves(state.model), leaves(run.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_real_ctrnn_learns_short_delayed_reach(getkey):
    registry = mechscope.get_registry()
    if "ctrnn" not in registry.names("model") or "delayed_reach" not in registry.names("task"):
        pytest.skip("ctrnn / delayed_reach plugins are not registered")
    task_entry, model_entry = registry.get("task", "delayed_reach"), registry.get("model", "ctrnn")
    task = task_entry.build(
        task_entry.validate(
            {
                "dt": 0.02,
                "n_targets": 4,
                "delays": (0.2,),
                "condition_delays": (0.2,),
                "fixation_duration": 0.1,
                "reach_duration": 0.3,
                "hold_duration": 0.1,
                "velocity": "peak_normalized",
            }
        )
    )
    model = model_entry.build(
        model_entry.validate({"n_units": 32}),
        n_inputs=task.n_inputs,
        n_outputs=task.n_outputs,
        key=getkey(),
    )
    # Default training noise and penalties; stop at a modest R².
    run = trainer(steps=400, eval_every=50, target_r2=0.8).fit(model, task, key=getkey())
    assert run.status == "completed" and "target" in run.reason
    conditions = task.conditions()
    outputs = mechscope.simulate(run.model, conditions.inputs, conditions.times).outputs
    r2 = float(mechscope.masked_r2(outputs, conditions.targets, conditions.mask))
    assert r2 >= 0.8 and r2 == pytest.approx(run.history["r2"][-1], abs=1e-5)


def test_docs_page_describes_every_config_field():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "trainers" / "bptt.md").read_text()
    missing = [name for name in BPTTConfig.model_fields if f"`{name}`" not in page]
    assert not missing, f"docs/trainers/bptt.md does not describe: {missing}"
    missing = [name for name in HISTORY_COLUMNS if f"`{name}`" not in page]
    assert not missing, f"docs/trainers/bptt.md does not describe history keys: {missing}"


# ---------------------------------------------------------------------------------------------
# A batch differentiated in pieces (one per core): the pieces add up to the batch.
# ---------------------------------------------------------------------------------------------

NOISY_PENALISED = {
    "batch_size": 20,
    "input_noise": 0.1,
    "recurrent_noise": 0.05,
    "rate_reg": 0.3,
    "weight_reg": 0.2,
    "simple_dynamics_reg": 0.5,
}


def _record_concurrent_calls(monkeypatch) -> list[int]:
    """How many calls each ``mechscope.run_concurrently`` got (it still runs them)."""
    counts: list[int] = []
    run_concurrently = mechscope.run_concurrently

    def recording(calls, **kwargs):
        counts.append(len(calls))
        return run_concurrently(calls, **kwargs)

    monkeypatch.setattr(mechscope, "run_concurrently", recording)
    return counts


def test_pieces_of_a_batch_add_up_to_its_loss_terms_and_gradient(getkey):
    # Pieces of two sizes, with noise (each trial must keep its key) and every penalty (the MSE's
    # normaliser, the means' shares and the weight penalty counted once), against the loss of
    # the whole batch differentiated directly, in float64.
    with jax.enable_x64(True):
        model = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a,
            tiny_model(getkey()),
        )
        config = BPTTConfig(**NOISY_PENALISED)
        hyper = Hyperparameters.from_config(config)
        state = init_train_state(config, model, key=getkey())
        static = compile_config(config)
        pieces = [
            piece_gradient(state, TASK, hyper, static, jnp.asarray(start), size)
            for start, size in ((0, 8), (8, 12))
        ]
        key = jax.random.fold_in(state.base_key(), state.step)
        trial_key, noise_key = jax.random.split(key)
        trials = TASK.sample(20, key=trial_key)
        params, rest = eqx.partition(model, eqx.is_inexact_array)

        def whole(params):
            return loss_terms(
                eqx.combine(params, rest), trials, hyper, key=noise_key, simple_dynamics=True
            )

        (_, terms), grads = jax.value_and_grad(whole, has_aux=True)(params)
    for name in ("loss", "mse", "rate_penalty", "weight_penalty", "dynamics_penalty"):
        total = sum(float(p.terms[name]) for p in pieces)
        np.testing.assert_allclose(total, float(terms[name]), rtol=1e-12)
    assert float(pieces[1].terms["weight_penalty"]) == 0.0 < float(terms["weight_penalty"])
    # Summed in NumPy: outside the x64 block JAX would round them to float32.
    summed = jax.tree.map(
        lambda *parts: sum(np.asarray(q) for q in parts), *(p.grads for p in pieces)
    )
    for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    outputs = jnp.concatenate([p.outputs for p in pieces])
    assert outputs.shape == trials.targets.shape
    # The update from the pieces is the fused step's, R² of the whole batch included.
    with jax.enable_x64(True):
        fused = train_step(state, TASK, hyper, static)
        stepped = apply_pieces(state, TASK, hyper, static, pieces)
    for a, b in zip(leaves(fused), leaves(stepped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stepped.sums["train_r2"], float(terms["train_r2"]), rtol=1e-12)


def test_batch_pieces_depend_on_the_batch_only_and_cover_it(monkeypatch):
    for cores in (1, 3, 16):  # the same pieces, hence the same numbers, on any CPU machine
        monkeypatch.setattr(mechscope, "usable_cores", lambda cores=cores: cores)
        assert batch_pieces(64) == [(0, 32), (32, 64)]
        assert batch_pieces(100) == [(0, 33), (33, 67), (67, 100)]
        assert batch_pieces(31) == [(0, 31)]
        assert batch_pieces(16) == [(0, 16)]


def test_compiled_configs_keep_only_whether_there_is_noise():
    def compiled(**noise):
        return compile_config(BPTTConfig(**noise))

    quiet = compiled(input_noise=0.0, recurrent_noise=0.0)
    assert (quiet.input_noise, quiet.recurrent_noise) == (0.0, 0.0)
    some = [
        compiled(input_noise=0.1, recurrent_noise=0.0),
        compiled(input_noise=0.0, recurrent_noise=0.05),
        compiled(input_noise=0.3, recurrent_noise=0.2),
    ]
    assert some[0] == some[1] == some[2] != quiet  # one noisy program for every level


def test_a_step_in_pieces_runs_them_on_the_cores_and_matches_the_fused_step(getkey, monkeypatch):
    config = BPTTConfig(**{**NOISY_PENALISED, "batch_size": 64})
    hyper = Hyperparameters.from_config(config)
    static = compile_config(config)
    state = init_train_state(config, tiny_model(getkey()), key=getkey())
    threads = _record_concurrent_calls(monkeypatch)
    step = step_function(TASK, hyper, static)
    in_pieces, fused = state, state
    for _ in range(5):
        in_pieces, fused = step(in_pieces), train_step(fused, TASK, hyper, static)
    assert threads == [2] * 5
    assert int(in_pieces.step) == 5
    for a, b in zip(leaves(in_pieces.model), leaves(fused.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # A step whose program calls LAPACK (two at once deadlock XLA's CPU runtime) runs fused,
    # holding the process's LAPACK lock.
    threads.clear()
    held = []

    class RecordingLock:
        def __enter__(self):
            held.append(True)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(mechscope, "calls_lapack", lambda *args: True)
    monkeypatch.setattr(mechscope, "LAPACK_LOCK", RecordingLock())
    lapack_step = step_function(TASK, hyper, static)
    lapack_step(lapack_step(state))
    assert threads == [] and held == [True, True]


def test_seeds_trained_together_in_pieces_equal_separate_runs(getkey, monkeypatch):
    models = [tiny_model(getkey()) for _ in range(2)]
    keys = [getkey() for _ in range(2)]
    t = trainer(steps=30, eval_every=10, batch_size=64)
    assert len(batch_pieces(64)) == 2
    ran = _record_concurrent_calls(monkeypatch)
    together = t.fit_many(models, TASK, keys=keys)
    assert ran == [2] * 30  # every step in two pieces
    assert together[0].metadata["parallel_seeds"] == 2
    for model, key, run in zip(models, keys, together, strict=True):
        alone = t.fit(model, TASK, key=key)
        for a, b in zip(leaves(alone.model), leaves(run.model), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(alone.history["loss"], run.history["loss"], rtol=1e-3)


def test_simulate_with_the_trials_own_keys_matches_the_batch_split(getkey):
    model = tiny_model(getkey())
    trials = TASK.sample(6, key=getkey())
    noise = mechscope.Noise(input=jnp.asarray(0.2), recurrent=jnp.asarray(0.1))
    key = getkey()
    whole = mechscope.simulate(model, trials.inputs, trials.times, key=key, noise=noise)
    keys = jax.random.split(key, 6)
    part = mechscope.simulate(model, trials.inputs[2:5], trials.times, keys=keys[2:5], noise=noise)
    np.testing.assert_allclose(part.states, whole.states[2:5], rtol=1e-6, atol=1e-7)
    other = mechscope.simulate(model, trials.inputs[2:5], trials.times, keys=keys[:3], noise=noise)
    assert not np.allclose(other.states, whole.states[2:5])  # the keys do matter
    with pytest.raises(ValueError, match="not both"):
        mechscope.simulate(model, trials.inputs, trials.times, key=key, keys=keys, noise=noise)
    with pytest.raises(ValueError, match="3 keys for 6 trials"):
        mechscope.simulate(model, trials.inputs, trials.times, keys=keys[:3], noise=noise)
