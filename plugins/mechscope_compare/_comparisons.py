"""The built-in comparisons: DSA, shape metrics and fixed-point topology as plugin components.

Each wraps the math of its module (``_dsa``, ``_shape``, ``_topology``) in the comparison
interface: ``represent`` turns one trained network into fixed-shape arrays, ``distance`` scores
two of them and is vmapped over pairs by the core.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
from jaxtyping import Array, PRNGKeyArray

import mechscope
from mechscope_compare._dsa import (
    DELAY_INTERVAL,
    ITERS,
    LAMB,
    LR,
    N_DELAYS,
    N_RESTARTS,
    dsa_distance,
    dsa_represent,
)
from mechscope_compare._shape import pad_units, shape_distance, shape_represent
from mechscope_compare._topology import Topology, topology_distance, topology_represent

Signal = Literal["states", "rates"]


class _TrajectoryConfig(mechscope.Config):
    signal: Signal = pydantic.Field(
        default="states",
        description="Which responses are compared: hidden states x or firing rates r = φ(x).",
    )
    start: float | None = pydantic.Field(
        default=None, description="First time (s) of the analysed window (None: trial start)."
    )
    stop: float | None = pydantic.Field(
        default=None, description="Last time (s) of the analysed window (None: trial end)."
    )
    stride: int = pydantic.Field(
        default=1, ge=1, description="Keep every stride-th time sample of the window."
    )

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> _TrajectoryConfig:
        if self.start is not None and self.stop is not None and self.stop <= self.start:
            raise ValueError(f"stop ({self.stop}) must be after start ({self.start})")
        return self


def analysed_window(conditions: mechscope.ConditionRun, config: _TrajectoryConfig) -> np.ndarray:
    """The analysed window of a network's condition responses, ``[condition, time, unit]``.

    Raises:
        mechscope.ConfigError: if the window holds fewer than two samples, naming the
            window and the trials' time range.
    """
    responses = conditions.states if config.signal == "states" else conditions.rates
    times = np.asarray(conditions.trials.times)
    keep = np.ones(len(times), dtype=bool)
    if config.start is not None:
        keep &= times >= config.start - 1e-9
    if config.stop is not None:
        keep &= times <= config.stop + 1e-9
    chosen = np.flatnonzero(keep)[:: config.stride]
    if len(chosen) < 2:
        raise mechscope.ConfigError(
            f"the window [{config.start}, {config.stop}] s (stride {config.stride}) keeps "
            f"{len(chosen)} sample(s) of trials spanning [{times[0]:g}, {times[-1]:g}] s"
        )
    return np.asarray(responses)[:, chosen]


class DSAConfig(_TrajectoryConfig):
    """Dynamical similarity (Ostrow et al. 2023): delay-embedded linear operators, aligned."""

    n_delays: int = pydantic.Field(
        default=N_DELAYS, ge=1, description="Delays in the Hankel embedding."
    )
    delay_interval: int = pydantic.Field(
        default=DELAY_INTERVAL, ge=1, description="Samples between delays."
    )
    rank: int | None = pydantic.Field(
        default=10,
        ge=1,
        description="Singular vectors kept for the operator (None: all, dsa-metric's default).",
    )
    lamb: float = pydantic.Field(default=LAMB, ge=0, description="Ridge of the operator fit.")
    iters: int = pydantic.Field(
        default=ITERS, ge=1, description="Optimiser steps per restart (dsa-metric: 1500)."
    )
    learning_rate: float = pydantic.Field(
        default=LR, gt=0, description="Peak step of the alignment optimiser (cosine-decayed)."
    )
    restarts: int = pydantic.Field(
        default=N_RESTARTS, ge=2, description="Starts on O(n), both components (det ±1)."
    )
    seed: int = pydantic.Field(default=0, description="Seed of the random restarts.")


class DSAComparison(mechscope.AbstractComparison):
    """DSA: the operator of each network's delay-embedded dynamics, compared up to rotation."""

    config: DSAConfig = eqx.field(static=True)
    metrics: ClassVar[tuple[str, ...]] = ("angular", "euclidean")
    pair_batch: ClassVar[int] = 64

    def represent(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        conditions: mechscope.ConditionRun,
        probes: Mapping[str, mechscope.ProbeResult],
    ) -> dict[str, np.ndarray]:
        """The HAVOK-DMD operator of the network's condition trajectories."""
        config = self.config
        trajectories = jnp.asarray(analysed_window(conditions, config))
        operator = dsa_represent(
            trajectories,
            n_delays=config.n_delays,
            delay_interval=config.delay_interval,
            rank=config.rank,
            lamb=config.lamb,
        )
        return {"operator": np.asarray(operator)}

    def distance(self, a: Mapping[str, Array], b: Mapping[str, Array]) -> dict[str, Array]:
        """Angular and Euclidean DSA distances (the best alignment over O(n))."""
        config = self.config
        scores = dsa_distance(
            a["operator"],
            b["operator"],
            key=jax.random.key(config.seed),
            iters=config.iters,
            lr=config.learning_rate,
            n_restarts=config.restarts,
        )
        return {name: scores[name] for name in self.metrics}


class ShapeConfig(_TrajectoryConfig):
    """Generalized shape metric (Williams et al. 2021): Procrustes (α = 1) to CCA (α = 0)."""

    signal: Signal = pydantic.Field(
        default="rates", description="Which responses are compared (default: firing rates)."
    )
    alpha: float = pydantic.Field(
        default=1.0, ge=0, le=1, description="1: Procrustes (rotations), 0: CCA (any linear)."
    )


class ShapeComparison(mechscope.AbstractComparison):
    """Shape distance between condition-averaged responses: geometry, not dynamics."""

    config: ShapeConfig = eqx.field(static=True)
    metrics: ClassVar[tuple[str, ...]] = ("angular", "euclidean")
    pair_batch: ClassVar[int] = 256

    def represent(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        conditions: mechscope.ConditionRun,
        probes: Mapping[str, mechscope.ProbeResult],
    ) -> dict[str, np.ndarray]:
        """The centred, partially whitened response matrix."""
        responses = jnp.asarray(analysed_window(conditions, self.config))
        return {"responses": np.asarray(shape_represent(responses, alpha=self.config.alpha))}

    def distance(self, a: Mapping[str, Array], b: Mapping[str, Array]) -> dict[str, Array]:
        """Angular and Euclidean shape distances (closed-form Procrustes alignment)."""
        scores = shape_distance(jnp.asarray(a["responses"]), jnp.asarray(b["responses"]))
        return {name: jnp.asarray(value) for name, value in scores.items()}

    def distances(
        self, representations: Sequence[Mapping[str, np.ndarray]], pairs: np.ndarray
    ) -> dict[str, np.ndarray]:
        """As the base class, after zero-padding networks of fewer units to the largest.

        Padding after whitening leaves every distance unchanged (see ``pad_units``), so
        networks of different sizes compare.
        """
        widest = max(np.shape(r["responses"])[-1] for r in representations)
        padded = [
            {"responses": np.asarray(pad_units(jnp.asarray(r["responses"]), widest))}
            for r in representations
        ]
        return super().distances(padded, pairs)


class TopologyConfig(mechscope.Config):
    """Fixed-point topology (Maheswaranathan et al. 2019) from the fixed_points probe."""

    max_points: int = pydantic.Field(
        default=16, ge=1, description="Stable points kept per input (the most stable first)."
    )
    n_eigenvalues: int | None = pydantic.Field(
        default=10, ge=1, description="Leading eigenvalues per stable point (None: all)."
    )
    blur: float = pydantic.Field(
        default=0.02, gt=0, description="Relative Sinkhorn blur of the spectrum distance."
    )
    sinkhorn_iters: int = pydantic.Field(default=300, ge=1, description="Sinkhorn iterations.")


class TopologyComparison(mechscope.AbstractComparison):
    """Counts of stable/unstable points, their spectra and their place beside the trajectories."""

    config: TopologyConfig = eqx.field(static=True)
    requires: ClassVar[tuple[str, ...]] = ("fixed_points",)
    metrics: ClassVar[tuple[str, ...]] = ("count", "stable_count", "spectrum", "arrangement")

    def represent(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        conditions: mechscope.ConditionRun,
        probes: Mapping[str, mechscope.ProbeResult],
    ) -> dict[str, np.ndarray]:
        """Read the stored fixed points and summarise them per constant input."""
        arrays = probes["fixed_points"].arrays
        available = np.shape(arrays["eigenvalues_real"])[-1]
        # A network smaller than n_eigenvalues has fewer eigenvalues per point: keep them all.
        wanted = self.config.n_eigenvalues
        n_eigenvalues = available if wanted is None else min(wanted, available)
        topology = topology_represent(
            np.asarray(arrays["points"]),
            np.asarray(arrays["input_index"]),
            np.asarray(arrays["stable"], dtype=bool),
            np.asarray(arrays["eigenvalues_real"]) + 1j * np.asarray(arrays["eigenvalues_imag"]),
            np.asarray(conditions.states),
            n_inputs=len(arrays["inputs"]),
            max_points=self.config.max_points,
            n_eigenvalues=n_eigenvalues,
        )
        return {name: np.asarray(getattr(topology, name)) for name in _TOPOLOGY_FIELDS}

    def distance(self, a: Mapping[str, Array], b: Mapping[str, Array]) -> dict[str, Array]:
        """Count, spectrum (W2) and arrangement (W1) distances, per input then averaged."""
        scores = topology_distance(
            _topology(a), _topology(b), blur=self.config.blur, iters=self.config.sinkhorn_iters
        )
        return {name: scores[name] for name in self.metrics}


_TOPOLOGY_FIELDS = ("counts", "spectrum", "spectrum_weight", "arrangement", "arrangement_weight")


def _topology(arrays: Mapping[str, Any]) -> Topology:
    return Topology(**{name: arrays[name] for name in _TOPOLOGY_FIELDS})
