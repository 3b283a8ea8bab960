"""Draw the example figures of the probe pages from synthetic data (deterministic).

python docs/probes/make_figures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scipy.linalg

HERE = Path(__file__).resolve().parent
try:
    import mechscope_population as mp
except ImportError:  # before `pip install -e .` picks up the new plugin package
    sys.path.insert(0, str(HERE.parents[1] / "plugins"))
    import mechscope_population as mp

DT = 0.01


def rotational_data() -> mp.NeuralData:
    rng = np.random.default_rng(0)
    blocks = [2 * np.pi * f * np.array([[0, -1], [1, 0]]) for f in (1.5, 0.8, 0.4)]
    step = scipy.linalg.expm(scipy.linalg.block_diag(*blocks) * DT)
    latents = np.zeros((27, 31, 6))
    latents[:, 0] = rng.normal(size=(27, 6)) * [3, 3, 1.5, 1.5, 1, 1]
    for t in range(1, 31):
        latents[:, t] = latents[:, t - 1] @ step.T
    rates = 20 + 6 * latents @ rng.normal(size=(6, 80)) + rng.normal(size=(27, 31, 80))
    return mp.NeuralData(rates=rates, times=(np.arange(31) - 5) * DT)


def tuned_data() -> mp.NeuralData:
    rng = np.random.default_rng(1)
    times = np.arange(150) * DT
    angles = np.repeat(np.arange(8) * np.pi / 4, 2)
    delays = np.tile([0.4, 0.6], 8)
    move = 0.2 + delays + 0.15
    pd_delay = rng.uniform(-np.pi, np.pi, 16)
    pd_move = pd_delay + rng.normal(0, 0.6, 16)
    rates = np.empty((16, 150, 16))
    for c in range(16):
        prep = np.clip((times - 0.2) / 0.1, 0, 1)[:, None] * np.cos(angles[c] - pd_delay)
        burst = np.exp(-((times - move[c] - 0.1) ** 2) / 0.01)[:, None]
        rates[c] = (
            10
            + 4 * prep * (times < move[c])[:, None]
            + 12 * burst * (1 + np.cos(angles[c] - pd_move))
        )
    return mp.NeuralData(
        rates=rates,
        times=times,
        labels={"angle": angles},
        events={"target_on": np.full(16, 0.2), "movement_onset": move},
    )


def save(figure, name: str) -> None:
    figure.savefig(HERE / name, dpi=80, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    result = mp.jpca_analysis(rotational_data(), mp.JPCAConfig(window=(-0.05, 0.25)))
    save(result.rosette_figure(), "jpca_rosette.png")
    save(result.r2_figure(), "jpca_r2.png")
    tuning = mp.tuning_analysis(tuned_data(), mp.TuningConfig(n_units_plot=9))
    save(tuning.psth_figure(), "tuning_psth_grid.png")
    data = tuned_data()
    population = mp.population_analysis(data, mp.PopulationConfig(window=(-0.3, 0.4)))
    save(population.variance_figure(), "population_variance.png")


if __name__ == "__main__":
    main()
