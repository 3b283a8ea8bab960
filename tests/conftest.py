"""Shared fixtures: fresh PRNG keys and a clean plugin manager per test that needs one."""

from __future__ import annotations

import itertools

import jax
import pytest

import mechscope


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto`` (the default, see pyproject): one per usable core, at most 4.

    Most of a test's time is XLA compiling, on one core, so two workers on 2 cores cut the
    suite from ~800 s to ~510 s. The cap of 4 bounds memory: each worker holds its own JAX
    runtime and its own trained fixtures.
    """
    del config
    return min(mechscope.usable_cores(), 4)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow; pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def getkey():
    """Return a function that hands out a new PRNG key on each call (deterministic per test)."""
    counter = itertools.count()
    return lambda: jax.random.key(next(counter))
