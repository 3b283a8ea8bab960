"""Fixed and slow points of a model's vector field: the fast solver and a FixedPointFinder mode.

The fast solver (``mode = "newton"``) spends dense linear algebra only on distinct candidates:

1. *Relax*: every (input, start) pair takes ``relax_steps`` Euler steps along the flow, all in
   one compiled call (one matrix product per step); each path gives its end point and its
   slowest point (where it passed a saddle). Per input, if these merge into few candidates
   (an attractor-dominated flow) the search starts from them, else from the raw starts.
2. *Levenberg–Marquardt* (``search = "lm"``, matrix-free): per input, candidates closer than
   ``merge_tol`` × (trajectory scale) are merged, and the distinct ones take LM steps whose
   normal equations are solved by conjugate gradients on the vector field's batched JVP and
   VJP (for a recurrent network, matrix products with the shared weights); with
   ``search = "dense_lm"`` they are solved exactly (a Cholesky factorisation per candidate).
   Candidates that come within ``handoff_tol`` × (typical speed) of a zero leave for dense
   Newton; the others merge with each other as they meet.
3. *Newton with merging*: the candidates that came close take globalised float32 Newton
   iterations (line search with a Cauchy-step fallback) in blocks of two. After each block,
   converged candidates (‖f‖ ≤ ``newton_tol`` × typical speed) leave, candidates that reached
   a converged point or each other are merged, and candidates that stop making progress are
   set aside as slow-point candidates. The batch shrinks as the search goes on.
4. *Polish*: converged candidates are solved to machine precision in float64 with optimistix
   (Newton, then Levenberg–Marquardt for those Newton did not converge, then BFGS on
   q = ½‖f‖²); slow-point candidates with ‖f‖ ≤ ``slow_tol`` × speed minimise q with BFGS.
   A point is a fixed point only if ‖f‖ ≤ ``fixed_tol`` × (typical speed along
   trajectories); a local minimum of q above that but below ``slow_tol`` × (typical speed)
   is a slow point and is reported separately.

The compatibility mode (``mode = "golub"``) follows Golub & Sussillo's FixedPointFinder: the
model is treated as the discrete map F(x) = x + dt·f(x, u), q = ½‖F(x) − x‖² of all starts is
minimised jointly with Adam under an adaptive learning rate, and every unique end point is
reported with its q, stable when every |λ(∂F/∂x)| < 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
from jaxtyping import Array, Float, Int
from scipy.spatial import cKDTree

import mechscope


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Numerical settings of :func:`find_fixed_points` (taken from the probe's config).

    Attributes:
        mode: ``"newton"`` (the fast solver) or ``"golub"`` (FixedPointFinder compatibility).
        search: how the fast solver brings starts near zeros before dense Newton: ``"lm"``
            (matrix-free Levenberg–Marquardt on every candidate, then dense Newton on those
            that come close to a zero), ``"dense_lm"`` (the same with exact dense LM steps:
            the exact LM paths, a factorisation per candidate and iteration, for
            accelerators) or ``"newton"`` (dense Newton on every candidate).
        lm_steps: most Levenberg–Marquardt iterations per candidate (``"lm"``,
            ``"dense_lm"``); None = 120 for ``"lm"``, 200 for ``"dense_lm"``.
        lm_cg_steps: conjugate-gradient iterations per Levenberg–Marquardt step (``"lm"``).
        handoff_tol: a candidate leaves Levenberg–Marquardt for dense Newton when
            ‖f‖ ≤ handoff_tol × speed_scale; None = 1e-2 for ``"lm"``, 1e-4 for
            ``"dense_lm"`` (exact paths are worth following closer to the zero).
        relax_steps: Euler steps along the flow from every start before Newton (0 = none).
        relax_step: their length; None = 1 / (spectral radius of ∂f/∂x at the centre).
        relaxed_fraction: an input is solved from its relaxed points (end points and the
            slowest point of each path) only if, once merged, they number at most this
            fraction of the starts; otherwise the flow did not collapse them (e.g. a chaotic
            network) and that input is solved from the raw starts.
        newton_steps: most float32 Newton iterations per candidate (stage 2).
        newton_tol: a candidate has converged when ‖f‖ ≤ newton_tol × speed_scale.
        stall_blocks: a candidate whose ‖f‖ has not fallen by 20 % in this many consecutive
            blocks of two Newton iterations becomes a slow-point candidate.
        merge_tol: candidates closer than this × scale are merged, and candidates this close
            to an already converged point are dropped.
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
    search: str = "lm"
    lm_steps: int | None = None
    lm_cg_steps: int = 20
    handoff_tol: float | None = None
    relax_steps: int = 60
    relax_step: float | None = None
    relaxed_fraction: float = 0.5
    newton_steps: int = 40
    newton_tol: float = 1e-4
    stall_blocks: int = 2
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

    def __post_init__(self):
        # Defaults that depend on the search (the dataclass is frozen, hence object.__setattr__).
        exact = self.search == "dense_lm"
        if self.lm_steps is None:
            object.__setattr__(self, "lm_steps", 200 if exact else 120)
        if self.handoff_tol is None:
            object.__setattr__(self, "handoff_tol", 1e-4 if exact else 1e-2)


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
        n_candidates: distinct candidates that reached the Newton stage (the fast solver's
            work).
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


def _model_dtype(model: mechscope.AbstractModel) -> jnp.dtype:
    """The floating dtype of the model's parameters (the solver's working precision)."""
    return jnp.result_type(*[leaf for leaf in jax.tree.leaves(model) if eqx.is_array(leaf)])


# ---------------------------------------------------------------------------------------------
# Stage 1: relaxation along the flow (one matrix product per row and step).


def _relax(
    model: mechscope.AbstractModel,
    x: Float[Array, "m n"],
    u: Float[Array, "m n_inputs"],
    step: float,
    steps: int,
) -> tuple[Float[Array, "m n"], Float[Array, "m n"]]:
    """Forward-Euler steps along the flow from every row; non-finite rows stay where they were.

    Returns:
        The end points and, per row, the slowest point before the speed first rose to twice
        its running minimum: where the path passed a saddle (or a slow region) on its way.
        Paths that pass near a saddle leave it along its unstable manifold, so their end
        points do not show it; the speed minimum does.
    """
    field = jax.vmap(lambda y, v: model.vector_field(0.0, y, v))

    def body(carry, _):
        y, slowest, slowest_speed, passed = carry
        velocity = field(y, u)
        speed = jnp.sum(velocity**2, axis=1)
        slower = (speed < slowest_speed) & ~passed
        slowest = jnp.where(slower[:, None], y, slowest)
        slowest_speed = jnp.where(slower, speed, slowest_speed)
        passed = passed | (speed > 4.0 * slowest_speed)
        moved = y + step * velocity
        y = jnp.where(jnp.all(jnp.isfinite(moved), axis=1, keepdims=True), moved, y)
        return (y, slowest, slowest_speed, passed), None

    init = (x, x, jnp.full(x.shape[0], jnp.inf, x.dtype), jnp.zeros(x.shape[0], bool))
    end, slowest, _, _ = jax.lax.scan(body, init, None, length=steps)[0]
    return end, slowest


_relax_jit = eqx.filter_jit(_relax)


def relaxation_step(model: mechscope.AbstractModel, x: np.ndarray, u: np.ndarray) -> float:
    """Euler step that follows the flow near `x`: 1 / (spectral radius of ∂f/∂x at `x`, `u`).

    Every eigenvalue λ then has |hλ| ≤ 1, so the stable modes decay (|1 + hλ| < 1) and the
    unstable ones grow, as in the continuous flow.
    """
    dtype = _model_dtype(model)
    jac = _jacobians(model, np.asarray(x)[None], np.asarray(u)[None], dtype)[0]
    radius = float(np.max(np.abs(np.linalg.eigvals(jac)))) if np.all(np.isfinite(jac)) else 0.0
    return 1.0 / radius if radius > 0 else 1.0


# ---------------------------------------------------------------------------------------------
# Stage 2a: Levenberg–Marquardt on every candidate (matrix-free, or dense for accelerators).


def _levenberg_marquardt(
    model: mechscope.AbstractModel,
    x: Float[Array, "m n"],
    u: Float[Array, "m n_inputs"],
    damping: Float[Array, " m"],
    steps: Int[Array, ""],
    cg_steps: int,
    key: Array,
    dense: bool = False,
) -> tuple[Float[Array, "m n"], Float[Array, " m"], Float[Array, " m"]]:
    """`steps` Levenberg–Marquardt iterations from every row (matrix-free unless `dense`).

    Each iteration solves (JᵀJ + μ·tr(JᵀJ)/n·I) δ = −Jᵀf with `cg_steps` conjugate-gradient
    iterations, where J·v and Jᵀ·w are the vector field's JVP and VJP over the whole batch (for
    a recurrent network, one matrix product with the shared weights each, instead of a dense
    factorisation per row). The step is taken if it lowers ‖f‖ (μ ← 0.3μ), else μ ← 10μ.
    tr(JᵀJ) is estimated once per call from eight random sign vectors (E‖Jz‖² = tr(JᵀJ)).

    With `dense`, each row's Jacobian is formed instead and the same equations are solved
    exactly (Cholesky, tr(JᵀJ) exact at every iteration): the exact LM path, at the cost of a
    dense factorisation per row and iteration (for accelerators).

    Returns:
        End points, ‖f‖ there, and the damping μ to continue with.
    """

    def field(y):
        return jax.vmap(lambda row, v: model.vector_field(0.0, row, v))(y, u)

    def squared_speed(y):
        value = jnp.sum(field(y) ** 2, axis=1)
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    n, tiny = x.shape[1], jnp.finfo(x.dtype).tiny
    if not dense:
        _, jvp = jax.linearize(field, x)
        probes = jax.random.rademacher(key, (8, *x.shape), dtype=x.dtype)
        trace = jnp.mean(jax.vmap(lambda z: jnp.sum(jvp(z) ** 2, axis=1))(probes), axis=0)
        scale = trace / n + tiny

    def dense_step(y, mu):
        jac = jax.vmap(lambda row, v: model.jacobian(0.0, row, v))(y, u)
        normal = jnp.einsum("mki,mkj->mij", jac, jac)
        shift = mu * (jnp.trace(normal, axis1=1, axis2=2) / n + tiny)
        factor = jnp.linalg.cholesky(normal + shift[:, None, None] * jnp.eye(n, dtype=y.dtype))
        rhs = -jnp.einsum("mki,mk->mi", jac, field(y))
        return jax.scipy.linalg.cho_solve((factor, True), rhs[..., None])[..., 0]

    def matrix_free_step(y, mu):
        residual, jvp = jax.linearize(field, y)
        vjp = jax.linear_transpose(jvp, y)
        shift = (mu * scale)[:, None]

        def normal(p):
            return vjp(jvp(p))[0] + shift * p

        def conjugate_gradient(state, _):
            delta, r, p, rr = state
            normal_p = normal(p)
            alpha = rr / jnp.maximum(jnp.sum(p * normal_p, axis=1), tiny)
            delta = delta + alpha[:, None] * p
            r = r - alpha[:, None] * normal_p
            rr_next = jnp.sum(r * r, axis=1)
            p = r + (rr_next / jnp.maximum(rr, tiny))[:, None] * p
            return (delta, r, p, rr_next), None

        rhs = -vjp(residual)[0]
        init = (jnp.zeros_like(y), rhs, rhs, jnp.sum(rhs * rhs, axis=1))
        (delta, *_), _ = jax.lax.scan(conjugate_gradient, init, None, length=cg_steps)
        return delta

    def iteration(_, carry):
        y, q, mu = carry
        delta = dense_step(y, mu) if dense else matrix_free_step(y, mu)
        delta = jnp.where(jnp.all(jnp.isfinite(delta), axis=1, keepdims=True), delta, 0.0)
        q_trial = squared_speed(y + delta)
        better = q_trial < q
        return (
            jnp.where(better[:, None], y + delta, y),
            jnp.where(better, q_trial, q),
            jnp.where(better, 0.3 * mu, jnp.minimum(10.0 * mu, 1e20)),
        )

    # `steps` is traced (a loop bound, not a shape): blocks of any length share one compile.
    x, q, damping = jax.lax.fori_loop(0, steps, iteration, (x, squared_speed(x), damping))
    return x, jnp.sqrt(q), damping


_levenberg_marquardt_jit = eqx.filter_jit(_levenberg_marquardt)


# ---------------------------------------------------------------------------------------------
# Stage 2b: globalised dense Newton on the distinct candidates.


def _newton(
    model: mechscope.AbstractModel,
    x: Float[Array, "m n"],
    u: Float[Array, "m n_inputs"],
    steps: int,
) -> tuple[Float[Array, "m n"], Float[Array, " m"]]:
    """`steps` globalised Newton iterations from every row; end points and ‖f‖ there.

    Each iteration tries the Newton step at lengths 1, ½, ¼, 1/10 and the Cauchy step of the
    Gauss–Newton model of q = ½‖f‖² (which still descends where the Jacobian is singular),
    and keeps the trial with the smallest ‖f‖, or stays put when none improves.
    """

    def one(x, u):
        def residual(y):
            return model.vector_field(0.0, y, u)

        def norm(y):
            value = jnp.linalg.norm(residual(y))
            return jnp.where(jnp.isfinite(value), value, jnp.inf)

        def iteration(carry, _):
            x, fx = carry
            r = residual(x)
            jac = model.jacobian(0.0, x, u)
            newton = jnp.linalg.solve(jac, -r)
            newton = jnp.where(jnp.all(jnp.isfinite(newton)), newton, 0.0)
            gradient = jac.T @ r
            curvature = jnp.sum((jac @ gradient) ** 2)
            cauchy = -gradient * jnp.sum(gradient**2) / jnp.maximum(curvature, 1e-30)
            cauchy = jnp.where(jnp.all(jnp.isfinite(cauchy)), cauchy, 0.0)
            fractions = jnp.asarray([1.0, 0.5, 0.25, 0.1], x.dtype)
            trials = jnp.concatenate(
                [x + fractions[:, None] * newton[None, :], (x + cauchy)[None, :]]
            )
            norms = jax.vmap(norm)(trials)
            best = jnp.argmin(norms)
            better = norms[best] < fx
            return (jnp.where(better, trials[best], x), jnp.where(better, norms[best], fx)), None

        (x, fx), _ = jax.lax.scan(iteration, (x, norm(x)), None, length=steps)
        return x, fx

    return jax.vmap(one)(x, u)


_newton_jit = eqx.filter_jit(_newton)


def padded_size(m: int) -> int:
    """Rows to pad `m` to, so that a compiled row-wise function sees few distinct sizes.

    Up to 1,024 rows: the next power of two (at least 8). Above: the next of
    2^k·{1, 5/4, 3/2, 7/4}, which wastes at most a quarter of the work where the work is
    large (a power of two would run 9,216 rows as 16,384).
    """
    size = 1 << max(3, math.ceil(math.log2(max(m, 1))))
    if size <= 1024:
        return size
    quarter = size // 8  # a quarter of the power of two below
    return size // 2 + quarter * math.ceil((m - size // 2) / quarter)


def _pad_rows(a: np.ndarray, size: int, dtype) -> Array:
    """`a` with its first row repeated up to `size` rows, as a JAX array of `dtype`."""
    # Converted by NumPy: a conversion on the device would compile once per shape.
    padded = np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])
    return jnp.asarray(padded.astype(np.dtype(dtype), copy=False))


def _padded(function, model, x: np.ndarray, u: np.ndarray, dtype, *args):
    """Call a row-wise compiled `function` on rows padded to :func:`padded_size` rows."""
    m = len(x)
    size = padded_size(m)
    out = function(model, _pad_rows(x, size, dtype), _pad_rows(u, size, dtype), *args)
    if isinstance(out, tuple):
        return tuple(np.asarray(part, np.float64)[:m] for part in out)
    return np.asarray(out, np.float64)[:m]


# ---------------------------------------------------------------------------------------------
# Merging and unique-ing.


def _neighbours(points: np.ndarray, tol: float, block: int = 2048):
    """Boolean ``[m, m]`` matrix of pairs within `tol` (dense, from matrix products).

    In the state spaces here (tens to hundreds of dimensions) a k-d tree degenerates to brute
    force in Python-level loops; one matrix product per block of rows is much faster.
    """
    points = points - points.mean(axis=0)
    squared = np.sum(points**2, axis=1)
    # float32 products are twice as fast; their rounding of ‖a‖² + ‖b‖² − 2a·b (≈ 1e-7 of the
    # squared norms, ≤ 4 % of tol² here) is negligible unless `tol` is tiny next to the spread.
    if tol**2 > 5e-6 * squared.max(initial=0.0):
        points, squared = points.astype(np.float32), squared.astype(np.float32)
    near = np.empty((len(points), len(points)), dtype=bool)
    for lo in range(0, len(points), block):
        rows = points[lo : lo + block]
        distance = squared[lo : lo + block, None] + squared[None, :] - 2.0 * rows @ points.T
        near[lo : lo + block] = distance <= tol**2
    return near


def representatives(points: np.ndarray, score: np.ndarray, tol: float) -> np.ndarray:
    """Leaders of a greedy clustering of `points` ``[m, n]`` at radius `tol`, sorted.

    Points are visited by increasing `score`; each point not yet claimed becomes a leader and
    claims every unclaimed point within `tol` of it. Points with no neighbour lead themselves
    at once; only the others take the greedy pass.
    """
    m = len(points)
    if m == 0:
        return np.zeros(0, dtype=int)
    if m > 8192:  # keep the dense neighbour matrix under 64 MB
        return _representatives_tree(points, score, tol)
    near = _neighbours(points, tol)
    alone = near.sum(axis=1) <= 1
    claimed = alone.copy()
    leaders = list(np.flatnonzero(alone))
    for i in np.argsort(score, kind="stable"):
        if claimed[i]:
            continue
        leaders.append(i)
        claimed |= near[i]
        claimed[i] = True
    return np.sort(np.asarray(leaders, dtype=int))


def _representatives_tree(points: np.ndarray, score: np.ndarray, tol: float) -> np.ndarray:
    """:func:`representatives` with a k-d tree (for many points; only leaders query it)."""
    tree = cKDTree(points)
    claimed = np.zeros(len(points), dtype=bool)
    leaders = []
    for i in np.argsort(score, kind="stable"):
        if claimed[i]:
            continue
        leaders.append(i)
        claimed[tree.query_ball_point(points[i], tol)] = True
        claimed[i] = True
    return np.sort(np.asarray(leaders, dtype=int))


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


_POLISH_PLAN = (("newton", 1), ("lm", 4), ("bfgs", 8))


def _polish(
    model: mechscope.AbstractModel,
    x0: np.ndarray,
    u: np.ndarray,
    settings: SolverSettings,
    threshold: float,
    dtype: jnp.dtype,
    plan: tuple[tuple[str, int], ...] = _POLISH_PLAN,
) -> tuple[np.ndarray, np.ndarray]:
    """Each method of `plan` in turn (``(name, step factor)``), only where the previous failed.

    The default plan is Newton from every candidate, then Levenberg–Marquardt, then BFGS on q.
    """
    x, speed = x0.copy(), np.full(len(x0), np.inf)
    todo = np.arange(len(x0))
    for method, factor in plan:
        if len(todo) == 0:
            break
        new_x, new_speed = _padded(
            _solve_jit, model, x0[todo], u[todo], dtype, factor * settings.polish_steps, method
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
    values, vectors = np.linalg.eig(_jacobians(model, points, inputs, dtype))
    return values, vectors


_jacobians_jit = eqx.filter_jit(
    lambda model, x, u: jax.vmap(lambda y, v: model.jacobian(0.0, y, v))(x, u)
)


def _jacobians(model: mechscope.AbstractModel, x: np.ndarray, u: np.ndarray, dtype) -> np.ndarray:
    """∂f/∂x at each row of `x` (inputs `u`), computed in `dtype`, as a float64 array."""
    host = np.dtype(dtype)
    jac = _jacobians_jit(model, jnp.asarray(np.asarray(x, host)), jnp.asarray(np.asarray(u, host)))
    return np.asarray(jac, dtype=np.float64)


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


def _norms(model, x, u):
    return jnp.linalg.norm(jax.vmap(lambda y, v: model.vector_field(0.0, y, v))(x, u), axis=1)


_norms_jit = eqx.filter_jit(_norms)


def _merge_indices(
    x: np.ndarray, row_input: np.ndarray, score: np.ndarray, radius: float
) -> np.ndarray:
    """Rows that represent their cluster (radius `radius`, per input, lowest `score`), sorted.

    Non-finite rows are dropped.
    """
    finite = np.flatnonzero(np.all(np.isfinite(x), axis=1) & np.isfinite(score))
    if len(finite) == 0:
        return finite
    keep = _unique_per_input(x[finite], row_input[finite], score[finite], radius)
    return finite[keep]


def _near_known(x, row_input, known_x, known_k, radius) -> np.ndarray:
    """Whether each row lies within `radius` of a known point of the same input."""
    near = np.zeros(len(x), dtype=bool)
    if len(x) == 0 or not known_x:
        return near
    points = np.concatenate(known_x)
    inputs = np.concatenate(known_k)
    for k in np.unique(row_input):
        mine = points[inputs == k]
        if len(mine) == 0:
            continue
        rows = np.flatnonzero(row_input == k)
        distance, _ = cKDTree(mine).query(x[rows], k=1, distance_upper_bound=radius)
        near[rows] = np.isfinite(distance)
    return near


def _survivors(
    x: np.ndarray,
    row_input: np.ndarray,
    norm: np.ndarray,
    leaving: np.ndarray,
    known_x: list[np.ndarray],
    known_k: list[np.ndarray],
    merge_radius: float,
) -> np.ndarray:
    """Rows that go on to the next block of a search, sorted.

    These are the rows not `leaving`, minus those within `merge_radius` of a known point of
    their input (they would find it again), one per cluster of the rest (lowest ‖f‖ leads).
    """
    going = np.flatnonzero(~leaving)
    going = going[~_near_known(x[going], row_input[going], known_x, known_k, merge_radius)]
    return going[_merge_indices(x[going], row_input[going], norm[going], merge_radius)]


def _prefer_relaxed(
    model: mechscope.AbstractModel,
    x: np.ndarray,
    row_input: np.ndarray,
    relaxed: np.ndarray,
    inputs: np.ndarray,
    merge_radius: float,
    dtype: jnp.dtype,
    most: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per input, the relaxed candidates where the flow merged them, else the raw starts.

    Where an input's flow is dominated by attractors, relaxation collapses the starts onto a
    few points (plus the saddles they passed) and the search need only solve from those.
    Where it is not (a chaotic flow), relaxed points stay as many as the starts and are worse
    starting points than the starts themselves (they sit on the attractor, far from the
    unstable zeros), so that input keeps its raw starts.

    Args:
        model: the model.
        x: raw starts, one row per (input, start) pair.
        row_input: input of each row.
        relaxed: ``[2, rows, n]``: each row's end point and slowest point after relaxation.
        inputs: the constant inputs.
        merge_radius: candidates closer than this are merged.
        dtype: working dtype.
        most: the most distinct relaxed candidates an input may have to use them.

    Returns:
        The rows to search from, their inputs and ‖f‖ there.
    """
    relaxed_x = relaxed.reshape(-1, relaxed.shape[-1])
    relaxed_k = np.tile(row_input, 2)
    relaxed_norm = _padded(_norms_jit, model, relaxed_x, inputs[relaxed_k], dtype)
    keep = _merge_indices(relaxed_x, relaxed_k, relaxed_norm, merge_radius)
    use = np.bincount(relaxed_k[keep], minlength=len(inputs)) <= most
    keep = keep[use[relaxed_k[keep]]]
    raw = np.flatnonzero(~use[row_input])
    raw_norm = (
        _padded(_norms_jit, model, x[raw], inputs[row_input[raw]], dtype)
        if len(raw)
        else np.zeros(0)
    )
    return (
        np.concatenate([x[raw], relaxed_x[keep]]),
        np.concatenate([row_input[raw], relaxed_k[keep]]),
        np.concatenate([raw_norm, relaxed_norm[keep]]),
    )


#: Most elements of one [rows, n, n] array in a dense LM call (2^26 float32 = 256 MB).
_DENSE_ELEMENTS = 1 << 26


def _lm_block(
    model: mechscope.AbstractModel,
    x: np.ndarray,
    u: np.ndarray,
    damping: np.ndarray,
    steps: int,
    settings: SolverSettings,
    key: Array,
    dtype: jnp.dtype,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`steps` LM iterations from every row: end points, ‖f‖ there and the damping.

    Rows are padded to a compiled size (at least 64: the few rows left at the end of a search
    then share one program, and padding them costs less than compiling for every power of two
    below). Dense steps hold a few [rows, n, n] arrays at once, so they run on chunks of at
    most ``_DENSE_ELEMENTS`` / n² rows.
    """
    dense = settings.search == "dense_lm"
    m = len(x)
    chunk = max(64, _DENSE_ELEMENTS // x.shape[1] ** 2) if dense else max(m, 1)
    parts = []
    for lo in range(0, m, chunk):
        rows = slice(lo, lo + chunk)
        size = padded_size(max(len(x[rows]), 64))
        out = _levenberg_marquardt_jit(
            model,
            _pad_rows(x[rows], size, dtype),
            _pad_rows(u[rows], size, dtype),
            _pad_rows(damping[rows], size, dtype),
            jnp.asarray(steps, jnp.int32),
            settings.lm_cg_steps,
            key,
            dense,
        )
        parts.append([np.asarray(a, np.float64)[: len(x[rows])] for a in out])
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def _lm_search(
    model: mechscope.AbstractModel,
    x: np.ndarray,
    row_input: np.ndarray,
    inputs: np.ndarray,
    settings: SolverSettings,
    handoff: float,
    merge_radius: float,
    dtype: jnp.dtype,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Levenberg–Marquardt on every row until it comes within `handoff` of a zero.

    Matrix-free steps, or exact dense ones with ``settings.search == "dense_lm"``.

    After every block of iterations, rows with ‖f‖ ≤ `handoff` leave (for dense Newton); rows
    that come within `merge_radius` of a row that left, or of each other, are merged.

    Returns:
        ``(points, input index, ‖f‖)`` of the rows that came close, and of those that did not
        within ``settings.lm_steps`` iterations (slow-point candidates).
    """
    close_x, close_k, close_norm = [], [], []
    damping = np.full(len(x), 1e-2)
    norm = np.full(len(x), np.inf)
    key = jax.random.key(0)
    done = 0
    while done < settings.lm_steps and len(x):
        m = len(x)
        # Short blocks while the batch is large (rows leave and merge between blocks); long
        # ones for the few rows left (each call has a fixed cost).
        steps = min(4 if m > 256 else 16, settings.lm_steps - done)
        new_x, new_norm, damping = _lm_block(
            model,
            x,
            inputs[row_input],
            damping,
            steps,
            settings,
            jax.random.fold_in(key, done),
            dtype,
        )
        done += steps
        finite = np.all(np.isfinite(new_x), axis=1) & np.isfinite(new_norm)
        x, norm = np.where(finite[:, None], new_x, x), np.where(finite, new_norm, norm)
        close = norm <= handoff
        close_x.append(x[close])
        close_k.append(row_input[close])
        close_norm.append(norm[close])
        going = _survivors(x, row_input, norm, close, close_x, close_k, merge_radius)
        x, row_input, norm, damping = x[going], row_input[going], norm[going], damping[going]
    n = x.shape[1]
    close = (
        np.concatenate(close_x) if close_x else np.zeros((0, n)),
        np.concatenate(close_k).astype(int) if close_k else np.zeros(0, dtype=int),
        np.concatenate(close_norm) if close_norm else np.zeros(0),
    )
    return close, (x, row_input, norm)


def _full_precision(function):
    """Run `function` with full-precision matrix products.

    On GPUs, JAX's default float32 matrix products use TF32 (a 10-bit mantissa), too coarse
    for Newton to converge to the tolerances here. CPUs compute them in full precision either
    way.
    """

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return function(*args, **kwargs)

    return wrapped


@_full_precision
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

    dtype32 = _model_dtype(model)
    x = np.tile(starts_np, (k, 1))
    row_input = np.repeat(np.arange(k), s)
    u = inputs_np[row_input]

    # Stage 1: every (input, start) pair relaxes along the flow in one compiled call; starts
    # that fall into the same attractor end up together and are merged.
    merge_radius = settings.merge_tol * scale
    if settings.relax_steps > 0 and len(x):
        # One step length for all inputs: the spectrum at the centroid sets the time scale
        # (for a CT-RNN the Jacobian does not depend on the input at all).
        step = settings.relax_step or relaxation_step(model, center_np, inputs_np[-1])
        relaxed = _padded(
            _relax_jit, model, x, u, dtype32, jnp.asarray(step, dtype32), settings.relax_steps
        )
        x, row_input, norm = _prefer_relaxed(
            model,
            x,
            row_input,
            np.stack(relaxed),
            inputs_np,
            merge_radius,
            dtype32,
            settings.relaxed_fraction * s,
        )
    else:
        norm = _padded(_norms_jit, model, x, u, dtype32)
    converged_radius = settings.unique_tol * scale * 10
    newton_tol = settings.newton_tol * speed_scale
    keep = _merge_indices(x, row_input, norm, merge_radius)
    x, row_input, norm = x[keep], row_input[keep], norm[keep]
    n_candidates = len(x)

    found_x, found_k, slow_x, slow_k, slow_norm = [], [], [], [], []
    # Stage 2a: Levenberg–Marquardt (matrix-free or dense) brings every candidate near a zero
    # (or a minimum of q that is not one); only those that come close go on to dense Newton.
    if settings.search in ("lm", "dense_lm") and len(x):
        (x, row_input, norm), (far_x, far_k, far_norm) = _lm_search(
            model,
            x,
            row_input,
            inputs_np,
            settings,
            settings.handoff_tol * speed_scale,
            merge_radius,
            dtype32,
        )
        slow_x.append(far_x)
        slow_k.append(far_k)
        slow_norm.append(far_norm)
        keep = _merge_indices(x, row_input, norm, merge_radius)
        x, row_input, norm = x[keep], row_input[keep], norm[keep]

    # Stage 2b: globalised float32 Newton on the distinct candidates. After every block of
    # iterations, converged rows leave; rows that reach an already converged point, or each
    # other, are merged; rows that stop making progress are kept as slow-point candidates.
    stalled_blocks = np.zeros(len(x), dtype=int)
    block = 2
    for _ in range(0, settings.newton_steps, block):
        if len(x) == 0:
            break
        new_x, new_norm = _padded(_newton_jit, model, x, inputs_np[row_input], dtype32, block)
        finite = np.all(np.isfinite(new_x), axis=1) & np.isfinite(new_norm)
        progress = finite & (new_norm < 0.8 * norm)
        stalled_blocks = np.where(progress, 0, stalled_blocks + 1)
        x, norm = np.where(finite[:, None], new_x, x), np.where(finite, new_norm, norm)
        done = norm <= newton_tol
        found_x.append(x[done])
        found_k.append(row_input[done])
        stuck = ~done & (stalled_blocks >= settings.stall_blocks)
        slow_x.append(x[stuck])
        slow_k.append(row_input[stuck])
        slow_norm.append(norm[stuck])
        going = _survivors(x, row_input, norm, done | stuck, found_x, found_k, merge_radius)
        x, row_input, norm, stalled_blocks = (
            x[going],
            row_input[going],
            norm[going],
            stalled_blocks[going],
        )
    slow_x.append(x)
    slow_k.append(row_input)
    slow_norm.append(norm)
    n = starts_np.shape[1]
    found_x = np.concatenate(found_x) if found_x else np.zeros((0, n))
    found_k = np.concatenate(found_k) if found_k else np.zeros(0, dtype=int)
    keep = _merge_indices(found_x, found_k, np.zeros(len(found_x)), converged_radius)
    found_x, found_k = found_x[keep], found_k[keep]
    slow_x, slow_k, slow_norm = (
        np.concatenate(slow_x),
        np.concatenate(slow_k),
        np.concatenate(slow_norm),
    )
    # Only minima of q that could be slow points are worth polishing; slow regions are
    # extended, so their candidates are merged at a coarser radius.
    promising = slow_norm <= settings.slow_tol * speed_scale
    slow_x, slow_k = slow_x[promising], slow_k[promising]
    keep = _merge_indices(slow_x, slow_k, slow_norm[promising], 10 * merge_radius)
    slow_x, slow_k = slow_x[keep], slow_k[keep]

    # Stage 3: polish the converged candidates (Newton, LM, BFGS) and the slow-point candidates
    # (BFGS on q) in float64 with optimistix.
    context = jax.enable_x64(True) if settings.float64 else _nullcontext()
    with context:
        dtype = jnp.float64 if settings.float64 else dtype32
        wide = _cast(model, dtype)
        threshold = settings.fixed_tol * speed_scale
        polished_found, speed_found = _polish(
            wide, found_x, inputs_np[found_k], settings, threshold, dtype
        )
        polished_slow, speed_slow = _polish(
            wide, slow_x, inputs_np[slow_k], settings, threshold, dtype, plan=(("bfgs", 1),)
        )
        polished = np.concatenate([polished_found, polished_slow])
        speed = np.concatenate([speed_found, speed_slow])
        cand_k = np.concatenate([found_k, slow_k]).astype(int)
        finite = np.all(np.isfinite(polished), axis=1) & np.isfinite(speed)
        near = np.linalg.norm(polished - center_np, axis=1) <= settings.outlier_scale * scale
        is_fixed = finite & near & (speed <= settings.fixed_tol * speed_scale)
        is_slow = finite & near & ~is_fixed & (speed <= settings.slow_tol * speed_scale)
        fixed_rows = np.flatnonzero(is_fixed)
        fixed_rows = fixed_rows[
            _unique_per_input(
                polished[fixed_rows],
                cand_k[fixed_rows],
                speed[fixed_rows],
                settings.unique_tol * scale,
            )
        ]
        slow_rows = np.flatnonzero(is_slow)
        slow_rows = slow_rows[
            _unique_per_input(
                polished[slow_rows],
                cand_k[slow_rows],
                speed[slow_rows],
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
        n_candidates=n_candidates,
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
    dtype = _model_dtype(model)
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
    rows = rows[
        _unique_per_input(flat_x[rows], flat_k[rows], flat_q[rows], settings.golub_unique_tol)
    ]
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
