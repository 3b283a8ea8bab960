"""The catalog of first-party plugins and named presets (``registry.toml``), validated."""

from __future__ import annotations

import functools
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pydantic

from mechscope.config import COMPONENT_KINDS, ComponentKind, format_validation_error
from mechscope.errors import ConfigError


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class CatalogPlugin(_Strict):
    """A first-party plugin: its entry-point module and the components it provides."""

    module: str
    description: str
    tasks: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    trainers: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()
    executors: tuple[str, ...] = ()
    comparisons: tuple[str, ...] = ()

    def components(self) -> set[tuple[str, str]]:
        """The ``(kind, name)`` pairs this plugin declares."""
        return {(kind, name) for kind in COMPONENT_KINDS for name in getattr(self, f"{kind}s")}


class Preset(_Strict):
    """A named set of parameters for one component, usable as ``{preset = "name"}``."""

    kind: ComponentKind
    component: str
    description: str
    params: dict[str, Any] = pydantic.Field(default_factory=dict)


class Catalog(_Strict):
    """The whole ``registry.toml``."""

    plugins: dict[str, CatalogPlugin] = pydantic.Field(default_factory=dict)
    presets: dict[str, Preset] = pydantic.Field(default_factory=dict)


def catalog_path() -> Path:
    """Where the installed catalog lives (the repository's ``registry.toml`` links to it)."""
    return Path(str(resources.files("mechscope") / "registry.toml"))


@functools.cache
def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate the catalog.

    Raises:
        ConfigError: if the file is not valid TOML or does not match the schema.
    """
    path = path or catalog_path()
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    try:
        return Catalog.model_validate(raw)
    except pydantic.ValidationError as error:
        raise ConfigError(format_validation_error(error, Catalog, where=str(path))) from None
