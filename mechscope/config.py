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
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", validate_default=True)


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

    Args:
        config_cls: the component's pydantic config class.
        params: raw parameters (from TOML, JSON or Python keyword arguments).
        where: how to name the component in the message, e.g. ``"model 'ctrnn'"``.
    """
    try:
        return config_cls.model_validate(dict(params))
    except pydantic.ValidationError as error:
        raise ConfigError(format_validation_error(error, config_cls, where=where)) from None


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
            parts.append(f"field '{location}' = {_short_repr(value)}: {message}")
    return f"{where}: " + "; ".join(parts)


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_to_json_dict(config: pydantic.BaseModel) -> dict[str, Any]:
    """A config as plain JSON types (tuples become lists), for hashing and saving."""
    return json.loads(config.model_dump_json())


def canonical_json(data: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for content hashes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
