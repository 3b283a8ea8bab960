"""Tests of mechscope.concurrency: programs on the cores at once, under the caller's settings."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mechscope


def test_results_come_back_in_order_from_pool_threads_under_the_callers_settings():
    def call(i):
        def run():
            settings = (
                jax.config.read("jax_enable_x64"),
                jax.config.jax_default_matmul_precision,  # pyright: ignore[reportAttributeAccessIssue]
            )
            return i, threading.current_thread().name, settings, jnp.asarray(1.0).dtype

        return run

    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        results = mechscope.run_concurrently([call(i) for i in range(6)])
    assert [r[0] for r in results] == list(range(6))
    assert all(r[1].startswith("mechscope") for r in results)
    assert all(r[2] == (True, "highest") and r[3] == jnp.float64 for r in results)
    # One call, or concurrent=False, runs in the calling thread.
    here = threading.current_thread().name
    assert mechscope.run_concurrently([call(0)])[0][1] == here
    sequential = mechscope.run_concurrently([call(0), call(1)], concurrent=False)
    assert {r[1] for r in sequential} == {here}


def test_calls_that_run_calls_concurrently_run_those_inline():
    # Waiting on the pool from inside it would deadlock once the outer calls fill it.
    def outer(i):
        return lambda: mechscope.run_concurrently(
            [lambda: (i, threading.current_thread().name)] * 3
        )

    results = mechscope.run_concurrently([outer(i) for i in range(2 * mechscope.usable_cores())])
    for i, inner in enumerate(results):
        assert [r[0] for r in inner] == [i] * 3
        assert len({r[1] for r in inner}) == 1  # all in the outer call's thread


def test_an_error_in_one_call_is_raised_to_the_caller():
    def fails():
        raise ValueError("piece 1 failed")

    with pytest.raises(ValueError, match="piece 1 failed"):
        mechscope.run_concurrently([lambda: 1, fails, lambda: 3])


def test_lapack_calls_are_read_from_the_lowered_program():
    @jax.jit
    def solves(a, b):
        return jax.lax.fori_loop(0, 3, lambda _, x: jnp.linalg.solve(a, x), b)

    @jax.jit
    def multiplies(a, b):
        return jax.lax.fori_loop(0, 3, lambda _, x: a @ x, b)

    a, b = jnp.eye(4) * 2.0, jnp.ones(4)
    assert mechscope.calls_lapack(solves, a, b)  # the positive control
    assert not mechscope.calls_lapack(multiplies, a, b)
    np.testing.assert_allclose(solves(a, b), b / 8)
    # Without a lowered program there is no telling: the safe answer.
    assert mechscope.calls_lapack(lambda a, b: a @ b, a, b)


def test_program_keys_tell_shapes_and_static_values_apart_but_not_array_values():
    key = mechscope.program_key
    assert key((jnp.zeros(3), 2)) == key((jnp.ones(3), 2))
    assert key((jnp.zeros(3), 2)) != key((jnp.zeros(4), 2))
    assert key((jnp.zeros(3), 2)) != key((jnp.zeros(3), 3))
    assert key((jnp.zeros(3, jnp.int32),)) != key((jnp.zeros(3),))
    assert key(({"a": [1, 2]},)) is not None  # containers are structure, their ints leaves
    assert key((np.zeros(2), {1, 2})) is None  # an unhashable leaf: no key (ask every time)


def test_runs_on_cpu_follows_the_default_device_then_the_backend(monkeypatch):
    from mechscope_bptt._step import batch_pieces
    from mechscope_dynamics._fp_batching import call_in_pieces

    def piece_rows(model, x):  # each row reports the padded size of the call it was in
        del model
        return jnp.full(x.shape[0], x.shape[0])

    rows = (np.zeros((2000, 3)),)

    assert mechscope.runs_on_cpu() == (jax.default_backend() == "cpu")
    cpu = jax.devices("cpu")[0]
    # As if an accelerator were the default backend: one piece per batch, for the trainer
    # and the fixed-point solver alike ...
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not mechscope.runs_on_cpu()
    assert batch_pieces(64) == [(0, 64)]
    assert set(call_in_pieces(piece_rows, None, rows, jnp.float32)) == {2048}
    # ... unless this thread's default device is a CPU, where pieces pay.
    with jax.default_device(cpu):
        assert mechscope.runs_on_cpu()
        assert batch_pieces(64) == [(0, 32), (32, 64)]
        assert set(call_in_pieces(piece_rows, None, rows, jnp.float32)) == {512}
