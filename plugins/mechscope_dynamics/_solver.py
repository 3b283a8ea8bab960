"""Fixed and slow points of a model's vector field: the fast solver and a FixedPointFinder mode.

The fast solver (``mode = "newton"``) runs in three stages so that dense linear algebra is only
spent where it matters:

1. *Descent*: every (input, start) pair takes a few matrix-free Levenberg–Marquardt steps on
   f(x, u) = 0 in one compiled, vmapped call. Each step solves (JᵀJ + μI)δ = −Jᵀf with a few
   conjugate-gradient iterations that only need Jacobian–vector products, so the cost is a
   handful of batched matrix products rather than one dense factorisation per start.
2. *Merge*: per input, candidates closer than ``merge_tol`` × (trajectory scale) are merged;
   the candidate with the smallest q represents its cluster.
3. *Polish*: representatives are solved to machine precision in float64 with optimistix
   (Newton, then Levenberg–Marquardt for those Newton did not converge, then BFGS on
   q = ½‖f‖² for the rest). A point is a fixed point only if ‖f‖ ≤ ``fixed_tol`` ×
   (typical speed along trajectories); a local minimum of q above that but below
   ``slow_tol`` × (typical speed) is a slow point and is reported separately.

The compatibility mode (``mode = "golub"``) follows Golub & Sussillo's FixedPointFinder: the
model is treated as the discrete map F(x) = x + dt·f(x, u), q = ½‖F(x) − x‖² of all starts is
minimised jointly with Adam under an adaptive learning rate, and every unique end point is
reported with its q, stable when every |λ(∂F/∂x)| < 1.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
from jaxtyping import Array, Float
from scipy.sparse import csr_array
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

import mechscope


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Numerical settings of :func:`find_fixed_points` (taken from the probe's config).

    Attributes:
        mode: ``"newton"`` (the fast solver) or ``"golub"`` (FixedPointFinder compatibility).
        descent_steps: matrix-free Levenberg–Marquardt steps from every start (stage 1).
        cg_iterations: conjugate-gradient iterations per descent step.
        merge_tol: candidates closer than this × scale are merged before polishing.
        polish_steps: most Newton (and LM, BFGS) iterations when polishing.
        fixed_tol: a fixed point has ‖f‖ ≤ fixed_tol × speed_scale.
        slow_tol: a slow point has ‖f‖ ≤ slow_tol × speed_scale (and is a local minimum of q).
        unique_tol: points closer than this × scale are the same point.
        outlier_scale: points farther than this × scale from the trajectories' centroid are
            dropped as outliers.
        float64: polish and classify in float64.
        golub_dt: time step of the discrete map in compatibility mode.
        golub_max_iters: most Adam iterations in compatibility mode.
        golub_tol_q: stop when every q is below this (compatibility mode).
        golub_tol_dq: stop when the mean q changes by less than this (compatibility mode).
        golub_learning_rate: initial Adam learning rate (compatibility mode).
        golub_unique_tol: absolute distance below which points are the same (compatibility).
    """

    mode: str = "newton"
    descent_steps: int = 8
    cg_iterations: int = 8
    merge_tol: float = 1e-2
    polish_steps: int = 40
    fixed_tol: float = 1e-7
    slow_tol: float = 0.05
    unique_tol: float = 1e-4
    outlier_scale: float = 10.0
    float64: bool = True
    golub_dt: float = 0.01
    golub_max_iters: int = 5000
    golub_tol_q: float = 1e-12
    golub_tol_dq: float = 1e-20
    golub_learning_rate: float = 1.0
    golub_unique_tol: float = 1e-3


@dataclasses.dataclass
class FixedPoints:
    """Fixed points (and slow points) of one model for a set of constant inputs.

    Attributes:
        inputs: the constant inputs, ``[k, n_inputs]``.
        points: fixed points, ``[m, n_units]``.
        input_index: which input each fixed point belongs to, ``[m]``.
        speed: ‖f(x*, u)‖ at each fixed point, ``[m]``.
        eigenvalues: eigenvalues of the Jacobian at each point, ``[m, n_units]`` (complex),
            sorted by decreasing real part (decreasing modulus in compatibility mode).
        eigenvectors: the matching right eigenvectors (columns), ``[m, n_units, n_units]``.
        stable: whether each point is stable, ``[m]``.
        slow_points: slow points (local minima of q that are not zeros), ``[p, n_units]``.
        slow_input_index: input of each slow point, ``[p]``.
        slow_speed: ‖f‖ at each slow point, ``[p]``.
        discrete: True in compatibility mode (eigenvalues are of the discrete map).
        n_candidates: distinct candidates that were polished (the fast solver's work).
    """

    inputs: np.ndarray
    points: np.ndarray
    input_index: np.ndarray
    speed: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    stable: np.ndarray
    slow_points: np.ndarray
    slow_input_index: np.ndarray
    slow_speed: np.ndarray
    discrete: bool = False
    n_candidates: int = 0

    def for_input(self, k: int) -> np.ndarray:
        """Indices of the fixed points of input `k`."""
        return np.flatnonzero(self.input_index == k)

    @property
    def time_constants(self) -> np.ndarray:
        """−1/Re λ of every mode (continuous time; ``inf`` for Re λ = 0), ``[m, n_units]``."""
        real = self.eigenvalues.real
        with np.errstate(divide="ignore"):
            return np.where(real != 0, -1.0 / real, np.inf)


def _cast(model: mechscope.AbstractModel, dtype: jnp.dtype) -> mechscope.AbstractModel:
    return jax.tree.map(
        lambda leaf: leaf.astype(dtype) if eqx.is_inexact_array(leaf) else leaf, model
    )


# ---------------------------------------------------------------------------------------------
# Stage 1: matrix-free Levenberg–Marquardt from every start.


def _gmres(matvec, b, iterations: int):
    """Fixed-iteration GMRES from zero (Arnoldi with modified Gram–Schmidt, no restart)."""
    beta = jnp.linalg.norm(b)
    n = b.shape[0]
    basis = jnp.zeros((iterations + 1, n), b.dtype).at[0].set(b / jnp.maximum(beta, 1e-30))
    hessenberg = jnp.zeros((iterations + 1, iterations), b.dtype)

    def arnoldi(j, carry):
        basis, hessenberg = carry
        w = matvec(basis[j])
        valid = jnp.arange(iterations + 1) <= j
        for_each = jnp.where(valid[:, None], basis, 0.0)
        h = for_each @ w
        w = w - h @ for_each
        # A second pass keeps the basis orthogonal in float32.
        h2 = for_each @ w
        w = w - h2 @ for_each
        h = h + h2
        norm = jnp.linalg.norm(w)
        hessenberg = hessenberg.at[:, j].set(h.at[j + 1].set(norm))
        basis = basis.at[j + 1].set(w / jnp.maximum(norm, 1e-30))
        return basis, hessenberg

    basis, hessenberg = jax.lax.fori_loop(0, iterations, arnoldi, (basis, hessenberg))
    rhs = jnp.zeros(iterations + 1, b.dtype).at[0].set(beta)
    # Ridge-regularised normal equations, not an SVD: LAPACK's SVD can loop forever on NaN.
    hessenberg = jnp.nan_to_num(hessenberg, nan=0.0, posinf=0.0, neginf=0.0)
    gram = hessenberg.T @ hessenberg
    ridge = 1e-6 * jnp.trace(gram) / iterations + 1e-30
    y = jnp.linalg.solve(gram + ridge * jnp.eye(iterations, dtype=b.dtype), hessenberg.T @ rhs)
    return jnp.nan_to_num(y @ basis[:iterations])


def _lm_descent(
    model: mechscope.AbstractModel,
    inputs: Float[Array, "k n_inputs"],
    starts: Float[Array, "k s n"],
    steps: int,
    cg_iterations: int,
) -> tuple[Float[Array, "k s n"], Float[Array, "k s"]]:
    """Damped Newton–Krylov (matrix-free GMRES) steps from every start; end points and q."""

    def one(x, u):
        def residual(y):
            return model.vector_field(0.0, y, u)

        def q_of(y):
            return 0.5 * jnp.sum(residual(y) ** 2)

        def newton_step(x, _):
            r = residual(x)
            r = jnp.where(jnp.isfinite(r), r, 0.0)
            delta = _gmres(lambda v: jax.jvp(residual, (x,), (v,))[1], -r, cg_iterations)
            # Backtracking over a few step lengths: keep the one with the smallest q.
            lengths = jnp.asarray([1.0, 0.5, 0.25, 0.0], x.dtype)
            trial = x[None, :] + lengths[:, None] * delta[None, :]
            qs = jax.vmap(q_of)(trial)
            qs = jnp.where(jnp.isfinite(qs), qs, jnp.inf)
            return trial[jnp.argmin(qs)], None

        x, _ = jax.lax.scan(newton_step, x, None, length=steps)
        return x, q_of(x)

    per_input = jax.vmap(one, in_axes=(0, None))
    return jax.vmap(per_input, in_axes=(0, 0))(starts, inputs)


_lm_descent_jit = eqx.filter_jit(_lm_descent)


# ---------------------------------------------------------------------------------------------
# Stage 2: merging and unique-ing.


def cluster(points: np.ndarray, tol: float) -> np.ndarray:
    """Cluster labels of `points` ``[m, n]``: connected components at distance ≤ `tol`."""
    m = len(points)
    if m == 0:
        return np.zeros(0, dtype=int)
    pairs = cKDTree(points).query_pairs(tol, output_type="ndarray")
    graph = csr_array((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    return connected_components(graph, directed=False)[1]


def representatives(points: np.ndarray, score: np.ndarray, tol: float) -> np.ndarray:
    """Index of the lowest-`score` point of each cluster at distance `tol`, in cluster order."""
    labels = cluster(points, tol)
    order = np.lexsort((score, labels))
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    return order[first]


# ---------------------------------------------------------------------------------------------
# Stage 3: polishing with optimistix.


def _solve(
    model: mechscope.AbstractModel,
    x0: Float[Array, "m n"],
    u: Float[Array, "m n_inputs"],
    steps: int,
    method: str,
) -> tuple[Array, Array]:
    """One optimistix solver from every row; returns the end points and their ‖f‖."""
    tight = 1e-12 if x0.dtype == jnp.float64 else 1e-6

    def residual(x, u):
        return model.vector_field(0.0, x, u)

    def q(x, u):
        return 0.5 * jnp.sum(residual(x, u) ** 2)

    def solve(x, u):
        if method == "newton":
            solver = optx.Newton(rtol=tight, atol=tight)
            solution = optx.root_find(residual, solver, x, u, max_steps=steps, throw=False)
        elif method == "lm":
            solver = optx.LevenbergMarquardt(rtol=tight, atol=tight)
            solution = optx.least_squares(residual, solver, x, u, max_steps=steps, throw=False)
        else:
            solver = optx.BFGS(rtol=tight, atol=tight)
            solution = optx.minimise(q, solver, x, u, max_steps=steps, throw=False)
        y = solution.value
        y = jnp.where(jnp.all(jnp.isfinite(y)), y, x)
        return y, jnp.linalg.norm(residual(y, u))

    return jax.vmap(solve)(x0, u)


_solve_jit = eqx.filter_jit(_solve)


def _padded_solve(model, x0, u, steps, method, dtype):
    """Run :func:`_solve` on rows padded to a power of two, so sizes reuse compilations."""
    m = len(x0)
    size = 1 << max(3, math.ceil(math.log2(m)))
    xs = np.concatenate([x0, np.repeat(x0[:1], size - m, axis=0)])
    us = np.concatenate([u, np.repeat(u[:1], size - m, axis=0)])
    x, speed = _solve_jit(model, jnp.asarray(xs, dtype), jnp.asarray(us, dtype), steps, method)
    return np.asarray(x, np.float64)[:m], np.asarray(speed, np.float64)[:m]


def _polish(
    model: mechscope.AbstractModel,
    x0: np.ndarray,
    u: np.ndarray,
    settings: SolverSettings,
    threshold: float,
    dtype: jnp.dtype,
) -> tuple[np.ndarray, np.ndarray]:
    """Newton from every candidate; LM, then BFGS on q, only where the previous one failed."""
    x, speed = x0.copy(), np.full(len(x0), np.inf)
    todo = np.arange(len(x0))
    plan = (("newton", 1), ("lm", 4), ("bfgs", 8))
    for method, factor in plan:
        if len(todo) == 0:
            break
        new_x, new_speed = _padded_solve(
            model, x0[todo], u[todo], factor * settings.polish_steps, method, dtype
        )
        better = np.isfinite(new_speed) & (new_speed < speed[todo])
        x[todo[better]] = new_x[better]
        speed[todo[better]] = new_speed[better]
        todo = todo[~(speed[todo] <= threshold)]
    return x, speed


# ---------------------------------------------------------------------------------------------
# Classification.


def _eigen(
    model: mechscope.AbstractModel, points: np.ndarray, inputs: np.ndarray, dtype
) -> tuple[np.ndarray, np.ndarray]:
    if len(points) == 0:
        n = points.shape[1]
        return np.zeros((0, n), complex), np.zeros((0, n, n), complex)
    jac = jax.vmap(lambda x, u: model.jacobian(0.0, x, u))(
        jnp.asarray(points, dtype), jnp.asarray(inputs, dtype)
    )
    values, vectors = np.linalg.eig(np.asarray(jac, dtype=np.float64))
    return values, vectors


def _sort_modes(values: np.ndarray, vectors: np.ndarray, key: np.ndarray):
    order = np.argsort(-key, axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)
    vectors = np.take_along_axis(vectors, order[:, None, :], axis=2)
    return values, vectors


def _unique_per_input(
    points: np.ndarray, input_index: np.ndarray, score: np.ndarray, tol: float
) -> np.ndarray:
    keep = []
    for k in np.unique(input_index):
        rows = np.flatnonzero(input_index == k)
        keep.extend(rows[representatives(points[rows], score[rows], tol)])
    return np.sort(np.asarray(keep, dtype=int))


def find_fixed_points(
    model: mechscope.AbstractModel,
    inputs: Float[Array, "k n_inputs"],
    starts: Float[Array, "s n_units"],
    *,
    scale: float,
    speed_scale: float,
    center: Float[Array, " n_units"] | None = None,
    settings: SolverSettings | None = None,
) -> FixedPoints:
    """Fixed and slow points of `model` for each constant input, started from `starts`.

    Args:
        model: any :class:`mechscope.AbstractModel` (its vector field is used at t = 0).
        inputs: constant inputs, ``[k, n_inputs]``; each is solved from every start.
        starts: initial states, ``[s, n_units]`` (e.g. trajectory states plus noise).
        scale: typical size of the state (e.g. RMS distance of trajectory states from their
            mean); distances (merging, unique-ing, outliers) are measured in this unit.
        speed_scale: typical ‖f‖ along trajectories; speeds are measured in this unit.
        center: centroid of the trajectories for outlier removal (default: mean of starts).
        settings: numerical settings (defaults: :class:`SolverSettings`).

    Returns:
        The fixed points (unique per input, outliers removed, with Jacobian eigen-decomposition
        and stability) and, separately, the slow points.
    """
    settings = settings or SolverSettings()
    inputs_np = np.asarray(inputs, dtype=np.float64).reshape(-1, model.n_inputs)
    starts_np = np.asarray(starts, dtype=np.float64)
    k, s = len(inputs_np), len(starts_np)
    center_np = starts_np.mean(0) if center is None else np.asarray(center, dtype=np.float64)
    if settings.mode == "golub":
        return _golub(model, inputs_np, starts_np, scale, center_np, settings)

    # Stage 1: all inputs × all starts in one compiled call (float32 or the model's dtype).
    dtype32 = jnp.result_type(*[leaf for leaf in jax.tree.leaves(model) if eqx.is_array(leaf)])
    tiled = jnp.broadcast_to(jnp.asarray(starts_np, dtype32), (k, s, starts_np.shape[1]))
    if settings.descent_steps > 0:
        x, q = _lm_descent_jit(
            model,
            jnp.asarray(inputs_np, dtype32),
            tiled,
            settings.descent_steps,
            settings.cg_iterations,
        )
    else:
        x = tiled
        q = jax.vmap(jax.vmap(model.speed, in_axes=(0, None)))(tiled, jnp.asarray(inputs_np))
    x, q = np.asarray(x, dtype=np.float64), np.asarray(q, dtype=np.float64)

    # Stage 2: merge candidates that already agree.
    cand_x, cand_k = [], []
    for j in range(k):
        finite = np.flatnonzero(np.all(np.isfinite(x[j]), axis=1) & np.isfinite(q[j]))
        keep = finite[representatives(x[j][finite], q[j][finite], settings.merge_tol * scale)]
        cand_x.append(x[j][keep])
        cand_k.append(np.full(len(keep), j))
    cand_x = np.concatenate(cand_x) if cand_x else np.zeros((0, starts_np.shape[1]))
    cand_k = np.concatenate(cand_k) if cand_k else np.zeros(0, dtype=int)

    # Stage 3: polish the distinct candidates in float64.
    context = jax.enable_x64(True) if settings.float64 else _nullcontext()
    with context:
        dtype = jnp.float64 if settings.float64 else dtype32
        wide = _cast(model, dtype)
        polished, speed = _polish(
            wide, cand_x, inputs_np[cand_k], settings, settings.fixed_tol * speed_scale, dtype
        )
        finite = np.all(np.isfinite(polished), axis=1) & np.isfinite(speed)
        near = np.linalg.norm(polished - center_np, axis=1) <= settings.outlier_scale * scale
        is_fixed = finite & near & (speed <= settings.fixed_tol * speed_scale)
        is_slow = (
            finite & near & ~is_fixed & (speed <= settings.slow_tol * speed_scale)
        )
        fixed_rows = np.flatnonzero(is_fixed)
        fixed_rows = fixed_rows[
            _unique_per_input(
                polished[fixed_rows], cand_k[fixed_rows], speed[fixed_rows],
                settings.unique_tol * scale,
            )
        ]
        slow_rows = np.flatnonzero(is_slow)
        slow_rows = slow_rows[
            _unique_per_input(
                polished[slow_rows], cand_k[slow_rows], speed[slow_rows],
                settings.merge_tol * scale,
            )
        ]
        points = polished[fixed_rows]
        values, vectors = _eigen(wide, points, inputs_np[cand_k[fixed_rows]], dtype)
    values, vectors = _sort_modes(values, vectors, values.real)
    stable = values[:, 0].real < 0 if len(values) else np.zeros(0, dtype=bool)
    return FixedPoints(
        inputs=inputs_np,
        points=points,
        input_index=cand_k[fixed_rows],
        speed=speed[fixed_rows],
        eigenvalues=values,
        eigenvectors=vectors,
        stable=stable,
        slow_points=polished[slow_rows],
        slow_input_index=cand_k[slow_rows],
        slow_speed=speed[slow_rows],
        discrete=False,
        n_candidates=len(cand_x),
    )


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------------------
# Compatibility mode: Golub & Sussillo's FixedPointFinder.


def _golub_optimise(
    model: mechscope.AbstractModel,
    inputs: Float[Array, "k n_inputs"],
    starts: Float[Array, "k s n"],
    dt: float,
    max_iters: int,
    tol_q: float,
    tol_dq: float,
    learning_rate: float,
) -> tuple[Array, Array]:
    def q_one(x, u):
        step = dt * model.vector_field(0.0, x, u)  # F(x) − x for the Euler map
        return 0.5 * jnp.sum(step**2)

    q_all = jax.vmap(jax.vmap(q_one, in_axes=(0, None)), in_axes=(0, 0))

    def loss(x):
        return jnp.mean(q_all(x, inputs))

    optimiser = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    state = optimiser.init(starts)

    def cond(carry):
        i, x, _, _, _, dq = carry
        q = q_all(x, inputs)
        return (i < max_iters) & (jnp.max(q) > tol_q) & (dq > tol_dq)

    def body(carry):
        i, x, state, rate, q_prev, _ = carry
        value, grad = jax.value_and_grad(loss)(x)
        # FixedPointFinder's adaptive gradient clipping, simplified to a fixed norm of 1.
        norm = jnp.sqrt(jnp.sum(grad**2))
        grad = grad * jnp.minimum(1.0, 1.0 / jnp.maximum(norm, 1e-30))
        # FixedPointFinder's adaptive learning rate, simplified: grow slowly while the loss
        # falls, halve when it rises.
        rate = jnp.where(value > q_prev, rate * 0.5, rate * 1.05)
        state.hyperparams["learning_rate"] = rate
        updates, state = optimiser.update(grad, state)
        return i + 1, x + updates, state, rate, value, jnp.abs(q_prev - value)

    init = (0, starts, state, jnp.asarray(learning_rate), jnp.asarray(jnp.inf), jnp.inf)
    _, x, *_ = jax.lax.while_loop(cond, body, init)
    return x, q_all(x, inputs)


_golub_jit = eqx.filter_jit(_golub_optimise)


def _golub(
    model: mechscope.AbstractModel,
    inputs: np.ndarray,
    starts: np.ndarray,
    scale: float,
    center: np.ndarray,
    settings: SolverSettings,
) -> FixedPoints:
    k, s = len(inputs), len(starts)
    dtype = jnp.result_type(*[leaf for leaf in jax.tree.leaves(model) if eqx.is_array(leaf)])
    tiled = jnp.broadcast_to(jnp.asarray(starts, dtype), (k, s, starts.shape[1]))
    x, q = _golub_jit(
        model,
        jnp.asarray(inputs, dtype),
        tiled,
        settings.golub_dt,
        settings.golub_max_iters,
        settings.golub_tol_q,
        settings.golub_tol_dq,
        settings.golub_learning_rate,
    )
    x, q = np.asarray(x, np.float64), np.asarray(q, np.float64)
    flat_x = x.reshape(k * s, -1)
    flat_q = q.reshape(-1)
    flat_k = np.repeat(np.arange(k), s)
    finite = np.all(np.isfinite(flat_x), axis=1) & np.isfinite(flat_q)
    rows = np.flatnonzero(finite)
    rows = rows[_unique_per_input(flat_x[rows], flat_k[rows], flat_q[rows],
                                  settings.golub_unique_tol)]
    # Distance outliers, as FixedPointFinder: far from the centroid relative to the spread.
    near = np.linalg.norm(flat_x[rows] - center, axis=1) <= settings.outlier_scale * scale
    rows = rows[near]
    points = flat_x[rows]
    values, vectors = _eigen(model, points, inputs[flat_k[rows]], dtype)
    # Eigenvalues of the discrete map F(x) = x + dt f(x): 1 + dt λ.
    values = 1.0 + settings.golub_dt * values
    values, vectors = _sort_modes(values, vectors, np.abs(values))
    stable = np.abs(values[:, 0]) < 1 if len(values) else np.zeros(0, dtype=bool)
    speed = np.sqrt(2 * flat_q[rows]) / settings.golub_dt
    n = starts.shape[1]
    return FixedPoints(
        inputs=inputs,
        points=points,
        input_index=flat_k[rows],
        speed=speed,
        eigenvalues=values,
        eigenvectors=vectors,
        stable=stable,
        slow_points=np.zeros((0, n)),
        slow_input_index=np.zeros(0, dtype=int),
        slow_speed=np.zeros(0),
        discrete=True,
        n_candidates=len(rows),
    )
