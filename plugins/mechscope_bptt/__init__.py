"""First-party BPTT trainer: backpropagation through time with optax (``bptt``).

Loss = masked MSE + λ_r·mean(r²) + λ_w·Σ mean(W²) + optional simple-dynamics penalty, trained
with noise, any optax optimiser and schedule, checkpoints with exact resume, divergence
detection and several seeds trained together (vmapped). See ``docs/trainers/bptt.md``.
"""

from __future__ import annotations

import mechscope

from ._checkpoint import load_checkpoint, read_header, save_checkpoint
from ._config import BPTTConfig, build_optimizer, build_schedule
from ._loss import (
    Hyperparameters,
    loss_terms,
    masked_mse,
    piece_loss_terms,
    recurrent_weights,
    simple_dynamics_penalty,
    weight_matrices,
)
from ._step import (
    PIECE_TRIALS,
    PieceGradient,
    TrainState,
    apply_pieces,
    batch_pieces,
    compile_config,
    evaluate_r2,
    init_train_state,
    make_train_step,
    piece_gradient,
    step_function,
    train_step,
    train_step_many,
)
from ._trainer import HISTORY_COLUMNS, BPTTTrainer

__all__ = [
    "HISTORY_COLUMNS",
    "PIECE_TRIALS",
    "BPTTConfig",
    "BPTTTrainer",
    "Hyperparameters",
    "PieceGradient",
    "TrainState",
    "apply_pieces",
    "batch_pieces",
    "build_optimizer",
    "build_schedule",
    "compile_config",
    "evaluate_r2",
    "init_train_state",
    "load_checkpoint",
    "loss_terms",
    "make_train_step",
    "masked_mse",
    "mechscope_register_trainers",
    "piece_gradient",
    "piece_loss_terms",
    "read_header",
    "recurrent_weights",
    "save_checkpoint",
    "simple_dynamics_penalty",
    "step_function",
    "train_step",
    "train_step_many",
    "weight_matrices",
]


@mechscope.hookimpl
def mechscope_register_trainers(register: mechscope.Register) -> None:
    """Register the ``bptt`` trainer."""
    register("bptt", BPTTConfig, BPTTTrainer, default=True)
