"""The search interface of the fixed-point solver and the pipeline its candidate searches share.

A search is an :class:`AbstractSearch`: a final equinox module whose fields are its own
settings (as optimistix solvers are). :class:`AbstractCandidateSearch` subclasses run the fast
pipeline below and differ only in how they bring candidates close to zeros before dense
Newton (:meth:`AbstractCandidateSearch.approach`); the FixedPointFinder-compatible search
(:class:`~mechscope_dynamics._fp_golub.GolubSearch`) replaces the whole pipeline.

The pipeline, with the settings shared by every search (:class:`SolverConfig`):

1. :func:`relaxed_candidates`: every (input, start) pair takes ``relax_steps`` Euler steps
   along the flow; per input, the relaxed points are used where they merge into few
   candidates, the raw starts elsewhere; candidates closer than ``merge_tol`` × scale merge.
   Separately, :func:`follow_flow` goes on following every path (from the starts and the
   flow starts) that is still settling, until it settles on a stable point: those end
   points skip step 2, so no relaxed/raw choice or merge of starts can lose a stable point
   that the flow reaches.
2. ``search.approach``: e.g. Levenberg–Marquardt until a candidate comes close to a zero.
3. :func:`newton_stage`: globalised float32 Newton in blocks of two with merging; converged
   candidates leave as fixed-point candidates, stalled ones as slow-point candidates.
   Then :func:`manifold_candidates` follows the flow down the leading unstable modes of
   every unstable point found, to the stable points its unstable manifold leads to, and
   those settled end points take step 3 too.
4. :func:`polish_and_classify`: float64 polish with optimistix, the fixed/slow thresholds,
   outliers, unique-ing, and the Jacobian's eigen-decomposition.
"""

from __future__ import annotations

import abc
import contextlib
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mechscope
from mechscope_dynamics._fp_batching import call_in_pieces, call_padded
from mechscope_dynamics._fp_clustering import (
    merge_indices,
    merged,
    near_known,
    survivors,
    unique_per_input,
)
from mechscope_dynamics._fp_kernels import (
    PolishMethod,
    cast_model,
    continuation,
    eigen,
    jacobians,
    model_dtype,
    newton,
    norms,
    polish_solve,
    relax,
    relaxation_step,
    sort_modes,
)
from mechscope_dynamics._fp_types import Candidates, FixedPoints, Problem

if TYPE_CHECKING:
    from mechscope_dynamics._fp_config import SolverConfig


class AbstractSearch(eqx.Module):
    """How the solver finds the fixed points of a problem; its fields are its own settings."""

    @abc.abstractmethod
    def find(
        self, model: mechscope.AbstractModel, problem: Problem, settings: SolverConfig
    ) -> FixedPoints:
        """Fixed and slow points of `model` for `problem`, under the shared `settings`."""


class AbstractCandidateSearch(AbstractSearch):
    """A search of the fast pipeline: relax, merge, :meth:`approach`, Newton, polish."""

    @abc.abstractmethod
    def approach(
        self,
        model: mechscope.AbstractModel,
        candidates: Candidates,
        problem: Problem,
        merge_radius: float,
        dtype: Any,
    ) -> tuple[Candidates, Candidates]:
        """Bring merged `candidates` close to zeros before dense Newton.

        Returns:
            The candidates to hand to dense Newton (merged at `merge_radius`), and those that
            did not come close (slow-point candidates).
        """

    def find(
        self, model: mechscope.AbstractModel, problem: Problem, settings: SolverConfig
    ) -> FixedPoints:
        """Run the pipeline of the module docstring with this search as its step 2."""
        dtype = model_dtype(model)
        merge_radius = settings.merge_tol * problem.scale
        starting, settled = relaxed_candidates(model, problem, settings, dtype)
        candidates = merged(starting, merge_radius)
        close, far = self.approach(model, candidates, problem, merge_radius, dtype)
        near_zeros = Candidates.concatenate([close, settled], problem.n_units)
        found, slow = newton_stage(model, near_zeros, problem, settings, dtype)
        # The points found lead to more: down the saddles' unstable manifolds, and along the
        # stable points' branches to the other inputs; the new points lead on in turn.
        newest, n_extra = found, 0
        unique_radius = 10 * settings.unique_tol * problem.scale
        for _ in range(_FOLLOW_ROUNDS):
            values, vectors = _spectra(model, newest, problem, dtype)
            extra = Candidates.concatenate(
                [
                    manifold_candidates(model, newest, values, vectors, problem, settings, dtype),
                    continued_candidates(model, newest, values, problem, settings, dtype),
                ],
                problem.n_units,
            )
            extra = extra.take(~near_known(extra.x, extra.input, [found], unique_radius))
            if len(extra) == 0:
                break
            n_extra += len(extra)
            newest, more_slow = newton_stage(model, extra, problem, settings, dtype)
            newest = newest.take(~near_known(newest.x, newest.input, [found], unique_radius))
            found = Candidates.concatenate([found, newest], problem.n_units)
            slow = Candidates.concatenate([slow, more_slow], problem.n_units)
        return polish_and_classify(
            model,
            problem,
            settings,
            found,
            Candidates.concatenate([far, slow], problem.n_units),
            n_candidates=len(candidates) + len(settled) + n_extra,
        )


#: Rounds of following the points found to more (each round starts from the last round's).
_FOLLOW_ROUNDS = 3


class NewtonSearch(AbstractCandidateSearch):
    """Dense globalised Newton on every candidate (cheaper than LM, finds fewer zeros)."""

    def approach(
        self,
        model: mechscope.AbstractModel,
        candidates: Candidates,
        problem: Problem,
        merge_radius: float,
        dtype: Any,
    ) -> tuple[Candidates, Candidates]:
        """Every candidate goes straight to dense Newton."""
        del model, merge_radius, dtype
        return candidates, Candidates.empty(problem.n_units)


# ---------------------------------------------------------------------------------------------
# Step 1: relaxation along the flow.


def relaxed_candidates(
    model: mechscope.AbstractModel, problem: Problem, settings: SolverConfig, dtype: Any
) -> tuple[Candidates, Candidates]:
    """Every (input, start) pair, relaxed along the flow where that collapses the starts.

    Every pair relaxes in one compiled program (in pieces over the cores), and so does every
    (input, flow start) pair;
    starts that fall into the same attractor end up together. With ``relax_steps = 0`` (or no
    starts) the raw starts are the candidates and the flow is not followed.

    Returns:
        The candidates for the search (relaxed or raw, per input), and the points where the
        flow from the starts and flow starts settled (see :func:`follow_flow`), which are
        already close to stable points.
    """
    k, s = len(problem.inputs), len(problem.starts)
    flow_rows = problem.flow_rows
    x = np.tile(flow_rows, (k, 1))
    row_input = np.repeat(np.arange(k), len(flow_rows))
    u = problem.inputs[row_input]
    is_start = np.tile(np.arange(len(flow_rows)) < s, k)
    if settings.relax_steps == 0 or s == 0:
        starts = Candidates(x[is_start], row_input[is_start], np.zeros(int(is_start.sum())))
        starts = Candidates(
            starts.x, starts.input, call_padded(norms, model, starts.x, u[is_start], dtype)
        )
        return starts, Candidates.empty(problem.n_units)
    step = flow_step(model, problem, settings)
    relaxed = np.stack(
        call_in_pieces(
            relax,
            model,
            (x, u),
            dtype,
            jnp.asarray(step, dtype),
            settings.relax_steps,
            most=_RELAX_PIECE_ROWS,
        )
    )
    candidates, relaxed_used = _prefer_relaxed(
        model,
        Candidates(x[is_start], row_input[is_start], np.zeros(int(is_start.sum()))),
        relaxed[:, is_start],
        problem.inputs,
        settings.merge_tol * problem.scale,
        dtype,
        settings.relaxed_fraction * s,
    )
    # Where an input's relaxed points are the candidates, the search starts from its starts'
    # end points anyway; elsewhere (and from the flow starts) the paths are followed on.
    follow = ~is_start | ~relaxed_used[row_input]
    before = call_padded(norms, model, x[follow], u[follow], dtype)
    paths = Candidates(relaxed[0][follow], row_input[follow], before)
    return candidates, follow_flow(model, paths, problem, settings, dtype, step)


def flow_step(model: mechscope.AbstractModel, problem: Problem, settings: SolverConfig) -> float:
    """The Euler step of the relaxation and of :func:`follow_flow`.

    One step length for all inputs: the spectrum at the centroid sets the time scale (for a
    CT-RNN the Jacobian does not depend on the input at all).
    """
    return settings.relax_step or relaxation_step(model, problem.center, problem.inputs[-1])


def follow_flow(
    model: mechscope.AbstractModel,
    paths: Candidates,
    problem: Problem,
    settings: SolverConfig,
    dtype: Any,
    step: float,
    grace: int = 0,
) -> Candidates:
    """Where the flow settles: paths followed in blocks of ``relax_steps`` Euler steps.

    A path has settled once ‖f‖ ≤ ``flow_tol`` × speed scale (it is closing in on a stable
    point, or passing very slowly by a zero). Between blocks, a path goes on only while it is
    settling (its ‖f‖ fell by at least half over the last block); paths that come within
    ``merge_tol`` × scale of a settled point, or of each other, are merged, so the paths that
    converge onto one attractor cost one path. At most ``flow_blocks`` further blocks, after
    `grace` blocks in which every path goes on (paths leaving a saddle speed up first).

    Args:
        model: the model.
        paths: the paths' current points, inputs, and ‖f‖ at their previous points (where
            they stood one block earlier; ``inf`` follows every path one more block).
        problem: the problem (inputs, scales).
        settings: the shared settings.
        dtype: working dtype.
        step: the Euler step.
        grace: blocks every path takes before the settling test applies.

    Returns:
        The settled points (one per cluster of radius ``merge_tol`` × scale and input).
    """
    tol = settings.flow_tol * problem.speed_scale
    merge_radius = settings.merge_tol * problem.scale
    x, row_input, before = paths.x, paths.input, paths.norm
    settled: list[Candidates] = []
    for block in range(grace + settings.flow_blocks + 1):
        if len(x) == 0:
            break
        now = call_padded(norms, model, x, problem.inputs[row_input], dtype)
        finite = np.all(np.isfinite(x), axis=1) & np.isfinite(now)
        current = Candidates(x, row_input, np.where(finite, now, np.inf))
        if block < grace:
            done, settling = np.zeros(len(x), dtype=bool), finite
        else:
            done = finite & (now <= tol)
            settling = finite & ~done & (now <= 0.5 * before)
        settled.append(current.take(done))
        if block == grace + settings.flow_blocks:
            break
        going = survivors(current, ~settling, settled, merge_radius)
        if len(going) == 0:
            break
        before, row_input = current.norm[going], row_input[going]
        x, _ = call_in_pieces(
            relax,
            model,
            (x[going], problem.inputs[row_input]),
            dtype,
            jnp.asarray(step, dtype),
            settings.relax_steps,
            most=_RELAX_PIECE_ROWS,
        )
    return merged(Candidates.concatenate(settled, problem.n_units), merge_radius)


#: Most rows per concurrent piece of the relaxation (one matrix product per row and step, so
#: memory-bound: 2,048-row pieces ran 11,520 rows × 60 steps in 0.18 s against 0.25 s for
#: 512-row pieces and 0.27 s for one call, on two cores).
_RELAX_PIECE_ROWS = 2048


def _spectra(
    model: mechscope.AbstractModel, found: Candidates, problem: Problem, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and vectors of ∂f/∂x at the converged points, by decreasing real part.

    Rows whose Jacobian is not finite get eigenvalues −∞ (neither stable nor unstable use).
    """
    n = problem.n_units
    if len(found) == 0:
        return np.zeros((0, n), complex), np.zeros((0, n, n), complex)
    jac = jacobians(model, found.x, problem.inputs[found.input], dtype)
    finite = np.all(np.isfinite(jac), axis=(1, 2))
    values = np.full(jac.shape[:2], np.nan, dtype=complex)
    vectors = np.zeros(jac.shape, dtype=complex)
    if finite.any():
        values[finite], vectors[finite] = np.linalg.eig(jac[finite])
    return sort_modes(values, vectors, np.nan_to_num(np.real(values), nan=-np.inf))


def continued_candidates(
    model: mechscope.AbstractModel,
    found: Candidates,
    values: np.ndarray,
    problem: Problem,
    settings: SolverConfig,
    dtype: Any,
) -> Candidates:
    """Stable points of every other input, continued from each stable point found.

    A stable point moves smoothly with the input until it meets a saddle (a fold), so the
    stable points of neighbouring inputs lie on each other's branches: each stable point of
    input a is followed to every input b along u(s) = (1 − s) u_a + s u_b, in
    ``continuation_steps`` equal steps of s, each from a secant prediction with three
    globalised chord iterations (one LU factorisation per two steps), every path and step in one
    compiled loop (:func:`~mechscope_dynamics._fp_kernels.continuation`).
    A search from the starts can miss a stable point of b whose basin no start reaches; its
    branch through a's stable point does not.

    Returns:
        The end points (for input b) not already found (empty with ``continuation_steps`` 0).
    """
    k = len(problem.inputs)
    stable = np.real(values[:, 0]) < 0 if len(values) else np.zeros(0, dtype=bool)
    if settings.continuation_steps == 0 or k < 2 or not stable.any():
        return Candidates.empty(problem.n_units)
    source = np.repeat(np.flatnonzero(stable), k)
    target = np.tile(np.arange(k), int(stable.sum()))
    other = target != found.input[source]
    source, target = source[other], target[other]
    x = found.x[source]
    u_from, u_to = problem.inputs[found.input[source]], problem.inputs[target]
    # In pieces (one after another: the chord steps call LAPACK), which pad less than one call.
    x, speed = call_in_pieces(
        continuation,
        model,
        (x, u_from, u_to),
        dtype,
        jnp.asarray(settings.continuation_steps, jnp.int32),
        _CHORD_ITERATIONS,
    )
    continued = Candidates(x, target, speed)
    continued = continued.take(np.all(np.isfinite(x), axis=1) & np.isfinite(speed))
    new = ~near_known(
        continued.x, continued.input, [found], 10 * settings.unique_tol * problem.scale
    )
    return merged(continued.take(new), settings.merge_tol * problem.scale)


def manifold_candidates(
    model: mechscope.AbstractModel,
    found: Candidates,
    values: np.ndarray,
    vectors: np.ndarray,
    problem: Problem,
    settings: SolverConfig,
    dtype: Any,
) -> Candidates:
    """Where the flow settles down the unstable manifolds of the unstable points found.

    Each branch of a saddle's unstable manifold ends on an attractor (or in chaos), so the
    stable points the saddles connect to are found even where no start's path reaches them.
    From every converged point with an unstable mode, the flow is followed (as in
    :func:`follow_flow`) from the point displaced by ±``merge_tol`` × scale along each of its
    ``manifold_modes`` leading unstable modes (the real part of a complex mode's vector).

    Args:
        model: the model.
        found: the converged points.
        values: their Jacobians' eigenvalues, by decreasing real part.
        vectors: the matching eigenvectors (columns).
        problem: the problem.
        settings: the shared settings.
        dtype: working dtype.

    Returns:
        The settled points not already found (empty with ``relax_steps`` or
        ``manifold_modes`` 0).
    """
    if settings.relax_steps == 0 or settings.manifold_modes == 0 or len(found) == 0:
        return Candidates.empty(problem.n_units)
    modes = min(settings.manifold_modes, problem.n_units)
    unstable = np.real(values[:, :modes]) > 0  # [points, modes]
    point, mode = np.nonzero(unstable)
    if len(point) == 0:
        return Candidates.empty(problem.n_units)
    direction = np.real(vectors[point, :, mode])
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-30)
    kick = settings.merge_tol * problem.scale * direction
    x = np.concatenate([found.x[point] + kick, found.x[point] - kick])
    row_input = np.tile(found.input[point], 2)
    paths = Candidates(x, row_input, np.full(len(x), np.inf))
    step = flow_step(model, problem, settings)
    settled = follow_flow(model, paths, problem, settings, dtype, step, grace=2)
    # Only the points not found already are new candidates (the unique radius of Newton).
    new = np.flatnonzero(
        ~near_known(settled.x, settled.input, [found], 10 * settings.unique_tol * problem.scale)
    )
    return settled.take(new)


def _prefer_relaxed(
    model: mechscope.AbstractModel,
    raw: Candidates,
    relaxed: np.ndarray,
    inputs: np.ndarray,
    merge_radius: float,
    dtype: Any,
    most: float,
) -> tuple[Candidates, np.ndarray]:
    """Per input, the relaxed candidates where the flow merged them, else the raw starts.

    Where an input's flow is dominated by attractors, relaxation collapses the starts onto a
    few points (plus the saddles they passed) and the search need only solve from those.
    Where it is not (a chaotic flow), relaxed points stay as many as the starts and are worse
    starting points than the starts themselves (they sit on the attractor, far from the
    unstable zeros), so that input keeps its raw starts.

    Args:
        model: the model.
        raw: raw starts, one row per (input, start) pair (their ‖f‖ is not used).
        relaxed: ``[2, rows, n]``: each row's end point and slowest point after relaxation.
        inputs: the constant inputs.
        merge_radius: candidates closer than this are merged.
        dtype: working dtype.
        most: the most distinct relaxed candidates an input may have to use them.

    Returns:
        The rows to search from, their inputs and ‖f‖ there; and, per input, whether they are
        its relaxed points.
    """
    relaxed_x = relaxed.reshape(-1, relaxed.shape[-1])
    relaxed_k = np.tile(raw.input, 2)
    relaxed_norm = call_padded(norms, model, relaxed_x, inputs[relaxed_k], dtype)
    keep = merge_indices(relaxed_x, relaxed_k, relaxed_norm, merge_radius)
    use = np.bincount(relaxed_k[keep], minlength=len(inputs)) <= most
    keep = keep[use[relaxed_k[keep]]]
    raw_rows = np.flatnonzero(~use[raw.input])
    raw_norm = (
        call_padded(norms, model, raw.x[raw_rows], inputs[raw.input[raw_rows]], dtype)
        if len(raw_rows)
        else np.zeros(0)
    )
    candidates = Candidates(
        np.concatenate([raw.x[raw_rows], relaxed_x[keep]]),
        np.concatenate([raw.input[raw_rows], relaxed_k[keep]]),
        np.concatenate([raw_norm, relaxed_norm[keep]]),
    )
    return candidates, use


# ---------------------------------------------------------------------------------------------
# Step 3: dense Newton with merging.


def newton_stage(
    model: mechscope.AbstractModel,
    candidates: Candidates,
    problem: Problem,
    settings: SolverConfig,
    dtype: Any,
) -> tuple[Candidates, Candidates]:
    """Globalised float32 Newton on distinct candidates, in blocks of two iterations.

    After every block, converged rows (‖f‖ ≤ ``newton_tol`` × speed scale) leave; rows that
    reach an already converged point, or each other, are merged; rows whose ‖f‖ has not
    fallen by 20 % in ``stall_blocks`` consecutive blocks leave as slow-point candidates.

    Returns:
        The converged candidates, made unique (radius 10 × ``unique_tol`` × scale), and the
        slow-point candidates (the stalled ones, then those left after ``newton_steps``).
    """
    merge_radius = settings.merge_tol * problem.scale
    newton_tol = settings.newton_tol * problem.speed_scale
    found: list[Candidates] = []
    slow: list[Candidates] = []
    stalled_blocks = np.zeros(len(candidates), dtype=int)
    block = 2
    for _ in range(0, settings.newton_steps, block):
        if len(candidates) == 0:
            break
        new_x, new_norm = call_padded(
            newton, model, candidates.x, problem.inputs[candidates.input], dtype, block
        )
        finite = np.all(np.isfinite(new_x), axis=1) & np.isfinite(new_norm)
        progress = finite & (new_norm < 0.8 * candidates.norm)
        stalled_blocks = np.where(progress, 0, stalled_blocks + 1)
        candidates = Candidates(
            np.where(finite[:, None], new_x, candidates.x),
            candidates.input,
            np.where(finite, new_norm, candidates.norm),
        )
        done = candidates.norm <= newton_tol
        found.append(candidates.take(done))
        stuck = ~done & (stalled_blocks >= settings.stall_blocks)
        slow.append(candidates.take(stuck))
        going = survivors(candidates, done | stuck, found, merge_radius)
        candidates, stalled_blocks = candidates.take(going), stalled_blocks[going]
    slow.append(candidates)
    converged = Candidates.concatenate(found, problem.n_units)
    unique = merge_indices(
        converged.x,
        converged.input,
        np.zeros(len(converged)),
        settings.unique_tol * problem.scale * 10,
    )
    return converged.take(unique), Candidates.concatenate(slow, problem.n_units)


# ---------------------------------------------------------------------------------------------
# Step 4: polish in float64 and classify.

#: (method, fraction of ``polish_steps``): Newton first (from a float32 zero it converges in a
#: few iterations, and a row that 10 do not polish is near a singular Jacobian, where Newton
#: converges slowly if at all), then LM for the rows Newton left, then BFGS on q. A vmapped
#: solve runs every row of its call until the last one stops, so the first method's budget
#: is what most rows pay for one row that will not converge.
_POLISH_PLAN: tuple[tuple[PolishMethod, float], ...] = (
    ("newton", 0.25),
    ("lm", 1.0),
    ("bfgs", 8.0),
)


def polish(
    model: mechscope.AbstractModel,
    x0: np.ndarray,
    u: np.ndarray,
    steps: int,
    threshold: float,
    dtype: Any,
    plan: tuple[tuple[PolishMethod, float], ...] = _POLISH_PLAN,
) -> tuple[np.ndarray, np.ndarray]:
    """Each method of `plan` in turn (``(name, fraction of steps)``), where the previous failed.

    The default plan is Newton from every candidate (``steps / 4`` iterations), then
    Levenberg–Marquardt (`steps`), then BFGS on q (``8 · steps``); a row is done once its
    ‖f‖ ≤ `threshold`.

    Returns:
        The best point of each row and its ‖f‖.
    """
    x, speed = x0.copy(), np.full(len(x0), np.inf)
    todo = np.arange(len(x0))
    for method, factor in plan:
        if len(todo) == 0:
            break
        budget = max(1, round(factor * steps))
        # In pieces: concurrent for BFGS; Newton's and LM's call LAPACK and run one by one.
        new_x, new_speed = call_in_pieces(
            polish_solve, model, (x0[todo], u[todo]), dtype, budget, method
        )
        better = np.isfinite(new_speed) & (new_speed < speed[todo])
        x[todo[better]] = new_x[better]
        speed[todo[better]] = new_speed[better]
        todo = todo[~(speed[todo] <= threshold)]
    return x, speed


def polish_and_classify(
    model: mechscope.AbstractModel,
    problem: Problem,
    settings: SolverConfig,
    found: Candidates,
    slow: Candidates,
    *,
    n_candidates: int,
) -> FixedPoints:
    """Polish the converged and slow-point candidates and sort them into fixed and slow points.

    Converged candidates are polished with Newton, LM and BFGS (see :func:`polish`), slow-point
    candidates with ‖f‖ ≤ ``slow_tol`` × speed scale with BFGS on q, in float64 with
    optimistix when ``settings.float64``.
    """
    inputs, scale, speed_scale = problem.inputs, problem.scale, problem.speed_scale
    # Only minima of q that could be slow points are worth polishing; slow regions are
    # extended, so their candidates are merged at a coarser radius.
    slow = merged(
        slow.take(slow.norm <= settings.slow_tol * speed_scale), 10 * settings.merge_tol * scale
    )
    threshold = settings.fixed_tol * speed_scale
    context = jax.enable_x64(True) if settings.float64 else contextlib.nullcontext()
    with context:
        dtype = jnp.float64 if settings.float64 else model_dtype(model)
        wide = cast_model(model, dtype)
        polished_found, speed_found = polish(
            wide, found.x, inputs[found.input], settings.polish_steps, threshold, dtype
        )
        polished_slow, speed_slow = polish(
            wide,
            slow.x,
            inputs[slow.input],
            settings.polish_steps,
            threshold,
            dtype,
            plan=(("bfgs", 1.0),),
        )
        polished = np.concatenate([polished_found, polished_slow])
        speed = np.concatenate([speed_found, speed_slow])
        cand_k = np.concatenate([found.input, slow.input]).astype(int)
        finite = np.all(np.isfinite(polished), axis=1) & np.isfinite(speed)
        near = np.linalg.norm(polished - problem.center, axis=1) <= settings.outlier_scale * scale
        is_fixed = finite & near & (speed <= threshold)
        is_slow = finite & near & ~is_fixed & (speed <= settings.slow_tol * speed_scale)
        fixed_rows = _unique_rows(polished, cand_k, speed, is_fixed, settings.unique_tol * scale)
        slow_rows = _unique_rows(polished, cand_k, speed, is_slow, settings.merge_tol * scale)
        points = polished[fixed_rows]
        values, vectors = eigen(wide, points, inputs[cand_k[fixed_rows]], dtype)
    values, vectors = sort_modes(values, vectors, np.real(values))
    stable = np.real(values[:, 0]) < 0 if len(values) else np.zeros(0, dtype=bool)
    return FixedPoints(
        inputs=inputs,
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


def _unique_rows(
    points: np.ndarray, input_index: np.ndarray, speed: np.ndarray, chosen: np.ndarray, tol: float
) -> np.ndarray:
    """The `chosen` rows that lead their cluster (radius `tol`, lowest speed) per input."""
    rows = np.flatnonzero(chosen)
    return rows[unique_per_input(points[rows], input_index[rows], speed[rows], tol)]


#: Chord iterations per continuation step (see
#: :func:`~mechscope_dynamics._fp_kernels.continuation`): as many as the Newton iterations
#: per step before (with the secant prediction they find the same stable points).
_CHORD_ITERATIONS = 3
