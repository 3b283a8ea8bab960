"""A store shared by concurrent writers: directory replaces, per-run locks, stale leftovers,
refused checkpoints, two suites on one store, and how a run was trained (its identity)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

import mechscope
from mechscope import store as store_module
from mechscope.errors import StoreError
from mechscope.experiment import Experiment, ExperimentResult, run_experiments
from mechscope.plugins import PluginManager
from mechscope.store import (
    HOST,
    PROCESS_SPACE,
    LockHolder,
    RunStore,
    atomic_directory,
    remove_stale_scratch,
    scratch_path,
    verify_manifest,
)
from mechscope.suite import Suite

from .toys import FIT_CALLS, ToyPlugin

# ---------------------------------------------------------------------------------------------
# Replacing one directory from two processes
# ---------------------------------------------------------------------------------------------


def _replace_many(target: str, writes: int, tag: str, exchange: bool, report: str) -> None:
    """Child process: replace `target` `writes` times; record errors and the busy interval."""
    if not exchange:
        store_module._RENAMEAT2[:] = [None]  # the portable rename-aside path
    errors = []
    started = time.time()
    for index in range(writes):
        try:
            with atomic_directory(Path(target), overwrite=True) as directory:
                (directory / "who.txt").write_text(f"{tag} {index}")
                (directory / "payload.bin").write_bytes(os.urandom(256))
        except Exception as error:  # noqa: BLE001 - reported to the parent
            errors.append(f"{type(error).__name__}: {error}")
    Path(report).write_text(json.dumps({"errors": errors, "span": [started, time.time()]}))
    os._exit(0)  # a forked child leaves the parent's (JAX) state alone


@pytest.mark.parametrize("exchange", [True, False], ids=["swap", "rename-aside"])
def test_two_processes_replacing_one_run_directory_never_collide(tmp_path, exchange):
    if exchange and store_module._renameat2() is None:
        pytest.skip("no renameat2 on this system")
    target = tmp_path / "run"
    # fork: the children need nothing but the store module, already imported.
    context = multiprocessing.get_context("fork")
    reports = [tmp_path / f"report-{tag}.json" for tag in "ab"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX warns about fork in a multithreaded process
        children = [
            context.Process(
                target=_replace_many, args=(str(target), 200, tag, exchange, str(report))
            )
            for tag, report in zip("ab", reports, strict=True)
        ]
        for child in children:
            child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    results = [json.loads(report.read_text()) for report in reports]
    for result in results:
        assert result["errors"] == []
    (first, second) = (result["span"] for result in results)
    assert first[0] < second[1] and second[0] < first[1], "the writers did not overlap"
    verify_manifest(target)
    assert (target / "who.txt").read_text().split()[0] in ("a", "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report-a.json", "report-b.json", "run"]


def test_replacing_without_overwrite_still_refuses(tmp_path):
    with atomic_directory(tmp_path / "run") as directory:
        (directory / "a").write_text("old")
    with pytest.raises(StoreError, match="already exists"), atomic_directory(tmp_path / "run"):
        pass
    assert (tmp_path / "run" / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


# ---------------------------------------------------------------------------------------------
# Per-run locks
# ---------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _plant_lock(
    store: RunStore,
    run_id: str,
    *,
    pid: int,
    host: str,
    age_s: float = 0.0,
    process_space: str | None = None,
):
    """A lock file as a holder writes it; on this host, in this pid space unless told."""
    path = store.lock_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if process_space is None:
        process_space = PROCESS_SPACE if host == HOST else "elsewhere"
    holder = LockHolder(
        pid=pid,
        host=host,
        started=time.time() - age_s,
        token="planted",
        process_space=process_space,
    )
    path.write_text(holder.model_dump_json())
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_a_lock_excludes_others_until_released(tmp_path):
    store = RunStore(tmp_path)
    lock = store.try_lock("run1")
    assert lock is not None
    holder = json.loads(store.lock_path("run1").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == HOST
    assert abs(holder["started"] - time.time()) < 60
    assert store.try_lock("run1") is None, "a live holder's lock was taken"
    other = store.try_lock("run2")
    assert other is not None, "locks of different runs must not exclude each other"
    lock.release()
    assert not store.lock_path("run1").exists()
    again = store.try_lock("run1")
    assert again is not None
    again.release()
    other.release()


def test_release_leaves_a_lock_someone_else_took(tmp_path):
    store = RunStore(tmp_path)
    lock = store.try_lock("run")
    assert lock is not None
    # As if this lock had been judged stale, broken and taken by another process.
    _plant_lock(store, "run", pid=os.getpid(), host="elsewhere")
    lock.release()
    assert json.loads(store.lock_path("run").read_text())["token"] == "planted"


def test_stale_locks_are_broken_and_live_ones_kept(tmp_path):
    store = RunStore(tmp_path, stale_lock_s=300)
    # This host, dead pid: broken at once, however fresh.
    _plant_lock(store, "dead", pid=_dead_pid(), host=HOST)
    with pytest.warns(UserWarning, match="breaking the lock on run dead .* process is gone"):
        lock = store.try_lock("dead")
    assert lock is not None and lock.holder.pid == os.getpid()
    lock.release()
    # This host, live pid (this very process), old lock refreshed now: kept.
    _plant_lock(store, "alive", pid=os.getpid(), host=HOST)
    assert store.try_lock("alive") is None
    # The same host name but another pid space (a container sharing it): its pid says
    # nothing here, so a fresh lock is kept however dead that pid looks.
    _plant_lock(store, "container", pid=_dead_pid(), host=HOST, process_space="other-space")
    assert store.try_lock("container") is None
    # Another host: judged by age since its last refresh.
    _plant_lock(store, "remote-fresh", pid=_dead_pid(), host="elsewhere", age_s=10)
    assert store.try_lock("remote-fresh") is None
    _plant_lock(store, "remote-old", pid=1, host="elsewhere", age_s=1000)
    with pytest.warns(UserWarning, match="not been refreshed for 1000 s"):
        lock = store.try_lock("remote-old")
    assert lock is not None
    lock.release()


def test_a_held_lock_is_kept_fresh_by_its_heartbeat(tmp_path):
    store = RunStore(tmp_path, stale_lock_s=0.4)
    lock = store.try_lock("run")
    assert lock is not None
    time.sleep(1.0)
    age = time.time() - store.lock_path("run").stat().st_mtime
    # Seen from another host the lock is still alive; without the heartbeat it would be 1 s old.
    assert age < 0.4
    lock.release()


def test_waiting_for_a_lock_names_its_holder_and_then_takes_it(tmp_path):
    store = RunStore(tmp_path, poll_s=0.02)
    lock = store.try_lock("run")
    assert lock is not None
    timer = threading.Timer(0.4, lock.release)
    timer.start()
    started = time.monotonic()
    with pytest.warns(UserWarning, match=rf"run run is being computed by pid {os.getpid()} on"):
        waited = store.lock("run")
    assert time.monotonic() - started >= 0.35
    assert waited.holder.token != lock.holder.token
    waited.release()
    timer.join()


def test_waiting_for_a_lock_gives_up_after_the_timeout(tmp_path):
    store = RunStore(tmp_path, poll_s=0.02, lock_timeout_s=0.2)
    lock = store.try_lock("run")
    assert lock is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(StoreError, match=rf"still being computed by pid {os.getpid()} on"):
            store.lock("run")
    lock.release()


def test_lock_settings_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_LOCK_TIMEOUT", "12.5")
    monkeypatch.setenv("MECHSCOPE_STALE_LOCK_AGE", "30")
    store = RunStore(tmp_path)
    assert (store.lock_timeout_s, store.stale_lock_s) == (12.5, 30.0)
    assert RunStore(tmp_path, lock_timeout_s=3).lock_timeout_s == 3
    monkeypatch.setenv("MECHSCOPE_LOCK_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="MECHSCOPE_LOCK_TIMEOUT='soon'"):
        RunStore(tmp_path)


# ---------------------------------------------------------------------------------------------
# Leftovers of killed writers
# ---------------------------------------------------------------------------------------------


def test_opening_a_store_removes_dead_writers_leftovers_only(tmp_path):
    tag = store_module._HOST_TAG
    dead = _dead_pid()
    (tmp_path / "suites").mkdir()
    (tmp_path / ".checkpoints" / "abc").mkdir(parents=True)
    old = time.time() - 7200
    entries = {
        # name → should it be swept?
        f".run1.tmp-{dead}-{tag}-0123abcd": True,  # this host, writer gone
        f".run1.old-{dead}-{tag}-0123abce": True,
        f".run2.tmp-{os.getpid()}-{tag}-0123abcd": False,  # a live writer (this process)
        ".run3.tmp-1-ffffffff-0123abcd": False,  # another host, fresh
        ".run4.tmp-1-ffffffff-0123abcf": True,  # another host, two hours old
        ".run5.tmp-0123456789ab": False,  # old-style name, fresh
        ".run6.tmp-0123456789ac": True,  # old-style name, old
        f"suites/.s.json.tmp-{dead}-{tag}-0123abcd": True,
        f"suites/.t.json.tmp-{os.getpid()}-{tag}-0123abcd": False,
        ".checkpoints/abc/.state-000000010.eqx.tmp-4242": True,  # the trainer's, old
        ".checkpoints/abc/.checkpoint.json.tmp-4242-0123456789ab": True,  # the trainer's, old
        ".checkpoints/abc/.state-000000015.eqx.tmp-4242-0123456789ab": False,  # and fresh
        "run7": False,  # a run
        ".hidden": False,  # not a temporary name
    }
    for name, _ in entries.items():
        path = tmp_path / name
        if "json" in name or "eqx" in name:
            path.write_text("x")
        else:
            path.mkdir()
            (path / "inside").write_text("x")
        if name.startswith((".run4", ".run6")) or "000000010" in name or ".checkpoint." in name:
            os.utime(path, (old, old))
    RunStore(tmp_path)
    for name, swept in entries.items():
        assert (tmp_path / name).exists() != swept, name


def _killed_mid_save(target: str) -> None:
    """Child process: die (SIGKILL) halfway through writing a run directory."""
    import signal

    with atomic_directory(Path(target)) as directory:
        (directory / "half.bin").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_save_leaves_a_temporary_that_opening_the_store_removes(tmp_path):
    context = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX warns about fork in a multithreaded process
        child = context.Process(target=_killed_mid_save, args=(str(tmp_path / "run"),))
        child.start()
    child.join(timeout=60)
    assert child.exitcode == -9
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".run.tmp-") and (leftover / "half.bin").exists()
    store = RunStore(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert not store.is_complete("run")


def test_an_atomic_write_sweeps_its_own_targets_leftovers(tmp_path):
    leftover = tmp_path / f".run.tmp-{_dead_pid()}-{store_module._HOST_TAG}-0123abcd"
    leftover.mkdir()
    unrelated = tmp_path / f".other.tmp-{_dead_pid()}-{store_module._HOST_TAG}-0123abcd"
    unrelated.mkdir()
    with atomic_directory(tmp_path / "run") as directory:
        (directory / "a").write_text("1")
    assert not leftover.exists()
    assert unrelated.exists(), "only the target's own leftovers are swept on write"
    assert remove_stale_scratch(tmp_path) == [unrelated]


def test_scratch_names_carry_the_writer(tmp_path):
    name = scratch_path(tmp_path / "run.json").name
    assert name.startswith(f".run.json.tmp-{os.getpid()}-{store_module._HOST_TAG}-")
    assert store_module._SCRATCH.match(name)
    assert scratch_path(tmp_path / "x") != scratch_path(tmp_path / "x")


# ---------------------------------------------------------------------------------------------
# run_experiments on a shared store
# ---------------------------------------------------------------------------------------------


class LifecycleLog:
    """Records run_start / run_end per run id (hooks fire from several threads here)."""

    def __init__(self):
        self.events = []
        self._guard = threading.Lock()

    @mechscope.hookimpl
    def mechscope_run_start(self, run_id, config):
        with self._guard:
            self.events.append(("start", run_id))

    @mechscope.hookimpl
    def mechscope_run_end(self, run_id, config, status, reason):
        with self._guard:
            self.events.append(("end", run_id))


class SlowStart(mechscope.Callback):
    """Signals that training began, then holds it up so another process can collide with it."""

    def __init__(self, started: threading.Event, delay_s: float):
        self.started = started
        self.delay_s = delay_s

    def on_train_start(self, *, model, task, n_steps):
        self.started.set()
        time.sleep(self.delay_s)


@pytest.fixture
def plugins():
    manager = PluginManager()
    manager.register(ToyPlugin(), name="toys")
    return manager


def toy(plugins, seed, **overrides):
    return Experiment(
        task="toy_task",
        model={"name": "toy_model", "n_units": 3},
        trainer={"name": "toy_trainer", "steps": 3},
        probes=["toy_probe"],
        seed=seed,
        plugins=plugins,
        **overrides,
    )


def _in_thread(function):
    """Start `function` in a thread; the returned callable joins it and returns its result."""
    box = {}

    def target():
        try:
            box["value"] = function()
        except BaseException as error:  # noqa: BLE001 - re-raised in the joining thread
            box["error"] = error

    thread = threading.Thread(target=target)
    thread.start()

    def join():
        thread.join(timeout=60)
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join


@pytest.mark.parametrize(
    ("first_seeds", "second_seeds"), [([0, 1], [0, 1]), ([0, 1], [1, 2])], ids=["same", "partial"]
)
def test_a_run_in_progress_elsewhere_is_waited_for_and_reused(
    plugins, tmp_path, first_seeds, second_seeds
):
    log = LifecycleLog()
    plugins.register(log, name="log")
    training = threading.Event()
    calls = len(FIT_CALLS)
    first = _in_thread(
        lambda: run_experiments(
            [toy(plugins, s) for s in first_seeds],
            store=tmp_path,
            progress=False,
            callbacks=[SlowStart(training, 0.5)],
        )
    )
    assert training.wait(timeout=30)
    with pytest.warns(UserWarning, match=rf"is being computed by pid {os.getpid()}"):
        second = run_experiments(
            [toy(plugins, s) for s in second_seeds],
            store=RunStore(tmp_path, poll_s=0.02),
            progress=False,
        )
    first = first()
    every = {r.run_id: r for r in [*first, *second]}
    assert len(FIT_CALLS) - calls == len(every), "a run was trained twice"
    for result in second:
        assert isinstance(result, ExperimentResult)
        stored = ExperimentResult.load(tmp_path / result.run_id, registry=plugins.registry)
        assert stored.metrics() == pytest.approx(result.metrics())
    shared = {toy(plugins, s).run_id for s in set(first_seeds) & set(second_seeds)}
    for result in first:
        if result.run_id in shared:
            again = next(r for r in second if r.run_id == result.run_id)
            assert again.metrics() == pytest.approx(result.metrics())
    # Hooks fire only where a run was computed, once each, start before end.
    starts = [run for kind, run in log.events if kind == "start"]
    ends = [run for kind, run in log.events if kind == "end"]
    assert sorted(starts) == sorted(ends) == sorted(every)
    assert not list((tmp_path / ".locks").iterdir()), "a lock was left behind"


def test_a_run_whose_holder_gave_up_is_trained_by_the_waiter(plugins, tmp_path):
    experiment = toy(plugins, 0)
    store = RunStore(tmp_path, poll_s=0.02)
    # Another thread of this process holds the lock, then lets go without storing the run.
    held = store.try_lock(experiment.run_id)
    assert held is not None
    timer = threading.Timer(0.3, held.release)
    timer.start()
    calls = len(FIT_CALLS)
    with pytest.warns(UserWarning, match="being computed"):
        (result,) = run_experiments([experiment], store=store, progress=False)
    timer.join()
    assert isinstance(result, ExperimentResult)
    assert len(FIT_CALLS) == calls + 1
    ExperimentResult.load(result.directory, registry=plugins.registry)


def test_a_dead_holders_lock_is_broken_and_the_run_trained(plugins, tmp_path):
    experiment = toy(plugins, 0)
    store = RunStore(tmp_path)
    _plant_lock(store, experiment.run_id, pid=_dead_pid(), host=HOST)
    calls = len(FIT_CALLS)
    with pytest.warns(UserWarning, match="process is gone"):
        (result,) = run_experiments([experiment], store=store, progress=False)
    assert isinstance(result, ExperimentResult) and len(FIT_CALLS) == calls + 1
    assert not store.lock_path(experiment.run_id).exists()


def test_giving_up_on_a_held_run_fails_it_alone(plugins, tmp_path):
    blocked, free = toy(plugins, 0), toy(plugins, 1)
    store = RunStore(tmp_path, poll_s=0.02, lock_timeout_s=0.2)
    held = store.try_lock(blocked.run_id)
    assert held is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes = run_experiments([blocked, free], store=store, progress=False)
    held.release()
    assert isinstance(outcomes[1], ExperimentResult)
    failure = outcomes[0]
    assert not isinstance(failure, ExperimentResult)
    assert "still being computed by" in failure.reason
    assert not (tmp_path / blocked.run_id).exists()


# ---------------------------------------------------------------------------------------------
# A refused checkpoint
# ---------------------------------------------------------------------------------------------


def _bptt_fit(directory, *, steps):
    from mechscope_bptt import BPTTConfig, BPTTTrainer

    from .toys import ToyRNNConfig, ToyTask, ToyTaskConfig, make_toy_rnn

    task = ToyTask(ToyTaskConfig())
    model = make_toy_rnn(ToyRNNConfig(n_units=4), n_inputs=1, n_outputs=1, key=jax.random.key(0))
    trainer = BPTTTrainer(BPTTConfig(steps=steps, batch_size=4, eval_every=5, checkpoint_every=5))
    return trainer.fit(model, task, key=jax.random.key(1), checkpoint_dir=directory)


@pytest.mark.parametrize("damage", ["object arrays", "header"])
def test_a_refused_checkpoint_is_set_aside_and_training_restarts(tmp_path, damage):
    directory = tmp_path / "checkpoint"
    _bptt_fit(directory, steps=10)
    header = json.loads((directory / "checkpoint.json").read_text())
    # Control: an intact checkpoint resumes.
    resumed = _bptt_fit(directory, steps=15)
    assert resumed.metadata["resumed_from_step"] == 10
    header = json.loads((directory / "checkpoint.json").read_text())
    if damage == "object arrays":
        with open(directory / header["payload"], "wb") as handle:
            np.save(handle, np.array([{"code": "would run"}], dtype=object), allow_pickle=True)
    else:
        (directory / "checkpoint.json").write_text('{"format": 1, "step": 15}')
    leftover = directory / f".state-000000020.eqx.tmp-{_dead_pid()}-0123abcd"
    leftover.write_bytes(b"half")
    with pytest.warns(UserWarning, match="moved it to .*refused-.* from the start"):
        restarted = _bptt_fit(directory, steps=15)
    assert restarted.metadata["resumed_from_step"] == 0
    fresh = _bptt_fit(None, steps=15)
    for a, b in zip(jax.tree.leaves(restarted.model), jax.tree.leaves(fresh.model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    (aside,) = directory.glob("refused-*")
    assert (aside / "checkpoint.json").exists()
    assert not leftover.exists()
    # The new checkpoint is whole: the next fit resumes from it.
    assert _bptt_fit(directory, steps=20).metadata["resumed_from_step"] == 15


# ---------------------------------------------------------------------------------------------
# Identity: how a run was trained is part of what is stored
# ---------------------------------------------------------------------------------------------

#: The documented agreement of a run trained vmapped beside other seeds with the same run
#: trained alone (docs/guide/suites.md, "Shared stores"): float32 rounding, not bitwise.
JOINT_RTOL, JOINT_ATOL = 1e-5, 1e-6


def test_a_run_trained_jointly_agrees_with_it_alone_and_says_how_it_was_trained(tmp_path):
    import mechscope_bptt

    manager = PluginManager()
    manager.register(ToyPlugin(), name="toys")
    manager.register(mechscope_bptt, name="bptt")

    def experiment(seed):
        return Experiment(
            task="toy_task",
            model={"name": "toy_model", "n_units": 4},
            trainer={"name": "bptt", "steps": 6, "batch_size": 4, "eval_every": 3},
            probes=["toy_probe"],
            seed=seed,
            plugins=manager,
        )

    (alone,) = run_experiments([experiment(0)], store=tmp_path / "alone", progress=False)
    jointly, other = run_experiments(
        [experiment(0), experiment(1)], store=tmp_path / "jointly", progress=False
    )
    assert isinstance(alone, ExperimentResult) and isinstance(jointly, ExperimentResult)
    assert isinstance(other, ExperimentResult)
    assert alone.run_id == jointly.run_id
    headers = {
        name: json.loads((tmp_path / name / alone.run_id / "experiment.json").read_text())
        for name in ("alone", "jointly")
    }
    assert headers["alone"]["trained_jointly_with"] == 1
    assert headers["jointly"]["trained_jointly_with"] == 2
    environment = headers["jointly"]["environment"]
    assert environment == {
        "mechscope_version": mechscope.__version__,
        "jax_version": jax.__version__,
        "platform": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "host": HOST,
    }
    # Reloading keeps what was recorded (the header is rebuilt from the stored run).
    reloaded = ExperimentResult.load(tmp_path / "jointly" / alone.run_id, registry=manager.registry)
    assert reloaded.header().trained_jointly_with == 2
    assert reloaded.header().environment == environment
    moved = False
    for a, b in zip(
        jax.tree.leaves(alone.trained.model), jax.tree.leaves(jointly.trained.model), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=JOINT_RTOL, atol=JOINT_ATOL)
    for a, b in zip(
        jax.tree.leaves(alone.trained.model), jax.tree.leaves(other.trained.model), strict=True
    ):
        moved |= not np.allclose(np.asarray(a), np.asarray(b), rtol=JOINT_RTOL, atol=JOINT_ATOL)
    assert moved, "control: another seed must not agree within the tolerance"
    assert alone.metrics() == pytest.approx(jointly.metrics(), rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Two suites on one store at once (separate processes, as two `mechscope run` or dask workers)
# ---------------------------------------------------------------------------------------------

SHARED_SUITE = """
name = "{name}"
seeds = {seeds}

[base]
task = "toy_task"
probes = ["toy_probe"]

[base.model]
name = "toy_model"
n_units = 3

[base.trainer]
name = "toy_trainer"
steps = 20

[vary]
"model.tau" = [0.1, 0.2]
"""


def run_suites_at_once(tmp_path: Path, suites: dict[str, str]) -> dict[str, Any]:
    """Start one `mechscope run` per suite file on one store at once; verify the store after.

    Returns what a caller asserts on: every problem found (empty when the store is
    consistent), the number of fits and of distinct runs, and each process's stderr.
    """
    from .test_suite import toy_environment

    store = tmp_path / "store"
    environment = toy_environment(tmp_path)
    environment["MECHSCOPE_STALE_LOCK_AGE"] = "60"
    paths = []
    for name, text in suites.items():
        path = tmp_path / f"{name}-{len(paths)}.toml"
        path.write_text(text)
        paths.append(path)
    command = [sys.executable, "-m", "mechscope.cli", "run"]
    options = ["--out", str(store), "--quiet", "--executor", "local"]
    processes = [
        subprocess.Popen(
            [*command, str(path), *options],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in paths
    ]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    problems = [
        f"{path.name} exited {process.returncode}: {error[-2000:]}"
        for path, process, error in zip(paths, processes, errors, strict=True)
        if process.returncode != 0
    ]
    manager = PluginManager()
    manager.register(ToyPlugin(), name="toys")
    manager.load_entry_points(disabled=["toys"])
    runs = RunStore(store)
    planned: set[str] = set()
    for path in paths:
        suite = Suite.from_toml(path, plugins=manager)
        planned |= {run.run_id for run in suite.runs}
        table = suite.table(store)
        if list(table["status"]) != ["completed"] * len(suite.runs):
            problems.append(f"{path.name}: statuses {list(table['status'])}")
        records = {record.name: record for record in runs.suite_records()}
        record = records.get(suite.name)
        if record is None or [r.run_id for r in record.runs] != [r.run_id for r in suite.runs]:
            problems.append(f"{path.name}: its suite record does not list its runs")
    for run_id in sorted(planned):
        try:
            result = ExperimentResult.load(store / run_id, registry=manager.registry)
        except StoreError as error:
            problems.append(f"run {run_id}: {error}")
            continue
        if result.status != "completed":
            problems.append(f"run {run_id}: status {result.status}")
    leftovers = [p.name for p in store.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    if leftovers:
        problems.append(f"leftover temporaries {leftovers}")
    if list((store / ".locks").glob("*")):
        problems.append("a lock was left behind")
    fits = len(Path(environment["MECHSCOPE_TOY_FIT_LOG"]).read_text().split())
    if fits != len(planned):
        problems.append(f"{fits} fits for {len(planned)} runs: a run was trained twice")
    return {"problems": problems, "fits": fits, "runs": len(planned), "stderr": errors}


SAME = {name: SHARED_SUITE.format(name="one", seeds="[0, 1]") for name in ("one", "again")}
PARTLY = {
    "one": SHARED_SUITE.format(name="one", seeds="[0, 1]"),
    "two": SHARED_SUITE.format(name="two", seeds="[1, 2]"),
}


def test_two_suites_that_overlap_partly_on_one_store_at_once(tmp_path):
    outcome = run_suites_at_once(tmp_path, PARTLY)
    assert outcome["problems"] == []
    assert outcome["runs"] == outcome["fits"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("suites", [SAME, PARTLY], ids=["same suite", "partly"])
def test_two_suites_on_one_store_at_once_repeatedly(tmp_path, suites):
    trials = 3
    problems = [run_suites_at_once(tmp_path / str(t), suites)["problems"] for t in range(trials)]
    assert problems == [[]] * trials
