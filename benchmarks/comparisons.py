"""All pairs of 48 networks for ``dsa`` and ``shape``, timed against dsa-metric on a sample.

Networks: random CT-RNN-like systems, tau dx/dt = −x + W tanh(x) + B u, N = 100 units, four
recurrent gains (12 seeds each), 8 conditions (constant inputs at 8 angles), 100 samples.
DSA settings (both implementations): n_delays = 5, rank = 10, 1500 iterations. We time the
pairwise part after compilation (one compiled program for all 1,128 pairs), the reference's
``SimilarityTransformDist.fit`` on a sample of the same pairs in this run, and compare the
angular distances on that sample.

    python benchmarks/comparisons.py [--sample 6] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from mechscope_compare._batch import condensed_pairs
from mechscope_compare._dsa import dsa_pairwise, dsa_represent
from mechscope_compare._shape import shape_pairwise, shape_represent

N_NETWORKS, N_UNITS, N_CONDITIONS, N_TIMES = 48, 100, 8, 100
GAINS = (0.5, 1.0, 1.5, 2.0)
SETTINGS = {"n_delays": 5, "rank": 10}
ITERS = 1500


def ctrnn_trajectories(seed: int, gain: float, dt: float = 0.01, tau: float = 0.05) -> np.ndarray:
    """Rates of a random CT-RNN under 8 constant inputs, ``[condition, time, unit]``."""
    rng = np.random.default_rng(seed)
    w = gain * rng.normal(size=(N_UNITS, N_UNITS)) / np.sqrt(N_UNITS)
    b = rng.normal(size=(N_UNITS, 2))
    angles = 2 * np.pi * np.arange(N_CONDITIONS) / N_CONDITIONS
    u = np.stack([np.cos(angles), np.sin(angles)], 1)
    x = 0.5 * rng.normal(size=(N_CONDITIONS, N_UNITS))
    out = []
    for _ in range(N_TIMES):
        out.append(np.tanh(x))
        x = x + dt / tau * (-x + np.tanh(x) @ w.T + u @ b.T)
    return np.stack(out, 1).astype(np.float32)


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    jax.block_until_ready(fn())  # compile
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=6, help="pairs timed with dsa-metric")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per vmap batch")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    data = [ctrnn_trajectories(s, GAINS[s % len(GAINS)]) for s in range(N_NETWORKS)]
    pairs = condensed_pairs(N_NETWORKS)
    n_pairs = int(pairs[0].shape[0])
    print(f"{N_NETWORKS} networks, N={N_UNITS}, {N_CONDITIONS} conditions × {N_TIMES} samples")
    print(f"{n_pairs} pairs; DSA {SETTINGS}, {ITERS} iterations; device {jax.devices()[0]}")

    start = time.perf_counter()
    operators = jnp.stack([dsa_represent(jnp.asarray(x), **SETTINGS) for x in data])
    operators.block_until_ready()
    print(f"dsa represent (48 networks, incl. compile): {time.perf_counter() - start:.2f} s")
    key = jax.random.key(0)
    dsa_s, dsa = timed(
        lambda: dsa_pairwise(operators, pairs, key=key, iters=ITERS, batch_size=args.batch_size),
        args.repeats,
    )
    print(
        f"dsa: all {n_pairs} pairs {dsa_s:.2f} s after compilation, "
        f"{1e3 * dsa_s / n_pairs:.2f} ms/pair"
    )

    shapes = jnp.stack([shape_represent(jnp.asarray(x)) for x in data])
    shape_s, _ = timed(lambda: shape_pairwise(shapes, pairs), max(args.repeats, 3))
    print(
        f"shape (Procrustes): all {n_pairs} pairs {shape_s:.3f} s, "
        f"{1e3 * shape_s / n_pairs:.3f} ms/pair"
    )

    try:
        import torch
        from DSA import DMD, SimilarityTransformDist
    except ImportError:
        print("dsa-metric not installed (pip install -e '.[parity]'): no reference timing")
        return
    # torch's default threading: an explicit torch.set_num_threads(2) made it ~30× slower
    # here (3 s → 97 s per pair on this shared 2-core machine), which would flatter us.
    torch.manual_seed(0)
    reference_ops = []
    for x in data:
        dmd = DMD(x, **SETTINGS)
        dmd.fit()
        reference_ops.append(dmd.A_v)
    rng = np.random.default_rng(0)
    sample = rng.choice(n_pairs, size=args.sample, replace=False)
    ref_times, ref_angular = [], []
    for p in sample:
        i, j = int(pairs[0][p]), int(pairs[1][p])
        sim = SimilarityTransformDist(iters=ITERS, lr=5e-3, score_method="angular")
        start = time.perf_counter()
        sim.fit(reference_ops[i].clone(), reference_ops[j].clone())
        ref_times.append(time.perf_counter() - start)
        ref_angular.append(float(sim.score(score_method="angular")))
    ours = np.asarray(dsa["angular"])[sample]
    ref_angular = np.asarray(ref_angular)
    per_pair_ref = float(np.median(ref_times))
    per_pair_ours = dsa_s / n_pairs
    print(
        f"dsa-metric: median {per_pair_ref:.3f} s/pair over {len(sample)} pairs "
        f"(all {n_pairs} pairs would take ~{per_pair_ref * n_pairs / 60:.0f} min)"
    )
    print(f"speed-up per pair: {per_pair_ref / per_pair_ours:.0f}×")
    gap = ours - ref_angular
    print("angular, ours vs dsa-metric on the sample:")
    for p, a, b in zip(sample, ours, ref_angular, strict=True):
        print(f"  pair {p:4d}: {a:.5f} vs {b:.5f} (ours − ref {a - b:+.5f})")
    print(
        f"  median |gap| {np.median(np.abs(gap)):.2e}, max ours − ref {gap.max():+.2e} "
        f"(parity tolerance: never worse by more than 1e-4, agree to 1e-3 where the "
        f"reference converges)"
    )


if __name__ == "__main__":
    main()
