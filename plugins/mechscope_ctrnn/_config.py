"""Validated configs of the ctrnn, ei_ctrnn, lowrank_ctrnn and gated_ctrnn models."""

from __future__ import annotations

import functools
import re
from typing import Literal

import diffrax
import pydantic

import mechscope
from mechscope_ctrnn._activations import ACTIVATIONS

_DEVICE_PATTERN = re.compile(r"^[a-z]+(:\d+)?$")


@functools.cache
def diffrax_solvers() -> dict[str, type[diffrax.AbstractSolver]]:
    """Every diffrax solver that can be built without arguments, keyed by lowercase name."""
    solvers = {}
    for name in dir(diffrax):
        cls = getattr(diffrax, name)
        if not (isinstance(cls, type) and issubclass(cls, diffrax.AbstractSolver)):
            continue
        if name.startswith("Abstract"):
            continue
        try:
            cls()
        except Exception:  # noqa: BLE001 - wrappers and abstract classes need arguments
            continue
        solvers[name.lower()] = cls
    return solvers


def make_solver(name: str) -> diffrax.AbstractSolver:
    """A diffrax solver instance from its (case-insensitive) class name, e.g. ``"tsit5"``."""
    return diffrax_solvers()[name.lower()]()


def _known_solver_name(value: str) -> str:
    """`value` lowercased, if it names a diffrax solver buildable without arguments."""
    solvers = diffrax_solvers()
    if value.lower() not in solvers:
        raise ValueError(
            f"not a diffrax solver buildable without arguments; choose one of: "
            f"{', '.join(sorted(solvers))}"
        )
    return value.lower()


def _device_name(value: str | None) -> str | None:
    """`value`, if it is None or a device name like 'gpu' or 'cuda:1'."""
    if value is not None and not _DEVICE_PATTERN.match(value):
        raise ValueError("a device is a platform name with an optional index, e.g. 'gpu:0'")
    return value


class _CTRNNFields(mechscope.Config):
    """Fields shared by every continuous-time RNN config (not registered by itself)."""

    n_units: int = pydantic.Field(100, ge=1, description="Number of recurrent units N.")
    tau: float = pydantic.Field(
        0.05, gt=0, description="Time constant tau of every unit, in seconds."
    )
    activation: str = pydantic.Field(
        "tanh",
        description=(
            "Firing-rate function φ: tanh, relu, softplus, retanh (max(tanh, 0)), sigmoid, "
            "linear, or any name added with mechscope_ctrnn.register_activation."
        ),
    )
    gain: float = pydantic.Field(
        1.5,
        ge=0,
        description=(
            "Initial recurrent gain g: W_rec ~ N(0, g²/N) (g > 1 starts near chaos; g = 4 "
            "is chaotic)."
        ),
    )
    learn_x0: bool = pydantic.Field(
        False, description="Learn the initial state x0 (initialised at 0); otherwise x0 = 0."
    )
    solver: str = pydantic.Field(
        "euler",
        description=(
            "Name of the diffrax solver (case-insensitive class name): euler (default), "
            "heun, midpoint, ralston, bosh3, tsit5, dopri5, dopri8, ..."
        ),
    )
    substeps: int = pydantic.Field(
        1,
        ge=1,
        description=(
            "Fixed-step integration: solver steps per sample interval of the task "
            "(1 = one step of the task's dt)."
        ),
    )
    adaptive: bool = pydantic.Field(
        False,
        description=(
            "Use an adaptive PID step-size controller (needs a solver with an error "
            "estimate, e.g. tsit5); sample times are treated as input jumps."
        ),
    )
    rtol: float = pydantic.Field(
        1e-5, gt=0, description="Relative tolerance of the adaptive controller."
    )
    atol: float = pydantic.Field(
        1e-6, gt=0, description="Absolute tolerance of the adaptive controller."
    )
    max_steps: int = pydantic.Field(
        16384, ge=1, description="Most solver steps of one adaptive solve."
    )
    integrator: Literal["auto", "scan", "diffeqsolve"] = pydantic.Field(
        "auto",
        description=(
            "'scan': a lax.scan over diffrax solver steps (fixed steps; fast to "
            "differentiate); 'diffeqsolve': diffrax.diffeqsolve with "
            "RecursiveCheckpointAdjoint; 'auto': scan for fixed steps, diffeqsolve if adaptive."
        ),
    )
    gradient: Literal["auto", "adjoint", "autodiff"] = pydantic.Field(
        "auto",
        description=(
            "How training differentiates the scan integrator: 'adjoint' runs the "
            "hand-written discrete adjoint of Euler (euler, substeps = 1; faster, same "
            "gradients); 'autodiff' uses JAX reverse mode (any fixed-step solver, "
            "checkpointing); 'auto': adjoint wherever it applies and checkpointing is off."
        ),
    )
    checkpointing: Literal["auto", "always", "never"] = pydantic.Field(
        "auto",
        description=(
            "Gradient checkpointing of the scan integrator: recompute chunks of steps in "
            "the backward pass to bound memory. 'auto' turns it on for long or wide runs "
            "(steps × units ≥ 2^18)."
        ),
    )
    checkpoint_chunk: int | None = pydantic.Field(
        None,
        ge=1,
        description=(
            "Sample intervals per checkpointed chunk; None = about sqrt(number of intervals)."
        ),
    )
    device: str | None = pydantic.Field(
        None,
        description=(
            "JAX device for the parameters, e.g. 'cpu', 'gpu', 'cuda:1'; None = JAX's "
            "current default device. Placement only: it never changes the numbers."
        ),
    )
    recurrent_noise_site: Literal["state", "preactivation"] = pydantic.Field(
        "state",
        description=(
            "Where the recurrent training noise σ_rec enters: 'state' adds it to dx/dt "
            "(outside φ, x += σ_rec·sqrt(2h/tau)·ξ per step); 'preactivation' puts it inside "
            "φ in the recurrence, r = φ(x + σ_rec·sqrt(2·tau/h)·ξ), so it penalises the "
            "rates' sensitivity instead of perturbing the state (scan integrator; trains "
            "with autodiff, not the Euler adjoint)."
        ),
    )

    @pydantic.field_validator("activation")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        if value not in ACTIVATIONS:
            known = ", ".join(sorted(ACTIVATIONS))
            raise ValueError(f"unknown activation; registered activations: {known}")
        return value

    @pydantic.field_validator("solver")
    @classmethod
    def _known_solver(cls, value: str) -> str:
        return _known_solver_name(value)

    @pydantic.field_validator("device")
    @classmethod
    def _device_form(cls, value: str | None) -> str | None:
        return _device_name(value)

    @pydantic.model_validator(mode="after")
    def _consistent_stepping(self) -> _CTRNNFields:
        if self.adaptive:
            solver = diffrax_solvers()[self.solver]
            if not issubclass(solver, diffrax.AbstractAdaptiveSolver):
                raise ValueError(
                    f"adaptive stepping needs a solver with an error estimate (e.g. tsit5, "
                    f"dopri5, heun), not '{self.solver}'"
                )
            if self.integrator == "scan":
                raise ValueError(
                    "integrator 'scan' is fixed-step only; use 'diffeqsolve' or 'auto' with "
                    "adaptive=True"
                )
            if self.substeps != 1:
                raise ValueError("substeps applies to fixed-step integration, not adaptive=True")
        if self.recurrent_noise_site == "preactivation":
            if self.integrator == "diffeqsolve":
                raise ValueError(
                    "recurrent_noise_site 'preactivation' puts per-step noise inside φ, which "
                    "only the scan integrator supports; use integrator 'scan' or 'auto'"
                )
            if self.gradient == "adjoint":
                raise ValueError(
                    "gradient 'adjoint' is written for noise added to the state; with "
                    "recurrent_noise_site 'preactivation' use gradient 'auto' (which then "
                    "uses autodiff) or 'autodiff'"
                )
        if self.gradient == "adjoint":
            if not (self.solver == "euler" and self.substeps == 1 and self.uses_scan):
                raise ValueError(
                    "gradient 'adjoint' is the adjoint of fixed-step Euler with one step per "
                    "sample interval (solver 'euler', substeps 1, the scan integrator); use "
                    "'autodiff' or 'auto' otherwise"
                )
            if self.checkpointing == "always":
                raise ValueError(
                    "gradient 'adjoint' keeps only the states it returns, so checkpointing "
                    "does not apply; use checkpointing 'auto' or 'never', or gradient 'autodiff'"
                )
        return self

    def uses_adjoint(self, checkpoint_chunk: int | None) -> bool:
        """Whether the Euler adjoint runs, given the checkpoint chunk the run would use."""
        if self.gradient == "auto":
            applies = self.solver == "euler" and self.substeps == 1 and self.uses_scan
            applies = applies and self.recurrent_noise_site == "state"
            return applies and checkpoint_chunk is None
        return self.gradient == "adjoint"

    @property
    def uses_scan(self) -> bool:
        """Whether integration runs as a lax.scan over solver steps (else diffeqsolve)."""
        if self.integrator == "auto":
            return not self.adaptive
        return self.integrator == "scan"


class CTRNNConfig(_CTRNNFields):
    """Continuous-time RNN, tau·dx/dt = −x + W_rec·φ(x) + W_in·u + b, integrated with diffrax."""


class EICTRNNConfig(_CTRNNFields):
    """Continuous-time RNN obeying Dale's law: excitatory and inhibitory units keep their signs."""

    activation: str = pydantic.Field(
        "retanh",
        description=(
            "Firing-rate function φ; Dale's law only makes sense for non-negative rates "
            "(retanh, relu, softplus, sigmoid)."
        ),
    )
    excitatory_fraction: float = pydantic.Field(
        0.8,
        gt=0,
        lt=1,
        description="Fraction of units that are excitatory (the first round(fraction·N)).",
    )
    readout_from_excitatory: bool = pydantic.Field(
        True, description="Read the output out from excitatory units only."
    )
    nonnegative_inputs: bool = pydantic.Field(
        False, description="Constrain input weights to be non-negative (|W_in_raw|)."
    )

    @pydantic.model_validator(mode="after")
    def _both_populations(self) -> EICTRNNConfig:
        n_exc = self.n_excitatory
        if n_exc < 1 or n_exc > self.n_units - 1:
            raise ValueError(
                f"excitatory_fraction {self.excitatory_fraction} of {self.n_units} units leaves "
                f"{n_exc} excitatory units; both populations need at least one unit"
            )
        return self

    @property
    def n_excitatory(self) -> int:
        """Number of excitatory units (the first ones; the rest are inhibitory)."""
        return round(self.excitatory_fraction * self.n_units)


class LowRankCTRNNConfig(_CTRNNFields):
    """CT-RNN with rank-R recurrent weights W_rec = m·nᵀ/N (Mastrogiuseppe & Ostojic 2018)."""

    rank: int = pydantic.Field(
        2, ge=1, description="Rank R of W_rec = m·nᵀ/N (m, n are N × R and trained)."
    )
    gain: float = pydantic.Field(
        1.0,
        ge=0,
        description=(
            "Initial scale g of the connectivity vectors: m ~ N(0, g²), n ~ N(0, 1) entrywise, "
            "so each of W_rec's R non-zero singular values starts near g."
        ),
    )

    @pydantic.model_validator(mode="after")
    def _rank_fits(self) -> LowRankCTRNNConfig:
        if self.rank > self.n_units:
            raise ValueError(f"rank {self.rank} exceeds n_units {self.n_units}")
        return self


class GatedCTRNNConfig(mechscope.Config):
    """Continuous-time GRU, tau·dh/dt = (1 − z)⊙(ĥ − h) (Jordan, Sokół & Park 2021)."""

    n_units: int = pydantic.Field(100, ge=1, description="Number of recurrent units N.")
    tau: float = pydantic.Field(
        0.05,
        gt=0,
        description="Time constant tau (s); a unit's effective time constant is tau/(1 − z).",
    )
    gain: float = pydantic.Field(
        1.0,
        ge=0,
        description="Initial recurrent gain g: W_z, W_g, W_h ~ N(0, g²/N) entrywise.",
    )
    learn_x0: bool = pydantic.Field(
        False, description="Learn the initial state h0 (initialised at 0); otherwise h0 = 0."
    )
    solver: str = pydantic.Field(
        "euler",
        description="Name of the fixed-step diffrax solver (case-insensitive): euler, heun, ...",
    )
    substeps: int = pydantic.Field(
        1, ge=1, description="Solver steps per sample interval of the task."
    )
    checkpointing: Literal["auto", "always", "never"] = pydantic.Field(
        "auto",
        description=(
            "Gradient checkpointing of the scan integrator; 'auto' turns it on for long or "
            "wide runs (steps × units ≥ 2^18)."
        ),
    )
    checkpoint_chunk: int | None = pydantic.Field(
        None, ge=1, description="Sample intervals per checkpointed chunk; None ≈ sqrt(intervals)."
    )
    device: str | None = pydantic.Field(
        None, description="JAX device for the parameters, e.g. 'cpu', 'gpu'; None = default."
    )

    @pydantic.field_validator("solver")
    @classmethod
    def _known_solver(cls, value: str) -> str:
        return _known_solver_name(value)

    @pydantic.field_validator("device")
    @classmethod
    def _device_form(cls, value: str | None) -> str | None:
        return _device_name(value)
