"""Dynamical similarity analysis (Ostrow et al. 2023), matching the ``dsa-metric`` package.

Per network (:func:`dsa_represent`): delay-embed the condition trajectories into a Hankel
matrix, take its SVD and fit a reduced-rank linear operator on the leading ``rank`` right
singular vectors (HAVOK DMD, principal-component regression). That operator is the
representation. Per pair (:func:`dsa_distance`): the Procrustes distance over vector fields,
min over orthogonal C of ‖Â − C B̂ Cᵀ‖_F on Frobenius-normalised operators, and its angular
form arccos(⟨Â, C B̂ Cᵀ⟩_F). C is optimised with Adam over both components of O(n), from
several restarts that run together under ``vmap`` (and pairs are vmapped on top).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from mechscope_compare._batch import batched_map

# dsa-metric's defaults (DSA.DSA and DSA.DMD), so a comparison "with the same settings" is the
# default one. rank=None means every singular vector of the Hankel matrix.
N_DELAYS = 1
DELAY_INTERVAL = 1
LAMB = 1e-8
ITERS = 1500
# Our learning rate is a rotation step in skew coordinates, not dsa-metric's step on the weights
# of its parametrising network (its lr=5e-3 has no counterpart here): 5e-2, cosine-decayed,
# converges within the reference's 1500 iterations on every pair we tried.
LR = 5e-2
N_RESTARTS = 8


def hankel(
    trajectories: Float[Array, "condition time unit"], n_delays: int, delay_interval: int = 1
) -> Float[Array, "condition embedded_time embedded_unit"]:
    """Delay-embed each condition's trajectory (rows: times, columns: delayed copies).

    Column block ``d`` holds x(t + (n_delays − 1 − d)·delay_interval), the most recent sample
    first, as in dsa-metric's ``embed_signal_torch`` (the block order does not change the
    operator: it only permutes the left singular vectors).

    Args:
        trajectories: states or rates per condition, ``[condition, time, unit]``.
        n_delays: number of delayed copies (1 = no embedding).
        delay_interval: samples between consecutive delays.

    Returns:
        ``[condition, time − (n_delays − 1)·delay_interval, unit·n_delays]``.
    """
    n_times = trajectories.shape[1]
    span = (n_delays - 1) * delay_interval
    if n_times - span < 2:
        raise ValueError(
            f"n_delays={n_delays} with delay_interval={delay_interval} leaves "
            f"{n_times - span} embedded samples of {n_times}; need at least 2"
        )
    length = n_times - span
    blocks = [
        trajectories[:, (n_delays - 1 - d) * delay_interval :][:, :length] for d in range(n_delays)
    ]
    return jnp.concatenate(blocks, axis=-1)


@functools.partial(jax.jit, static_argnames=("n_delays", "delay_interval", "rank"))
def dsa_represent(
    trajectories: Float[Array, "condition time unit"],
    *,
    n_delays: int = N_DELAYS,
    delay_interval: int = DELAY_INTERVAL,
    rank: int | None = None,
    lamb: float = LAMB,
) -> Float[Array, "rank rank"]:
    """The HAVOK-DMD operator of one network: the per-network part of DSA.

    Like dsa-metric, the data are not centred and the operator acts on the leading right
    singular vectors of the Hankel matrix, each of unit norm over all samples, so it is the
    one-step map of whitened delay coordinates: v(t + 1) ≈ A v(t).

    Args:
        trajectories: condition trajectories ``[condition, time, unit]``, at least two
            embedded samples per condition.
        n_delays: number of delays in the embedding.
        delay_interval: samples between delays.
        rank: number of singular vectors kept (None: all, dsa-metric's default).
        lamb: ridge regularisation of the least-squares fit.

    Returns:
        The operator A, ``[rank, rank]``.
    """
    embedded = hankel(trajectories, n_delays, delay_interval)
    n_conditions, length, width = embedded.shape
    flat = embedded.reshape(n_conditions * length, width)
    # The left singular vectors of H are dsa-metric's V (it takes the SVD of Hᵀ).
    v, _, _ = jnp.linalg.svd(flat, full_matrices=False)
    r = v.shape[1] if rank is None else min(rank, v.shape[1])
    # Singular vectors have arbitrary signs, and A flips with them (A → DAD, D = diag(±1)).
    # The distance does not care, but the optimiser does: a far-off D is a poor start. Fix the
    # sign so each column's largest entry is positive (sklearn's svd_flip): the columns live
    # in sample space (condition × time), shared by every network compared, so a network and
    # its copy in another basis get the same A and the identity restart aligns them at once.
    v = v[:, :r]
    pivot = v[jnp.argmax(jnp.abs(v), axis=0), jnp.arange(r)]
    v = (v * jnp.sign(pivot)[None, :]).reshape(n_conditions, length, r)
    before = v[:, :-1].reshape(-1, r)
    after = v[:, 1:].reshape(-1, r)
    gram = before.T @ before + lamb * jnp.eye(r, dtype=before.dtype)
    return jnp.linalg.solve(gram, before.T @ after).T


def _cayley(skew: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """(I + S)⁻¹(I − S): an orthogonal matrix in the identity component for skew S."""
    eye = jnp.eye(skew.shape[0], dtype=skew.dtype)
    return jnp.linalg.solve(eye + skew, eye - skew)


def spectral_start(a: Float[Array, "n n"], b: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """An informed starting alignment: match the eigenbases of the symmetric parts.

    If A = C B Cᵀ, the symmetric parts satisfy S_A = C S_B Cᵀ, so C = U_A D U_Bᵀ (U: their
    eigenvectors, ascending) up to a sign per eigenvector, D = diag(d). The skew parts fix
    the signs: Ũ_A = U_Aᵀ K_A U_A must equal D (U_Bᵀ K_B U_B) D, so d maximises
    Σ d_i d_j Ũ_A,ij Ũ_B,ij, solved by the sign of the leading eigenvector of that
    elementwise product (its spectral relaxation, exact for a true copy by Perron–Frobenius).
    Exact for similar matrices with distinct symmetric-part eigenvalues; merely a reasonable
    start otherwise, hence the random restarts too.
    """
    sym_a, sym_b = 0.5 * (a + a.T), 0.5 * (b + b.T)
    _, u_a = jnp.linalg.eigh(sym_a)
    _, u_b = jnp.linalg.eigh(sym_b)
    skew_a = u_a.T @ (0.5 * (a - a.T)) @ u_a
    skew_b = u_b.T @ (0.5 * (b - b.T)) @ u_b
    _, vectors = jnp.linalg.eigh(skew_a * skew_b)
    signs = jnp.where(vectors[:, -1] >= 0, 1.0, -1.0).astype(a.dtype)
    return (u_a * signs[None, :]) @ u_b.T


def restart_bases(n: int, n_restarts: int, *, key: PRNGKeyArray, dtype=jnp.float32) -> Array:
    """Random starting points on O(n), both components.

    Restart 0 is the identity and restart 1 the swap of the first two coordinates (det −1):
    the two starts dsa-metric uses. The rest are Haar-random, alternately proper and improper,
    so the optimiser (which moves within a component) reaches both components of O(n).

    Args:
        n: matrix size.
        n_restarts: number of starts (at least 2).
        key: PRNG key for the random starts.
        dtype: floating dtype.

    Returns:
        ``[n_restarts, n, n]`` orthogonal matrices.
    """
    if n_restarts < 2:
        raise ValueError(
            f"n_restarts must be at least 2 (one per component of O(n)), got {n_restarts}"
        )
    eye = jnp.eye(n, dtype=dtype)
    swap = eye[jnp.asarray([1, 0, *range(2, n)])] if n > 1 else -eye
    gaussian = jax.random.normal(key, (max(n_restarts - 2, 0), n, n), dtype)
    q, r = jnp.linalg.qr(gaussian)
    # Sign fix makes Q Haar-distributed; then flip one column on odd restarts for det −1.
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    det = jnp.linalg.det(q)
    target = jnp.where(jnp.arange(q.shape[0]) % 2 == 0, 1.0, -1.0).astype(dtype)
    q = q.at[..., :, 0].multiply((det * target)[:, None])
    return jnp.concatenate([eye[None], swap[None], q], axis=0)[:n_restarts]


def starts_for(a: Array, b: Array, n_restarts: int, *, key: PRNGKeyArray) -> Array:
    """All starts of one pair, ``[n_restarts, n, n]``.

    The spectral start, the same with its last axis flipped (the other component of O(n)),
    then ``n_restarts − 2`` of :func:`restart_bases`.
    """
    spectral = spectral_start(a, b)
    flipped = spectral.at[:, -1].multiply(-1.0)
    rest = restart_bases(a.shape[0], max(n_restarts - 2, 2), key=key, dtype=a.dtype)
    return jnp.concatenate([spectral[None], flipped[None], rest], axis=0)[:n_restarts]


def _normalise(a: Array) -> Array:
    return a / jnp.linalg.norm(a)


def _reorthogonalise(y: Array) -> Array:
    """One Newton–Schulz step towards the polar factor: exact to O(‖YᵀY − I‖²)."""
    eye = jnp.eye(y.shape[0], dtype=y.dtype)
    return y @ (1.5 * eye - 0.5 * (y.T @ y))


def _optimise(a: Array, b: Array, start: Array, iters: int, lr: float) -> tuple[Array, Array]:
    """Riemannian Adam on O(n) from `start`, minimising ‖A − C B Cᵀ‖²_F; returns (C, loss).

    The gradient is taken in skew coordinates at the current C (C → C(I + Ω), Ω skew), Adam
    turns it into a skew step U, and the base moves to C(I + U), pulled back onto O(n) by a
    Newton–Schulz step (matmuls only, so it vectorises over restarts and pairs on any
    device; an LU-based Cayley map per step was ~10× slower on CPU). A fixed base
    (C = start · cayley(X − Xᵀ)) could not reach alignments that differ from the start by a
    rotation through π, such as a sign flip of two coordinates, which is exactly the
    alignment of a system with its copy in a basis with flipped axes. The path never leaves
    the start's component of O(n), hence restarts in both.
    """
    optimiser = optax.adam(optax.cosine_decay_schedule(lr, iters, alpha=1e-2))

    def skew_gradient(c):
        # d‖A − C B Cᵀ‖² along C(I + Ω) is ⟨M, Ω⟩ with M = −2(Ê Bᵀ + Êᵀ B), Ê = CᵀAC − B.
        residual = c.T @ a @ c - b
        m = -2.0 * (residual @ b.T + residual.T @ b)
        return 0.5 * (m - m.T)

    def step(carry, _):
        c, state = carry
        updates, state = optimiser.update(skew_gradient(c), state)
        return (_reorthogonalise(c + c @ updates), state), None

    state = optimiser.init(jnp.zeros_like(a))
    (c, _), _ = jax.lax.scan(step, (start, state), None, length=iters)
    c = _reorthogonalise(c)
    return c, jnp.sum((a - c @ b @ c.T) ** 2)


def _scores(a: Array, b: Array, c: Array) -> dict[str, Array]:
    aligned = c @ b @ c.T
    cosine = jnp.sum(a * aligned) / (jnp.linalg.norm(a) * jnp.linalg.norm(aligned))
    return {
        "euclidean": jnp.linalg.norm(a - aligned),
        "angular": jnp.arccos(jnp.clip(cosine, -1.0, 1.0)),
    }


@functools.partial(jax.jit, static_argnames=("iters", "n_restarts"))
def dsa_align(
    a: Float[Array, "rank rank"],
    b: Float[Array, "rank rank"],
    *,
    key: PRNGKeyArray,
    iters: int = ITERS,
    lr: float = LR,
    n_restarts: int = N_RESTARTS,
) -> tuple[Float[Array, "rank rank"], dict[str, Float[Array, ""]]]:
    """The best orthogonal alignment C of B to A and the DSA scores it gives.

    Same arguments as :func:`dsa_distance`, which returns only the scores.

    Returns:
        C (orthogonal, det ±1) with Â ≈ C B̂ Cᵀ, and the scores.
    """
    a, b = _normalise(a), _normalise(b)
    starts = starts_for(a, b, n_restarts, key=key)
    cs, losses = jax.vmap(lambda s: _optimise(a, b, s, iters, lr))(starts)
    best = cs[jnp.argmin(losses)]
    scores = _scores(a, b, best)
    scores["reflection"] = (jnp.linalg.det(best) < 0).astype(a.dtype)
    return best, scores


@functools.partial(jax.jit, static_argnames=("iters", "n_restarts"))
def dsa_distance(
    a: Float[Array, "rank rank"],
    b: Float[Array, "rank rank"],
    *,
    key: PRNGKeyArray,
    iters: int = ITERS,
    lr: float = LR,
    n_restarts: int = N_RESTARTS,
) -> dict[str, Float[Array, ""]]:
    """The DSA distances between two operators: the pairwise part of DSA.

    Both operators are scaled to unit Frobenius norm first, as dsa-metric does, so
    ``euclidean`` (dsa-metric's "euclidean" score) lies in [0, 2] and ``angular``
    (its "angular" score, arccos of the normalised inner product) in [0, π]. One optimisation
    serves both: for unit-norm operators both are monotone in ⟨Â, C B̂ Cᵀ⟩_F.

    Args:
        a: first operator from :func:`dsa_represent`.
        b: second operator, same shape.
        key: PRNG key for the random restarts.
        iters: Adam steps per restart (dsa-metric's DSA default: 1500).
        lr: peak Adam step (radians in skew coordinates), cosine-decayed to 1 % so the
            optimum is resolved rather than circled.
        n_restarts: starts on O(n), both components (see :func:`starts_for`).

    Returns:
        ``{"euclidean": ..., "angular": ...}``, scalars, and ``"reflection"``: 1.0 where the
        best alignment has det −1.
    """
    return dsa_align(a, b, key=key, iters=iters, lr=lr, n_restarts=n_restarts)[1]


@functools.partial(jax.jit, static_argnames=("iters", "n_restarts", "batch_size"))
def dsa_pairwise(
    operators: Float[Array, "network rank rank"],
    pairs: tuple[Array, Array],
    *,
    key: PRNGKeyArray,
    iters: int = ITERS,
    lr: float = LR,
    n_restarts: int = N_RESTARTS,
    batch_size: int | None = None,
) -> dict[str, Float[Array, " pair"]]:
    """DSA distances for many pairs of networks at once (vmapped over pairs and restarts).

    Args:
        operators: stacked operators, ``[network, rank, rank]``.
        pairs: index arrays (i, j), e.g. from :func:`condensed_pairs`.
        key: PRNG key; each pair gets its own split of it.
        iters: Adam steps per restart.
        lr: peak learning rate.
        n_restarts: restarts per pair.
        batch_size: pairs per vectorised batch (bounds memory); None: all pairs in one batch.

    Returns:
        One array ``[pair]`` per score of :func:`dsa_distance`.
    """
    i, j = pairs
    keys = jax.random.split(key, i.shape[0])

    def one(index_i, index_j, k):
        return dsa_distance(
            operators[index_i],
            operators[index_j],
            key=k,
            iters=iters,
            lr=lr,
            n_restarts=n_restarts,
        )

    return batched_map(one, (i, j, keys), batch_size)
