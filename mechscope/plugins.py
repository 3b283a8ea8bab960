"""Plugin discovery and the component registry.

Plugins are found through the ``mechscope`` entry-point group; first-party plugins are found
exactly the same way. A plugin that fails to import or to register is recorded with its error
and skipped; the rest still load. ``MECHSCOPE_DISABLE_PLUGINS=name,...`` blocks plugins by
entry-point name, module or distribution.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pluggy

from mechscope import hookspecs
from mechscope.config import (
    COMPONENT_KINDS,
    ComponentSpec,
    Config,
    config_to_json_dict,
    validate_config,
)
from mechscope.errors import (
    ConfigError,
    DuplicateComponentError,
    PluginLoadError,
    UnknownComponentError,
    close_matches,
)

ENTRY_POINT_GROUP = "mechscope"
DISABLE_VARIABLE = "MECHSCOPE_DISABLE_PLUGINS"


@dataclasses.dataclass(frozen=True)
class ComponentEntry:
    """A registered component: how to validate its config and build it, and who provides it."""

    kind: str
    name: str
    config_class: type[Config]
    factory: Callable[..., Any]
    plugin: str
    distribution: str | None
    version: str | None
    description: str
    default: bool = False

    def validate(self, params: Mapping[str, Any]) -> Config:
        """Validate raw parameters against this component's config class (one-line errors)."""
        return validate_config(self.config_class, params, where=f"{self.kind} '{self.name}'")

    def build(self, config: Config, **context: Any) -> Any:
        """Call the factory with a validated config and the kind's context arguments."""
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{self.kind} '{self.name}' expects a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        return self.factory(config, **context)

    def to_json(self) -> dict[str, Any]:
        """The fields ``mechscope plugins --json`` prints."""
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "plugin": self.plugin,
            "description": self.description,
            "default": self.default,
        }


@dataclasses.dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be loaded, and why."""

    plugin: str
    distribution: str | None
    error: str

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``mechscope plugins --json`` (``kind`` is ``"load_error"``)."""
        return {
            "kind": "load_error",
            "name": self.plugin,
            "distribution": self.distribution,
            "version": None,
            "description": f"failed to load: {self.error}",
            "error": self.error,
        }


class Registry:
    """Every component that loaded plugins registered, indexed by kind and name."""

    def __init__(self, failures: Sequence[LoadFailure] = ()) -> None:
        self._entries: dict[tuple[str, str], ComponentEntry] = {}
        # The manager's list, shared: an unknown name may be a component of a broken plugin.
        self._failures = failures

    def add(self, entry: ComponentEntry) -> None:
        """Add a component.

        Raises:
            DuplicateComponentError: if another plugin already registered this kind and name.
        """
        existing = self._entries.get((entry.kind, entry.name))
        if existing is not None:
            raise DuplicateComponentError(
                f"{entry.kind} '{entry.name}' is registered twice: by {_source(existing)} "
                f"and by {_source(entry)}; disable one with {DISABLE_VARIABLE}"
            )
        self._entries[(entry.kind, entry.name)] = entry

    def get(self, kind: str, name: str) -> ComponentEntry:
        """Look up a component.

        Raises:
            UnknownComponentError: naming the registered components of that kind.
        """
        if kind not in COMPONENT_KINDS:
            raise ConfigError(
                f"unknown component kind '{kind}'{close_matches(kind, COMPONENT_KINDS)}; "
                f"expected one of: {', '.join(COMPONENT_KINDS)}"
            )
        try:
            return self._entries[(kind, name)]
        except KeyError:
            known = self.names(kind)
            listing = ", ".join(known) if known else "none"
            broken = "".join(
                f"; plugin '{f.plugin}' failed to load: {f.error}" for f in self._failures
            )
            raise UnknownComponentError(
                f"unknown {kind} '{name}'{close_matches(name, known)}; registered {kind}s: "
                f"{listing}{broken}"
            ) from None

    def names(self, kind: str) -> list[str]:
        """Sorted names of the registered components of `kind`."""
        return sorted(name for (k, name) in self._entries if k == kind)

    def entries(self, kind: str | None = None) -> list[ComponentEntry]:
        """Registered components, optionally of one kind, sorted by kind then name."""
        order = {k: i for i, k in enumerate(COMPONENT_KINDS)}
        chosen = [e for e in self._entries.values() if kind is None or e.kind == kind]
        return sorted(chosen, key=lambda e: (order[e.kind], e.name))

    def default(self, kind: str) -> str:
        """The name of the component of `kind` a plugin registered as the default.

        The core names no component itself: an experiment without a trainer, or a suite
        without an executor, uses the one registered with ``default=True``.

        Raises:
            ConfigError: if no loaded plugin, or more than one, registered a default.
        """
        defaults = [e for e in self.entries(kind) if e.default]
        if len(defaults) == 1:
            return defaults[0].name
        if not defaults:
            raise ConfigError(
                f"no default {kind} is registered; name one (registered {kind}s: "
                f"{', '.join(self.names(kind)) or 'none'})"
            )
        raise ConfigError(
            f"several plugins register a default {kind} "
            f"({', '.join(_source(e) for e in defaults)}); name one explicitly"
        )

    def name_for_config(self, kind: str, config: Config) -> str:
        """The unique registered name whose config class is ``type(config)``.

        Raises:
            ConfigError: if no component, or more than one, uses that config class.
        """
        names = [e.name for e in self.entries(kind) if e.config_class is type(config)]
        if len(names) != 1:
            raise ConfigError(
                f"cannot tell which {kind} uses {type(config).__name__} "
                f"(candidates: {names or 'none'}); pass its name explicitly"
            )
        return names[0]

    def resolve(self, spec: ComponentSpec) -> tuple[ComponentEntry, Config]:
        """Stage-two validation: apply a preset if named, then the component's config class."""
        name, params = spec.name, dict(spec.params)
        if spec.preset is not None:
            from mechscope.catalog import load_catalog

            presets = load_catalog().presets
            if spec.preset not in presets:
                raise ConfigError(
                    f"unknown preset '{spec.preset}'{close_matches(spec.preset, presets)}; "
                    f"presets: {', '.join(sorted(presets)) or 'none'}"
                )
            preset = presets[spec.preset]
            if preset.kind != spec.kind:
                raise ConfigError(
                    f"preset '{spec.preset}' is a {preset.kind} preset, used as a {spec.kind}"
                )
            if not name.startswith("<preset") and name != preset.component:
                raise ConfigError(
                    f"preset '{spec.preset}' is for {spec.kind} '{preset.component}', not '{name}'"
                )
            name, params = preset.component, {**preset.params, **params}
        entry = self.get(spec.kind, name)
        return entry, entry.validate(params)

    def canonical(self, spec: ComponentSpec) -> dict[str, Any]:
        """The spec with every default filled in, as plain JSON types (``{"name", **params}``)."""
        entry, config = self.resolve(spec)
        return {"name": entry.name, **config_to_json_dict(config)}


def _source(entry: ComponentEntry) -> str:
    distribution = entry.distribution or "no distribution"
    version = f" {entry.version}" if entry.version else ""
    return f"plugin '{entry.plugin}' (distribution '{distribution}'{version})"


class PluginManager:
    """Loads plugins, collects their components and fires lifecycle hooks.

    Attributes:
        hook: pluggy's hook relay, e.g. ``manager.hook.mechscope_run_start(...)``.
        registry: the collected components.
        failures: plugins that could not be loaded or could not register.
    """

    def __init__(self) -> None:
        self._pluggy = pluggy.PluginManager(hookspecs.PROJECT)
        self._pluggy.add_hookspecs(hookspecs)
        self._sources: dict[str, tuple[str | None, str | None]] = {}
        self.failures: list[LoadFailure] = []
        self.registry = Registry(self.failures)

    @property
    def hook(self) -> Any:
        """The pluggy hook relay."""
        return self._pluggy.hook

    def plugin_names(self) -> list[str]:
        """Names of the plugins registered with this manager."""
        return sorted(name for name, _ in self._pluggy.list_name_plugin() if name)

    def load_entry_points(self, disabled: Iterable[str] | None = None) -> None:
        """Import every ``mechscope`` entry point not disabled, recording failures."""
        if disabled is None:
            disabled = _disabled_from_environment()
        blocked = {name.strip() for name in disabled if name.strip()}
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            distribution = entry_point.dist.name if entry_point.dist else None
            version = entry_point.dist.version if entry_point.dist else None
            if blocked & {entry_point.name, entry_point.module, distribution}:
                continue
            if entry_point.name in self._sources:
                continue
            try:
                plugin = entry_point.load()
                self._pluggy.register(plugin, name=entry_point.name)
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # noqa: BLE001 - even sys.exit() on import is survivable
                self.failures.append(LoadFailure(entry_point.name, distribution, _describe(error)))
                continue
            self._sources[entry_point.name] = (distribution, version)
            self._collect(entry_point.name)

    def register(self, plugin: object, *, name: str, distribution: str | None = None) -> None:
        """Register a plugin object directly (e.g. from a notebook or a test).

        Raises:
            PluginLoadError: if its registration hooks raise.
        """
        self._pluggy.register(plugin, name=name)
        self._sources[name] = (distribution, None)
        self._collect(name)
        failed = [f for f in self.failures if f.plugin == name]
        if failed:
            raise PluginLoadError(f"plugin '{name}' failed to register: {failed[-1].error}")

    def unregister(self, name: str) -> None:
        """Remove a plugin and every component it registered."""
        self._pluggy.unregister(name=name)
        self._sources.pop(name, None)
        self.registry._entries = {
            key: e for key, e in self.registry._entries.items() if e.plugin != name
        }

    def _collect(self, plugin_name: str) -> None:
        """Run one plugin's registration hooks; all or nothing per plugin."""
        distribution, version = self._sources[plugin_name]
        staged: list[ComponentEntry] = []
        for kind in COMPONENT_KINDS:
            caller = getattr(self._pluggy.hook, f"mechscope_register_{kind}s")
            for implementation in caller.get_hookimpls():
                if implementation.plugin_name != plugin_name:
                    continue
                register = _make_register(kind, plugin_name, distribution, version, staged)
                try:
                    implementation.function(register=register)
                except KeyboardInterrupt:
                    raise
                except BaseException as error:  # noqa: BLE001 - survivable like an import error
                    self.failures.append(LoadFailure(plugin_name, distribution, _describe(error)))
                    self._pluggy.unregister(name=plugin_name)
                    return
        for entry in staged:
            self.registry.add(entry)


def _make_register(
    kind: str,
    plugin: str,
    distribution: str | None,
    version: str | None,
    staged: list[ComponentEntry],
) -> Callable[..., None]:
    def register(
        name: str,
        config_class: type[Config],
        factory: Callable[..., Any],
        description: str | None = None,
        *,
        default: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise PluginLoadError(f"{kind} names must be non-empty strings, got {name!r}")
        if not (isinstance(config_class, type) and issubclass(config_class, Config)):
            raise PluginLoadError(
                f"{kind} '{name}': config class must subclass mechscope.Config, "
                f"got {config_class!r}"
            )
        if not callable(factory):
            raise PluginLoadError(f"{kind} '{name}': factory {factory!r} is not callable")
        if description is None:
            description = next(iter((config_class.__doc__ or "").strip().splitlines()), "")
        staged.append(
            ComponentEntry(
                kind=kind,
                name=name,
                config_class=config_class,
                factory=factory,
                plugin=plugin,
                distribution=distribution,
                version=version,
                description=description,
                default=bool(default),
            )
        )

    return register


def _describe(error: BaseException) -> str:
    """One line for a plugin's failure: the exception's type and message."""
    if isinstance(error, SystemExit):
        return f"SystemExit: the plugin called sys.exit({error.code!r}) while loading"
    return " ".join(f"{type(error).__name__}: {error}".split())


def _disabled_from_environment() -> list[str]:
    return os.environ.get(DISABLE_VARIABLE, "").split(",")


@functools.cache
def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    manager = PluginManager()
    manager.load_entry_points()
    return manager


def get_registry() -> Registry:
    """The process-wide component registry."""
    return get_plugin_manager().registry


def reset_plugins() -> None:
    """Forget the process-wide manager so the next call reloads entry points."""
    get_plugin_manager.cache_clear()
