"""Memory a run needs, estimated from its validated config before anything is built.

An enormous network (``n_units = 10**9``) would otherwise abort the process inside XLA. The
estimate is deliberately rough and errs high: it only has to tell "fits easily" from "cannot
possibly fit", before training starts and without calling into JAX.

Each component may say what it needs with an optional method on its config::

    def peak_memory_bytes(self, shape: mechscope.RunShape) -> float: ...

A model's answer covers its parameters, a trainer's everything training adds (activations
kept for the backward pass, gradients, optimiser state), a probe's its own working set. A
component without the method gets the conservative default of its kind below.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechscope.errors import ConfigError

#: float32 everywhere training runs.
_FLOAT = 4
#: Arrays per unit, time step and trial that reverse-mode training may keep (states, rates,
#: noise, their cotangents and temporaries): the default for a trainer without an estimate.
_ACTIVATION_COPIES = 8
#: Copies of the parameters a default trainer holds (weights, gradients, two Adam moments,
#: the update, the last finite model).
_PARAMETER_COPIES = 6


@dataclasses.dataclass(frozen=True)
class RunShape:
    """The sizes that set a run's memory, read from its configs.

    Attributes:
        n_units: the model's ``n_units`` (None if its config has no such field).
        n_times: samples per trial, the task config's ``n_times`` (None if unknown).
        batch_size: trials per training batch, the trainer config's ``batch_size`` (1 if none).
        n_networks: networks trained at once (seeds trained together).
    """

    n_units: int | None
    n_times: int | None
    batch_size: int
    n_networks: int = 1

    @property
    def parameters(self) -> int:
        """Parameters of one network, dominated by the N × N recurrent weights."""
        n = self.n_units or 0
        return n * n + 16 * n


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A run's estimated peak memory, term by term (bytes)."""

    terms: dict[str, float]

    @property
    def peak_bytes(self) -> float:
        """The model plus the larger of training and probing (they run one after the other)."""
        model = self.terms.get("model", 0.0)
        training = self.terms.get("trainer", 0.0)
        probes = max((v for k, v in self.terms.items() if k.startswith("probe ")), default=0.0)
        return model + max(training, probes)

    @property
    def dominant(self) -> str:
        """The term that needs the most."""
        return max(self.terms, key=lambda k: self.terms[k]) if self.terms else "nothing"


def run_shape(*, task: Any, model: Any, trainer: Any, n_networks: int = 1) -> RunShape:
    """The sizes of a run, read from its validated task, model and trainer configs."""
    n_units = getattr(model, "n_units", None)
    n_times = getattr(task, "n_times", None)
    batch_size = getattr(trainer, "batch_size", 1)
    return RunShape(
        n_units=n_units if isinstance(n_units, int) else None,
        n_times=n_times if isinstance(n_times, int) else None,
        batch_size=batch_size if isinstance(batch_size, int) else 1,
        n_networks=n_networks,
    )


def estimate_memory(
    *,
    task: Any,
    model: Any,
    trainer: Any,
    probes: Mapping[str, Any] | None = None,
    n_networks: int = 1,
) -> MemoryEstimate:
    """Estimate a run's peak memory from its validated configs (nothing is built).

    Args:
        task: the task config.
        model: the model config.
        trainer: the trainer config.
        probes: probe name → its config.
        n_networks: networks the trainer may train at once (seeds of one variant).
    """
    shape = run_shape(task=task, model=model, trainer=trainer, n_networks=n_networks)
    terms = {
        "model": _asked(model, shape, default=_FLOAT * shape.parameters * shape.n_networks),
        "trainer": _asked(trainer, shape, default=_default_training(shape)),
    }
    for name, probe in (probes or {}).items():
        terms[f"probe {name}"] = _asked(probe, shape, default=0.0)
    return MemoryEstimate(terms)


def _default_training(shape: RunShape) -> float:
    """Reverse-mode training of `n_networks` networks on batches of the task's trials."""
    activations = shape.batch_size * (shape.n_times or 1) * (shape.n_units or 0)
    per_network = _ACTIVATION_COPIES * activations + _PARAMETER_COPIES * shape.parameters
    return _FLOAT * per_network * shape.n_networks


def _asked(config: Any, shape: RunShape, *, default: float) -> float:
    method = getattr(config, "peak_memory_bytes", None)
    if not callable(method):
        return float(default)
    value: Any = method(shape)
    return float(value)


def available_memory() -> float | None:
    """Bytes this process can still allocate: the least of free RAM, cgroup and device memory.

    Reads ``/proc/meminfo`` (``MemAvailable``), the cgroup v2 limit and, on an accelerator,
    JAX's statistics of the default device, falling back to ``os.sysconf``; None where none
    of them can be read.
    """
    candidates = [_meminfo_available(), _cgroup_available(), _accelerator_available()]
    known = [c for c in candidates if c is not None]
    if not known:
        try:
            known.append(float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")))
        except (AttributeError, OSError, ValueError):
            return None
    return min(known)


def _accelerator_available() -> float | None:
    """Free memory of JAX's default device when it is an accelerator (None on the CPU)."""
    try:
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        stats = device.memory_stats() or {}
        return float(stats["bytes_limit"]) - float(stats.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001 - no backend, or no memory stats: nothing to add
        return None


def _meminfo_available() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> float | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return float(limit) - float((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def check_memory(
    *,
    task: Any,
    model: Any,
    trainer: Any,
    probes: Mapping[str, Any] | None = None,
    n_networks: int = 1,
    available: float | None = None,
    where: str = "run",
) -> MemoryEstimate:
    """Refuse a run that cannot fit in memory, before anything is built.

    Args:
        task: the task config.
        model: the model config.
        trainer: the trainer config.
        probes: probe name → its config.
        n_networks: networks the trainer may train at once.
        available: bytes available (default: :func:`available_memory`; the check is skipped
            where that is unknown).
        where: how to name the run in the message.

    Returns:
        The estimate.

    Raises:
        ConfigError: "run needs ≈ X GiB, Y GiB available", naming the dominant term.
    """
    estimate = estimate_memory(
        task=task, model=model, trainer=trainer, probes=probes, n_networks=n_networks
    )
    if available is None:
        available = available_memory()
    if available is not None and estimate.peak_bytes > available:
        shape = run_shape(task=task, model=model, trainer=trainer, n_networks=n_networks)
        sizes = f"n_units = {shape.n_units}, batch_size = {shape.batch_size}, n_times = "
        sizes += f"{shape.n_times}, {n_networks} network(s) at once"
        raise ConfigError(
            f"{where} needs ≈ {_gib(estimate.peak_bytes)} of memory, {_gib(available)} "
            f"available (mostly the {estimate.dominant}; {sizes}): make it smaller"
        )
    return estimate


def _gib(n_bytes: float) -> str:
    gib = n_bytes / 2**30
    return f"{gib:.3g} GiB" if gib < 1e6 else f"{gib:.2e} GiB"
