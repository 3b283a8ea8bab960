"""The executor interface: where a list of runs is carried out."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar, Generic, TypeVar

import equinox as eqx

from mechscope.config import Config

Item = TypeVar("Item")
Value = TypeVar("Value")


@dataclasses.dataclass(frozen=True)
class Outcome(Generic[Value]):
    """The result of one item: its index in the submitted list and a value or an error."""

    index: int
    value: Value | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the item finished without raising."""
        return self.error is None


class AbstractExecutor(eqx.Module):
    """Runs a function over items and yields outcomes as they finish.

    A failing item never stops the others: its exception becomes ``Outcome.error``.
    """

    config: eqx.AbstractVar[Config]

    #: True when items run in this process, so they may share its (already loaded) plugins;
    #: False means items are shipped to other processes as plain data.
    in_process: ClassVar[bool] = False

    @property
    def group_seeds(self) -> bool:
        """Whether the seeds of one variant go to one item, so a trainer can fit them together."""
        return False

    @property
    def parallelism(self) -> int:
        """How many items run at once (a hint: a suite splits its groups to keep all busy)."""
        return 1

    @property
    def compilation_cache(self) -> str | None:
        """Where JAX's persistent compilation cache lives: ``"auto"``, a directory or ``"off"``.

        ``"auto"`` (the default) is the ``MECHSCOPE_COMPILATION_CACHE`` environment variable if
        set, else a directory in the store (see
        :func:`mechscope.experiment.compilation_cache_directory`).
        """
        return "auto"

    @contextlib.contextmanager
    def session(self) -> Iterator[AbstractExecutor]:
        """Hold what the executor starts (a cluster) across several :meth:`map` calls.

        A suite runs its stages (training, then comparisons) in one session, so a cluster
        starts once, when first needed, and is closed when the session ends, also on an
        error; what the user started (a scheduler given by address) is never closed. An
        executor that holds nothing (the default) yields itself.

        Yields:
            The executor to call :meth:`map` on inside the session.
        """
        yield self

    @abc.abstractmethod
    def map(
        self, function: Callable[[Item], Value], items: Sequence[Item]
    ) -> Iterator[Outcome[Value]]:
        """Apply `function` to each item, yielding outcomes in completion order."""
