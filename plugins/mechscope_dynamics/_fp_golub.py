"""FixedPointFinder compatibility (Golub & Sussillo 2018): Adam on q of the discrete map.

The model is treated as the discrete map F(x) = x + dt·f(x, u); q = ½‖F(x) − x‖² of all
starts is minimised jointly with Adam under an adaptive learning rate, and every unique end
point is reported with its q (slow points included, as FixedPointFinder does), stable when
every |λ(∂F/∂x)| < 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

import mechscope
from mechscope_dynamics._fp_clustering import unique_per_input
from mechscope_dynamics._fp_kernels import eigen, model_dtype, sort_modes
from mechscope_dynamics._fp_search import AbstractSearch
from mechscope_dynamics._fp_types import FixedPoints, Problem

if TYPE_CHECKING:
    from mechscope_dynamics._fp_config import SolverConfig


class GolubSearch(AbstractSearch):
    """FixedPointFinder's search: Adam on q of the discrete map from every start.

    Of the shared settings only ``outlier_scale`` applies.

    Attributes:
        dt: time step of the discrete map.
        max_iters: most Adam iterations.
        tol_q: stop when every q is below this.
        tol_dq: stop when the mean q changes by less than this.
        learning_rate: initial Adam learning rate.
        unique_tol: absolute distance below which end points are the same.
    """

    dt: float
    max_iters: int = 5000
    tol_q: float = 1e-12
    tol_dq: float = 1e-20
    learning_rate: float = 1.0
    unique_tol: float = 1e-3

    def find(
        self, model: mechscope.AbstractModel, problem: Problem, settings: SolverConfig
    ) -> FixedPoints:
        """Minimise q from every start, unique the end points and classify them (|λ| < 1)."""
        inputs, starts = problem.inputs, problem.starts
        k, s = len(inputs), len(starts)
        dtype = model_dtype(model)
        tiled = jnp.broadcast_to(jnp.asarray(starts, dtype), (k, s, starts.shape[1]))
        x, q = _optimise(model, jnp.asarray(inputs, dtype), tiled, self)
        x, q = np.asarray(x, np.float64), np.asarray(q, np.float64)
        flat_x = x.reshape(k * s, -1)
        flat_q = q.reshape(-1)
        flat_k = np.repeat(np.arange(k), s)
        finite = np.all(np.isfinite(flat_x), axis=1) & np.isfinite(flat_q)
        rows = np.flatnonzero(finite)
        rows = rows[unique_per_input(flat_x[rows], flat_k[rows], flat_q[rows], self.unique_tol)]
        # Distance outliers, as FixedPointFinder: far from the centroid relative to the spread.
        distance = np.linalg.norm(flat_x[rows] - problem.center, axis=1)
        rows = rows[distance <= settings.outlier_scale * problem.scale]
        points = flat_x[rows]
        values, vectors = eigen(model, points, inputs[flat_k[rows]], dtype)
        # Eigenvalues of the discrete map F(x) = x + dt f(x): 1 + dt λ.
        values = 1.0 + self.dt * values
        values, vectors = sort_modes(values, vectors, np.abs(values))
        stable = np.abs(values[:, 0]) < 1 if len(values) else np.zeros(0, dtype=bool)
        speed = np.sqrt(2 * flat_q[rows]) / self.dt
        n = problem.n_units
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


def _golub_optimise(
    model: mechscope.AbstractModel,
    inputs: Float[Array, "k n_inputs"],
    starts: Float[Array, "k s n"],
    search: GolubSearch,
) -> tuple[Float[Array, "k s n"], Float[Array, "k s"]]:
    """Adam on the mean q over every (input, start) until q, or its change, is small."""
    dt = search.dt

    def q_one(x, u):
        step = dt * model.vector_field(0.0, x, u)  # F(x) − x for the Euler map
        return 0.5 * jnp.sum(step**2)

    q_all = jax.vmap(jax.vmap(q_one, in_axes=(0, None)), in_axes=(0, 0))

    def loss(x):
        return jnp.mean(q_all(x, inputs))

    optimiser = optax.inject_hyperparams(optax.adam)(learning_rate=search.learning_rate)
    state = optimiser.init(starts)

    def cond(carry):
        i, x, _, _, _, dq = carry
        q = q_all(x, inputs)
        return (i < search.max_iters) & (jnp.max(q) > search.tol_q) & (dq > search.tol_dq)

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

    init = (0, starts, state, jnp.asarray(search.learning_rate), jnp.asarray(jnp.inf), jnp.inf)
    _, x, *_ = jax.lax.while_loop(cond, body, init)
    return x, q_all(x, inputs)


_optimise = eqx.filter_jit(_golub_optimise)
