"""Benchmark of the fixed_points solver: time, recall and precision on two trained networks.

Networks (N = 100 tanh ctrnn on delayed_reach, trained with bptt): "regularised" (gain 1.5,
rate_reg 1e-2, weight_reg 1e-4) and "chaotic" (gain 4, no rate or weight regularisation). They
and their references are stored in ``benchmarks/data/fixed_points/`` (300 kB, committed, so
every machine benchmarks the same networks against the same references; delete a file to
rebuild it: about 15 minutes). Starts: 1,024 trajectory states plus N(0, 0.5²).
Inputs: the 8 targets' delay inputs and the zero input.

Reference (untimed, cached): every start is solved in float64 with dense damped Newton (60
iterations) and dense Levenberg–Marquardt (200 iterations); the union of converged zeros
(‖f‖ ≤ 1e-7 × typical speed), made unique, is the set of zeros an exhaustive search from
these starts finds. The benchmark also prints how many of them each method's paths reach and
how many are reached from a single start (what makes a zero hard to find). With
``--other-starts`` it builds the same reference from 1,024 other starts drawn the same way and
prints how many of the reference's zeros that finds: how much of the reference belongs to the
network rather than to the particular starts. With ``--branches`` it follows every reference
zero of a target input along its branch of zeros as the input turns around the circle of
target inputs (pseudo-arclength continuation, float64) and prints how many distinct zeros of
the 8 target inputs those branches carry: how large the set is that the reference samples.

Reported per network and search (``--search``, the probe's ``search.kind``: "lm" by default;
"golub" = FixedPointFinder compatibility, skipped with ``--no-golub``): wall time after
compilation (and of the process's first call, which compiles), recall of the reference zeros,
precision (reported points that are true zeros in float64) and stability-label agreement.
The fast searches also follow the flow from the trajectory states, as the probe does.

The in-run baseline (skipped with ``--no-scipy``): ``scipy.optimize.root`` from every
(input, start), ``method="hybr"`` and, where hybr fails, ``method="lm"``, with the analytic
Jacobian, in float64 NumPy. Printed beside mechscope's: distinct verified zeros (float64
‖f‖ ≤ 1e-7 × typical speed) of each, how many of the stable zeros that any method finds
(mechscope ∪ scipy ∪ reference) each finds, and both times with their ratio. The targets:
every such stable zero found, at least as many verified zeros as scipy, ≤ 10 s (chaotic) and
≤ 1.5 s with recall 1.00 (regularised). ``--scipy-starts N`` runs the baseline from the first
N starts only and extrapolates its time (from every start it takes tens of minutes).

Usage: ``python benchmarks/fixed_points.py [--networks regularised chaotic] [--no-golub]
[--repeats 3] [--search lm|dense_lm|newton] [--other-starts] [--branches] [--no-scipy]
[--scipy-starts N]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from mechscope_dynamics import (
    DenseLMConfig,
    GolubConfig,
    MatrixFreeLMConfig,
    NewtonConfig,
    condition_run,
    find_fixed_points,
)
from mechscope_dynamics._fixed_points import trajectory_flow_starts
from mechscope_dynamics._fp_clustering import unique_per_input
from mechscope_dynamics._fp_kernels import cast_model

import mechscope

CACHE = Path(__file__).parent / "data" / "fixed_points"
NETWORKS = {
    "regularised": (
        {"n_units": 100, "gain": 1.5},
        {
            "steps": 1500,
            "learning_rate": 3e-3,
            "rate_reg": 1e-2,
            "weight_reg": 1e-4,
            "eval_every": 100,
        },
    ),
    "chaotic": (
        {"n_units": 100, "gain": 4.0},
        {
            "steps": 1500,
            "learning_rate": 1e-3,
            "rate_reg": 0.0,
            "weight_reg": 0.0,
            "eval_every": 100,
        },
    ),
}


def trained_network(name: str, task: mechscope.AbstractTask) -> mechscope.TrainedRun:
    directory = CACHE / name
    registry = mechscope.get_registry()
    if (directory / "trained.json").exists():
        return mechscope.TrainedRun.load(directory, registry=registry)
    model_params, trainer_params = NETWORKS[name]
    model_entry = registry.get("model", "ctrnn")
    model = model_entry.build(
        model_entry.validate(model_params),
        n_inputs=task.n_inputs,
        n_outputs=task.n_outputs,
        key=jax.random.key(0),
    )
    trainer_entry = registry.get("trainer", "bptt")
    trainer = trainer_entry.build(trainer_entry.validate(trainer_params))
    run = trainer.fit(model, task, key=jax.random.key(1))
    run.save(directory, registry=registry)
    return run


def problem(
    run: mechscope.TrainedRun, task: mechscope.AbstractTask, n_starts: int = 1024, seed: int = 0
):
    # Full-precision products: on a GPU the default (TF32) would give other trajectories, hence
    # other starts and scales than those the committed references were built from.
    with jax.default_matmul_precision("highest"):
        condition = condition_run(run.model, task)
    rng = np.random.default_rng(seed)
    flat = condition.states.reshape(-1, condition.states.shape[-1])
    starts = flat[rng.integers(0, len(flat), n_starts)] + 0.5 * rng.standard_normal(
        (n_starts, flat.shape[1])
    )
    trials = condition.trials
    go = np.asarray(trials.event_index("go"))
    inputs = np.asarray(trials.inputs, np.float64)[np.arange(len(go)), go - 1]
    inputs = np.concatenate([np.unique(np.round(inputs, 9), axis=0), np.zeros((1, 3))])
    return condition, starts, inputs


def _dense_solvers(model, x, u, newton_steps: int, lm_steps: int):
    """Damped Newton and Levenberg–Marquardt from one start, dense, in the model's dtype."""

    def residual(y):
        return model.vector_field(0.0, y, u)

    def q(y):
        value = jnp.sum(residual(y) ** 2)
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    def newton(carry, _):
        y, _ = carry
        delta = jnp.linalg.solve(model.jacobian(0.0, y, u), -residual(y))
        lengths = jnp.asarray([1.0, 0.5, 0.25, 0.1, 0.03, 0.0])
        trials = y[None] + lengths[:, None] * delta[None]
        qs = jax.vmap(q)(trials)
        best = jnp.argmin(qs)
        return (trials[best], qs[best]), None

    def levenberg_marquardt(carry, _):
        y, qy, damping = carry
        jac, r = model.jacobian(0.0, y, u), residual(y)
        normal = jac.T @ jac
        eye = jnp.eye(len(y))
        delta = jnp.linalg.solve(
            normal + damping * (jnp.trace(normal) / len(y) + 1e-12) * eye, -jac.T @ r
        )
        delta = jnp.where(jnp.all(jnp.isfinite(delta)), delta, 0.0)
        q_new = q(y + delta)
        ok = q_new < qy
        return (
            jnp.where(ok, y + delta, y),
            jnp.where(ok, q_new, qy),
            jnp.where(ok, damping * 0.3, damping * 10.0),
        ), None

    (x_newton, q_newton), _ = jax.lax.scan(newton, (x, q(x)), None, length=newton_steps)
    (x_lm, q_lm, _), _ = jax.lax.scan(levenberg_marquardt, (x, q(x), 1e-2), None, length=lm_steps)
    return x_newton, jnp.sqrt(q_newton), x_lm, jnp.sqrt(q_lm)


_solvers_jit = eqx.filter_jit(jax.vmap(_dense_solvers, in_axes=(None, 0, 0, None, None)))


def reference(name, run, condition, starts, inputs, tag=""):
    """Zeros an exhaustive float64 search from every start finds (cached; slow: minutes).

    Every (input, start) pair runs 60 damped-Newton iterations and, separately, 200
    Levenberg–Marquardt iterations, both dense and in float64; every end point with
    ‖f‖ ≤ 1e-7 × typical speed counts, made unique at 1e-4 × trajectory scale. Also returns,
    per zero, how many starts reach it by each method (``[zeros, 2]``: Newton, LM).
    """
    path = CACHE / f"{name}_reference{tag}.npz"
    if path.exists():
        data = np.load(path)
        if "reached_by" in data:
            return data["points"], data["input_index"], data["stable"], data["reached_by"]
    print(f"  building the {name} reference (float64, several minutes) ...", flush=True)
    k, s = len(inputs), len(starts)
    x0 = np.tile(starts, (k, 1))
    u = np.repeat(inputs, s, axis=0)
    tol = 1e-7 * condition.speed_scale
    ends = {"newton": [], "lm": []}  # per method: end points and ‖f‖ there, in row order
    with jax.enable_x64(True):
        model = cast_model(run.model, jnp.float64)
        for chunk in np.array_split(np.arange(len(x0)), k):
            x_newton, speed_newton, x_lm, speed_lm = _solvers_jit(
                model, jnp.asarray(x0[chunk]), jnp.asarray(u[chunk]), 60, 200
            )
            ends["newton"].append((np.asarray(x_newton), np.asarray(speed_newton)))
            ends["lm"].append((np.asarray(x_lm), np.asarray(speed_lm)))
        index = np.repeat(np.arange(k), s)
        method_x = [np.concatenate([x for x, _ in ends[m]]) for m in ("newton", "lm")]
        method_ok = [np.concatenate([v for _, v in ends[m]]) <= tol for m in ("newton", "lm")]
        points = np.concatenate([x[ok] for x, ok in zip(method_x, method_ok, strict=True)])
        input_index = np.concatenate([index[ok] for ok in method_ok])
        near = np.linalg.norm(points - condition.center, axis=1) <= 10 * condition.scale
        points, input_index = points[near], input_index[near]
        keep = unique_per_input(points, input_index, np.zeros(len(points)), 1e-4 * condition.scale)
        points, input_index = points[keep], input_index[keep]
        reached_by = np.zeros((len(points), 2), dtype=int)
        for j, (point, zero_input) in enumerate(zip(points, input_index, strict=True)):
            for m, (x, ok) in enumerate(zip(method_x, method_ok, strict=True)):
                close = np.linalg.norm(x - point, axis=1) <= 1e-3 * condition.scale
                reached_by[j, m] = int(np.sum(ok & close & (index == zero_input)))
        jac = jax.vmap(lambda x, v: model.jacobian(0.0, x, v))(
            jnp.asarray(points), jnp.asarray(inputs[input_index])
        )
        stable = np.linalg.eigvals(np.asarray(jac)).real.max(axis=1) < 0
    np.savez(path, points=points, input_index=input_index, stable=stable, reached_by=reached_by)
    return points, input_index, stable, reached_by


def branch_zeros(run, condition, points, input_index, inputs, max_steps: int = 500):
    """Zeros of the target inputs on the branches through `points` (pseudo-arclength).

    The 8 target inputs lie on the unit circle u(θ) = (cos θ, sin θ, 0). Every point of a
    target input starts two branches of zeros of f(x, u(θ)) in (x / scale, θ), one per
    direction, followed with a tangent predictor and four Newton corrections on the
    arclength-augmented system (so folds, where a branch turns back in θ, are passed). Where a
    branch crosses a target angle, the interpolated state is solved at that input by the
    reference's damped Newton.
    A branch ends when it closes on itself, its step falls below 1e-4 or it leaves the region
    of the outlier rule (10 × scale from the centre).

    Returns:
        Unique zeros (‖f‖ ≤ 1e-7 × typical speed, at 1e-4 × scale), their input indices, and
        how many of `points` belong to target inputs (the branches' starting points).
    """
    n, scale = points.shape[1], condition.scale
    on_circle = np.isclose(np.linalg.norm(inputs[:, :2], axis=1), 1.0) & (inputs[:, 2] == 0)
    targets = np.flatnonzero(on_circle)
    angles = np.arctan2(inputs[targets, 1], inputs[targets, 0])
    tol = 1e-7 * condition.speed_scale
    with jax.enable_x64(True):
        model = cast_model(run.model, jnp.float64)

        def u_of(theta):
            return jnp.stack([jnp.cos(theta), jnp.sin(theta), jnp.zeros_like(theta)])

        def field(y):  # y = (x / scale, θ)
            return model.vector_field(0.0, y[:n] * scale, u_of(y[n]))

        def bordered(y, direction):  # [∂f/∂y; direction], (n + 1) × (n + 1)
            return jnp.concatenate([jax.jacfwd(field)(y), direction[None]], axis=0)

        @jax.jit
        @jax.vmap
        def step(y, previous, length):
            tangent = jnp.linalg.solve(bordered(y, previous), jnp.zeros(n + 1).at[n].set(1.0))
            tangent = tangent / jnp.linalg.norm(tangent)
            predicted = y + length * tangent

            def correct(z, _):
                residual = jnp.append(field(z), tangent @ (z - predicted))
                return z - jnp.linalg.solve(bordered(z, tangent), residual), None

            z, _ = jax.lax.scan(correct, predicted, None, length=4)
            return z, tangent, jnp.linalg.norm(field(z))

        rows = np.flatnonzero(np.isin(input_index, targets))
        theta = angles[np.searchsorted(targets, input_index[rows])]
        y = np.tile(np.concatenate([points[rows] / scale, theta[:, None]], axis=1), (2, 1))
        previous = np.zeros_like(y)
        previous[:, n] = np.repeat([1.0, -1.0], len(rows))
        origin, length = y.copy(), np.full(len(y), 0.05)
        travelled, alive = np.zeros(len(y)), np.ones(len(y), dtype=bool)
        crossings, crossing_input = [], []
        for _ in range(max_steps):
            z, tangent, speed = (np.asarray(a) for a in step(y, previous, length))
            ok = alive & np.isfinite(speed) & (speed <= 1e-6 * condition.speed_scale)
            ok &= np.linalg.norm(z - y, axis=1) <= 3 * length
            for b in np.flatnonzero(ok):
                lo, hi = sorted((y[b, n], z[b, n]))
                for j, angle in enumerate(angles):
                    for turn in range(
                        math.ceil((lo - angle) / (2 * np.pi)),
                        math.floor((hi - angle) / (2 * np.pi)) + 1,
                    ):
                        at = angle + 2 * np.pi * turn
                        w = (at - y[b, n]) / (z[b, n] - y[b, n])
                        crossings.append(((1 - w) * y[b, :n] + w * z[b, :n]) * scale)
                        crossing_input.append(j)
            travelled += np.where(ok, length, 0.0)
            y, previous = np.where(ok[:, None], z, y), np.where(ok[:, None], tangent, previous)
            length = np.where(ok, np.minimum(1.3 * length, 0.3), 0.5 * length)
            # θ is not wrapped; a branch that went once around the circle closes at θ ± 2π.
            turned = (y[:, n] - origin[:, n] + np.pi) % (2 * np.pi) - np.pi
            gap = np.hypot(np.linalg.norm(y[:, :n] - origin[:, :n], axis=1), turned)
            closed = (gap < 0.02) & (travelled > 0.5)
            inside = np.linalg.norm(y[:, :n] * scale - condition.center, axis=1) <= 10 * scale
            alive &= ~closed & (length >= 1e-4) & inside
            if not alive.any():
                break
        if not crossings:
            return np.zeros((0, n)), np.zeros(0, dtype=int), len(rows)
        k = targets[np.asarray(crossing_input, dtype=int)]
        # The reference's damped Newton (8 iterations, no LM) at the target inputs themselves.
        x, speed, _, _ = (
            np.asarray(a)
            for a in _solvers_jit(
                model, jnp.asarray(np.asarray(crossings)), jnp.asarray(inputs[k]), 8, 0
            )
        )
        zero = speed <= tol
        x, k = x[zero], k[zero]
    keep = unique_per_input(x, k, np.zeros(len(x)), 1e-4 * scale)
    return x[keep], k[keep], len(rows)


def match(points, input_index, point, k, tol):
    """Row of `points` (of input `k`) nearest `point` if within `tol`, else None."""
    rows = np.flatnonzero(input_index == k)
    if len(rows) == 0:
        return None
    gaps = np.linalg.norm(points[rows] - point, axis=1)
    j = int(np.argmin(gaps))
    return int(rows[j]) if gaps[j] <= tol else None


#: The searches by their config's ``kind``, with their default settings.
SEARCHES = {
    config.model_fields["kind"].default: config
    for config in (MatrixFreeLMConfig, DenseLMConfig, NewtonConfig, GolubConfig)
}


def timed_solve(model, condition, starts, inputs, search, repeats: int, flow_starts=None):
    """Solve with the search module `search` once (compiling), then `repeats` more times.

    `flow_starts` are the trajectory states the probe also follows the flow from.

    Returns:
        The last result, the median time of the repeats and the time of the first call.
    """
    kwargs: dict[str, Any] = dict(
        scale=condition.scale,
        speed_scale=condition.speed_scale,
        center=condition.center,
        search=search,
        flow_starts=flow_starts,
    )
    start = time.perf_counter()
    fps = find_fixed_points(model, inputs, starts, **kwargs)
    first_call = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fps = find_fixed_points(model, inputs, starts, **kwargs)
        times.append(time.perf_counter() - start)
    return fps, float(np.median(times)), first_call


def score(fps, ref_points, ref_index, ref_stable, run, condition):
    hits, labels_right = 0, 0
    for point, k, stable in zip(ref_points, ref_index, ref_stable, strict=True):
        row = match(fps.points, fps.input_index, point, k, 1e-3 * condition.scale)
        if row is not None:
            hits += 1
            labels_right += int(bool(fps.stable[row]) == bool(stable))
    with jax.enable_x64(True):
        model = cast_model(run.model, jnp.float64)
        speed = np.linalg.norm(
            np.asarray(
                jax.vmap(lambda x, u: model.vector_field(0.0, x, u))(
                    jnp.asarray(fps.points), jnp.asarray(fps.inputs[fps.input_index])
                )
            ),
            axis=1,
        )
    true_zero = speed <= 1e-6 * condition.speed_scale
    recall = hits / max(len(ref_points), 1)
    precision = float(true_zero.mean()) if len(true_zero) else float("nan")
    return recall, precision, labels_right / max(hits, 1)


def numpy_field(model):
    """The CT-RNN's f(x, u) and ∂f/∂x in float64 NumPy, checked against the model.

    scipy calls them once per iteration from Python; at N = 100 a compiled JAX call would cost
    more than the arithmetic, which would make the baseline look slower than it is.

    Returns:
        ``field(x, drive)``, ``jacobian(x, drive)`` and ``drive(u)`` = W_in u + b.
    """
    dynamics = model.dynamics()
    w, w_in, bias = (
        np.asarray(a, np.float64) for a in (dynamics.w_rec, dynamics.w_in, dynamics.bias)
    )
    tau, eye = float(dynamics.tau), np.eye(len(bias))
    if model.config.activation != "tanh":
        raise SystemExit("the scipy baseline is written for tanh networks")

    def field(x, drive):
        return (-x + w @ np.tanh(x) + drive) / tau

    def jacobian(x, drive):
        return (-eye + w * (1.0 - np.tanh(x) ** 2)[None, :]) / tau

    def drive(u):
        return w_in @ u + bias

    rng = np.random.default_rng(0)
    x, u = rng.standard_normal(len(bias)), rng.standard_normal(w_in.shape[1])
    with jax.enable_x64(True):
        wide = cast_model(model, jnp.float64)
        expected = np.asarray(wide.vector_field(0.0, jnp.asarray(x), jnp.asarray(u)))
        expected_jac = np.asarray(wide.jacobian(0.0, jnp.asarray(x), jnp.asarray(u)))
    np.testing.assert_allclose(field(x, drive(u)), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(jacobian(x, drive(u)), expected_jac, rtol=1e-10, atol=1e-10)
    return field, jacobian, drive


def scipy_baseline(run, condition, starts, inputs):
    """``scipy.optimize.root`` from every (input, start): hybr, then lm where hybr fails.

    A solution counts when its float64 ‖f‖ ≤ 1e-7 × typical speed; the zeros are made unique
    at 1e-4 × scale and kept within 10 × scale of the centre (mechscope's outlier rule), and
    classified by the Jacobian's eigenvalues.

    Returns:
        Unique zeros, their input indices, their stability, the wall time, and how many
        solutions hybr and lm gave.
    """
    field, jacobian, drive_of = numpy_field(run.model)
    tol = 1e-7 * condition.speed_scale
    points, index, by_method = [], [], {"hybr": 0, "lm": 0}
    start = time.perf_counter()
    for k, u in enumerate(inputs):
        drive = drive_of(u)
        for x0 in starts:
            for method in ("hybr", "lm"):
                x = scipy.optimize.root(field, x0, args=(drive,), jac=jacobian, method=method).x
                if np.all(np.isfinite(x)) and np.linalg.norm(field(x, drive)) <= tol:
                    points.append(x)
                    index.append(k)
                    by_method[method] += 1
                    break
    elapsed = time.perf_counter() - start
    n = starts.shape[1]
    points = np.asarray(points).reshape(-1, n)
    index = np.asarray(index, dtype=int)
    near = np.linalg.norm(points - condition.center, axis=1) <= 10 * condition.scale
    points, index = points[near], index[near]
    keep = unique_per_input(points, index, np.zeros(len(points)), 1e-4 * condition.scale)
    points, index = points[keep], index[keep]
    stable = np.asarray(
        [
            np.linalg.eigvals(jacobian(x, drive_of(inputs[k]))).real.max() < 0
            for x, k in zip(points, index, strict=True)
        ],
        dtype=bool,
    )
    return points, index, stable, elapsed, by_method


def verified(fps, run, condition):
    """Which reported fixed points are zeros in float64: ‖f‖ ≤ 1e-7 × typical speed."""
    field, _, drive_of = numpy_field(run.model)
    speed = np.asarray(
        [
            np.linalg.norm(field(x, drive_of(fps.inputs[k])))
            for x, k in zip(fps.points, fps.input_index, strict=True)
        ]
    )
    return speed <= 1e-7 * condition.speed_scale


def stable_union(sets, scale):
    """The distinct stable zeros of several methods together: ``(points, input_index)``."""
    points = np.concatenate([p for p, _ in sets])
    index = np.concatenate([k for _, k in sets]).astype(int)
    keep = unique_per_input(points, index, np.zeros(len(points)), 1e-3 * scale)
    return points[keep], index[keep]


def compare_with_scipy(fps, elapsed, run, condition, starts, inputs, ref, scipy_starts):
    """Print the restated target's figures: mechscope against the scipy baseline."""
    ref_points, ref_index, ref_stable = ref
    subset = starts[:scipy_starts]
    sp_points, sp_index, sp_stable, sp_time, by_method = scipy_baseline(
        run, condition, subset, inputs
    )
    ours_ok = verified(fps, run, condition)
    ours_stable = fps.stable & ours_ok
    union_points, union_index = stable_union(
        [
            (fps.points[ours_stable], fps.input_index[ours_stable]),
            (sp_points[sp_stable], sp_index[sp_stable]),
            (ref_points[ref_stable], ref_index[ref_stable]),
        ],
        condition.scale,
    )
    tol = 1e-3 * condition.scale
    ours_hits = sum(
        match(fps.points[ours_stable], fps.input_index[ours_stable], x, k, tol) is not None
        for x, k in zip(union_points, union_index, strict=True)
    )
    scipy_hits = sum(
        match(sp_points[sp_stable], sp_index[sp_stable], x, k, tol) is not None
        for x, k in zip(union_points, union_index, strict=True)
    )
    scipy_only = sum(
        match(fps.points, fps.input_index, x, k, tol) is None
        for x, k in zip(sp_points, sp_index, strict=True)
    )
    share = len(subset) / len(starts)
    extrapolated = "" if share == 1 else f" (from {len(subset)} of the {len(starts)} starts)"
    full_time = sp_time / share
    print(
        f"  scipy hybr→lm{extrapolated}: {len(sp_points)} distinct verified zeros "
        f"({sp_stable.sum()} stable; hybr solved {by_method['hybr']}, lm {by_method['lm']} "
        f"of {len(subset) * len(inputs)} solves) in {sp_time:.0f} s"
        + ("" if share == 1 else f", ≈ {full_time:.0f} s from every start"),
        flush=True,
    )
    print(
        f"  mechscope vs scipy: distinct verified zeros {ours_ok.sum()} vs {len(sp_points)} "
        f"({scipy_only} of scipy's are not mechscope's); stable zeros {ours_hits} (scipy "
        f"{scipy_hits}) of the {len(union_points)} that any method finds (mechscope ∪ scipy "
        f"∪ reference); time {elapsed:.2f} s vs {full_time:.0f} s "
        f"(scipy/mechscope {full_time / max(elapsed, 1e-9):.0f}×)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS))
    parser.add_argument("--no-golub", action="store_true")
    parser.add_argument(
        "--other-starts",
        action="store_true",
        help="also build the reference from other starts (seed 1; cached, "
        "minutes) and print how many reference zeros it finds",
    )
    parser.add_argument(
        "--branches",
        action="store_true",
        help="also follow the reference zeros along branches around the circle "
        "of target inputs and print how many zeros those carry (about a minute)",
    )
    parser.add_argument(
        "--search",
        choices=["lm", "dense_lm", "newton"],
        default="lm",
        help="the fast solver's search (the probe's search.kind; default lm)",
    )
    parser.add_argument(
        "--scipy-starts",
        type=int,
        default=None,
        help="run the scipy baseline (hybr, then lm where hybr fails) from the first N "
        "starts only, and extrapolate its time (default: every start; ≈ 0.1–0.4 s a solve)",
    )
    parser.add_argument("--no-scipy", action="store_true", help="skip the scipy baseline")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per network (median reported; golub runs once)",
    )
    args = parser.parse_args()
    registry = mechscope.get_registry()
    entry = registry.get("task", "delayed_reach")
    task = entry.build(entry.validate({}))
    first = True
    for name in args.networks:
        run = trained_network(name, task)
        condition, starts, inputs = problem(run, task)
        flow_starts = trajectory_flow_starts(condition, len(starts) // 4)  # as the probe
        ref_points, ref_index, ref_stable, reached_by = reference(
            name, run, condition, starts, inputs
        )
        print(
            f"{name}: reference has {len(ref_points)} zeros "
            f"({ref_stable.sum()} stable) over {len(inputs)} inputs; Newton paths reach "
            f"{np.sum(reached_by[:, 0] > 0)}, LM paths {np.sum(reached_by[:, 1] > 0)}; "
            f"{np.sum(reached_by.sum(1) == 1)} are reached from a single start",
            flush=True,
        )
        if args.other_starts:
            # How much of the reference is a property of the network and how much of the
            # particular starts: the same exhaustive search from 1,024 other starts drawn the
            # same way (another seed).
            _, other_starts, _ = problem(run, task, seed=1)
            other_points, other_index, _, _ = reference(
                name, run, condition, other_starts, inputs, tag="_seed1"
            )
            shared = sum(
                match(other_points, other_index, point, k, 1e-3 * condition.scale) is not None
                for point, k in zip(ref_points, ref_index, strict=True)
            )
            print(
                f"  the same search from other starts (seed 1) finds {len(other_points)} "
                f"zeros, {shared} of the reference's {len(ref_points)} "
                f"(recall {shared / max(len(ref_points), 1):.2f})",
                flush=True,
            )
        if args.branches:
            start = time.perf_counter()
            branch_points, branch_index, on_targets = branch_zeros(
                run, condition, ref_points, ref_index, inputs
            )
            shared = sum(
                match(branch_points, branch_index, point, k, 1e-3 * condition.scale) is not None
                for point, k in zip(ref_points, ref_index, strict=True)
            )
            print(
                f"  the branches through the reference's {on_targets} zeros of target inputs "
                f"carry {len(branch_points)} zeros of those inputs "
                f"({shared} of them reference zeros; "
                f"{time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        kinds = [args.search] if args.no_golub else [args.search, "golub"]
        for kind in kinds:
            search = SEARCHES[kind]().build(task.dt)
            repeats = 1 if kind == "golub" else args.repeats
            fps, elapsed, first_call = timed_solve(
                run.model,
                condition,
                starts,
                inputs,
                search,
                repeats,
                flow_starts=None if kind == "golub" else flow_starts,
            )
            recall, precision, labels = score(
                fps, ref_points, ref_index, ref_stable, run, condition
            )
            # Only the process's first solve compiles everything; later ones reuse most of it.
            compiled = f"; first call, compiling, {first_call:.1f} s" if first else ""
            first = False
            print(
                f"  {kind:8s} time {elapsed:6.2f} s (median of {repeats}{compiled})  "
                f"reported {len(fps.points):4d}  "
                f"recall {recall:.3f}  precision {precision:.3f}  stability labels "
                f"{labels:.3f}  slow points {len(fps.slow_points)}",
                flush=True,
            )
            if kind != "golub" and not args.no_scipy:
                compare_with_scipy(
                    fps,
                    elapsed,
                    run,
                    condition,
                    starts,
                    inputs,
                    (ref_points, ref_index, ref_stable),
                    args.scipy_starts or len(starts),
                )


if __name__ == "__main__":
    main()
