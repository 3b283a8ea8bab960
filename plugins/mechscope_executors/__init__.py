"""First-party executors: ``local`` runs items one after another in this process."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import equinox as eqx

import mechscope

Item = TypeVar("Item")
Value = TypeVar("Value")


class LocalExecutorConfig(mechscope.Config):
    """Run every item in this process, in order (the default)."""


class LocalExecutor(mechscope.AbstractExecutor):
    """Runs items sequentially in the current process; failures are isolated per item."""

    config: LocalExecutorConfig = eqx.field(static=True)

    def map(
        self, function: Callable[[Item], Value], items: Sequence[Item]
    ) -> Iterator[mechscope.Outcome[Value]]:
        """Apply `function` to each item in order, yielding an outcome per item."""
        for index, item in enumerate(items):
            try:
                value = function(item)
            except Exception as error:  # noqa: BLE001 - one failing run must not stop the rest
                last = traceback.extract_tb(error.__traceback__)[-1:]
                where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
                yield mechscope.Outcome(index, error=f"{type(error).__name__}: {error}{where}")
            else:
                yield mechscope.Outcome(index, value=value)


@mechscope.hookimpl
def mechscope_register_executors(register: mechscope.Register) -> None:
    """Register the ``local`` executor."""
    register("local", LocalExecutorConfig, LocalExecutor)
