"""Validated configuration: the base class for component configs and component specs.

A component is named by *kind* + *name* + *params*. Validation happens in two stages: the spec
(is this a known kind, is ``name`` a string, are params a table) and then the component's own
config class, looked up in the registry. Both stages raise :class:`~mechscope.errors.ConfigError`
with a single line that names the component, the field, the value and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeGuard, get_args

import pydantic

from mechscope.errors import ConfigError, close_matches

ComponentKind = Literal["task", "model", "trainer", "probe", "executor", "comparison"]
COMPONENT_KINDS: tuple[str, ...] = get_args(ComponentKind)


def _is_component_kind(kind: str) -> TypeGuard[ComponentKind]:
    return kind in COMPONENT_KINDS


class Config(pydantic.BaseModel):
    """Base class of every component config: frozen, hashable, unknown fields rejected.

    Subclasses declare fields with defaults. Use tuples rather than lists so the config stays
    hashable (a config is a static field of its equinox module and part of jit cache keys).

    Numbers must be finite: NaN and ±inf are rejected for every float field, however the
    config is built. A field where a non-finite value is a meaningful setting opts out with
    ``pydantic.Field(allow_inf_nan=True)``. Parameters that come from a file or a suite go
    through :func:`validate_config`, which is also strict about types.
    """

    model_config = pydantic.ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )


class ComponentSpec(pydantic.BaseModel):
    """An unvalidated reference to a component: its kind, registered name and raw parameters."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    kind: ComponentKind
    name: str = pydantic.Field(min_length=1)
    params: dict[str, Any] = pydantic.Field(default_factory=dict)
    preset: str | None = None

    @classmethod
    def parse(cls, kind: str, value: Any) -> ComponentSpec:
        """Build a spec from the forms a user writes.

        Accepts a bare name (``"ctrnn"``), a table with ``name`` and inline parameters
        (``{"name": "ctrnn", "activation": "relu"}``), a table naming a ``preset`` from the
        catalog plus overrides, or an existing spec.

        Raises:
            ConfigError: if the value has none of these forms.
        """
        if not _is_component_kind(kind):
            raise ConfigError(
                f"unknown component kind '{kind}'{close_matches(kind, COMPONENT_KINDS)}; "
                f"expected one of: {', '.join(COMPONENT_KINDS)}"
            )
        if isinstance(value, ComponentSpec):
            if value.kind != kind:
                raise ConfigError(f"expected a {kind} but got a {value.kind} '{value.name}'")
            return value
        if isinstance(value, str):
            return cls(kind=kind, name=value)
        if isinstance(value, Mapping):
            params = dict(value)
            name = params.pop("name", None)
            preset = params.pop("preset", None)
            if name is None and preset is None:
                raise ConfigError(
                    f"{kind}: missing 'name' (the registered {kind} to use), got keys "
                    f"{sorted(value)}"
                )
            if preset is not None:
                # The preset supplies the name; the catalog resolves it in stage two.
                name = name or f"<preset {preset}>"
            if not isinstance(name, str):
                raise ConfigError(f"{kind}: 'name' must be a string, got {name!r}")
            return cls(kind=kind, name=name, params=params, preset=preset)
        raise ConfigError(
            f"{kind}: expected a name or a table with 'name' and parameters, got {value!r}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The inline-table form: ``{"name": ..., **params}``."""
        out: dict[str, Any] = {"name": self.name, **self.params}
        if self.preset is not None:
            out["preset"] = self.preset
        return out


def check_keys(data: Mapping[str, Any], allowed: Sequence[str], *, where: str) -> None:
    """Reject keys of a table that are not in `allowed`, with a close-match suggestion.

    Raises:
        ConfigError: naming the first unknown key and the allowed ones.
    """
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}'{close_matches(unknown[0], allowed)}; "
            f"expected: {', '.join(allowed)}"
        )


def validate_config(config_cls: type[Config], params: Mapping[str, Any], *, where: str) -> Config:
    """Validate `params` against a component's config class, raising a one-line ConfigError.

    Validation is JSON-strict, for every component alike: a number field takes a number (an
    integer is fine where a float is expected, ``"0.01"`` is not), a boolean a boolean, a
    sequence a list (never a bare string), and every float is finite. Parameters are first
    made plain JSON data (tuples become lists, NumPy scalars numbers), so TOML, JSON and Python
    keyword arguments are judged by the same rules.

    Args:
        config_cls: the component's pydantic config class.
        params: raw parameters (from TOML, JSON or Python keyword arguments).
        where: how to name the component in the message, e.g. ``"model 'ctrnn'"``.
    """
    data = {str(name): _json_data(value, str(name), where) for name, value in params.items()}
    try:
        return config_cls.model_validate_json(canonical_json(data), strict=True)
    except pydantic.ValidationError as error:
        raise ConfigError(format_validation_error(error, config_cls, where=where)) from None


def _json_data(value: Any, location: str, where: str) -> Any:
    """`value` as JSON data, or a ConfigError naming the field that holds something else."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, pydantic.BaseModel):
        return config_to_json_dict(value)
    if isinstance(value, Mapping):
        return {str(k): _json_data(v, f"{location}.{k}", where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_data(v, f"{location}.{i}", where) for i, v in enumerate(value)]
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        return _json_data(value.item(), location, where)  # a NumPy or JAX scalar
    raise ConfigError(
        f"{where}: field '{location}' = {_short_repr(value)}: expected a number, string, "
        f"boolean, list or table, got {type(value).__name__}"
    )


def format_validation_error(
    error: pydantic.ValidationError, config_cls: type[pydantic.BaseModel], *, where: str
) -> str:
    """Render a pydantic error as one line: field, value, and what was expected."""
    parts = []
    fields = list(config_cls.model_fields)
    for detail in error.errors(include_url=False):
        location = ".".join(str(part) for part in detail["loc"]) or "(config)"
        value = detail.get("input")
        if detail["type"] == "extra_forbidden":
            hint = close_matches(str(detail["loc"][-1]), fields)
            parts.append(f"unknown field '{location}'{hint}; valid fields: {', '.join(fields)}")
        elif detail["type"] == "missing":
            parts.append(f"field '{location}' is required")
        else:
            message = detail["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, ") :]
            elif detail["type"] in _SEQUENCE_ERRORS:
                message = "expected a list of values, e.g. [1, 2]"
            parts.append(f"field '{location}' = {_short_repr(value)}: {message}")
    return f"{where}: " + "; ".join(parts)


# pydantic calls a JSON list an "array"; the user wrote TOML or Python.
_SEQUENCE_ERRORS = ("tuple_type", "list_type", "set_type", "frozen_set_type")


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_to_json_dict(config: pydantic.BaseModel) -> dict[str, Any]:
    """A config as plain JSON types (tuples become lists), for hashing and saving."""
    return json.loads(config.model_dump_json())


def canonical_json(data: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for content hashes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)


#: How a probe list looks, for error messages.
PROBES_EXAMPLE = '["jpca", {name = "fixed_points", n_starts = 64}]'

#: Seeds become JAX PRNG keys, which hold 32 bits: larger or negative seeds would alias others.
SEED_LIMIT = 2**32


def validate_seed(value: Any, *, where: str = "seed") -> int:
    """A run's seed: an integer in ``[0, 2**32)`` (so distinct seeds give distinct keys).

    Raises:
        ConfigError: naming `where` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer, got {_short_repr(value)}")
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{where} must be between 0 and 2**32 - 1, got {value}")
    return value


def validate_list(value: Any, *, where: str, example: str) -> list[Any]:
    """A list given in a file or in Python (a tuple is fine); a bare string or table is not.

    Args:
        value: the value to check.
        where: what to name in the message, e.g. ``"probes"``.
        example: an example of the expected form, e.g. ``'["jpca", "tuning"]'``.

    Raises:
        ConfigError: if `value` is not a list or tuple.
    """
    if not isinstance(value, list | tuple):
        raise ConfigError(
            f"{where} = {_short_repr(value)}: expected a list of values, e.g. {example}"
        )
    return list(value)
