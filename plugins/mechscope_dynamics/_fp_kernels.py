"""JAX iterations of the fixed-point solver: relaxation, dense Newton, polish, linearisation.

Every kernel works on a batch of rows (one state and its constant input per row) and is
compiled once per padded batch size (see :mod:`mechscope_dynamics._fp_batching`). The
Levenberg–Marquardt kernel lives with its searches in :mod:`mechscope_dynamics._fp_lm`.
"""

from __future__ import annotations

from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float, Int

import mechscope
from mechscope_dynamics._fp_batching import call_padded


def cast_model(model: mechscope.AbstractModel, dtype: Any) -> mechscope.AbstractModel:
    """`model` with every floating array leaf cast to `dtype`."""
    return jax.tree.map(
        lambda leaf: leaf.astype(dtype) if eqx.is_inexact_array(leaf) else leaf, model
    )


def model_dtype(model: mechscope.AbstractModel) -> Any:
    """The floating dtype of the model's parameters (the solver's working precision)."""
    return jnp.result_type(*[leaf for leaf in jax.tree.leaves(model) if eqx.is_array(leaf)])


def batched_field(
    model: mechscope.AbstractModel, x: Float[Array, "m n"], u: Float[Array, "m n_inputs"]
) -> Float[Array, "m n"]:
    """f(x, u) at t = 0 for every row."""
    return jax.vmap(lambda y, v: model.vector_field(0.0, y, v))(x, u)


# ---------------------------------------------------------------------------------------------
# Relaxation along the flow (one matrix product per row and step).


def _relax(
    model: mechscope.AbstractModel,
    x: Float[Array, "m n"],
    u: Float[Array, "m n_inputs"],
    step: Float[Array, ""],
    steps: int,
) -> tuple[Float[Array, "m n"], Float[Array, "m n"]]:
    """Forward-Euler steps along the flow from every row; non-finite rows stay where they were.

    Returns:
        The end points and, per row, the slowest point before the speed first rose to twice
        its running minimum: where the path passed a saddle (or a slow region) on its way.
        Paths that pass near a saddle leave it along its unstable manifold, so their end
        points do not show it; the speed minimum does.
    """

    def body(carry, _):
        y, slowest, slowest_speed, passed = carry
        velocity = batched_field(model, y, u)
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


relax = eqx.filter_jit(_relax)


def relaxation_step(model: mechscope.AbstractModel, x: np.ndarray, u: np.ndarray) -> float:
    """Euler step that follows the flow near `x`: 1 / (spectral radius of ∂f/∂x at `x`, `u`).

    Every eigenvalue λ then has |hλ| ≤ 1, so the stable modes decay (|1 + hλ| < 1) and the
    unstable ones grow, as in the continuous flow.
    """
    dtype = model_dtype(model)
    jac = jacobians(model, np.asarray(x)[None], np.asarray(u)[None], dtype)[0]
    radius = float(np.max(np.abs(np.linalg.eigvals(jac)))) if np.all(np.isfinite(jac)) else 0.0
    return 1.0 / radius if radius > 0 else 1.0


def _norms(
    model: mechscope.AbstractModel, x: Float[Array, "m n"], u: Float[Array, "m n_inputs"]
) -> Float[Array, " m"]:
    return jnp.linalg.norm(batched_field(model, x, u), axis=1)


norms = eqx.filter_jit(_norms)


# ---------------------------------------------------------------------------------------------
# Globalised dense Newton on the distinct candidates.


def _globalised_step(
    residual: Any,
    x: Float[Array, " n"],
    fx: Float[Array, ""],
    r: Float[Array, " n"],
    jac: Float[Array, "n n"],
    newton: Float[Array, " n"],
) -> tuple[Float[Array, " n"], Float[Array, ""]]:
    """The best of the Newton step `newton` at lengths 1, ½, ¼, 1/10 and the Cauchy step.

    `r` = f(x) and `jac` ≈ ∂f/∂x at x; the Cauchy step is that of the Gauss–Newton model of
    q = ½‖f‖² (which still descends where the Jacobian is singular). Returns the trial with
    the smallest ‖f‖ and that ‖f‖, or (x, `fx`) when none is below `fx`.
    """
    newton = jnp.where(jnp.all(jnp.isfinite(newton)), newton, 0.0)
    gradient = jac.T @ r
    curvature = jnp.sum((jac @ gradient) ** 2)
    cauchy = -gradient * jnp.sum(gradient**2) / jnp.maximum(curvature, 1e-30)
    cauchy = jnp.where(jnp.all(jnp.isfinite(cauchy)), cauchy, 0.0)
    fractions = jnp.asarray([1.0, 0.5, 0.25, 0.1], x.dtype)
    trials = jnp.concatenate([x + fractions[:, None] * newton[None, :], (x + cauchy)[None, :]])
    norms = jax.vmap(lambda y: _speed(residual, y))(trials)
    best = jnp.argmin(norms)
    better = norms[best] < fx
    return jnp.where(better, trials[best], x), jnp.where(better, norms[best], fx)


def _speed(residual: Any, y: Float[Array, " n"]) -> Float[Array, ""]:
    """‖f(y)‖, or ∞ where it is not finite."""
    value = jnp.linalg.norm(residual(y))
    return jnp.where(jnp.isfinite(value), value, jnp.inf)


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

        def iteration(carry, _):
            x, fx = carry
            r = residual(x)
            jac = model.jacobian(0.0, x, u)
            return _globalised_step(residual, x, fx, r, jac, jnp.linalg.solve(jac, -r)), None

        (x, fx), _ = jax.lax.scan(iteration, (x, _speed(residual, x)), None, length=steps)
        return x, fx

    return jax.vmap(one)(x, u)


newton = eqx.filter_jit(_newton)


def _continuation(
    model: mechscope.AbstractModel,
    x: Float[Array, "m n"],
    u_from: Float[Array, "m n_inputs"],
    u_to: Float[Array, "m n_inputs"],
    steps: Int[Array, ""],
    iterations: int,
    steps_per_factorisation: int = 2,
) -> tuple[Float[Array, "m n"], Float[Array, " m"]]:
    """Every row followed from input `u_from` to `u_to` in `steps` equal steps of the input.

    At step i the input is u(σ) = (1 − σ) u_from + σ u_to with σ = i / `steps`. Each row
    starts from the secant prediction 2·x_i − x_{i−1} (the branch's last step repeated)
    where that is slower than x_i, and takes `iterations` globalised chord iterations: the
    trials of :func:`_newton`, with a factorised Jacobian used for all of them. The Jacobian
    is evaluated at the step's start and factorised (an LU and its pivots) once every
    `steps_per_factorisation` steps and at the last step; the steps in between reuse it.
    Near a smooth branch the chord iteration converges about as fast as Newton's, and the
    factorisation, not the two triangular solves, is most of a step's cost: a Jacobian from
    one step back (a small change of the input) slows the convergence little, and halves
    that cost. Without the prediction, three chord iterations lose the chaotic benchmark
    network's input-3 attractor, which three Newton iterations find. All steps run in one
    compiled loop (`steps` is traced: any number of steps shares one program).

    Returns:
        The end points (for `u_to`) and ‖f‖ there.
    """
    n = x.shape[1]

    def one(x, u_from, u_to):
        def step(i, carry):
            y, previous, _, factorised = carry
            fraction = (i + 1).astype(y.dtype) / steps.astype(y.dtype)
            u = (1.0 - fraction) * u_from + fraction * u_to

            def residual(z):
                return model.vector_field(0.0, z, u)

            # Secant predictor: the branch's last step repeated, where that lands closer to
            # the new zero than the last zero does.
            predicted = 2.0 * y - previous
            start = jnp.where(_speed(residual, predicted) < _speed(residual, y), predicted, y)

            def factorise(_):
                jac = model.jacobian(0.0, start, u)
                lu, _, permutation = jax.lax.linalg.lu(jac)
                return jac, lu, permutation

            # The step number is the same for every row, so this stays a branch under vmap.
            # The last step factorises too: its end point is the one handed on.
            fresh = (i % steps_per_factorisation == 0) | (i == steps - 1)
            jac, lu, permutation = jax.lax.cond(fresh, factorise, lambda _: factorised, None)

            def chord(rhs):  # jac · δ = rhs, from the factorisation
                lower = jax.lax.linalg.triangular_solve(
                    lu, rhs[permutation][:, None], left_side=True, lower=True, unit_diagonal=True
                )
                return jax.lax.linalg.triangular_solve(lu, lower, left_side=True, lower=False)[:, 0]

            def iteration(carry, _):
                z, fz = carry
                r = residual(z)
                return _globalised_step(residual, z, fz, r, jac, chord(-r)), None

            (end, speed), _ = jax.lax.scan(
                iteration, (start, _speed(residual, start)), None, length=iterations
            )
            return end, y, speed, (jac, lu, permutation)

        # Step 0 factorises (0 % anything is 0), so the placeholder factors are never used.
        placeholder = (
            jnp.zeros((n, n), x.dtype),
            jnp.eye(n, dtype=x.dtype),
            jnp.arange(n, dtype=jnp.int32),
        )
        init = (x, x, jnp.asarray(jnp.inf, x.dtype), placeholder)
        end, _, speed, _ = jax.lax.fori_loop(0, steps, step, init)
        return end, speed

    return jax.vmap(one)(x, u_from, u_to)


continuation = eqx.filter_jit(_continuation)


# ---------------------------------------------------------------------------------------------
# Polishing with optimistix.

PolishMethod = Literal["newton", "lm", "bfgs"]


def _polish_solve(
    model: mechscope.AbstractModel,
    x0: Float[Array, "m n"],
    u: Float[Array, "m n_inputs"],
    steps: int,
    method: PolishMethod,
) -> tuple[Float[Array, "m n"], Float[Array, " m"]]:
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


polish_solve = eqx.filter_jit(_polish_solve)


# ---------------------------------------------------------------------------------------------
# Linearisation.


def _batched_jacobians(
    model: mechscope.AbstractModel, x: Float[Array, "m n"], u: Float[Array, "m n_inputs"]
) -> Float[Array, "m n n"]:
    return jax.vmap(lambda y, v: model.jacobian(0.0, y, v))(x, u)


_jacobians_jit = eqx.filter_jit(_batched_jacobians)


def jacobians(
    model: mechscope.AbstractModel, x: np.ndarray, u: np.ndarray, dtype: Any
) -> np.ndarray:
    """∂f/∂x at each row of `x` (inputs `u`), computed in `dtype`, as a float64 array.

    One :func:`~mechscope_dynamics._fp_batching.call_padded` call (the number of points
    differs from call to call, and each new number would compile anew).
    """
    return call_padded(_jacobians_jit, model, np.asarray(x), np.asarray(u), dtype)


def eigen(
    model: mechscope.AbstractModel, points: np.ndarray, inputs: np.ndarray, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``[m, n]`` and right eigenvectors ``[m, n, n]`` of ∂f/∂x at each point."""
    if len(points) == 0:
        n = points.shape[1]
        return np.zeros((0, n), complex), np.zeros((0, n, n), complex)
    values, vectors = np.linalg.eig(jacobians(model, points, inputs, dtype))
    return values, vectors


def sort_modes(
    values: np.ndarray, vectors: np.ndarray, key: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of every point in order of decreasing `key`."""
    order = np.argsort(-key, axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)
    vectors = np.take_along_axis(vectors, order[:, None, :], axis=2)
    return values, vectors
