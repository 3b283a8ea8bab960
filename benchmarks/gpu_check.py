"""GPU path check: ctrnn models integrate and train on an accelerator and agree with the CPU.

Run on a machine with a GPU (it exits with a message when JAX sees none). It

1. simulates the same trained-from-scratch ctrnn on CPU and GPU and compares the outputs,
   at JAX's default matmul precision (TF32 on recent NVIDIA cards) and at full float32;
2. trains the same network (delayed_reach, bptt, canonical N = 100) for ``--steps`` steps on each
   device from the same key and compares the loss curves;
3. times the canonical training step of ``benchmarks/train_step.py`` (N = 100, batch 64,
   250 steps) on each device, and a larger one (N = 512, 1,000 steps) on the GPU;
4. with ``--fixed-points``, runs the fixed-point benchmark's problems
   (``benchmarks/fixed_points.py``: its committed networks and references) on the GPU, with
   the default search and with ``search = {kind = "dense_lm"}``: time after compilation
   (median of ``--fp-repeats``), recall, precision and stability labels.

Usage: ``python benchmarks/gpu_check.py [--steps 200] [--json] [--fixed-points
[--fp-networks regularised chaotic] [--fp-repeats 2]]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np
from train_step import make_batch, mechscope_step_fns

import mechscope


def build(registry, task, *, n_units: int = 100):
    entry = registry.get("model", "ctrnn")
    return entry.build(
        entry.validate({"n_units": n_units}),
        n_inputs=task.n_inputs,
        n_outputs=task.n_outputs,
        key=jax.random.key(0),
    )


def train(device, task, steps: int) -> tuple[mechscope.TrainedRun, float]:
    registry = mechscope.get_registry()
    with jax.default_device(device):
        model = build(registry, task)
        entry = registry.get("trainer", "bptt")
        trainer = entry.build(entry.validate({"steps": steps, "eval_every": 10}))
        start = time.perf_counter()
        run = trainer.fit(model, task, key=jax.random.key(1))
        return run, time.perf_counter() - start


def outputs_on(device, model, trials, precision: str | None) -> np.ndarray:
    with jax.default_device(device), jax.default_matmul_precision(precision):
        model = jax.device_put(model, device)
        inputs = jax.device_put(trials.inputs, device)
        times = jax.device_put(trials.times, device)
        return np.asarray(mechscope.simulate(model, inputs, times).outputs)


def step_ms(device, n_units: int, n_times: int, rounds: int = 30) -> float:
    with jax.default_device(device):
        run_step, _, _ = mechscope_step_fns(n_units, make_batch(64, n_times))
        for _ in range(3):
            run_step().block_until_ready()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            run_step().block_until_ready()
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times)


def fixed_points_on(device, networks, repeats: int) -> dict:
    """The fixed-point benchmark's problems solved on `device`: time, recall, precision."""
    import fixed_points as bench
    from mechscope_dynamics import DenseLMSearch, MatrixFreeLMSearch

    registry = mechscope.get_registry()
    entry = registry.get("task", "delayed_reach")
    task = entry.build(entry.validate({}))
    out = {}
    for name in networks:
        run = bench.trained_network(name, task)
        with jax.default_device(jax.devices("cpu")[0]):  # the problem the references are for
            condition, starts, inputs = bench.problem(run, task)
        ref_points, ref_index, ref_stable, _ = bench.reference(name, run, condition, starts, inputs)
        for kind, search in (("lm", MatrixFreeLMSearch()), ("dense_lm", DenseLMSearch())):
            with jax.default_device(device):
                fps, elapsed, _ = bench.timed_solve(
                    jax.device_put(run.model, device),
                    condition,
                    starts,
                    inputs,
                    search,
                    repeats,
                )
            recall, precision, labels = bench.score(
                fps, ref_points, ref_index, ref_stable, run, condition
            )
            out[f"fixed_points_{name}_{kind}"] = {
                "time_s": elapsed,
                "recall": round(recall, 3),
                "precision": round(precision, 3),
                "labels": round(labels, 3),
                "reported": len(fps.points),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--fixed-points",
        action="store_true",
        help="also time the fixed-point benchmark's problems on the GPU",
    )
    parser.add_argument("--fp-networks", nargs="+", default=["regularised", "chaotic"])
    parser.add_argument("--fp-repeats", type=int, default=2)
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="skip the simulation, training and step checks (1–3)",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="compare the CPU with itself (checks this script without a GPU)",
    )
    args = parser.parse_args()
    accelerators = [d for d in jax.devices() if d.platform != "cpu"]
    if args.self_test:
        accelerators = jax.devices("cpu")
    if not accelerators:
        sys.exit("gpu_check: JAX sees no accelerator here; nothing to compare.")
    cpu, gpu = jax.devices("cpu")[0], accelerators[0]
    registry = mechscope.get_registry()
    task_entry = registry.get("task", "delayed_reach")
    task = task_entry.build(task_entry.validate({}))
    trials = task.conditions()
    result: dict = {
        "cpu": str(cpu.device_kind),
        "gpu": str(gpu.device_kind),
        "jax": jax.__version__,
    }

    if not args.skip_training:
        result.update(training_checks(cpu, gpu, registry, task, trials, args.steps))
    if args.fixed_points:
        result.update(fixed_points_on(gpu, args.fp_networks, args.fp_repeats))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:34s} {value}")


def training_checks(cpu, gpu, registry, task, trials, steps: int) -> dict:
    """Checks 1–3: forward agreement, training agreement, step timings."""
    result: dict = {}
    model = build(registry, task)
    reference = outputs_on(cpu, model, trials, "float32")
    scale = float(np.sqrt(np.mean(reference**2)))
    for precision in ("default", "float32"):
        gpu_out = outputs_on(gpu, model, trials, precision)
        result[f"forward_max_abs_diff_{precision}"] = float(np.max(np.abs(gpu_out - reference)))
    result["forward_output_rms"] = scale

    runs = {}
    for name, device in (("cpu", cpu), ("gpu", gpu)):
        train(device, task, 2)  # compile outside the timing
        runs[name] = train(device, task, steps)
        result[f"train_{steps}_steps_s_{name}"] = runs[name][1]
    loss_cpu = np.asarray(runs["cpu"][0].history["loss"])
    loss_gpu = np.asarray(runs["gpu"][0].history["loss"])
    result["loss_cpu"] = loss_cpu.round(6).tolist()
    result["loss_gpu"] = loss_gpu.round(6).tolist()
    result["final_loss_rel_diff"] = float(abs(loss_gpu[-1] - loss_cpu[-1]) / loss_cpu[-1])
    result["first_loss_rel_diff"] = float(abs(loss_gpu[0] - loss_cpu[0]) / loss_cpu[0])
    # The GPU-trained model, brought back to the CPU, must behave like the CPU-trained one.
    back = outputs_on(cpu, runs["gpu"][0].model, trials, "float32")
    trained_cpu = outputs_on(cpu, runs["cpu"][0].model, trials, "float32")
    result["trained_outputs_max_abs_diff"] = float(np.max(np.abs(back - trained_cpu)))

    result["step_ms_cpu_n100"] = step_ms(cpu, 100, 250, rounds=10)
    result["step_ms_gpu_n100"] = step_ms(gpu, 100, 250)
    result["step_ms_gpu_n512_t1000"] = step_ms(gpu, 512, 1000, rounds=10)
    return result


if __name__ == "__main__":
    main()
