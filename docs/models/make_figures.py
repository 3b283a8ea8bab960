"""Draw the figure of docs/models/lowrank_ctrnn.md: a trained rank-2 network's trajectories.

A rank-2 lowrank_ctrnn is trained briefly with bptt on delayed reach; its condition-averaged
state trajectories are projected on the connectivity vectors m₁, m₂ (the latent coordinates
κ with x ≈ m·κ, :meth:`LowRankCTRNN.latent`), where a rank-R network's recurrent dynamics live.

Usage:
    python docs/models/make_figures.py        # writes docs/models/lowrank_latents.png
"""

from __future__ import annotations

from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from mechscope_bptt import BPTTConfig, BPTTTrainer
from mechscope_ctrnn import LowRankCTRNN, LowRankCTRNNConfig, make_lowrank_ctrnn
from mechscope_reach import DelayedReach, DelayedReachConfig

import mechscope

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Train, simulate the conditions, and save the projection on m."""
    task = DelayedReach(DelayedReachConfig(delay_range=(0.3, 0.6), condition_delays=(0.5,)))
    config = LowRankCTRNNConfig.model_validate({"n_units": 64, "rank": 2})
    model = make_lowrank_ctrnn(config, n_inputs=3, n_outputs=4, key=jax.random.key(0))
    settings = {"steps": 400, "batch_size": 32, "learning_rate": 1e-2, "eval_every": 50}
    trainer = BPTTTrainer(BPTTConfig.model_validate(settings))
    run = trainer.fit(model, task, key=jax.random.key(1))
    trained = run.model
    assert isinstance(trained, LowRankCTRNN)
    trials = task.conditions()
    trajectory = mechscope.simulate(trained, trials.inputs, trials.times)
    latent = np.asarray(trained.latent(trajectory.states))  # [conditions, time, 2]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    colours = plt.get_cmap("hsv")(np.linspace(0, 1, latent.shape[0], endpoint=False))
    for k in range(latent.shape[0]):
        left.plot(latent[k, :, 0], latent[k, :, 1], color=colours[k], lw=1.2)
        left.plot(latent[k, -1, 0], latent[k, -1, 1], "o", color=colours[k], ms=4)
    left.set_xlabel("κ₁ (along m₁)")
    left.set_ylabel("κ₂ (along m₂)")
    left.set_title("condition trajectories on m")
    positions = np.asarray(trajectory.outputs[..., 2:])
    for k in range(positions.shape[0]):
        right.plot(positions[k, :, 0], positions[k, :, 1], color=colours[k], lw=1.2)
    right.set_aspect("equal")
    right.set_title("hand position (outputs)")
    r2 = float(run.history["r2"][-1])
    figure.suptitle(f"lowrank_ctrnn, N = 64, rank 2, 400 bptt steps (condition R² = {r2:.2f})")
    figure.tight_layout()
    figure.savefig(HERE / "lowrank_latents.png", dpi=110)
    print(f"wrote {HERE / 'lowrank_latents.png'} (R² = {r2:.3f})")


if __name__ == "__main__":
    main()
