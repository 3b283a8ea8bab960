"""Levenberg–Marquardt searches: one LM loop, matrix-free (CG) or dense (Cholesky) steps.

Both searches take the same iterations: each solves the damped normal equations
(JᵀJ + μ·tr(JᵀJ)/n·I) δ = −Jᵀf per row with a lineax solver, takes the step if it lowers
‖f‖ (μ ← 0.3μ), else μ ← 10μ. They differ only in how that linear system is posed and solved
(:meth:`AbstractLMSearch.damped_step`):

* :class:`MatrixFreeLMSearch`: a matrix-free operator v ↦ Jᵀ(Jv) + shift·v from the vector
  field's JVP and VJP (for a recurrent network, one matrix product with the shared weights
  each), solved by a fixed number of conjugate-gradient iterations (:class:`FixedStepCG`,
  a lineax solver), with
  tr(JᵀJ) estimated once per call from random sign vectors;
* :class:`DenseLMSearch`: each row's Jacobian formed and the normal matrix factorised
  (``lx.Cholesky``), tr(JᵀJ) exact at every iteration: the exact LM path, at the cost of a
  dense factorisation per row and iteration (meant for accelerators).
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

import mechscope
from mechscope_dynamics._fp_batching import call_in_pieces
from mechscope_dynamics._fp_clustering import merged, survivors
from mechscope_dynamics._fp_kernels import batched_field
from mechscope_dynamics._fp_search import AbstractCandidateSearch
from mechscope_dynamics._fp_types import Candidates, Problem


class AbstractLMSearch(AbstractCandidateSearch):
    """Levenberg–Marquardt on every candidate until it comes close to a zero, then Newton.

    Attributes:
        steps: most LM iterations per candidate.
        handoff_tol: a candidate leaves LM for dense Newton when ‖f‖ ≤ handoff_tol × speed
            scale.
    """

    steps: eqx.AbstractVar[int]
    handoff_tol: eqx.AbstractVar[float]

    @abc.abstractmethod
    def prepare(
        self,
        model: mechscope.AbstractModel,
        x: Float[Array, "m n"],
        u: Float[Array, "m n_inputs"],
        keys: PRNGKeyArray,
    ) -> Any:
        """Whatever :meth:`damped_step` needs once per call of the LM kernel.

        `keys` holds one key per row (derived from the row's own number, so a row's random
        draws do not depend on which rows share its call).
        """

    @abc.abstractmethod
    def damped_step(
        self,
        model: mechscope.AbstractModel,
        y: Float[Array, "m n"],
        u: Float[Array, "m n_inputs"],
        damping: Float[Array, " m"],
        prepared: Any,
    ) -> Float[Array, "m n"]:
        """The LM step δ of every row: (JᵀJ + μ·tr(JᵀJ)/n·I) δ = −Jᵀf."""

    @abc.abstractmethod
    def chunk_rows(self, n_units: int) -> int | None:
        """Most rows per chunk of LM kernel calls (None: one chunk; each runs in pieces)."""

    def approach(
        self,
        model: mechscope.AbstractModel,
        candidates: Candidates,
        problem: Problem,
        merge_radius: float,
        dtype: Any,
    ) -> tuple[Candidates, Candidates]:
        """LM on every candidate until it comes within the handoff of a zero.

        After every block of iterations, rows with ‖f‖ ≤ handoff leave (for dense Newton);
        rows that come within `merge_radius` of a row that left, or of each other, are merged.

        Returns:
            The rows that came close (merged), and those that did not within ``steps``
            iterations (slow-point candidates).
        """
        handoff = self.handoff_tol * problem.speed_scale
        close: list[Candidates] = []
        damping = np.full(len(candidates), 1e-2)
        candidates = Candidates(candidates.x, candidates.input, np.full(len(candidates), np.inf))
        # Rows whose steps no longer move them (see below) stay with the others for merging
        # but are not iterated: their iterations would change nothing.
        frozen = np.zeros(len(candidates), dtype=bool)
        # Each row keeps its number: its random draws derive from it, wherever it is batched.
        numbers = np.arange(len(candidates), dtype=np.int32)
        key = jax.random.key(0)
        done = 0
        while done < self.steps and len(candidates):
            # Short blocks while the batch is large (rows leave and merge between blocks); long
            # ones for the few rows left (each call has a fixed cost).
            steps = min(4 if len(candidates) > 256 else 16, self.steps - done)
            active = np.flatnonzero(~frozen)
            new_x, new_norm = candidates.x.copy(), candidates.norm.copy()
            if len(active):
                new_x[active], new_norm[active], damping[active] = self.block(
                    model,
                    candidates.x[active],
                    problem.inputs[candidates.input[active]],
                    damping[active],
                    numbers[active],
                    steps,
                    jax.random.fold_in(key, done),
                    dtype,
                )
            done += steps
            finite = np.all(np.isfinite(new_x), axis=1) & np.isfinite(new_norm)
            # A row whose damping has grown past _FROZEN_DAMPING while a whole block left its
            # ‖f‖ unchanged takes steps below its dtype's resolution: every later trial is
            # rejected (x + δ = x), so the damping only grows and the row never moves again.
            frozen |= (damping >= _FROZEN_DAMPING) & (new_norm == candidates.norm)
            candidates = Candidates(
                np.where(finite[:, None], new_x, candidates.x),
                candidates.input,
                np.where(finite, new_norm, candidates.norm),
            )
            arrived = candidates.norm <= handoff
            close.append(candidates.take(arrived))
            going = survivors(candidates, arrived, close, merge_radius)
            candidates, damping = candidates.take(going), damping[going]
            frozen, numbers = frozen[going], numbers[going]
        return merged(Candidates.concatenate(close, problem.n_units), merge_radius), candidates

    def block(
        self,
        model: mechscope.AbstractModel,
        x: np.ndarray,
        u: np.ndarray,
        damping: np.ndarray,
        numbers: np.ndarray,
        steps: int,
        key: PRNGKeyArray,
        dtype: Any,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`steps` LM iterations from every row: end points, ‖f‖ there and the damping.

        Rows run in pieces spread over the CPU cores
        (:func:`~mechscope_dynamics._fp_batching.call_in_pieces`), each padded to a compiled
        size of at least 64 rows (the few rows left at the end of a search then share one
        program, and padding them costs less than compiling for every power of two below),
        in chunks of at most :meth:`chunk_rows` rows. `numbers` are the rows' own numbers,
        from which their random draws derive.
        """
        m = len(x)
        chunk = self.chunk_rows(x.shape[1]) or max(m, 1)
        parts = [
            call_in_pieces(
                levenberg_marquardt,
                model,
                (x[rows], u[rows], damping[rows], numbers[rows]),
                dtype,
                jnp.asarray(steps, jnp.int32),
                self,
                key,
                least=64,
            )
            for rows in (slice(lo, lo + chunk) for lo in range(0, m, chunk))
        ]
        new_x, new_norm, new_damping = (
            np.concatenate(column) for column in zip(*parts, strict=True)
        )
        return new_x, new_norm, new_damping


#: Damping past which a row whose ‖f‖ a whole block left unchanged is frozen: its steps are
#: then about 1e-12 of ‖Jᵀf‖ / (tr(JᵀJ)/n), far below float32 resolution.
_FROZEN_DAMPING = 1e12


class FixedStepCG(lx.AbstractLinearSolver):
    """Exactly `steps` conjugate-gradient iterations from zero: no tolerance, no breakdown test.

    ``lx.CG`` stops at a tolerance and returns NaN where pᵀAp is small next to rᵀr (a
    breakdown test); an LM step from a few CG iterations on a nearly singular, lightly damped
    system trips it often, and then the step is lost. This solver takes the plain CG
    recurrence instead, guarding its divisions by the dtype's smallest normal number. For
    positive (semi-)definite operators on a single array.

    Attributes:
        steps: CG iterations.
    """

    steps: int

    def init(
        self, operator: lx.AbstractLinearOperator, options: dict[str, Any]
    ) -> lx.AbstractLinearOperator:
        """The operator itself (CG needs only its matrix-vector products)."""
        del options
        if not lx.is_positive_semidefinite(operator):
            raise ValueError("FixedStepCG needs a positive semidefinite operator")
        return operator

    def compute(
        self, state: lx.AbstractLinearOperator, vector: Array, options: dict[str, Any]
    ) -> tuple[Array, lx.RESULTS, dict[str, Any]]:
        """`steps` CG iterations on ``state · δ = vector`` from δ = 0."""
        del options
        tiny = jnp.finfo(vector.dtype).tiny

        def iteration(carry, _):
            delta, r, p, rr = carry
            normal_p = state.mv(p)
            alpha = rr / jnp.maximum(jnp.sum(p * normal_p), tiny)
            delta = delta + alpha * p
            r = r - alpha * normal_p
            rr_next = jnp.sum(r * r)
            p = r + (rr_next / jnp.maximum(rr, tiny)) * p
            return (delta, r, p, rr_next), None

        init = (jnp.zeros_like(vector), vector, vector, jnp.sum(vector * vector))
        (delta, *_), _ = jax.lax.scan(iteration, init, None, length=self.steps)
        return delta, lx.RESULTS.successful, {}

    def transpose(
        self, state: lx.AbstractLinearOperator, options: dict[str, Any]
    ) -> tuple[lx.AbstractLinearOperator, dict[str, Any]]:
        """The transposed operator (the same, for a symmetric one)."""
        return state.transpose(), options

    def conj(
        self, state: lx.AbstractLinearOperator, options: dict[str, Any]
    ) -> tuple[lx.AbstractLinearOperator, dict[str, Any]]:
        """The conjugated operator."""
        return lx.conj(state), options

    def assume_full_rank(self) -> bool:
        """The damped normal matrix is positive definite."""
        return True


class MatrixFreeLMSearch(AbstractLMSearch):
    """LM with matrix-free steps: conjugate gradients on the batched JVP and VJP.

    Attributes:
        steps: most LM iterations per candidate.
        handoff_tol: leave for dense Newton at ‖f‖ ≤ handoff_tol × speed scale (inexact
            steps do not converge much closer).
        cg_steps: conjugate-gradient iterations per LM step.
    """

    steps: int = 120
    handoff_tol: float = 1e-2
    cg_steps: int = 20

    @property
    def linear_solver(self) -> FixedStepCG:
        """``cg_steps`` CG iterations (no tolerance: the step is inexact by design)."""
        return FixedStepCG(self.cg_steps)

    def prepare(
        self,
        model: mechscope.AbstractModel,
        x: Float[Array, "m n"],
        u: Float[Array, "m n_inputs"],
        keys: PRNGKeyArray,
    ) -> Float[Array, " m"]:
        """tr(JᵀJ)/n per row, estimated from eight random sign vectors (E‖Jz‖² = tr(JᵀJ))."""
        _, jvp = jax.linearize(lambda y: batched_field(model, y, u), x)
        probes = jax.vmap(lambda k: jax.random.rademacher(k, (8, x.shape[1]), dtype=x.dtype))(keys)
        probes = jnp.swapaxes(probes, 0, 1)  # [8, m, n]
        trace = jnp.mean(jax.vmap(lambda z: jnp.sum(jvp(z) ** 2, axis=1))(probes), axis=0)
        return trace / x.shape[1] + jnp.finfo(x.dtype).tiny

    def damped_step(
        self,
        model: mechscope.AbstractModel,
        y: Float[Array, "m n"],
        u: Float[Array, "m n_inputs"],
        damping: Float[Array, " m"],
        prepared: Float[Array, " m"],
    ) -> Float[Array, "m n"]:
        """CG on v ↦ Jᵀ(Jv) + μ·scale·v, where Jv and Jᵀw are JVPs and VJPs (no matrix)."""
        solver = self.linear_solver

        def row(y_row, u_row, shift):
            residual, jvp = jax.linearize(lambda z: model.vector_field(0.0, z, u_row), y_row)
            vjp = jax.linear_transpose(jvp, y_row)
            operator = lx.FunctionLinearOperator(
                lambda p: vjp(jvp(p))[0] + shift * p,
                jax.ShapeDtypeStruct(y_row.shape, y_row.dtype),
                lx.positive_semidefinite_tag,
            )
            return _solve(operator, -vjp(residual)[0], solver)

        return jax.vmap(row)(y, u, damping * prepared)

    def chunk_rows(self, n_units: int) -> None:
        """All rows in one chunk (the memory is a few ``[rows, n]`` arrays)."""
        del n_units


class DenseLMSearch(AbstractLMSearch):
    """LM with exact steps: each row's normal matrix formed and factorised (Cholesky).

    Attributes:
        steps: most LM iterations per candidate.
        handoff_tol: leave for dense Newton at ‖f‖ ≤ handoff_tol × speed scale (exact paths
            are worth following closer to the zero than inexact ones).
        chunk_elements: most elements of one ``[rows, n, n]`` array per call (2^26 float32 =
            256 MB); the kernel holds a few at once, so rows run in chunks of at most
            max(64, chunk_elements / n²).
    """

    steps: int = 200
    handoff_tol: float = 1e-4
    chunk_elements: int = 1 << 26

    @property
    def linear_solver(self) -> lx.Cholesky:
        """A Cholesky factorisation per row (the normal matrix is positive definite)."""
        return lx.Cholesky()

    def prepare(
        self,
        model: mechscope.AbstractModel,
        x: Float[Array, "m n"],
        u: Float[Array, "m n_inputs"],
        keys: PRNGKeyArray,
    ) -> None:
        """Nothing: the trace is exact at every iteration."""
        del model, x, u, keys

    def damped_step(
        self,
        model: mechscope.AbstractModel,
        y: Float[Array, "m n"],
        u: Float[Array, "m n_inputs"],
        damping: Float[Array, " m"],
        prepared: None,
    ) -> Float[Array, "m n"]:
        """Cholesky on JᵀJ + μ·tr(JᵀJ)/n·I, with J the model's Jacobian at each row."""
        del prepared
        n, tiny = y.shape[1], jnp.finfo(y.dtype).tiny
        solver = self.linear_solver
        jac = jax.vmap(lambda row, v: model.jacobian(0.0, row, v))(y, u)
        normal = jnp.einsum("mki,mkj->mij", jac, jac)
        shift = damping * (jnp.trace(normal, axis1=1, axis2=2) / n + tiny)
        rhs = -jnp.einsum("mki,mk->mi", jac, batched_field(model, y, u))

        def row(matrix, rhs_row):
            operator = lx.MatrixLinearOperator(matrix, lx.positive_semidefinite_tag)
            return _solve(operator, rhs_row, solver)

        return jax.vmap(row)(normal + shift[:, None, None] * jnp.eye(n, dtype=y.dtype), rhs)

    def chunk_rows(self, n_units: int) -> int:
        """At most max(64, chunk_elements / n²) rows per call."""
        return max(64, self.chunk_elements // n_units**2)


def _solve(
    operator: lx.AbstractLinearOperator, vector: Array, solver: lx.AbstractLinearSolver
) -> Array:
    """`solver`'s solution of ``operator · δ = vector``, from its ``init`` and ``compute``.

    Not ``lx.linear_solve``: its primitive (there for autodiff and error checks, neither needed
    here) compiles the same iterations into differently rounded float32 arithmetic, and the LM
    paths of a chaotic network amplify that into different zeros found.
    """
    solution, _, _ = solver.compute(solver.init(operator, {}), vector, {})
    return solution


def _levenberg_marquardt(
    model: mechscope.AbstractModel,
    x: Float[Array, "m n"],
    u: Float[Array, "m n_inputs"],
    damping: Float[Array, " m"],
    numbers: Int[Array, " m"],
    steps: Int[Array, ""] | int,
    search: AbstractLMSearch,
    key: PRNGKeyArray,
) -> tuple[Float[Array, "m n"], Float[Array, " m"], Float[Array, " m"]]:
    """`steps` Levenberg–Marquardt iterations from every row, with `search`'s damped steps.

    Row i's random draws come from ``fold_in(key, numbers[i])``.

    Returns:
        End points, ‖f‖ there, and the damping μ to continue with.
    """

    def squared_speed(y):
        value = jnp.sum(batched_field(model, y, u) ** 2, axis=1)
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    keys = jax.vmap(lambda number: jax.random.fold_in(key, number))(numbers)
    prepared = search.prepare(model, x, u, keys)

    def iteration(_, carry):
        y, q, mu = carry
        delta = search.damped_step(model, y, u, mu, prepared)
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


levenberg_marquardt = eqx.filter_jit(_levenberg_marquardt)
