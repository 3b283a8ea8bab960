"""Scaling of a suite: in-process vs a local dask cluster with one and two one-core workers.

The suite (3 activations × 2 seeds, ctrnn N = 64, 300 bptt steps, jPCA) runs three times,
each in a fresh Python process so each pays its own start-up, every one limited to the same
compute: each computing process (the in-process run, each dask worker) is pinned to one core
of its own (``os.sched_setaffinity``; XLA sizes its CPU thread pools from the affinity) and
runs XLA, OpenMP and BLAS single-threaded. The persistent compilation cache is off for these
three ("cold"), so none reuses another's compilations; then all three run again with a
persistent cache that the cold two-worker run filled ("warm": what a restarted worker or a
second suite pays).

Printed per mode: wall time (cluster start-up included), compute time (training, compilation
included, + probes, as the runs recorded it; a joint fit counted once), per-run overhead
``(wall × processes − compute) / runs`` (process-seconds per run spent neither training nor
probing: start-up, imports, scheduling, storing, idling), and the ratios
the targets are stated in: one worker vs in-process (target ≤ 1.10), two one-core workers vs
one (target ≥ 1.7). Needs two free cores for the two-worker figure.

Usage:
    python benchmarks/scaling.py            # the issue's suite (minutes)
    python benchmarks/scaling.py --quick    # N = 16, 30 steps (a smoke test of the harness)
    python benchmarks/scaling.py --json
    python benchmarks/scaling.py --rounds 3 # every mode three times; medians and per-round ratios
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACTIVATIONS = ["tanh", "relu", "softplus"]


def suite_definition(*, n_units: int, steps: int) -> dict:
    """The benchmark suite as keyword arguments of :class:`mechscope.suite.Suite`."""
    return {
        "name": "scaling",
        "base": {
            "task": {"name": "delayed_reach"},
            "model": {"name": "ctrnn", "n_units": n_units},
            "trainer": {"name": "bptt", "steps": steps},
            "probes": ["jpca"],
        },
        "vary": {"model.activation": ACTIVATIONS},
        "seeds": 2,
    }


def executor_for(mode: str, cache: str) -> dict:
    """The executor table of a mode."""
    if mode == "in-process":
        return {"name": "local", "compilation_cache": cache}
    workers = 2 if mode == "dask-2" else 1
    return {
        "name": "dask",
        "n_workers": workers,
        "threads_per_worker": 1,
        "compute_cores": 1,
        "compilation_cache": cache,
    }


def child(arguments: argparse.Namespace) -> None:
    """One mode, in this (fresh) process: run the suite, print one JSON line."""
    from mechscope_executors import pin_to_cores, single_thread_environment

    from mechscope.store import RunStore
    from mechscope.suite import Suite

    if arguments.mode == "in-process":
        # The in-process run computes here: the same one core as a one-core worker.
        pin_to_cores({min(os.sched_getaffinity(0))})
        os.environ.update(single_thread_environment())
    suite = Suite(**suite_definition(n_units=arguments.n_units, steps=arguments.steps))
    started = time.perf_counter()
    table = suite.run(
        executor=executor_for(arguments.mode, arguments.cache),
        store=arguments.store,
        progress=False,
    )
    wall = time.perf_counter() - started
    # Seeds trained together share one fit, whose time each of them records.
    compute = 0.0
    store = RunStore(arguments.store)
    for run_id in table["run_id"]:
        header = store.read_header(run_id)
        assert header is not None, f"run {run_id} is not in the store"
        timings = {k: v or 0.0 for k, v in header.timings.items()}
        compute += timings["train_s"] / header.trained_jointly_with + timings["probes_s"]
    workers = 2 if arguments.mode == "dask-2" else 1
    print(
        json.dumps(
            {
                "mode": arguments.mode,
                "runs": len(table),
                "completed": int((table["status"] == "completed").sum()),
                "wall_s": wall,
                "compute_s": compute,
                # Process-seconds per run spent neither training nor probing: start-up,
                # imports, scheduling, storing, and idling while another worker finishes.
                "overhead_per_run_s": (wall * workers - compute) / len(table),
            }
        )
    )


def run_mode(mode: str, *, n_units: int, steps: int, store: Path, cache: str) -> dict:
    """Run one mode in a fresh process whose numerical libraries are single-threaded."""
    from mechscope_executors import single_thread_environment

    environment = {**os.environ, **single_thread_environment()}
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--n-units",
        str(n_units),
        "--steps",
        str(steps),
        "--store",
        str(store),
        "--cache",
        cache,
    ]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> dict:
    """Run every mode (``--rounds`` times) and print the table and the ratios (medians)."""
    parser = argparse.ArgumentParser(description="Suite scaling: in-process vs dask workers.")
    parser.add_argument("--quick", action="store_true", help="N = 16, 30 steps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every mode this often; report medians"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n-units", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="off", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child is not None:
        options.mode = options.child
        child(options)
        return {}
    n_units, steps = (16, 30) if options.quick else (64, 300)
    rounds = [_one_round(n_units=n_units, steps=steps) for _ in range(options.rounds)]
    # Each round runs every mode once, one after another, so a round's ratios are paired
    # measurements; the medians over rounds are what the targets are read from.
    results = {
        mode: {
            field: statistics.median(r["modes"][mode][field] for r in rounds)
            if isinstance(value, float)
            else value
            for field, value in rounds[0]["modes"][mode].items()
        }
        for mode in rounds[0]["modes"]
    }
    ratios = {
        name: statistics.median(r["ratios"][name] for r in rounds) for name in rounds[0]["ratios"]
    }
    report = {
        "suite": f"3 activations × 2 seeds, N = {n_units}, {steps} steps, jPCA",
        "cores": len(os.sched_getaffinity(0)),
        "rounds": len(rounds),
        "modes": results,
        "ratios": ratios,
        "ratios_per_round": {name: [r["ratios"][name] for r in rounds] for name in ratios},
    }
    if options.json:
        print(json.dumps(report, indent=2))
        return report
    print(
        f"suite: {report['suite']}; {report['cores']} cores; one compute thread per process; "
        f"median of {len(rounds)} round(s)"
    )
    print(f"{'mode':<20}{'wall s':>9}{'compute s':>11}{'overhead/run s':>16}")
    for mode, row in results.items():
        print(
            f"{mode:<20}{row['wall_s']:>9.1f}{row['compute_s']:>11.1f}"
            f"{row['overhead_per_run_s']:>16.2f}"
        )
    for name, value in ratios.items():
        per_round = ", ".join(f"{v:.2f}" for v in report["ratios_per_round"][name])
        print(f"{name}: {value:.2f}" + (f" (rounds: {per_round})" if len(rounds) > 1 else ""))
    return report


def _one_round(*, n_units: int, steps: int) -> dict:
    """Every mode once, cold then warm, each in a fresh process and a fresh store."""
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        cache = str(root / "compilation-cache")
        # Cold: every process compiles what it runs. The last cold run fills the persistent
        # cache that the warm runs then load from (a restarted worker, a second suite).
        for mode in ("in-process", "dask-1", "dask-2"):
            results[mode] = run_mode(
                mode,
                n_units=n_units,
                steps=steps,
                store=root / mode,
                cache=cache if mode == "dask-2" else "off",
            )
        for mode in ("in-process", "dask-1", "dask-2"):
            results[f"{mode} warm"] = run_mode(
                mode, n_units=n_units, steps=steps, store=root / f"{mode}-warm", cache=cache
            )

    def wall(mode: str) -> float:
        return results[mode]["wall_s"]

    ratios = {
        "dask-1 / in-process (cold)": wall("dask-1") / wall("in-process"),
        "dask-1 / in-process (warm)": wall("dask-1 warm") / wall("in-process warm"),
        "speed-up dask-2 vs dask-1 (cold)": wall("dask-1") / wall("dask-2"),
        "speed-up dask-2 vs dask-1 (warm)": wall("dask-1 warm") / wall("dask-2 warm"),
        "speed-up warm vs cold cache (dask-1)": wall("dask-1") / wall("dask-1 warm"),
    }
    return {"modes": results, "ratios": ratios}


if __name__ == "__main__":
    main()
