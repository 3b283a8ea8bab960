"""First-party continuous-time RNN models (ctrnn, ei_ctrnn).

``ctrnn``: tau·dx/dt = −x + W_rec·φ(x) + W_in·u + b, r = φ(x), z = W_out·r + b_out, integrated
with diffrax (Euler at the task's dt by default, any diffrax solver by name, adaptive stepping
on request). ``ei_ctrnn``: the same dynamics under Dale's law. Plugins add nonlinearities with
:func:`register_activation`.
"""

from __future__ import annotations

import mechscope
from mechscope_ctrnn._activations import (
    ACTIVATIONS,
    Activation,
    get_activation,
    register_activation,
)
from mechscope_ctrnn._config import CTRNNConfig, EICTRNNConfig, diffrax_solvers, make_solver
from mechscope_ctrnn._integrate import AUTO_CHECKPOINT_SIZE
from mechscope_ctrnn._models import (
    CTRNN,
    EICTRNN,
    AbstractCTRNN,
    make_ctrnn,
    make_ei_ctrnn,
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
    "diffrax_solvers",
    "get_activation",
    "make_ctrnn",
    "make_ei_ctrnn",
    "make_solver",
    "mechscope_register_models",
    "register_activation",
    "resolve_device",
]


@mechscope.hookimpl
def mechscope_register_models(register: mechscope.Register) -> None:
    """Register the ``ctrnn`` and ``ei_ctrnn`` models."""
    register("ctrnn", CTRNNConfig, make_ctrnn)
    register("ei_ctrnn", EICTRNNConfig, make_ei_ctrnn)
