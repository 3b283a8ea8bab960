"""Training-step speed of the ctrnn models against plain JAX and PyTorch-eager baselines.

Canonical configuration: N = 100 tanh units, batch 64, 250 steps of 10 ms, Euler, float32,
Adam, masked MSE + rate regularisation. Every variant is timed in the same process, in
interleaved rounds (so load from other processes hits all of them alike), and the median
milliseconds per training step are reported, with ratios. mechscope's default gradient is
the hand-written Euler adjoint; ``mechscope_autodiff_ms`` times the same model with
``gradient = "autodiff"`` (JAX reverse mode through the scan), and ``adjoint_gradient_error``
is the largest relative difference between the two gradients. Peak memory of the compiled
training step at N = 512 and 1,000 steps is read from XLA's memory analysis for the adjoint,
plain autodiff, and autodiff with gradient checkpointing (the default at that size).

The same configuration is timed for ``gated_ctrnn`` (a GRU in ODE form, autodiff through the
scan, each step's intermediates recomputed in the reverse pass) and ``lowrank_ctrnn`` (rank 2,
the Euler adjoint), each with an idiomatic PyTorch-eager equivalent; ratios are reported
against ctrnn and against each model's PyTorch baseline.

The ``*trainer_ms`` rows time each model's step as the bptt trainer's ``fit`` takes it
(``mechscope_bptt.make_train_step`` on a task that hands out the same batch): on a CPU the
batch is cut into pieces of 32 trials, whose gradients run as independent programs side by
side and are summed (``config.trainer_pieces``; docs/trainers/bptt.md). The other mechscope
rows are one jitted program on the whole batch.

Usage:
    python benchmarks/train_step.py            # human-readable table
    python benchmarks/train_step.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from mechscope_bptt import BPTTConfig, batch_pieces, init_train_state, make_train_step
from mechscope_ctrnn import (
    CTRNNConfig,
    GatedCTRNNConfig,
    LowRankCTRNNConfig,
    make_ctrnn,
    make_gated_ctrnn,
    make_lowrank_ctrnn,
)

import mechscope

N_INPUTS = 3
N_OUTPUTS = 4
DT = 0.01
TAU = 0.05
RATE_PENALTY = 1e-3
LEARNING_RATE = 1e-3


def make_batch(batch: int, n_times: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic batch shaped like a reach task: step inputs, smooth targets, a mask."""
    rng = np.random.default_rng(seed)
    times = (np.arange(n_times) * DT).astype(np.float32)
    inputs = np.zeros((batch, n_times, N_INPUTS), np.float32)
    angle = rng.uniform(0, 2 * np.pi, batch).astype(np.float32)
    onset = n_times // 5
    go = n_times // 2
    inputs[:, onset:, 0] = np.cos(angle)[:, None]
    inputs[:, onset:, 1] = np.sin(angle)[:, None]
    inputs[:, go:, 2] = 1.0
    ramp = np.clip((np.arange(n_times) - go) / (n_times / 4), 0, 1).astype(np.float32)
    targets = np.zeros((batch, n_times, N_OUTPUTS), np.float32)
    targets[..., 2] = np.cos(angle)[:, None] * ramp
    targets[..., 3] = np.sin(angle)[:, None] * ramp
    targets[..., :2] = np.gradient(targets[..., 2:], DT, axis=1) * 0.1
    mask = np.ones_like(targets)
    mask[:, : onset // 2] = 0.0
    return {"inputs": inputs, "targets": targets, "mask": mask, "times": times}


def masked_loss(outputs, rates, targets, mask):
    """Masked MSE + λ_r·mean(r²)."""
    mse = jnp.sum(mask * (outputs - targets) ** 2) / jnp.sum(mask)
    return mse + RATE_PENALTY * jnp.mean(rates**2)


# ---------------------------------------------------------------- mechscope (the model)


#: The models timed, by name: (config class, factory).
MODELS = {
    "ctrnn": (CTRNNConfig, make_ctrnn),
    "gated_ctrnn": (GatedCTRNNConfig, make_gated_ctrnn),
    "lowrank_ctrnn": (LowRankCTRNNConfig, make_lowrank_ctrnn),
}


def mechscope_step_fns(n_units: int, batch_data, model_name: str = "ctrnn", **config_overrides):
    """The mechscope training step and forward pass, jitted with eqx.filter_jit."""
    config_class, factory = MODELS[model_name]
    config = config_class(n_units=n_units, tau=TAU, **config_overrides)
    model = factory(config, n_inputs=N_INPUTS, n_outputs=N_OUTPUTS, key=jax.random.key(0))
    optimiser = optax.adam(LEARNING_RATE)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    def loss_fn(model, inputs, times, targets, mask):
        trajectory = mechscope.simulate(model, inputs, times)
        return masked_loss(trajectory.outputs, trajectory.rates, targets, mask)

    @eqx.filter_jit
    def step(model, opt_state, inputs, times, targets, mask):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, inputs, times, targets, mask)
        updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    forward = eqx.filter_jit(loss_fn)
    args = tuple(jnp.asarray(batch_data[k]) for k in ("inputs", "times", "targets", "mask"))
    state = {"model": model, "opt": opt_state}

    def run_step():
        state["model"], state["opt"], loss = step(state["model"], state["opt"], *args)
        return loss

    def run_forward():
        return forward(state["model"], *args)

    return run_step, run_forward, (step, model, opt_state, args)


class FixedBatch(mechscope.AbstractTask):
    """A task whose every batch is the benchmark's synthetic batch (so the trainer's step sees
    exactly the data the other variants see)."""

    config: mechscope.Config = eqx.field(static=True)
    trials: mechscope.Trials

    @property
    def n_inputs(self) -> int:
        return N_INPUTS

    @property
    def n_outputs(self) -> int:
        return N_OUTPUTS

    @property
    def dt(self) -> float:
        return DT

    def sample(self, batch_size: int, *, key) -> mechscope.Trials:
        del key
        if batch_size != self.trials.batch_size:
            raise ValueError(f"this task has batches of {self.trials.batch_size} trials")
        return self.trials

    def conditions(self) -> mechscope.Trials:
        return self.trials


def trainer_step_fn(n_units: int, batch_data, model_name: str = "ctrnn"):
    """The bptt trainer's own step (what ``fit`` runs, in pieces over the cores), same loss.

    Masked MSE + λ_r·mean(r²), Adam at the same learning rate, no noise or other penalty;
    the trainer's step also checks the step's health and keeps running metric sums.
    """
    config_class, factory = MODELS[model_name]
    model = factory(
        config_class(n_units=n_units, tau=TAU),
        n_inputs=N_INPUTS,
        n_outputs=N_OUTPUTS,
        key=jax.random.key(0),
    )
    arrays = {k: jnp.asarray(batch_data[k]) for k in ("inputs", "targets", "mask", "times")}
    task = FixedBatch(mechscope.Config(), mechscope.Trials(**arrays))
    config = BPTTConfig(
        batch_size=arrays["inputs"].shape[0],
        learning_rate=LEARNING_RATE,
        rate_reg=RATE_PENALTY,
        weight_reg=0.0,
        input_noise=0.0,
        recurrent_noise=0.0,
    )
    step = make_train_step(config, task)
    state = {"state": init_train_state(config, model, key=jax.random.key(1))}

    def run_step():
        state["state"] = step(state["state"])
        return state["state"].step

    return run_step


# ---------------------------------------------------------------- plain lax.scan baseline


def scan_step_fn(n_units: int, batch_data):
    """A straightforward JAX implementation: one lax.scan over time, jax.grad, optax.adam."""
    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "w_rec": 1.5 / math.sqrt(n_units) * jax.random.normal(keys[0], (n_units, n_units)),
        "w_in": jax.random.normal(keys[1], (n_units, N_INPUTS)) / math.sqrt(N_INPUTS),
        "b": jnp.zeros(n_units),
        "w_out": jax.random.normal(keys[2], (N_OUTPUTS, n_units)) / math.sqrt(n_units),
        "b_out": jnp.zeros(N_OUTPUTS),
    }
    optimiser = optax.adam(LEARNING_RATE)
    opt_state = optimiser.init(params)
    alpha = DT / TAU

    def loss_fn(params, inputs, targets, mask):
        def body(x, u_t):
            r = jnp.tanh(x)
            z = r @ params["w_out"].T + params["b_out"]
            x_next = x + alpha * (-x + r @ params["w_rec"].T + u_t @ params["w_in"].T + params["b"])
            return x_next, (z, r)

        x0 = jnp.zeros((inputs.shape[0], n_units))
        _, (outputs, rates) = jax.lax.scan(body, x0, jnp.swapaxes(inputs, 0, 1))
        outputs = jnp.swapaxes(outputs, 0, 1)
        rates = jnp.swapaxes(rates, 0, 1)
        return masked_loss(outputs, rates, targets, mask)

    @jax.jit
    def step(params, opt_state, inputs, targets, mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets, mask)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    args = tuple(jnp.asarray(batch_data[k]) for k in ("inputs", "targets", "mask"))
    state = {"params": params, "opt": opt_state}

    def run_step():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], *args)
        return loss

    return run_step


# ---------------------------------------------------------------- PyTorch eager baseline


def torch_step_fn(n_units: int, batch_data, threads: int | None = None, model_name: str = "ctrnn"):
    """An idiomatic PyTorch-eager training step of `model_name`, or None when torch is absent."""
    try:
        import torch
    except ImportError:
        return None

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)

    class RNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w_rec = torch.nn.Parameter(torch.randn(n_units, n_units) * 1.5 / n_units**0.5)
            self.input = torch.nn.Linear(N_INPUTS, n_units)
            self.output = torch.nn.Linear(n_units, N_OUTPUTS)

        def forward(self, inputs):
            alpha = DT / TAU
            x = torch.zeros(inputs.shape[0], n_units)
            outputs, rates = [], []
            for t in range(inputs.shape[1]):
                r = torch.tanh(x)
                outputs.append(self.output(r))
                rates.append(r)
                x = x + alpha * (-x + r @ self.w_rec.T + self.input(inputs[:, t]))
            return torch.stack(outputs, 1), torch.stack(rates, 1)

    class GatedRNN(torch.nn.Module):
        """The gated CT-RNN: tau·dh/dt = (1 − z)⊙(ĥ − h), Euler at dt, rates = h."""

        def __init__(self):
            super().__init__()
            scale = 1.0 / n_units**0.5
            self.w_gates = torch.nn.Parameter(torch.randn(2 * n_units, n_units) * scale)
            self.w_candidate = torch.nn.Parameter(torch.randn(n_units, n_units) * scale)
            self.input = torch.nn.Linear(N_INPUTS, 3 * n_units)
            self.output = torch.nn.Linear(n_units, N_OUTPUTS)

        def forward(self, inputs):
            alpha = DT / TAU
            h = torch.zeros(inputs.shape[0], n_units)
            outputs, rates = [], []
            for t in range(inputs.shape[1]):
                outputs.append(self.output(h))
                rates.append(h)
                drive = self.input(inputs[:, t])
                gates = torch.sigmoid(h @ self.w_gates.T + drive[:, : 2 * n_units])
                update, reset = gates[:, :n_units], gates[:, n_units:]
                candidate = torch.tanh((reset * h) @ self.w_candidate.T + drive[:, 2 * n_units :])
                h = h + alpha * (1 - update) * (candidate - h)
            return torch.stack(outputs, 1), torch.stack(rates, 1)

    class LowRankRNN(torch.nn.Module):
        """The CT-RNN with W_rec = m·nᵀ/N (rank 2), applied in factored form."""

        def __init__(self, rank: int = 2):
            super().__init__()
            self.m = torch.nn.Parameter(torch.randn(n_units, rank))
            self.n = torch.nn.Parameter(torch.randn(n_units, rank))
            self.input = torch.nn.Linear(N_INPUTS, n_units)
            self.output = torch.nn.Linear(n_units, N_OUTPUTS)

        def forward(self, inputs):
            alpha = DT / TAU
            x = torch.zeros(inputs.shape[0], n_units)
            outputs, rates = [], []
            for t in range(inputs.shape[1]):
                r = torch.tanh(x)
                outputs.append(self.output(r))
                rates.append(r)
                recurrence = (r @ self.n) @ self.m.T / n_units
                x = x + alpha * (-x + recurrence + self.input(inputs[:, t]))
            return torch.stack(outputs, 1), torch.stack(rates, 1)

    net = {"ctrnn": RNN, "gated_ctrnn": GatedRNN, "lowrank_ctrnn": LowRankRNN}[model_name]()
    optimiser = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    inputs, targets, mask = (torch.from_numpy(batch_data[k]) for k in ("inputs", "targets", "mask"))

    def run_step():
        optimiser.zero_grad()
        outputs, rates = net(inputs)
        mse = torch.sum(mask * (outputs - targets) ** 2) / torch.sum(mask)
        loss = mse + RATE_PENALTY * torch.mean(rates**2)
        loss.backward()
        optimiser.step()
        return loss.item()

    return run_step


# ---------------------------------------------------------------- timing and memory


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _block(value):
    return jax.block_until_ready(value) if not isinstance(value, float) else value


def time_interleaved(fns: dict[str, Callable], rounds: int, warmup: int = 2, burst: int = 3):
    """Median ms per call of each function, alternating between them every round.

    Each round calls every function `burst` times in a row and keeps all but the first call:
    a training loop runs step after step, and the first call after another framework ran
    pays for that framework's leftovers (caches, spinning or sleeping worker threads), which
    is not a cost of either.
    """
    for fn in fns.values():
        for _ in range(warmup):
            _block(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for call in range(burst):
                start = time.perf_counter()
                _block(fn())
                if call > 0 or burst == 1:
                    samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def gradient_error(n_units: int, batch_data) -> float:
    """Largest relative difference between the adjoint and autodiff gradients."""
    grads = {}
    for gradient in ("adjoint", "autodiff"):
        config = CTRNNConfig(n_units=n_units, tau=TAU, gradient=gradient)
        model = make_ctrnn(config, n_inputs=N_INPUTS, n_outputs=N_OUTPUTS, key=jax.random.key(0))
        inputs, times, targets, mask = (
            jnp.asarray(batch_data[k]) for k in ("inputs", "times", "targets", "mask")
        )

        def loss_fn(model):
            trajectory = mechscope.simulate(model, inputs, times)
            return masked_loss(trajectory.outputs, trajectory.rates, targets, mask)

        grads[gradient] = jax.tree.leaves(
            eqx.filter(eqx.filter_jit(eqx.filter_grad(loss_fn))(model), eqx.is_inexact_array)
        )
    return max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
        for a, b in zip(grads["adjoint"], grads["autodiff"], strict=True)
    )


def compiled_memory_mb(n_units: int, n_times: int, batch: int, **config_overrides) -> dict:
    """XLA's memory analysis of the compiled mechscope training step."""
    data = make_batch(batch, n_times)
    _, _, (step, model, opt_state, args) = mechscope_step_fns(n_units, data, **config_overrides)
    compiled = step.lower(model, opt_state, *args).compile()
    analysis = compiled.compiled.memory_analysis() if hasattr(compiled, "compiled") else None
    if analysis is None:
        return {"temp_mb": None, "total_mb": None}
    mb = 1 / 2**20
    total = (
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    return {"temp_mb": analysis.temp_size_in_bytes * mb, "total_mb": total * mb}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table or (with --json) one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument(
        "--burst", type=int, default=3, help="consecutive calls per variant and round"
    )
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--times", type=int, default=250, help="time samples per trial")
    parser.add_argument("--no-memory", action="store_true", help="skip the N=512 memory run")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    options = parser.parse_args(argv)

    data = make_batch(options.batch, options.times)
    mechscope_step, mechscope_forward, _ = mechscope_step_fns(options.units, data)
    fns = {
        "mechscope_ms": mechscope_step,
        "mechscope_autodiff_ms": mechscope_step_fns(options.units, data, gradient="autodiff")[0],
        "forward_ms": mechscope_forward,
        "scan_baseline_ms": scan_step_fn(options.units, data),
    }
    for name in ("gated_ctrnn", "lowrank_ctrnn"):
        fns[f"{name}_ms"] = mechscope_step_fns(options.units, data, name)[0]
    for name, label in (("ctrnn", ""), ("gated_ctrnn", "gated_"), ("lowrank_ctrnn", "lowrank_")):
        fns[f"{label}trainer_ms"] = trainer_step_fn(options.units, data, name)
    torch_fn = None
    if not options.no_torch:
        for name, label in (
            ("ctrnn", ""),
            ("gated_ctrnn", "gated_"),
            ("lowrank_ctrnn", "lowrank_"),
        ):
            fn = torch_step_fn(options.units, data, options.torch_threads, name)
            if fn is not None:
                fns[f"torch_{label}eager_ms"] = fn
                torch_fn = fn
    result: dict = time_interleaved(fns, options.rounds, burst=options.burst)
    for label in ("", "gated_", "lowrank_"):
        result.setdefault(f"torch_{label}eager_ms", None)
    ms = result["mechscope_ms"]
    result["ratios"] = {
        "torch_eager_over_mechscope": (
            result["torch_eager_ms"] / ms if result["torch_eager_ms"] else None
        ),
        "scan_baseline_over_mechscope": result["scan_baseline_ms"] / ms,
        "autodiff_over_adjoint": result["mechscope_autodiff_ms"] / ms,
        "mechscope_over_forward": ms / result["forward_ms"],
    }
    for label in ("", "gated_", "lowrank_"):
        trainer_ms = result[f"{label}trainer_ms"]
        torch_ms = result[f"torch_{label}eager_ms"]
        result["ratios"][f"torch_{label}eager_over_{label}trainer"] = (
            torch_ms / trainer_ms if torch_ms else None
        )
    for name, label in (("gated_ctrnn", "gated_"), ("lowrank_ctrnn", "lowrank_")):
        model_ms = result[f"{name}_ms"]
        torch_ms = result[f"torch_{label}eager_ms"]
        result["ratios"][f"{name}_over_ctrnn"] = model_ms / ms
        result["ratios"][f"torch_{label}eager_over_{name}"] = (
            torch_ms / model_ms if torch_ms else None
        )
    result["config"] = {
        "n_units": options.units,
        "batch": options.batch,
        "n_times": options.times,
        "dt": DT,
        "tau": TAU,
        "activation": "tanh",
        "solver": "euler",
        "dtype": "float32",
        "rounds": options.rounds,
        "burst": options.burst,
        "backend": jax.default_backend(),
        "torch_threads": _torch_threads() if torch_fn is not None else None,
        "trainer_pieces": len(batch_pieces(options.batch)),
    }
    result["adjoint_gradient_error"] = gradient_error(options.units, data)
    if not options.no_memory:
        variants = {
            "adjoint": {"gradient": "adjoint"},
            "autodiff": {"gradient": "autodiff", "checkpointing": "never"},
            "autodiff_checkpointed": {"gradient": "autodiff", "checkpointing": "always"},
        }
        result["memory_n512_t1000_batch64"] = {
            name: compiled_memory_mb(512, 1000, 64, **overrides)
            for name, overrides in variants.items()
        }
    if options.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
