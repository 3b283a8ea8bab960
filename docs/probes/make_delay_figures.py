"""Draw the figure of the delay_generalization page from two hand-written networks (deterministic).

python docs/probes/make_delay_figures.py

The networks are the test doubles of tests/test_delay_generalization.py: a latch whose memory
decays at 0.5/s after it latches the target (it was "trained" on the single delay 0.4 s and
fails once the delay exceeds the closed-form 0.51 s). The figure is the probe's own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import jax
import matplotlib.pyplot as plt
from mechscope_dynamics import DelayGeneralizationConfig, DelayGeneralizationProbe

import mechscope

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from tests.test_delay_generalization import REACH, _latch  # noqa: E402


def main() -> None:
    registry = mechscope.get_registry()
    entry = registry.get("task", "delayed_reach")
    task = entry.build(entry.validate(REACH))
    probe = DelayGeneralizationProbe(
        DelayGeneralizationConfig(
            noise_time_constant=0.05,
            test_delays=(0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 1.0, 1.2),
            delay_noise=(0.0, 0.05, 0.1, 0.2, 0.4),
        )
    )
    result = probe.run(
        mechscope.TrainedRun(model=_latch(0.5)), task, key=jax.random.key(0), registry=registry
    )
    figure = result.figures["delay_generalization"]()
    figure.savefig(HERE / "delay_generalization.png", dpi=80, bbox_inches="tight")
    plt.close(figure)


if __name__ == "__main__":
    main()
