"""User-facing errors: each renders as one line on the command line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MechscopeError(Exception):
    """Base class for errors that are the user's to fix (shown as one line, exit code 2)."""


class ConfigError(MechscopeError, ValueError):
    """A configuration value, field or file is invalid."""


class UnknownComponentError(ConfigError, KeyError):
    """A component name is not registered for its kind."""

    def __str__(self) -> str:  # KeyError would quote the message otherwise.
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(MechscopeError):
    """Two plugins register a component of the same kind under the same name."""


class PluginLoadError(MechscopeError):
    """A plugin failed to import or to register its components."""


class StoreError(MechscopeError):
    """A saved result is missing, corrupted or written by an incompatible version."""


def close_matches(word: str, candidates: Iterable[str]) -> str:
    """Return a ` (did you mean 'x'?)` suffix when a candidate is close to `word`, else ''."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
