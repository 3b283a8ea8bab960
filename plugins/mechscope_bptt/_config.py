"""The BPTT trainer's configuration and the optax objects built from it."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import optax
import pydantic

import mechscope

Scalar = bool | int | float | str | None
#: A keyword argument value: a scalar, a tuple of scalars, or a table stored as (key, value)
#: pairs (passed to optax as a dict, e.g. ``boundaries_and_scales``).
ArgValue = Scalar | tuple[Scalar, ...] | tuple[tuple[Scalar, Scalar], ...]
Arguments = tuple[tuple[str, ArgValue], ...]

# The first of these that a schedule has and the user leaves out takes the learning rate.
_LEARNING_RATE_SLOTS = ("init_value", "peak_value", "value")


def _freeze(value: Any) -> Any:
    """Turn TOML/JSON containers into hashable tuples (tables become sorted (key, value) pairs)."""
    if isinstance(value, Mapping):
        return tuple(sorted((_number_or_text(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _number_or_text(key: Any) -> Any:
    # TOML and JSON table keys are strings; optax tables (boundaries_and_scales) want numbers.
    if isinstance(key, str):
        for kind in (int, float):
            try:
                return kind(key)
            except ValueError:
                pass
    return key


def _thaw(value: Any) -> Any:
    """Inverse of the table freezing: a non-empty tuple of 2-tuples becomes a dict."""
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(item, tuple) and len(item) == 2 for item in value)
    ):
        return {k: _thaw(v) for k, v in value}
    return value


def arguments_to_kwargs(arguments: Arguments) -> dict[str, Any]:
    """Keyword arguments for an optax factory from a config's ``(name, value)`` pairs."""
    return {name: _thaw(value) for name, value in arguments}


def _resolve_optax(name: str, what: str) -> Callable[..., Any]:
    target: Any = optax
    for part in name.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"optax has no {what} named '{name}'")
    if not callable(target):
        raise ValueError(f"optax.{name} is not a callable {what}")
    return target


class BPTTConfig(mechscope.Config):
    """Backpropagation through time with optax: masked MSE plus rate, weight and dynamics penalties.

    Defaults follow SCIENCE.md (Sussillo et al. 2015; Kao 2019): Adam at 1e-3, batch 64,
    gradient-norm clipping, training noise on inputs and recurrent state.
    """

    steps: int = pydantic.Field(
        2000, ge=0, description="Maximum number of optimiser steps (one batch each)."
    )
    batch_size: int = pydantic.Field(64, ge=1, description="Trials per training batch.")
    optimizer: str = pydantic.Field(
        "adam",
        description="Name of an optax optimiser factory (e.g. 'adam', 'adamw', 'sgd', "
        "'contrib.muon'); it is called with learning_rate and optimizer_args.",
    )
    optimizer_args: Arguments = pydantic.Field(
        (),
        description="Extra keyword arguments of the optimiser as (name, value) pairs or a table, "
        "e.g. {b1 = 0.9, b2 = 0.99}.",
    )
    learning_rate: float = pydantic.Field(
        1e-3, gt=0, description="Learning rate; the schedule's initial/peak value if one is set."
    )
    schedule: str | None = pydantic.Field(
        None,
        description="Name of an optax schedule (e.g. 'cosine_decay_schedule', "
        "'warmup_cosine_decay_schedule', 'exponential_decay'); None = constant learning rate.",
    )
    schedule_args: Arguments = pydantic.Field(
        (),
        description="Keyword arguments of the schedule; the first of init_value, peak_value, "
        "value that the schedule has and these leave out is set to learning_rate.",
    )
    clip_norm: float | None = pydantic.Field(
        1.0, gt=0, description="Clip gradients to this global L2 norm; None = no clipping."
    )
    rate_reg: float = pydantic.Field(
        1e-3, ge=0, description="λ_r: weight of mean(r²) over trials, times and units."
    )
    weight_reg: float = pydantic.Field(
        1e-5, ge=0, description="λ_w: weight of the sum over weight matrices of mean(W²)."
    )
    simple_dynamics_reg: float = pydantic.Field(
        0.0,
        ge=0,
        description="λ_d: weight of Sussillo's simple-dynamics penalty mean‖W_rec·diag(φ'(x))‖² "
        "(needs a model with recurrent_weights); 0 = off.",
    )
    input_noise: float = pydantic.Field(
        0.01, ge=0, description="σ_in of the input noise during training (model's units)."
    )
    recurrent_noise: float = pydantic.Field(
        0.05, ge=0, description="σ_rec of the recurrent noise during training (model's units)."
    )
    eval_every: int = pydantic.Field(
        50,
        ge=1,
        description="Record a history row (window-averaged loss terms, condition R²) every "
        "this many steps.",
    )
    target_r2: float | None = pydantic.Field(
        None,
        description="Stop once the noise-free output R² on the task's condition trials reaches "
        "this (checked every eval_every steps); None = run all steps.",
    )
    checkpoint_every: int | None = pydantic.Field(
        500,
        ge=1,
        description="Write a checkpoint every this many steps when fit gets a checkpoint_dir; "
        "None = only at the end.",
    )
    parallel_seeds: bool = pydantic.Field(
        True,
        description="fit_many trains networks of the same structure together (vmapped); "
        "results equal separate runs to float tolerance.",
    )

    def peak_memory_bytes(self, shape: mechscope.RunShape) -> float:
        """Bytes training needs beyond the model: activations, gradients, optimiser state."""
        networks = shape.n_networks if self.parallel_seeds else 1
        # Reverse mode keeps per step and trial the states, rates and noise, then their
        # cotangents; the optimiser holds weights, gradients, two moments, the update and the
        # last finite model. float32 throughout.
        activations = 8 * self.batch_size * (shape.n_times or 1) * (shape.n_units or 0)
        return 4.0 * networks * (activations + 6 * shape.parameters)

    @pydantic.field_validator("optimizer_args", "schedule_args", mode="before")
    @classmethod
    def _freeze_arguments(cls, value: Any) -> Any:
        frozen = _freeze(value)
        if isinstance(frozen, tuple):
            names = [item[0] for item in frozen if isinstance(item, tuple) and item]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"argument(s) given twice: {', '.join(map(str, duplicates))}")
        return frozen

    @pydantic.field_validator("target_r2")
    @classmethod
    def _check_target(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value <= 1.0):
            raise ValueError("target_r2 must be a finite number at most 1 (R² cannot exceed 1)")
        return value

    @pydantic.model_validator(mode="after")
    def _check_optax(self) -> BPTTConfig:
        optimizer = _resolve_optax(self.optimizer, "optimiser")
        kwargs = arguments_to_kwargs(self.optimizer_args)
        if "learning_rate" in kwargs:
            raise ValueError("set the learning rate with learning_rate, not optimizer_args")
        try:
            inspect.signature(optimizer).bind(learning_rate=self.learning_rate, **kwargs)
        except TypeError as error:
            raise ValueError(
                f"optax.{self.optimizer} does not accept these arguments: {error}"
            ) from None
        if self.schedule is None:
            if self.schedule_args:
                raise ValueError("schedule_args are given but no schedule is named")
        else:
            schedule = _resolve_optax(self.schedule, "schedule")
            try:
                inspect.signature(schedule).bind(**schedule_kwargs(self))
            except TypeError as error:
                raise ValueError(
                    f"optax.{self.schedule} does not accept these arguments: {error}"
                ) from None
        return self


def schedule_kwargs(config: BPTTConfig, learning_rate: Any = None) -> dict[str, Any]:
    """The schedule's keyword arguments, with the learning rate filling its initial-value slot."""
    if learning_rate is None:
        learning_rate = config.learning_rate
    kwargs = arguments_to_kwargs(config.schedule_args)
    if config.schedule is None:
        return kwargs
    parameters = inspect.signature(_resolve_optax(config.schedule, "schedule")).parameters
    for slot in _LEARNING_RATE_SLOTS:
        if slot in parameters and slot not in kwargs:
            kwargs[slot] = learning_rate
            break
    return kwargs


def build_schedule(config: BPTTConfig, learning_rate: Any = None) -> optax.Schedule:
    """The learning rate as a function of the step count (constant without a schedule).

    Args:
        config: the trainer config.
        learning_rate: use this (e.g. a traced array) instead of ``config.learning_rate``.
    """
    if learning_rate is None:
        learning_rate = config.learning_rate
    if config.schedule is None:
        return optax.constant_schedule(learning_rate)
    kwargs = schedule_kwargs(config, learning_rate)
    return _resolve_optax(config.schedule, "schedule")(**kwargs)


def build_optimizer(config: BPTTConfig, learning_rate: Any = None) -> optax.GradientTransformation:
    """The optax optimiser: optional global-norm clipping, then the named optimiser.

    Args:
        config: the trainer config.
        learning_rate: use this (e.g. a traced array) instead of ``config.learning_rate``.
    """
    if learning_rate is None:
        learning_rate = config.learning_rate
    if config.schedule is not None:
        learning_rate = build_schedule(config, learning_rate)
    optimizer = _resolve_optax(config.optimizer, "optimiser")(
        learning_rate=learning_rate, **arguments_to_kwargs(config.optimizer_args)
    )
    if config.clip_norm is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optimizer)
    return optimizer
