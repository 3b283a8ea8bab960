"""Fixed-point topology (Maheswaranathan et al. 2019), from a fixed-point search's arrays.

Per network (:func:`topology_represent`, NumPy, from the arrays the ``fixed_points`` probe
stores): for each constant input, the numbers of stable and unstable fixed points, the
linearisation spectrum at the stable points (the ``n_eigenvalues`` slowest eigenvalues of each,
pooled, equal mass per point) as a weighted point set in the complex plane, and the
arrangement: each stable point's distance to the nearest trajectory state, in units of the
trajectories' scale. Everything is padded to fixed sizes so representations stack.

Per pair (:func:`topology_distance`, JAX, vmappable): the L1 difference of the counts, a
Wasserstein-2 distance between the spectra (debiased Sinkhorn divergence, see
:func:`sinkhorn_w2`) and the exact Wasserstein-1 distance between the arrangement
distributions, averaged over inputs. All three are invariant to any orthogonal change of basis
(points and trajectories move together, spectra are similarity invariants).

An input with no stable point has the point mass at 0 as its spectrum and arrangement: its
mismatch with a network that has stable points is then their spread about 0 (and the count).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jaxtyping import Array, Bool, Complex, Float, Int

from mechscope_compare._batch import batched_map


class Topology(eqx.Module):
    """Fixed-point topology of one network, padded to fixed sizes (a pytree of arrays).

    Attributes:
        counts: stable and unstable fixed points per input, ``[input, 2]``.
        spectrum: pooled eigenvalues at stable points as (real, imag), ``[input, slot, 2]``.
        spectrum_weight: mass per eigenvalue (1 per input, 0 on padding), ``[input, slot]``.
        arrangement: distance of each stable point to the trajectories / their scale,
            ``[input, point]``.
        arrangement_weight: mass per stable point (1 per input), ``[input, point]``.
    """

    counts: Float[Array, "input 2"]
    spectrum: Float[Array, "input slot 2"]
    spectrum_weight: Float[Array, "input slot"]
    arrangement: Float[Array, "input point"]
    arrangement_weight: Float[Array, "input point"]


def topology_represent(
    points: Float[np.ndarray, "fixed_point unit"],
    input_index: Int[np.ndarray, " fixed_point"],
    stable: Bool[np.ndarray, " fixed_point"],
    eigenvalues: Complex[np.ndarray, "fixed_point eig"],
    trajectories: Float[np.ndarray, "condition time unit"],
    *,
    n_inputs: int,
    max_points: int = 16,
    n_eigenvalues: int | None = 10,
) -> Topology:
    """The fixed-point topology of one network: the per-network part.

    Args:
        points: fixed points found (all inputs), ``[k, n_units]``.
        input_index: which constant input each point belongs to, in ``[0, n_inputs)``.
        stable: whether each point is stable.
        eigenvalues: Jacobian eigenvalues at each point (complex), ``[k, n_eig]``.
        trajectories: the condition trajectories the points are placed against,
            ``[condition, time, n_units]``, in the same basis as `points`.
        n_inputs: number of constant inputs (inputs without points count as empty).
        max_points: room for stable points per input (more raises: raise the limit).
        n_eigenvalues: eigenvalues kept per stable point, those with the largest real part
            (the slowest modes); None keeps all. Must not exceed the eigenvalues given.

    Returns:
        The padded :class:`Topology`.
    """
    points = np.asarray(points, float)
    input_index = np.asarray(input_index, int)
    stable = np.asarray(stable, bool)
    eigenvalues = np.asarray(eigenvalues)
    states = np.asarray(trajectories, float).reshape(
        -1, points.shape[-1] if points.size else np.shape(trajectories)[-1]
    )
    m = eigenvalues.shape[-1] if n_eigenvalues is None else n_eigenvalues
    if eigenvalues.size and m > eigenvalues.shape[-1]:
        raise ValueError(f"n_eigenvalues={m} but only {eigenvalues.shape[-1]} given per point")
    scale = np.sqrt(np.mean(np.sum((states - states.mean(0)) ** 2, axis=-1)))
    counts = np.zeros((n_inputs, 2))
    spectrum = np.zeros((n_inputs, max_points * m, 2))
    spectrum_weight = np.zeros((n_inputs, max_points * m))
    arrangement = np.zeros((n_inputs, max_points))
    arrangement_weight = np.zeros((n_inputs, max_points))
    for i in range(n_inputs):
        here = input_index == i
        chosen = here & stable
        k = int(chosen.sum())
        counts[i] = (k, int((here & ~stable).sum()))
        if k > max_points:
            raise ValueError(f"input {i} has {k} stable points; max_points is {max_points}")
        if k == 0:
            # The point mass at 0, as the module docstring explains.
            spectrum_weight[i, 0] = 1.0
            arrangement_weight[i, 0] = 1.0
            continue
        values = eigenvalues[chosen]
        slowest = np.take_along_axis(values, np.argsort(-np.real(values), axis=1)[:, :m], axis=1)
        flat = slowest.reshape(-1)
        spectrum[i, : flat.size] = np.stack([np.real(flat), np.imag(flat)], axis=-1)
        spectrum_weight[i, : flat.size] = 1.0 / flat.size
        gaps = np.linalg.norm(points[chosen][:, None, :] - states[None, :, :], axis=-1)
        arrangement[i, :k] = gaps.min(axis=1) / scale
        arrangement_weight[i, :k] = 1.0 / k
    return Topology(
        counts=jnp.asarray(counts),
        spectrum=jnp.asarray(spectrum),
        spectrum_weight=jnp.asarray(spectrum_weight),
        arrangement=jnp.asarray(arrangement),
        arrangement_weight=jnp.asarray(arrangement_weight),
    )


def wasserstein_1d(
    x: Float[Array, " p"], wx: Float[Array, " p"], y: Float[Array, " q"], wy: Float[Array, " q"]
) -> Float[Array, ""]:
    """Exact W1 between two weighted point sets on the line: ∫|F_x − F_y|.

    Zero-weight entries (padding) are ignored. Weights should each sum to 1.
    """
    values = jnp.concatenate([x, y])
    order = jnp.argsort(values)
    sorted_values = values[order]
    signed = jnp.concatenate([wx, -wy])[order]
    cdf_gap = jnp.cumsum(signed)[:-1]
    return jnp.sum(jnp.abs(cdf_gap) * jnp.diff(sorted_values))


def _entropic_ot(x, wx, y, wy, eps, iters):
    cost = jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
    log_wx = jnp.where(wx > 0, jnp.log(jnp.where(wx > 0, wx, 1.0)), -jnp.inf)
    log_wy = jnp.where(wy > 0, jnp.log(jnp.where(wy > 0, wy, 1.0)), -jnp.inf)
    # ε-scaling: anneal from the largest cost down to ε over the first half, then iterate at
    # ε. Plain Sinkhorn at a small ε needs O(cost/ε) iterations to converge; warm-started
    # potentials along a geometric schedule need a few hundred (Schmitzer 2019; geomloss).
    live = (wx[:, None] > 0) & (wy[None, :] > 0)
    start = jnp.maximum(jnp.max(jnp.where(live, cost, 0.0)), eps)
    anneal = max(iters // 2, 1)

    def body(k, fg):
        f, g = fg
        fraction = jnp.minimum(k / anneal, 1.0)
        e = jnp.exp((1 - fraction) * jnp.log(start) + fraction * jnp.log(eps))
        f = -e * jax.nn.logsumexp((g[None, :] - cost) / e + log_wy[None, :], axis=1)
        g = -e * jax.nn.logsumexp((f[:, None] - cost) / e + log_wx[:, None], axis=0)
        return f, g

    f, g = jax.lax.fori_loop(0, iters, body, (jnp.zeros_like(wx), jnp.zeros_like(wy)))
    # The dual value ⟨f, wx⟩ + ⟨g, wy⟩ at the fixed point; zero-weight slots contribute 0.
    return jnp.sum(jnp.where(wx > 0, f * wx, 0.0)) + jnp.sum(jnp.where(wy > 0, g * wy, 0.0))


def sinkhorn_w2(
    x: Float[Array, "p 2"],
    wx: Float[Array, " p"],
    y: Float[Array, "q 2"],
    wy: Float[Array, " q"],
    *,
    blur: float = 0.02,
    iters: int = 300,
) -> Float[Array, ""]:
    """W2 between weighted point sets via the debiased Sinkhorn divergence (jit/vmap-able).

    S_ε = OT_ε(x, y) − ½OT_ε(x, x) − ½OT_ε(y, y) is ≥ 0, exactly 0 for equal sets and tends
    to W2² as ε → 0 (Feydy et al. 2019); we return √S_ε. ε = (blur · s)² with s² the mean
    squared norm of all points, so the blur is relative to the spectrum's own scale. Sets of
    different sizes are fine (padding has weight 0).

    Args:
        x: first set, ``[p, 2]``.
        wx: its weights (sum 1).
        y: second set, ``[q, 2]``.
        wy: its weights (sum 1).
        blur: ε^½ relative to the data scale.
        iters: Sinkhorn iterations (log domain).
    """
    spread = 0.5 * (jnp.sum(wx * jnp.sum(x**2, -1)) + jnp.sum(wy * jnp.sum(y**2, -1)))
    eps = jnp.maximum((blur**2) * spread, 1e-12)
    value = _entropic_ot(x, wx, y, wy, eps, iters) - 0.5 * (
        _entropic_ot(x, wx, x, wx, eps, iters) + _entropic_ot(y, wy, y, wy, eps, iters)
    )
    return jnp.sqrt(jnp.maximum(value, 0.0))


def wasserstein_exact(
    x: np.ndarray, wx: np.ndarray, y: np.ndarray, wy: np.ndarray, *, p: int = 2
) -> float:
    """Exact Wasserstein-p between small weighted point sets, by linear programming (NumPy).

    The reference for :func:`sinkhorn_w2` in tests; rows with zero weight are dropped.
    """
    x, wx = np.asarray(x)[np.asarray(wx) > 0], np.asarray(wx)[np.asarray(wx) > 0]
    y, wy = np.asarray(y)[np.asarray(wy) > 0], np.asarray(wy)[np.asarray(wy) > 0]
    cost = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1) ** p
    n, m = cost.shape
    rows = np.kron(np.eye(n), np.ones((1, m)))
    cols = np.kron(np.ones((1, n)), np.eye(m))
    result = scipy.optimize.linprog(
        cost.ravel(),
        A_eq=np.vstack([rows, cols]),
        b_eq=np.concatenate([wx, wy]),
        bounds=(0, None),
        method="highs",
    )
    if result.fun is None:
        raise ValueError(f"optimal transport failed: {result.message}")
    return float(result.fun ** (1 / p))


@functools.partial(jax.jit, static_argnames=("iters",))
def topology_distance(
    a: Topology, b: Topology, *, blur: float = 0.02, iters: int = 300
) -> dict[str, Float[Array, ""]]:
    """Fixed-point topology distances between two networks: the pairwise part.

    Args:
        a: first representation from :func:`topology_represent`.
        b: second, with the same inputs (same order) and padding sizes.
        blur: relative Sinkhorn blur (see :func:`sinkhorn_w2`).
        iters: Sinkhorn iterations.

    Returns:
        ``count``: Σ over inputs of |Δ stable| + |Δ unstable|; ``stable_count``: Σ |Δ stable|;
        ``spectrum``: mean over inputs of the W2 distance between the stable-point spectra
        (units of the eigenvalues, 1/s for continuous time); ``arrangement``: mean over
        inputs of the W1 distance between the distance-to-trajectory distributions (units
        of the trajectory scale).
    """
    spectrum = jax.vmap(functools.partial(sinkhorn_w2, blur=blur, iters=iters))(
        a.spectrum, a.spectrum_weight, b.spectrum, b.spectrum_weight
    )
    arrangement = jax.vmap(wasserstein_1d)(
        a.arrangement, a.arrangement_weight, b.arrangement, b.arrangement_weight
    )
    difference = jnp.abs(a.counts - b.counts)
    return {
        "count": jnp.sum(difference),
        "stable_count": jnp.sum(difference[:, 0]),
        "spectrum": jnp.mean(spectrum),
        "arrangement": jnp.mean(arrangement),
    }


def stack_topologies(topologies: list[Topology]) -> Topology:
    """Stack representations along a new leading network axis (padding sizes must agree)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *topologies)


@functools.partial(jax.jit, static_argnames=("iters", "batch_size"))
def topology_pairwise(
    topologies: Topology,
    pairs: tuple[Array, Array],
    *,
    blur: float = 0.02,
    iters: int = 300,
    batch_size: int | None = None,
) -> dict[str, Float[Array, " pair"]]:
    """Topology distances for many pairs at once (vmapped over pairs).

    Args:
        topologies: stacked representations (:func:`stack_topologies`).
        pairs: index arrays (i, j), e.g. from :func:`condensed_pairs`.
        blur: relative Sinkhorn blur.
        iters: Sinkhorn iterations.
        batch_size: pairs per vectorised batch; None: all in one.
    """
    i, j = pairs

    def one(index_i, index_j):
        pick = lambda k: jax.tree.map(lambda leaf: leaf[k], topologies)  # noqa: E731
        return topology_distance(pick(index_i), pick(index_j), blur=blur, iters=iters)

    return batched_map(one, (i, j), batch_size)
