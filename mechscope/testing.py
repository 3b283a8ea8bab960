"""Contract checks for plugin authors.

Call these from your own tests; mechscope's test suite runs them over every registered
component. Each check raises ``AssertionError`` with a message saying which contract broke.

Checks: :func:`check_task`, :func:`check_model`, :func:`check_trainer`, :func:`check_probe`,
:func:`check_executor` and :func:`check_comparison` (plus :func:`check_config_roundtrip`,
which they all run, and :func:`check_metric_declarations`, which :func:`check_probe` runs).

Example:
    >>> from mechscope.testing import check_task
    >>> check_task(MyTask(MyTaskConfig()), key=jax.random.key(0))
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from mechscope.comparison import AbstractComparison, stack_representations
from mechscope.config import Config
from mechscope.executor import AbstractExecutor, Outcome
from mechscope.model import AbstractModel, Noise, Trajectory
from mechscope.plugins import Registry
from mechscope.probe import (
    AbstractProbe,
    Metric,
    ProbeResult,
    accepts,
    accepts_conditions,
    condition_run,
)
from mechscope.task import AbstractTask, Trials
from mechscope.training import AbstractTrainer, Callback, TrainedRun


def check_config_roundtrip(config: Config) -> None:
    """A config survives JSON serialisation unchanged and is hashable."""
    assert isinstance(config, Config), f"{type(config).__name__} must subclass mechscope.Config"
    again = type(config).model_validate_json(config.model_dump_json())
    assert again == config, f"{type(config).__name__} changes through a JSON round-trip"
    try:
        hash(config)
    except TypeError as error:
        raise AssertionError(
            f"{type(config).__name__} is not hashable ({error}); use tuples, not lists"
        ) from None


class _TraceCounter:
    """Wraps a function so each trace (compilation) is counted."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.traces = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.traces += 1  # only runs while tracing, not on cached calls
        return self.function(*args, **kwargs)


def _assert_trees_equal(a: Any, b: Any, what: str) -> None:
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b, f"{what}: structures differ"
    for left, right in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(left), np.asarray(right), err_msg=what)


def check_trials(
    trials: Trials, *, n_inputs: int, n_outputs: int, batch_size: int | None = None
) -> None:
    """Shapes and basic invariants of a Trials batch."""
    batch, n_times = trials.inputs.shape[:2]
    if batch_size is not None:
        assert batch == batch_size, f"batch size {batch} != requested {batch_size}"
    assert trials.inputs.shape == (batch, n_times, n_inputs), (
        f"inputs shape {trials.inputs.shape} != {(batch, n_times, n_inputs)}"
    )
    assert trials.targets.shape == (batch, n_times, n_outputs), (
        f"targets shape {trials.targets.shape} != {(batch, n_times, n_outputs)}"
    )
    assert trials.mask.shape == trials.targets.shape, "mask must have the shape of targets"
    assert trials.times.shape == (n_times,), f"times shape {trials.times.shape} != {(n_times,)}"
    times = np.asarray(trials.times)
    assert np.all(np.diff(times) > 0), "times must increase"
    for name, values in trials.events.items():
        assert jnp.shape(values) == (batch,), f"event '{name}' must have shape [batch]"
    for name, values in trials.labels.items():
        assert jnp.shape(values)[:1] == (batch,), f"label '{name}' needs a leading batch axis"
    for field in ("inputs", "targets", "mask"):
        assert bool(jnp.all(jnp.isfinite(getattr(trials, field)))), f"{field} has NaN/Inf"
    mask = np.asarray(trials.mask)
    assert np.all(mask >= 0), "mask must be non-negative"


def check_task(task: AbstractTask, *, key: PRNGKeyArray, batch_size: int = 4) -> None:
    """The task contract: shapes, determinism in the key, jit without retracing, conditions.

    Args:
        task: the task to check.
        key: a PRNG key.
        batch_size: batch size to sample.
    """
    assert isinstance(task, AbstractTask), "a task must subclass mechscope.AbstractTask"
    check_config_roundtrip(task.config)
    assert task.dt > 0, "dt must be positive"
    counter = _TraceCounter(lambda k: task.sample(batch_size, key=k))
    sample = jax.jit(counter)
    key_a, key_b = jax.random.split(key)
    first = sample(key_a)
    again = sample(key_a)
    other = sample(key_b)
    assert counter.traces == 1, f"sample retraced ({counter.traces} traces for one shape)"
    check_trials(first, n_inputs=task.n_inputs, n_outputs=task.n_outputs, batch_size=batch_size)
    _assert_trees_equal(first, again, "the same key must give the same batch")
    # Eager and jitted execution may differ in the last bit, so compare closely, not exactly.
    eager = task.sample(batch_size, key=key_a)
    for left, right in zip(jax.tree.leaves(eager), jax.tree.leaves(first), strict=True):
        np.testing.assert_allclose(np.asarray(left), np.asarray(right), rtol=1e-4, atol=1e-5)
    assert not all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other), strict=True)
    ), "different keys gave identical batches: is the key used?"
    conditions = task.conditions()
    check_trials(conditions, n_inputs=task.n_inputs, n_outputs=task.n_outputs)
    _assert_trees_equal(conditions, task.conditions(), "conditions() must be deterministic")


def check_model(
    model: AbstractModel, *, key: PRNGKeyArray, n_times: int = 20, dt: float = 0.01
) -> None:
    """The model contract: shapes, jit without retracing, determinism, noise, Jacobian.

    Args:
        model: the model to check.
        key: a PRNG key.
        n_times: length of the random test trial.
        dt: sample interval of the test trial.
    """
    assert isinstance(model, AbstractModel), "a model must subclass mechscope.AbstractModel"
    check_config_roundtrip(model.config)
    input_key, noise_key, state_key, other_key = jax.random.split(key, 4)
    inputs = jax.random.normal(input_key, (n_times, model.n_inputs))
    times = jnp.arange(n_times) * dt
    x0 = model.initial_state()
    assert x0.shape == (model.n_units,), f"initial_state shape {x0.shape} != ({model.n_units},)"

    counter = _TraceCounter(lambda m, u, t, k, noise: m(u, t, key=k, noise=noise))
    forward = eqx.filter_jit(counter)
    quiet = Noise(input=0.0, recurrent=0.0)
    noisy = Noise(input=0.1, recurrent=0.1)
    clean = forward(model, inputs, times, noise_key, quiet)
    assert isinstance(clean, Trajectory), "__call__ must return a mechscope.Trajectory"
    assert clean.states.shape == (n_times, model.n_units), f"states shape {clean.states.shape}"
    assert clean.rates.shape == (n_times, model.n_units), f"rates shape {clean.rates.shape}"
    assert clean.outputs.shape == (n_times, model.n_outputs), f"outputs shape {clean.outputs.shape}"
    assert bool(jnp.all(jnp.isfinite(clean.outputs))), "outputs contain NaN/Inf"
    np.testing.assert_allclose(
        np.asarray(clean.states[0]),
        np.asarray(x0),
        rtol=1e-6,
        atol=1e-6,
        err_msg="states[0] must be the initial state",
    )
    first = forward(model, inputs, times, noise_key, noisy)
    second = forward(model, inputs, times, noise_key, noisy)
    third = forward(model, inputs, times, other_key, Noise(input=0.2, recurrent=0.05))
    assert counter.traces == 1, (
        f"__call__ retraced when only noise levels or keys changed ({counter.traces} traces)"
    )
    _assert_trees_equal(first, second, "the same key must give the same trajectory")
    assert not np.allclose(np.asarray(first.states), np.asarray(clean.states)), (
        "noise had no effect on the states"
    )
    assert not np.allclose(np.asarray(first.states), np.asarray(third.states)), (
        "different keys/noise levels gave identical trajectories"
    )
    np.testing.assert_allclose(
        np.asarray(clean.rates),
        np.asarray(jax.vmap(model.rates)(clean.states)),
        rtol=1e-5,
        atol=1e-6,
        err_msg="rates must equal model.rates(states)",
    )
    np.testing.assert_allclose(
        np.asarray(clean.outputs),
        np.asarray(jax.vmap(model.readout)(clean.rates)),
        rtol=1e-5,
        atol=1e-5,
        err_msg="outputs must equal model.readout(rates)",
    )
    state = jax.random.normal(state_key, (model.n_units,))
    velocity = model.vector_field(0.0, state, inputs[0])
    assert velocity.shape == (model.n_units,), f"vector_field shape {velocity.shape}"
    jacobian = model.jacobian(0.0, state, inputs[0])
    reference = jax.jacfwd(lambda x: model.vector_field(0.0, x, inputs[0]))(state)
    np.testing.assert_allclose(
        np.asarray(jacobian),
        np.asarray(reference),
        rtol=1e-4,
        atol=1e-5,
        err_msg="jacobian must equal jacfwd of vector_field",
    )
    shifted = eqx.filter_jit(lambda m, u, t, x: m(u, t, x0=x))(model, inputs, times, state)
    np.testing.assert_allclose(
        np.asarray(shifted.states[0]),
        np.asarray(state),
        rtol=1e-6,
        atol=1e-6,
        err_msg="x0= must set the first state",
    )


class _RecordingCallback(Callback):
    """Counts the training events a trainer sends."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_train_start(self, *, model: AbstractModel, task: AbstractTask, n_steps: int) -> None:
        self.events.append("start")

    def on_evaluation(self, *, step: int, metrics: Mapping[str, float]) -> None:
        self.events.append("evaluation")

    def on_train_end(self, *, run: TrainedRun) -> None:
        self.events.append("end")


def check_trainer(
    trainer: AbstractTrainer, model: AbstractModel, task: AbstractTask, *, key: PRNGKeyArray
) -> TrainedRun:
    """The trainer contract: it trains, deterministically in the key, with history and events.

    Use a trainer config with very few steps; this trains three times.

    Args:
        trainer: the trainer to check.
        model: an untrained model for `task`.
        task: the task to train on.
        key: a PRNG key.

    Returns:
        The first of the runs, for further checks.
    """
    check_config_roundtrip(trainer.config)
    recorder = _RecordingCallback()
    first = trainer.fit(model, task, key=key, callbacks=[recorder])
    second = trainer.fit(model, task, key=key)
    other = trainer.fit(model, task, key=jax.random.split(key)[1])
    assert isinstance(first, TrainedRun), "fit must return a mechscope.TrainedRun"
    assert first.status in ("completed", "diverged", "stopped"), f"bad status {first.status}"
    assert jax.tree.structure(eqx.filter(first.model, eqx.is_array)) == jax.tree.structure(
        eqx.filter(model, eqx.is_array)
    ), "the trained model must have the structure of the initial model"
    lengths = {name: len(np.asarray(values)) for name, values in first.history.items()}
    assert "step" in lengths, "history must record 'step'"
    assert len(set(lengths.values())) == 1, f"history arrays differ in length: {lengths}"
    events = recorder.events
    assert events[:1] == ["start"] and events[-1:] == ["end"], (
        f"callbacks must get on_train_start first and on_train_end last, got {events}"
    )
    assert events.count("start") == events.count("end") == 1, f"one start and end: {events}"
    weights = [jax.tree.leaves(eqx.filter(m.model, eqx.is_array)) for m in (first, second, other)]
    initial = jax.tree.leaves(eqx.filter(model, eqx.is_array))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(weights[0], initial, strict=True)
    ), "fit did not change any weight: does it train?"
    for left, right in zip(weights[0], weights[1], strict=True):
        np.testing.assert_allclose(
            np.asarray(left),
            np.asarray(right),
            rtol=1e-5,
            atol=1e-6,
            err_msg="the same key must give the same trained weights",
        )
    assert any(
        not np.allclose(np.asarray(a), np.asarray(b))
        for a, b in zip(weights[0], weights[2], strict=True)
    ), "different keys gave identical trained weights: is the key used?"
    return first


def check_probe(
    probe: AbstractProbe,
    trained: TrainedRun,
    task: AbstractTask,
    *,
    key: PRNGKeyArray,
    dependencies: Mapping[str, ProbeResult] | None = None,
    tmp_path: Any = None,
    registry: Registry | None = None,
) -> ProbeResult:
    """The probe contract: named float metrics, deterministic, the same with a shared run, savable.

    A probe whose ``run`` takes ``conditions`` must give the same metrics whether it is handed
    ``condition_run(trained.model, task)`` (as an experiment does) or computes it itself. A
    probe that declares its metrics (``metrics()``) must report exactly the declared names,
    each with a one-line meaning (:func:`check_metric_declarations`).

    Args:
        probe: the probe to check.
        trained: a (possibly briefly) trained run.
        task: the task to probe on.
        key: a PRNG key.
        dependencies: results of the probes named in ``probe.requires``.
        tmp_path: a directory for a save/load round-trip (skipped when None).
        registry: handed to probes whose ``run`` takes ``registry`` (as an experiment does).

    Returns:
        The probe's result, for further checks.
    """
    check_config_roundtrip(probe.config)
    if accepts(probe, "registry"):
        if registry is None:
            raise TypeError(f"{type(probe).__name__}.run takes a registry: pass registry=")
        dependencies = dict(dependencies or {})
        run: Callable[..., ProbeResult] = functools.partial(probe.run, registry=registry)  # pyright: ignore[reportCallIssue]
    else:
        run = probe.run
    result = run(trained, task, key=key, dependencies=dependencies)
    assert isinstance(result, ProbeResult), "run must return a mechscope.ProbeResult"
    assert result.metrics, "a probe must report at least one metric"
    for name, value in result.metrics.items():
        assert isinstance(name, str) and name, "metric names must be non-empty strings"
        assert isinstance(value, float), f"metric '{name}' is not a float"
    check_metric_declarations(probe, result)
    again = run(trained, task, key=key, dependencies=dependencies)
    _assert_same_metrics(result, again, "for the same key")
    if accepts_conditions(probe):
        shared = condition_run(trained.model, task)
        given = run(trained, task, key=key, dependencies=dependencies, conditions=shared)
        _assert_same_metrics(result, given, "when given the shared condition run")
    if tmp_path is not None:
        result.save(tmp_path)
        loaded = ProbeResult.load(tmp_path)
        assert set(loaded.metrics) == set(result.metrics), "metrics lost in save/load"
        assert set(loaded.figure_files) == set(result.figures), "figures lost in save/load"
        for name, array in result.arrays.items():
            np.testing.assert_array_equal(loaded.arrays[name], array, err_msg=name)
    return result


def check_metric_declarations(probe: AbstractProbe, result: ProbeResult) -> None:
    """A probe that declares metrics reports exactly those, each explained in one line.

    Probes that declare nothing (``metrics() == ()``) pass: declaring is optional, and only
    declared probes get their names checked before training and explained in the report.

    Args:
        probe: the configured probe.
        result: what its ``run`` returned.
    """
    declared = probe.metrics()
    assert isinstance(declared, tuple), "metrics() must return a tuple of mechscope.Metric"
    if not declared:
        return
    names = []
    for metric in declared:
        assert isinstance(metric, Metric), f"metrics() holds {metric!r}, not a mechscope.Metric"
        names.append(metric.name)
        assert metric.name and "\n" not in metric.name, "declared metric names must be non-empty"
        meaning = metric.meaning.strip()
        assert meaning, f"metric '{metric.name}' has an empty meaning"
        for field in ("meaning", "unit", "direction"):
            text = getattr(metric, field)
            assert "\n" not in text, f"metric '{metric.name}': {field} must be one line"
        assert metric.kind in ("metric", "setting"), f"metric '{metric.name}': unknown kind"
    repeated = sorted({name for name in names if names.count(name) > 1})
    assert not repeated, f"metrics() declares these names more than once: {', '.join(repeated)}"
    undeclared = sorted(set(result.metrics) - set(names))
    assert not undeclared, (
        f"run reported metrics that metrics() does not declare: {', '.join(undeclared)}"
    )
    missing = sorted(set(names) - set(result.metrics))
    assert not missing, (
        f"metrics() declares metrics that run did not report (report NaN when a value cannot "
        f"be measured): {', '.join(missing)}"
    )


def _assert_same_metrics(expected: ProbeResult, got: ProbeResult, when: str) -> None:
    assert set(got.metrics) == set(expected.metrics), f"metric names change {when}"
    for name, value in expected.metrics.items():
        other = got.metrics[name]
        same = (math.isnan(value) and math.isnan(other)) or math.isclose(
            value, other, rel_tol=1e-5, abs_tol=1e-8
        )
        assert same, f"metric '{name}' differs {when}: {value} vs {other}"


#: The item of :func:`check_executor`'s workload that raises.
FAILING_ITEM = 3


def contract_item(item: int) -> int:
    """The workload of :func:`check_executor`: ``item²``, raising for :data:`FAILING_ITEM`.

    Module-level, so executors that ship work to other processes can pickle it by reference.
    """
    if item == FAILING_ITEM:
        raise ValueError(f"contract item {item} fails on purpose")
    return item * item


def check_executor(executor: AbstractExecutor, *, n_items: int = 6) -> list[Outcome[int]]:
    """The executor contract: one outcome per item, right values, failures isolated.

    Maps :func:`contract_item` over ``range(n_items)``, whose item :data:`FAILING_ITEM`
    raises: every other item must still come back with its own index and value, the failing
    one as an error outcome naming the exception; no items give no outcomes.

    Args:
        executor: the executor to check (it may start workers: a dask cluster, ...).
        n_items: number of items (more than :data:`FAILING_ITEM`).

    Returns:
        The outcomes, sorted by index.
    """
    assert isinstance(executor, AbstractExecutor), (
        "an executor must subclass mechscope.AbstractExecutor"
    )
    assert n_items > FAILING_ITEM, f"n_items must exceed {FAILING_ITEM}"
    check_config_roundtrip(executor.config)
    outcomes = list(executor.map(contract_item, list(range(n_items))))
    for outcome in outcomes:
        assert isinstance(outcome, Outcome), "map must yield mechscope.Outcome objects"
    indices = sorted(outcome.index for outcome in outcomes)
    assert indices == list(range(n_items)), (
        f"map must yield exactly one outcome per item, got indices {indices}"
    )
    for outcome in sorted(outcomes, key=lambda o: o.index):
        if outcome.index == FAILING_ITEM:
            assert not outcome.ok and outcome.value is None, "a raising item must be an error"
            assert "fails on purpose" in str(outcome.error), (
                f"the error must describe the exception, got {outcome.error!r}"
            )
        else:
            assert outcome.ok, f"item {outcome.index} failed: {outcome.error}"
            assert outcome.value == outcome.index**2, (
                f"item {outcome.index} gave {outcome.value!r}, expected {outcome.index**2}"
            )
    assert list(executor.map(contract_item, [])) == [], "no items must give no outcomes"
    return sorted(outcomes, key=lambda o: o.index)


def check_comparison(
    comparison: AbstractComparison,
    runs: Sequence[tuple[TrainedRun, AbstractTask]],
    *,
    key: PRNGKeyArray,
    probes: Sequence[Mapping[str, ProbeResult]] | None = None,
    atol: float = 1e-5,
) -> dict[str, np.ndarray]:
    """The comparison contract, on at least two networks.

    ``represent`` returns named NumPy-compatible arrays of one shape for every network and the
    same arrays for the same key; ``distance`` returns exactly ``comparison.metrics`` as finite
    scalars, is symmetric and ≈ 0 from a network to itself; ``distances`` (batched over pairs)
    agrees with ``distance`` pair by pair.

    Returns:
        The pairwise distances of every pair, metric → ``[pairs]`` (pairs in
        ``itertools.combinations`` order), for further checks.
    """
    check_config_roundtrip(comparison.config)
    assert len(runs) >= 2, "check_comparison needs at least two networks"
    probes = probes or [{} for _ in runs]
    representations = []
    for (trained, task), stored in zip(runs, probes, strict=True):
        conditions = condition_run(trained.model, task)
        needed = {name: stored[name] for name in comparison.requires}
        first = comparison.represent(trained, task, key=key, conditions=conditions, probes=needed)
        again = comparison.represent(trained, task, key=key, conditions=conditions, probes=needed)
        assert first and all(isinstance(name, str) for name in first), "name every array"
        for name in first:
            np.testing.assert_array_equal(
                np.asarray(first[name]), np.asarray(again[name]), err_msg=f"represent: {name}"
            )
        representations.append({name: np.asarray(value) for name, value in first.items()})
    stack_representations(representations)  # one shape for every network, or a clear error
    metrics = tuple(comparison.metrics)
    assert metrics, "a comparison must declare its metrics"
    pairs = np.array(list(itertools.combinations(range(len(runs)), 2)), dtype=np.int32)
    batched = comparison.distances(representations, pairs)
    assert set(batched) == set(metrics), f"distances returned {sorted(batched)}, not {metrics}"
    for row, (i, j) in enumerate(pairs):
        a = {k: jnp.asarray(v) for k, v in representations[i].items()}
        b = {k: jnp.asarray(v) for k, v in representations[j].items()}
        forward, backward = comparison.distance(a, b), comparison.distance(b, a)
        assert set(forward) == set(metrics), f"distance returned {sorted(forward)}, not {metrics}"
        for name in metrics:
            value = float(forward[name])
            assert math.isfinite(value), f"{name} is not finite for pair ({i}, {j})"
            assert abs(value - float(backward[name])) <= atol * max(1.0, abs(value)), (
                f"{name} is not symmetric: {value} vs {float(backward[name])}"
            )
            assert abs(value - float(batched[name][row])) <= atol * max(1.0, abs(value)), (
                f"{name}: batched {float(batched[name][row])} vs one pair {value}"
            )
    for i, representation in enumerate(representations):
        same = {k: jnp.asarray(v) for k, v in representation.items()}
        for name, value in comparison.distance(same, same).items():
            assert abs(float(value)) <= 1e3 * atol, f"{name} from network {i} to itself: {value}"
    return batched
