"""Time jPCA on a Churchland-sized dataset (108 conditions × 61 times × 218 neurons).

Prints the median wall time of the full analysis with the exact (Sylvester) skew-symmetric
solve and with the iterative (L-BFGS) baseline, measured in the same run.

    python benchmarks/jpca.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import time

# These arrays are small: multithreaded BLAS only adds contention (on a loaded 2-core machine
# it made the analysis ~7x slower), so default to one thread unless the caller chose.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import mechscope_population as mp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402


def make_data(n_conditions=108, n_times=61, n_neurons=218, seed=0) -> mp.NeuralData:
    rng = np.random.default_rng(seed)
    dt = 0.01
    blocks = [2 * np.pi * f * np.array([[0, -1], [1, 0]]) for f in (2.0, 1.2, 0.6)]
    step = scipy.linalg.expm(scipy.linalg.block_diag(*blocks) * dt)
    latents = np.zeros((n_conditions, n_times, 6))
    latents[:, 0] = rng.normal(size=(n_conditions, 6))
    for t in range(1, n_times):
        latents[:, t] = latents[:, t - 1] @ step.T
    embedding = rng.normal(size=(6, n_neurons))
    rates = 20 + 5 * latents @ embedding + rng.normal(size=(n_conditions, n_times, n_neurons))
    return mp.NeuralData(rates=rates, times=(np.arange(n_times) - 20) * dt)


def median_time(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    data = make_data()
    window = (float(data.times[0]), float(data.times[-1]))  # all 61 samples
    exact = mp.JPCAConfig(window=window)
    iterative = mp.JPCAConfig(window=window, skew_solver="iterative")
    t_exact = median_time(lambda: mp.jpca_analysis(data, exact), args.repeats)
    t_iter = median_time(lambda: mp.jpca_analysis(data, iterative), args.repeats)
    r_exact = mp.jpca_analysis(data, exact)
    r_iter = mp.jpca_analysis(data, iterative)
    print(f"data: {data.n_conditions} conditions x {data.n_times} times x {data.n_neurons} neurons")
    print(f"jpca (exact skew solve):     median {1e3 * t_exact:8.2f} ms")
    print(
        f"jpca (iterative skew solve): median {1e3 * t_iter:8.2f} ms  "
        f"({t_iter / t_exact:.1f}x slower)"
    )
    states = r_exact.pc_projection[:, :-1].reshape(-1, 6)
    deltas = np.diff(r_exact.pc_projection, axis=1).reshape(-1, 6)
    s_exact = median_time(lambda: mp.fit_skew_symmetric(states, deltas), args.repeats)
    s_iter = median_time(lambda: mp.fit_skew_symmetric_iterative(states, deltas), args.repeats)
    print(
        f"skew fit alone: exact {1e6 * s_exact:8.1f} us, iterative {1e6 * s_iter:8.1f} us "
        f"({s_iter / s_exact:.0f}x slower)"
    )
    print(
        f"max |M_skew exact - iterative| = "
        f"{np.abs(r_exact.m_skew - r_iter.m_skew).max():.2e}; "
        f"R2_skew {r_exact.r2_skew:.4f} vs {r_iter.r2_skew:.4f}"
    )


if __name__ == "__main__":
    main()
