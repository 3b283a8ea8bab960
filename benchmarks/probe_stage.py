"""Time of the probe stage (``Experiment.finish``) on one network of the quickstart suite.

Trains one network of ``suites/quickstart.toml`` (its base experiment, one activation, seed
0) and times ``Experiment.finish`` on it, nothing stored: the first call includes the
compilations, the later ones (in the same process, as in a suite run by the local executor)
reuse them. The median of the warm calls is the figure to compare between versions.

Usage:
    python benchmarks/probe_stage.py                  # human-readable
    python benchmarks/probe_stage.py --json --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from mechscope.experiment import Experiment, read_toml

SUITE = Path(__file__).resolve().parents[1] / "suites" / "quickstart.toml"


def quickstart_experiment(activation: str, steps: int | None) -> Experiment:
    """The quickstart suite's base experiment with one activation and seed 0."""
    base = read_toml(SUITE)["base"]
    model = {**base["model"], "activation": activation}
    trainer = dict(base["trainer"])
    if steps is not None:
        trainer["steps"] = steps
    return Experiment.from_dict({**base, "model": model, "trainer": trainer, "seed": 0})


def main(argv: list[str] | None = None) -> dict:
    """Train one network, time ``finish`` `repeats` times; print a table or JSON."""
    parser = argparse.ArgumentParser(description="Time Experiment.finish on a quickstart network.")
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--steps", type=int, default=None, help="training steps (suite's)")
    parser.add_argument("--repeats", type=int, default=4, help="timed finish calls")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args(argv)

    experiment = quickstart_experiment(options.activation, options.steps)
    task = experiment.build_task()
    keys = experiment.keys()
    model = experiment.build_model(task, key=keys["model"])
    trained = experiment.train(task, model, key=keys["train"], progress=False)
    seconds = []
    results = []
    for _ in range(max(options.repeats, 1)):
        start = time.perf_counter()
        results.append(experiment.finish(trained, task=task, store=None))
        seconds.append(time.perf_counter() - start)
    result = results[-1]
    report = {
        "first_s": seconds[0],
        "warm_median_s": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
        "all_s": seconds,
        "probes": sorted(result.probes),
        "probe_errors": dict(result.probe_errors),
    }
    if options.json:
        print(json.dumps(report))
    else:
        for name, value in report.items():
            print(f"{name}: {value}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
