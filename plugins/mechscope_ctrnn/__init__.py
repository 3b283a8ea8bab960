"""First-party continuous-time RNN models (ctrnn, ei_ctrnn, lowrank_ctrnn, gated_ctrnn).

``ctrnn``: tau·dx/dt = −x + W_rec·φ(x) + W_in·u + b, r = φ(x), z = W_out·r + b_out, integrated
with diffrax (Euler at the task's dt by default, any diffrax solver by name, adaptive stepping
on request). ``ei_ctrnn``: the same dynamics under Dale's law. ``lowrank_ctrnn``: the same
dynamics with W_rec = m·nᵀ/N of rank R. ``gated_ctrnn``: a GRU in ODE form,
tau·dh/dt = (1 − z)⊙(ĥ − h). Plugins add nonlinearities with :func:`register_activation`.
"""

from __future__ import annotations

import mechscope
from mechscope_ctrnn._activations import (
    ACTIVATIONS,
    Activation,
    get_activation,
    register_activation,
)
from mechscope_ctrnn._config import (
    CTRNNConfig,
    EICTRNNConfig,
    GatedCTRNNConfig,
    LowRankCTRNNConfig,
    diffrax_solvers,
    make_solver,
)
from mechscope_ctrnn._gated import GatedCTRNN, GatedDynamics, make_gated_ctrnn
from mechscope_ctrnn._integrate import AUTO_CHECKPOINT_SIZE
from mechscope_ctrnn._models import (
    CTRNN,
    EICTRNN,
    AbstractCTRNN,
    LowRankCTRNN,
    make_ctrnn,
    make_ei_ctrnn,
    make_lowrank_ctrnn,
    resolve_device,
)

__all__ = [
    "ACTIVATIONS",
    "AUTO_CHECKPOINT_SIZE",
    "CTRNN",
    "EICTRNN",
    "AbstractCTRNN",
    "Activation",
    "CTRNNConfig",
    "EICTRNNConfig",
    "GatedCTRNN",
    "GatedCTRNNConfig",
    "GatedDynamics",
    "LowRankCTRNN",
    "LowRankCTRNNConfig",
    "diffrax_solvers",
    "get_activation",
    "make_ctrnn",
    "make_ei_ctrnn",
    "make_gated_ctrnn",
    "make_lowrank_ctrnn",
    "make_solver",
    "mechscope_register_models",
    "register_activation",
    "resolve_device",
]


@mechscope.hookimpl
def mechscope_register_models(register: mechscope.Register) -> None:
    """Register the ``ctrnn``, ``ei_ctrnn``, ``lowrank_ctrnn`` and ``gated_ctrnn`` models."""
    register("ctrnn", CTRNNConfig, make_ctrnn)
    register("ei_ctrnn", EICTRNNConfig, make_ei_ctrnn)
    register("lowrank_ctrnn", LowRankCTRNNConfig, make_lowrank_ctrnn)
    register("gated_ctrnn", GatedCTRNNConfig, make_gated_ctrnn)
