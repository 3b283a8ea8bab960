"""Tests of the fixed_points probe and its solver on systems with known fixed points."""

from __future__ import annotations

import math
import threading
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from mechscope_dynamics import (
    DenseLMConfig,
    DenseLMSearch,
    FixedPointsConfig,
    FixedPointsProbe,
    GolubConfig,
    GolubSearch,
    MatrixFreeLMConfig,
    MatrixFreeLMSearch,
    NewtonConfig,
    NewtonSearch,
    SolverConfig,
    _fp_batching,
    find_fixed_points,
)
from mechscope_dynamics._fp_batching import (
    MAX_PIECE_ROWS,
    call_in_pieces,
    padded_size,
    piece_bounds,
)
from mechscope_dynamics._fp_clustering import representatives
from mechscope_dynamics._fp_kernels import (
    cast_model,
    continuation,
    newton,
    polish_solve,
    relax,
    relaxation_step,
)
from mechscope_dynamics._fp_lm import levenberg_marquardt

import mechscope


class DoubleConfig(mechscope.Config):
    """A test double."""

    kind: str = "linear"


class FieldModel(mechscope.AbstractModel):
    """dx/dt = field(x) + B u, Euler-integrated; the field is chosen by `kind`."""

    config: DoubleConfig = eqx.field(static=True)  # pyright: ignore[reportIncompatibleVariableOverride]
    a: jax.Array
    b: jax.Array

    @property
    def n_inputs(self):
        return self.b.shape[1]

    @property
    def n_outputs(self):
        return self.a.shape[0]

    @property
    def n_units(self):
        return self.a.shape[0]

    def vector_field(self, t, x, u):
        kind = self.config.kind
        if kind == "linear":
            drift = self.a @ x
        elif kind == "bistable":  # x − x³ along the first axis, −y along the second
            drift = jnp.stack([x[0] - x[0] ** 3, -x[1]])
        elif kind == "wells":  # see `_wells`
            drift = _wells_field(x)
        else:  # Hopfield: −x + W tanh(x)
            drift = -x + self.a @ jnp.tanh(x)
        return drift + self.b @ u

    def rates(self, x):
        return x

    def readout(self, r):
        return r

    def initial_state(self):
        return jnp.zeros(self.n_units)

    def __call__(self, inputs, times, *, key=None, noise=None, x0=None):
        dt = times[1] - times[0]

        def step(x, u):
            return x + dt * self.vector_field(0.0, x, u), x

        start = self.initial_state() if x0 is None else x0
        _, states = jax.lax.scan(step, start, inputs)
        return mechscope.Trajectory(times=times, states=states, rates=states, outputs=states)


#: Zeros of the wells' cubic along each well axis: stable, saddle, stable.
WELL_ZEROS = (-1.0, 1.0, 1.3)


def _wells_field(x):
    """A limit cycle that hides a stable focus, times two small-basin bistable axes.

    In (z1, z2): ż = −4 (|z|² − 0.3²)(|z|² − 1) z + 3 J z, a stable cycle of radius 1 around a
    stable focus at 0 whose basin is the disc |z| < 0.3. Along w and v:
    ẇ = −2 (w + 1)(w − 1)(w − 1.3): stable at −1 and at 1.3 (basin (1, ∞)), a saddle at 1.
    Its zeros are z = 0 with (w, v) ∈ WELL_ZEROS²: four stable, five unstable.
    """
    z, w = x[:2], x[2:]
    r2 = jnp.sum(z**2)
    spin = 3.0 * jnp.stack([-z[1], z[0]])
    dz = -4.0 * (r2 - 0.09) * (r2 - 1.0) * z + spin
    a, b, c = WELL_ZEROS
    dw = -2.0 * (w - a) * (w - b) * (w - c)
    return jnp.concatenate([dz, dw])


def _wells():
    return FieldModel(DoubleConfig(kind="wells"), jnp.zeros((4, 4)), jnp.zeros((4, 1)))


@pytest.mark.parametrize("search", [MatrixFreeLMSearch(), NewtonSearch()], ids=["lm", "newton"])
def test_stable_points_with_small_basins_that_no_start_reaches_are_all_found(search):
    # Every start lies outside the small basins: on the annulus 0.6 < |z| < 1.4 (the flow takes
    # it to the cycle, so relaxed points never merge and the search keeps the raw starts) and
    # with w, v < 0.8 (the flow takes both to −1). Of the stable points, only (−1, −1) is
    # where the flow from a start goes; the others lie down the saddles' unstable manifolds.
    rng = np.random.default_rng(4)
    angle = rng.uniform(0, 2 * np.pi, 256)
    radius = rng.uniform(0.6, 1.4, 256)
    starts = np.column_stack(
        [radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-1.5, 0.8, (256, 2))]
    )
    model = _wells()
    expected = np.array([[0.0, 0.0, w, v] for w in WELL_ZEROS for v in WELL_ZEROS])
    expected_stable = np.array([w != 1.0 and v != 1.0 for w in WELL_ZEROS for v in WELL_ZEROS])
    kwargs = dict(scale=1.0, speed_scale=1.0, center=np.zeros(4), search=search)
    fps = find_fixed_points(model, np.zeros((1, 1)), starts, **kwargs)
    order = np.lexsort((fps.points[:, 3], fps.points[:, 2]))
    assert len(fps.points) == len(expected)
    np.testing.assert_allclose(fps.points[order], expected, atol=1e-6)
    np.testing.assert_array_equal(fps.stable[order], expected_stable)
    if isinstance(search, NewtonSearch):
        # Negative control: Newton from the starts alone misses the stable point whose basin
        # is smallest (both coordinates in their small basin), which only the flow down the
        # unstable manifold of the saddle (1, 1) reaches.
        settings = SolverConfig(manifold_modes=0, continuation_steps=0)
        alone = find_fixed_points(model, np.zeros((1, 1)), starts, settings=settings, **kwargs)
        corner = np.linalg.norm(alone.points - [0.0, 0.0, 1.3, 1.3], axis=1)
        assert corner.min() > 0.1
        assert alone.stable.sum() == expected_stable.sum() - 1


@pytest.mark.parametrize("steps_per_factorisation", [1, 2, 3])
def test_continuation_follows_each_branch_and_stops_at_its_fold(steps_per_factorisation):
    # ẋ = x − x³ + u (and ẏ = −y): stable branches x₊(u) from 1 and x₋(u) from −1, each
    # ending at a fold where u = ∓2/(3√3) ≈ ∓0.385. Followed from u = 0, each zero ends on its
    # own branch at u = 0.35 (the two stable roots differ: 1.14 and −0.71), not on the other.
    # The upper branch followed past its fold (to u = −0.5) stops at the fold, x = 1/√3, the
    # minimum of |f| there (|f| = 0.5 − 2/(3√3)): a slow point, left to the later stages.
    # The same with the Jacobian factorised at every step, every other step (the default)
    # and every third: a factorisation from a step or two back still lands on the branch,
    # and the last step's own factorisation converges it.
    model = FieldModel(
        DoubleConfig(kind="bistable"), jnp.zeros((2, 2)), jnp.asarray([[1.0], [0.0]])
    )
    real = np.roots([1.0, 0.0, -1.0, -0.35])
    stable_roots = np.sort(np.real(real[np.abs(np.imag(real)) < 1e-9]))[[-1, 0]]
    x0 = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    u_to = np.array([[0.35], [0.35], [-0.5]])
    with jax.enable_x64(True):
        wide = cast_model(model, jnp.float64)
        end, speed = continuation(
            wide,
            jnp.asarray(x0),
            jnp.zeros((3, 1)),
            jnp.asarray(u_to),
            jnp.asarray(20),
            3,
            steps_per_factorisation,
        )
    end, speed = np.asarray(end), np.asarray(speed)
    assert stable_roots[0] > 1.1 and -0.8 < stable_roots[1] < -0.7
    np.testing.assert_allclose(end[:2, 0], stable_roots, atol=1e-6)
    assert np.all(speed[:2] < 1e-6)
    np.testing.assert_allclose(end[2, 0], 1 / np.sqrt(3), atol=0.02)  # |f| is flat there
    np.testing.assert_allclose(speed[2], 0.5 - 2 / (3 * np.sqrt(3)), rtol=1e-2)
    np.testing.assert_allclose(end[:, 1], 0.0, atol=1e-12)


def _scales(points):
    return float(np.sqrt(np.mean(np.sum((points - points.mean(0)) ** 2, axis=1)))), 1.0


def test_linear_system_fixed_point_and_eigenvalues_exact(getkey):
    n = 6
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigenvalues = np.array([-0.5, -1.0, -2.0, -3.0, 0.7, 1.5])  # two unstable modes
    a = q @ np.diag(eigenvalues) @ q.T
    b = rng.standard_normal((n, 2))
    model = FieldModel(
        DoubleConfig(kind="linear"), jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    )
    inputs = np.array([[1.0, -0.5], [0.0, 0.0]])
    starts = rng.standard_normal((32, n)) * 2
    fps = find_fixed_points(model, inputs, starts, scale=2.0, speed_scale=1.0, center=np.zeros(n))
    assert len(fps.points) == 2
    for k, u in enumerate(inputs):
        (row,) = fps.for_input(k)
        exact = -np.linalg.solve(
            a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64) @ u
        )
        np.testing.assert_allclose(fps.points[row], exact, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            np.sort(np.real(fps.eigenvalues[row])), np.sort(eigenvalues), atol=1e-5
        )
        assert not fps.stable[row]
        # Time constants are −1/Re λ.
        np.testing.assert_allclose(
            np.sort(fps.time_constants[row]), np.sort(-1 / eigenvalues), rtol=1e-5
        )
    assert len(fps.slow_points) == 0


def _hopfield(n=16, n_patterns=3, gain=2.0):
    hadamard = scipy.linalg.hadamard(n).astype(float)
    patterns = hadamard[1 : 1 + n_patterns]
    w = gain / n * patterns.T @ patterns
    model = FieldModel(
        DoubleConfig(kind="hopfield"), jnp.asarray(w, jnp.float32), jnp.zeros((n, 1), jnp.float32)
    )
    amplitude = scipy.optimize.root_scalar(
        lambda a: a - gain * math.tanh(a), bracket=(0.1, 10), method="brentq"
    ).root
    return model, patterns, amplitude


import scipy.linalg  # noqa: E402


@pytest.mark.parametrize("search", [MatrixFreeLMSearch(), DenseLMSearch()])
def test_hopfield_patterns_are_stable_fixed_points(getkey, search):
    model, patterns, amplitude = _hopfield()
    n = patterns.shape[1]
    memories = np.concatenate([amplitude * patterns, -amplitude * patterns])
    rng = np.random.default_rng(1)
    starts = np.concatenate(
        [memories + 0.3 * rng.standard_normal(memories.shape), rng.standard_normal((40, n))]
    )
    fps = find_fixed_points(
        model,
        np.zeros((1, 1)),
        starts,
        scale=amplitude * 4,
        speed_scale=1.0,
        center=np.zeros(n),
        search=search,
    )
    for memory in memories:
        gaps = np.linalg.norm(fps.points - memory, axis=1)
        i = int(np.argmin(gaps))
        assert gaps[i] < 1e-6, "a stored pattern was not found as a fixed point"
        assert fps.stable[i], "a stored pattern must be stable"
        expected = -1 + 2.0 / np.cosh(amplitude) ** 2  # along the pattern
        assert np.isclose(np.real(fps.eigenvalues[i]).max(), max(expected, -1.0), atol=1e-5)
    # Every reported fixed point is a true zero; the origin is one and is unstable.
    speeds = np.linalg.norm(
        np.asarray(
            jax.vmap(lambda x: model.vector_field(0.0, x, jnp.zeros(1)))(jnp.asarray(fps.points))
        ),
        axis=1,
    )
    assert np.all(speeds < 1e-5)
    origin = np.linalg.norm(fps.points, axis=1) < 1e-6
    assert origin.sum() == 1 and not fps.stable[origin][0]
    # Points are unique.
    gaps = np.linalg.norm(fps.points[:, None] - fps.points[None], axis=-1)
    assert np.all(gaps[~np.eye(len(gaps), dtype=bool)] > 1e-3)


def _bistable():
    return FieldModel(DoubleConfig(kind="bistable"), jnp.zeros((2, 2)), jnp.eye(2, 1))


def test_saddle_between_two_stable_nodes_is_classified():
    model = _bistable()
    rng = np.random.default_rng(2)
    starts = rng.uniform(-2, 2, (64, 2))
    fps = find_fixed_points(
        model, np.zeros((1, 1)), starts, scale=1.0, speed_scale=1.0, center=np.zeros(2)
    )
    order = np.argsort(fps.points[:, 0])
    np.testing.assert_allclose(fps.points[order], [[-1, 0], [0, 0], [1, 0]], atol=1e-8)
    np.testing.assert_array_equal(fps.stable[order], [True, False, True])
    np.testing.assert_allclose(np.sort(np.real(fps.eigenvalues[order[1]])), [-1, 1], atol=1e-6)
    np.testing.assert_allclose(np.sort(np.real(fps.eigenvalues[order[0]])), [-2, -1], atol=1e-6)


def test_golub_mode_uses_discrete_map_eigenvalues():
    model = _bistable()
    starts = np.random.default_rng(3).uniform(-2, 2, (32, 2))
    fps = find_fixed_points(
        model,
        np.zeros((1, 1)),
        starts,
        scale=1.0,
        speed_scale=1.0,
        center=np.zeros(2),
        search=GolubSearch(dt=0.1, max_iters=3000),
    )
    near_node = np.linalg.norm(fps.points - [1.0, 0.0], axis=1) < 1e-2
    assert near_node.any()
    i = np.flatnonzero(near_node)[0]
    # Discrete map eigenvalues 1 + dt λ with λ = −2, −1.
    np.testing.assert_allclose(np.sort(np.abs(fps.eigenvalues[i])), [0.8, 0.9], atol=1e-2)
    assert fps.discrete and fps.stable[i]


def test_slow_point_is_not_reported_as_fixed_point():
    # dx/dt = (x − x³ − c, −y) with c just above the fold: one zero near x = −1.1 and a
    # ghost (slow point, ‖f‖ = 0.02) near x = 0.577.
    fold = 2 / (3 * math.sqrt(3))
    model = FieldModel(
        DoubleConfig(kind="bistable"), jnp.zeros((2, 2)), jnp.asarray([[1.0], [0.0]])
    )
    u = np.array([[-(fold + 0.02)]])
    starts = np.random.default_rng(4).uniform(-2, 2, (64, 2))
    fps = find_fixed_points(model, u, starts, scale=1.0, speed_scale=1.0, center=np.zeros(2))
    assert len(fps.points) == 1 and fps.points[0, 0] < -1
    assert len(fps.slow_points) >= 1
    assert np.all(fps.slow_speed > 0.01)
    np.testing.assert_allclose(fps.slow_points[0, 0], 1 / math.sqrt(3), atol=1e-3)


def test_representatives_are_lowest_score_leaders_of_separated_clusters():
    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    members = np.concatenate([c + 0.01 * rng.standard_normal((50, 3)) for c in centres])
    points = np.concatenate([members, [[20.0, 20.0, 20.0]]])  # and one isolated point
    score = rng.uniform(size=len(points))
    leaders = representatives(points, score, tol=0.5)
    assert len(leaders) == 4
    for c in range(3):
        rows = np.arange(50 * c, 50 * (c + 1))
        assert rows[np.argmin(score[rows])] in leaders
    assert len(points) - 1 in leaders
    # Every point is within tol of a leader (nothing is lost by merging).
    gaps = np.linalg.norm(points[:, None] - points[leaders][None], axis=-1).min(axis=1)
    assert np.all(gaps <= 0.5)


def test_padded_sizes_cover_the_rows_with_little_waste_and_few_shapes():
    sizes = [padded_size(m) for m in range(1, 20_001)]
    assert all(size >= m for m, size in enumerate(sizes, start=1))
    small = sizes[:1024]
    assert all(size & (size - 1) == 0 and size >= 8 for size in small)  # powers of two
    # Large row counts never run more than a quarter extra (a power of two could double them).
    assert all(size < 1.25 * m for m, size in enumerate(sizes, start=1) if m > 1024)
    assert padded_size(9216) == 10240
    # Few distinct shapes: four per octave above 1,024.
    assert len(set(sizes)) == 8 + 4 * 4 + 1  # 8…1,024, four octaves, then 20,480


def test_relaxation_step_is_inverse_spectral_radius():
    rng = np.random.default_rng(6)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    a = q @ np.diag([-0.5, -4.0, 0.3, -1.0]) @ q.T
    model = FieldModel(
        DoubleConfig(kind="linear"), jnp.asarray(a, jnp.float32), jnp.zeros((4, 1), jnp.float32)
    )
    step = relaxation_step(model, np.zeros(4), np.zeros(1))
    assert step == pytest.approx(1 / 4.0, rel=1e-5)


def test_relaxing_first_finds_the_attractors_and_only_true_zeros():
    model, patterns, amplitude = _hopfield()
    n = patterns.shape[1]
    memories = np.concatenate([amplitude * patterns, -amplitude * patterns])
    rng = np.random.default_rng(7)
    starts = np.concatenate(
        [memories + 0.3 * rng.standard_normal(memories.shape), rng.standard_normal((200, n))]
    )
    settings = SolverConfig(relax_steps=60)
    fps = find_fixed_points(
        model,
        np.zeros((1, 1)),
        starts,
        scale=amplitude * 4,
        speed_scale=1.0,
        center=np.zeros(n),
        settings=settings,
    )
    stable = fps.points[fps.stable]
    for memory in memories:
        assert np.min(np.linalg.norm(stable - memory, axis=1)) < 1e-6
    speeds = np.linalg.norm(
        np.asarray(
            jax.vmap(lambda x: model.vector_field(0.0, x, jnp.zeros(1)))(jnp.asarray(fps.points))
        ),
        axis=1,
    )
    assert np.all(speeds < 1e-5)
    # Relaxation merges the 200+ starts (end points onto the memories, plus the slowest point
    # of each path) into fewer candidates than starts before any solver step.
    assert fps.n_candidates < len(starts) / 2


def test_relaxation_that_merges_nothing_falls_back_on_the_raw_starts():
    # An unstable node: the flow carries every start away from the only zero and no two
    # relaxed points merge, so the search must start from the raw starts (and find it).
    rng = np.random.default_rng(8)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = q @ np.diag([0.5, 1.0, 1.5, 2.0, 3.0]) @ q.T
    model = FieldModel(
        DoubleConfig(kind="linear"), jnp.asarray(a, jnp.float32), jnp.ones((5, 1), jnp.float32)
    )
    starts = rng.standard_normal((64, 5))
    settings = SolverConfig(relax_steps=60)
    fps = find_fixed_points(
        model, np.ones((1, 1)), starts, scale=1.0, speed_scale=1.0, settings=settings
    )
    assert fps.n_candidates == len(starts)
    expected = np.linalg.solve(a, -np.ones(5))
    assert len(fps.points) == 1
    np.testing.assert_allclose(fps.points[0], expected, atol=1e-9)
    assert not fps.stable[0]


@pytest.mark.parametrize("dense", [False, True])
def test_levenberg_marquardt_step_matches_closed_form(dense):
    # f(x) = A x + b with A = c·Q (Q orthogonal): AᵀA = c²I, so the trace estimate is exact
    # and the damped step is δ = −(x − x*)/(1 + μ); with n CG steps it is solved exactly, and
    # the dense step solves it directly.
    n, c, mu = 6, 3.0, 0.2
    rng = np.random.default_rng(9)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = c * q
    b = rng.standard_normal((n, 1))
    x0 = rng.standard_normal((3, n))
    u = np.array([[1.0], [-2.0], [0.5]])
    with jax.enable_x64(True):
        model = FieldModel(DoubleConfig(kind="linear"), jnp.asarray(a), jnp.asarray(b))
        search = DenseLMSearch() if dense else MatrixFreeLMSearch(cg_steps=n)
        x1, speed, damping = levenberg_marquardt(
            model,
            jnp.asarray(x0),
            jnp.asarray(u),
            jnp.full(3, mu),
            jnp.arange(3),
            1,
            search,
            jax.random.key(0),
        )
    solution = -np.linalg.solve(a, b @ u.T).T  # A x* + b u = 0
    expected = solution + (x0 - solution) * mu / (1 + mu)
    np.testing.assert_allclose(np.asarray(x1), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        np.asarray(speed), c * np.linalg.norm(expected - solution, axis=1), rtol=1e-9
    )
    np.testing.assert_allclose(np.asarray(damping), 0.3 * mu)


def _lm_rows(seed: int, m: int = 240):
    """The Hopfield test network and `m` LM rows: states and dampings."""
    model, patterns, _ = _hopfield()
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.standard_normal((m, patterns.shape[1]))
    return model, x, 10.0 ** rng.uniform(-4, 0, m)


def _float64_block(search, model, x, damping, numbers):
    """Four of `search`'s LM iterations from every row, in float64."""
    with jax.enable_x64(True):
        wide = cast_model(model, jnp.float64)
        return search.block(
            wide, x, np.zeros((len(x), 1)), damping, numbers, 4, jax.random.key(0), jnp.float64
        )


def test_dense_steps_in_chunks_give_the_same_rows():
    # Dense LM runs on bounded chunks of rows; rows are independent, so chunking must change
    # nothing, row for row. 64-row chunks (the smallest) split 240 rows four ways.
    model, x, damping = _lm_rows(3)
    n = x.shape[1]
    whole_search, chunked_search = DenseLMSearch(), DenseLMSearch(chunk_elements=64 * n * n)
    assert whole_search.chunk_rows(n) >= 240
    assert chunked_search.chunk_rows(n) == 64
    whole, chunked = (
        _float64_block(search, model, x, damping, np.arange(240))
        for search in (whole_search, chunked_search)
    )
    assert not np.allclose(whole[0], x), "the rows must have moved"
    for expected, actual in zip(whole, chunked, strict=True):
        assert actual.shape == expected.shape == (240, *expected.shape[1:])
        np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-12)


def test_matrix_free_rows_do_not_depend_on_which_rows_share_their_call():
    # A row's random trace probes derive from its own number, and rows run in pieces: the
    # same row, numbered alike, must move alike whether it runs among 240 rows (four
    # pieces) or among 37 others (two pieces, padded). A batch-position key would differ.
    model, x, damping = _lm_rows(5)
    numbers = np.arange(240)
    search = MatrixFreeLMSearch(cg_steps=3)  # inexact steps: the probes matter
    assert len(piece_bounds(240)) == 4 and len(piece_bounds(38)) == 2
    whole = _float64_block(search, model, x, damping, numbers)
    subset = np.r_[200:238]
    part = _float64_block(search, model, x[subset], damping[subset], numbers[subset])
    assert not np.allclose(whole[0], x), "the rows must have moved"
    for expected, actual in zip(whole, part, strict=True):
        np.testing.assert_allclose(actual, expected[subset], rtol=1e-9, atol=1e-12)
    # The same rows renumbered draw other probes, and then move differently.
    renumbered = _float64_block(search, model, x[subset], damping[subset], numbers[subset] + 1)
    assert not np.allclose(renumbered[0], whole[0][subset], rtol=1e-6, atol=1e-9)


def test_pieces_cover_the_rows_once_and_in_order():
    for m in [0, 1, 31, 32, 88, 128, 1568, 9216]:
        bounds = piece_bounds(m)
        covered = np.concatenate([np.arange(a, b) for a, b in bounds]) if bounds else []
        np.testing.assert_array_equal(covered, np.arange(m))
        sizes = [b - a for a, b in bounds]
        assert all(s <= MAX_PIECE_ROWS for s in sizes)
        # Every piece but the last has one compiled size, so only the last is padded.
        assert len(set(sizes[:-1])) <= 1
    assert len(piece_bounds(9216)) == 18 and len(piece_bounds(88)) == 3


class _RecordingKernel:
    """A row-wise "kernel" that records where and under which settings each piece ran, with
    a lowered program that does or does not call LAPACK."""

    def __init__(self, lapack: bool):
        self.lapack, self.seen = lapack, []

    def lower(self, *args):
        text = "custom_call @lapack_sgetrf_ffi" if self.lapack else "stablehlo.dot_general"
        return types.SimpleNamespace(as_text=lambda: text)

    def __call__(self, model, rows, _):
        del model
        settings = (
            jax.config.read("jax_enable_x64"),
            jax.config.jax_default_matmul_precision,  # pyright: ignore[reportAttributeAccessIssue]
        )
        self.seen.append((threading.current_thread().name, settings))
        return rows * 2, jnp.zeros(rows.shape[0], rows.dtype)


@pytest.mark.parametrize("lapack", [False, True])
def test_pieces_run_on_threads_only_where_the_program_has_no_lapack_call(monkeypatch, lapack):
    # Two programs each running a batched LAPACK call in a loop at once deadlock XLA's CPU
    # runtime: pieces of such a program run one after another on the caller's thread, the
    # others on the pool's threads, and every piece under the caller's thread-local settings
    # (jax.enable_x64, jax.default_matmul_precision: threads do not inherit them).
    monkeypatch.setattr(mechscope, "usable_cores", lambda: 4)
    x = np.random.default_rng(0).standard_normal((300, 4))
    kernel = _RecordingKernel(lapack)
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        out, zeros = call_in_pieces(kernel, None, (x, x), jnp.float64)
    np.testing.assert_array_equal(out, 2 * x)  # float32 would round x
    assert out.shape == (300, 4) and zeros.shape == (300,)
    assert len(kernel.seen) == len(piece_bounds(300)) == 3
    assert all(settings == (True, "highest") for _, settings in kernel.seen)
    names = {name for name, _ in kernel.seen}
    if lapack:
        assert names == {threading.current_thread().name}
    else:
        assert all(name.startswith("mechscope") for name in names)
        assert threading.current_thread().name not in names


def test_the_lowered_programs_of_the_kernels_show_which_call_lapack():
    # The real kernels, as the solver calls them: relaxation, matrix-free LM and the BFGS
    # polish are matrix products and elementwise operations; dense Newton, the continuation,
    # the Newton polish and dense LM call LAPACK (the positive controls), so their pieces
    # run one after another.
    model, patterns, _ = _hopfield()
    n = patterns.shape[1]
    x, u = jnp.zeros((64, n)), jnp.zeros((64, 1))
    lm_rows = (x, u, jnp.ones(64), jnp.arange(64))
    key = jax.random.key(0)
    cases = [
        (relax, (x, u), (jnp.asarray(0.1), 3), False),
        (levenberg_marquardt, lm_rows, (jnp.asarray(2), MatrixFreeLMSearch(), key), False),
        (polish_solve, (x, u), (3, "bfgs"), False),
        (newton, (x, u), (2,), True),
        (continuation, (x, u, u), (jnp.asarray(2), 3), True),
        (polish_solve, (x, u), (3, "newton"), True),
        (levenberg_marquardt, lm_rows, (jnp.asarray(2), DenseLMSearch(), key), True),
    ]
    for function, rows, args, expected in cases:
        uses = _fp_batching._uses_lapack(
            function, model, rows, jnp.float32, args, lambda rows=rows: rows
        )
        assert uses is expected, function


def test_each_search_has_its_own_defaults_and_explicit_values():
    assert (MatrixFreeLMSearch().steps, MatrixFreeLMSearch().handoff_tol) == (120, 1e-2)
    dense = DenseLMSearch()
    assert (dense.steps, dense.handoff_tol) == (200, 1e-4)
    chosen = DenseLMSearch(steps=50, handoff_tol=3e-3)
    assert (chosen.steps, chosen.handoff_tol) == (50, 3e-3)
    # Every search config's defaults are its module's defaults (one source of truth each).
    assert MatrixFreeLMConfig().build(0.01) == MatrixFreeLMSearch()
    assert DenseLMConfig().build(0.01) == DenseLMSearch()
    assert NewtonConfig().build(0.01) == NewtonSearch()
    assert GolubConfig().build(0.01) == GolubSearch(dt=0.01)  # the task's dt unless set
    assert GolubConfig(dt=0.1).build(0.01).dt == 0.1
    # The probe config takes the search as a table tagged by its kind.
    assert FixedPointsConfig().search == MatrixFreeLMConfig()
    config = FixedPointsConfig.model_validate({"search": {"kind": "dense_lm"}})
    assert config.search.build(0.01) == DenseLMSearch()
    config = FixedPointsConfig.model_validate({"search": {"kind": "lm", "steps": 7}})
    assert config.search.build(0.01) == MatrixFreeLMSearch(steps=7)


def test_search_config_from_a_suite_toml_table():
    import tomllib

    probe = tomllib.loads(
        """
        [[probes]]
        name = "fixed_points"
        n_starts = 64
        merge_tol = 0.02
        search = { kind = "golub", max_iters = 100 }

        [[probes]]
        name = "fixed_points"
        [probes.search]
        kind = "dense_lm"
        chunk_elements = 4096
        """
    )["probes"]
    first = FixedPointsConfig(**{k: v for k, v in probe[0].items() if k != "name"})
    assert (first.n_starts, first.merge_tol) == (64, 0.02)
    assert first.search.build(0.01) == GolubSearch(dt=0.01, max_iters=100)
    second = FixedPointsConfig(**{k: v for k, v in probe[1].items() if k != "name"})
    assert second.search.build(0.01) == DenseLMSearch(chunk_elements=4096)
    assert hash(first) != hash(second)


def test_dense_levenberg_marquardt_follows_the_exact_path_on_a_tanh_network():
    # Five LM iterations on −x + W tanh(x), against the same iterations written out in NumPy
    # with the closed-form Jacobian −I + W diag(1 − tanh²x) and a direct solve.
    model, patterns, _ = _hopfield()
    n = patterns.shape[1]
    rng = np.random.default_rng(4)
    x0 = rng.standard_normal((4, n)) * 2.0
    w = np.asarray(model.a, np.float64)

    def field(x):
        return -x + np.tanh(x) @ w.T

    x, q, mu = x0.copy(), np.sum(field(x0) ** 2, axis=1), np.full(len(x0), 1e-2)
    for _ in range(5):
        for i in range(len(x)):
            jac = -np.eye(n) + w * (1 - np.tanh(x[i]) ** 2)[None, :]
            normal = jac.T @ jac
            delta = np.linalg.solve(
                normal + mu[i] * np.trace(normal) / n * np.eye(n), -jac.T @ field(x[i])
            )
            trial = np.sum(field(x[i] + delta) ** 2)
            if trial < q[i]:
                x[i], q[i], mu[i] = x[i] + delta, trial, 0.3 * mu[i]
            else:
                mu[i] = 10.0 * mu[i]
    with jax.enable_x64(True):
        wide = cast_model(model, jnp.float64)
        x1, speed, damping = levenberg_marquardt(
            wide,
            jnp.asarray(x0),
            jnp.zeros((len(x0), 1)),
            jnp.full(len(x0), 1e-2),
            jnp.arange(len(x0)),
            5,
            DenseLMSearch(),
            jax.random.key(0),
        )
    np.testing.assert_allclose(np.asarray(x1), x, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(speed), np.sqrt(q), rtol=1e-8)
    np.testing.assert_allclose(np.asarray(damping), mu, rtol=1e-12)
    assert np.all(np.sqrt(q) < np.linalg.norm(field(x0), axis=1)), "the paths must descend"


def _greedy_leaders(points: np.ndarray, score: np.ndarray, tol: float) -> np.ndarray:
    """The greedy clustering written out directly: one exact distance row per visited point."""
    claimed = np.zeros(len(points), dtype=bool)
    leaders = []
    for i in np.argsort(score, kind="stable"):
        if not claimed[i]:
            leaders.append(i)
            claimed |= np.linalg.norm(points - points[i], axis=1) <= tol
    return np.sort(np.asarray(leaders, dtype=int))


def test_representatives_agree_with_the_greedy_clustering_written_out():
    rng = np.random.default_rng(10)
    centres = 3.0 * rng.standard_normal((12, 20))
    points = np.concatenate(
        [
            centres[rng.integers(0, 12, 300)] + 0.05 * rng.standard_normal((300, 20)),
            5.0 * rng.standard_normal((100, 20)),
        ]
    )
    score = rng.random(len(points))
    for tol in (0.01, 0.3, 1.0, 2.0):
        np.testing.assert_array_equal(
            representatives(points, score, tol), _greedy_leaders(points, score, tol)
        )
    # Clusters are ≈ 0.45 across and ≥ 10 apart: at radius 1 each collapses to one leader;
    # the 100 scattered points (≈ 30 apart) stay.
    assert len(representatives(points, score, 1.0)) == 12 + 100
    # Many points, few clusters (relaxed starts) and many points, no clusters (chaotic flow):
    # the batches of leader rows must cover both.
    collapsed = centres[rng.integers(0, 12, 5000)] + 1e-3 * rng.standard_normal((5000, 20))
    scattered = 5.0 * rng.standard_normal((3000, 20))
    for cloud in (collapsed, scattered, np.concatenate([collapsed, scattered])):
        order = rng.random(len(cloud))
        np.testing.assert_array_equal(
            representatives(cloud, order, 0.1), _greedy_leaders(cloud, order, 0.1)
        )
    assert len(representatives(collapsed, rng.random(5000), 0.1)) == 12


class StepTaskConfig(mechscope.Config):
    """Constant input ±level from the start; go at 3.5 s."""

    levels: tuple[float, ...] = (-0.3, 0.3)
    n_times: int = 400


class StepTask(mechscope.AbstractTask):
    config: StepTaskConfig = eqx.field(static=True)  # pyright: ignore[reportIncompatibleVariableOverride]

    @property
    def n_inputs(self):
        return 1

    @property
    def n_outputs(self):
        return 2

    @property
    def dt(self):
        return 0.01

    def conditions(self):
        levels = jnp.asarray(self.config.levels)
        times = jnp.arange(self.config.n_times) * self.dt
        inputs = jnp.broadcast_to(levels[:, None, None], (len(levels), len(times), 1))
        targets = jnp.zeros((len(levels), len(times), 2))
        return mechscope.Trials(
            inputs=inputs,
            targets=targets,
            mask=jnp.ones_like(targets),
            times=times,
            events={"go": jnp.full(len(levels), 3.5)},
            labels={"condition": jnp.arange(len(levels))},
        )

    def sample(self, batch_size, *, key):
        return self.conditions()


def _trained(model):
    return mechscope.TrainedRun(model=model)


def test_probe_attractor_verdict(getkey, tmp_path):
    probe = FixedPointsProbe(FixedPointsConfig(n_starts=32, inputs=("delay", "zero")))
    task = StepTask(StepTaskConfig())
    result = probe.run(_trained(_bistable()), task, key=getkey())
    # Each condition relaxes to the stable node of its own delay input by go time.
    assert result.metrics["attractor_fraction"] == 1.0
    assert result.metrics["mean_attractor_distance"] < 1e-2
    assert result.metrics["n_stable_delay"] == 2.0
    assert result.metrics["n_unstable_zero"] == 1.0
    # A slowly drifting linear system is still far from its fixed point at go: no attractor.
    drift = FieldModel(DoubleConfig(kind="linear"), -0.05 * jnp.eye(2), jnp.ones((2, 1)))
    other = probe.run(_trained(drift), task, key=getkey())
    assert other.metrics["attractor_fraction"] == 0.0
    from mechscope.testing import check_probe

    checked = check_probe(probe, _trained(_bistable()), task, key=getkey(), tmp_path=tmp_path)
    assert set(checked.figures) == {"fixed_points", "flow_field"}


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="fixed_tol"):
        FixedPointsConfig(fixed_tol=0.1, slow_tol=0.01)
    with pytest.raises(ValueError, match="inputs"):
        FixedPointsConfig(inputs=())
    # A search's settings belong to it alone, and its kind must be one of the searches.
    with pytest.raises(ValueError, match="chunk_elements"):
        FixedPointsConfig.model_validate({"search": {"kind": "lm", "chunk_elements": 64}})
    with pytest.raises(ValueError, match="kind"):
        FixedPointsConfig.model_validate({"search": {"kind": "bfgs"}})
    with pytest.raises(ValueError, match="lm_steps"):
        FixedPointsConfig.model_validate({"lm_steps": 50})
