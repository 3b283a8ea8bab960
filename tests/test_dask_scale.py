"""Scaling out on dask: grouped items, the same results as in-process, killed workers, the
persistent compilation cache, pairwise batches on the cluster, and the SLURM job script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mechscope
from mechscope.comparison import AbstractComparison
from mechscope.errors import ConfigError
from mechscope.plugins import PluginManager
from mechscope.store import RunStore, RunStoreComparisons
from mechscope.suite import Suite, balance_groups

from .toys import ToyProbe, ToyProbeConfig

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "task": "toy_task",
    "model": {"name": "toy_model", "n_units": 3},
    "trainer": {"name": "toy_trainer", "steps": 3},
    "probes": ["toy_probe"],
}
#: Same run ids; metrics equal to float32 round-off (the same programs, another process).
METRIC_RTOL = 1e-5


def _log(variable: str, text: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "a") as handle:
            handle.write(f"{text}\n")


class DyingProbeConfig(mechscope.Config):
    """toy_probe that SIGKILLs its process on its second call, once (a marker file says)."""


_DYING_CALLS: list[int] = []


class DyingProbe(ToyProbe):
    config: DyingProbeConfig = eqx.field(static=True)  # pyright: ignore[reportIncompatibleVariableOverride]

    def run(self, trained, task, *, key, dependencies=None):
        _DYING_CALLS.append(1)
        marker = os.environ.get("MECHSCOPE_TEST_DIE_MARKER")
        if marker and len(_DYING_CALLS) == 2 and not os.path.exists(marker):
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        probe = ToyProbe(ToyProbeConfig())
        return probe.run(trained, task, key=key, dependencies=dependencies)


class PidOutputsConfig(mechscope.Config):
    """Distance between condition outputs; logs the pid that represents and that compares."""


class PidOutputsComparison(AbstractComparison):
    config: PidOutputsConfig = eqx.field(static=True)
    metrics = ("euclidean",)
    pair_batch = 1  # 4 pairs per batch: a suite of 4 runs has two batches

    def represent(self, trained, task, *, key, conditions, probes):
        _log("MECHSCOPE_TEST_WHERE_LOG", f"represent {os.getpid()}")
        return {"outputs": np.asarray(conditions.outputs)}

    def distance(self, a, b):
        return {"euclidean": jnp.sqrt(jnp.sum((a["outputs"] - b["outputs"]) ** 2))}

    def distances(self, representations, pairs):
        _log("MECHSCOPE_TEST_WHERE_LOG", f"pairs {os.getpid()} {len(pairs)}")
        return super().distances(representations, pairs)


class DaskTestPlugin:
    @mechscope.hookimpl
    def mechscope_register_probes(self, register):
        register("dying_probe", DyingProbeConfig, DyingProbe)

    @mechscope.hookimpl
    def mechscope_register_comparisons(self, register):
        register("pid_outputs", PidOutputsConfig, PidOutputsComparison)


#: What the fake entry point names (``tests.test_dask_scale:plugin``).
plugin = DaskTestPlugin()


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The toys and this module's plugin installed as entry points, here and in workers."""
    site = tmp_path / "site"
    info = site / "mechscope_dask_toys-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mechscope-dask-toys\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[mechscope]\ntoys = tests.toys:plugin\ndasktoys = tests.test_dask_scale:plugin\n"
    )
    # Spawned workers inherit sys.path and the environment.
    for folder in (str(site), str(ROOT)):
        monkeypatch.syspath_prepend(folder)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(site)]))
    monkeypatch.setenv("MECHSCOPE_TOY_FIT_LOG", str(tmp_path / "fits.log"))
    monkeypatch.setenv("MECHSCOPE_TEST_WHERE_LOG", str(tmp_path / "where.log"))
    manager = PluginManager()
    manager.load_entry_points(disabled=[])
    return manager


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_balance_groups_splits_largest_first_until_every_worker_has_two():
    groups = [["a0", "a1"], ["b0", "b1"], ["c0", "c1"]]
    # One worker (two items wanted): the variants stay whole.
    assert balance_groups(groups, 2) == groups
    # Two workers want four items: the first variant is split, largest items first.
    assert balance_groups(groups, 4) == [["b0", "b1"], ["c0", "c1"], ["a0"], ["a1"]]
    # Never below one run per item, whatever is asked; nothing is lost or repeated.
    split = balance_groups(groups, 100)
    runs = sorted(run for group in groups for run in group)
    assert sorted(map(tuple, split)) == [(r,) for r in runs]
    assert balance_groups([["a0", "a1", "a2"]], 2) == [["a0", "a1"], ["a2"]]


@pytest.fixture
def clusters(monkeypatch):
    """Every LocalCluster the executor starts, counted (``started``, ``closed``)."""
    distributed = pytest.importorskip("dask.distributed")
    counts = {"started": 0, "closed": 0}

    class CountedCluster(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            counts["started"] += 1
            super().__init__(*args, **kwargs)

        def close(self, *args, **kwargs):
            counts["closed"] += 1
            return super().close(*args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", CountedCluster)
    return counts


def test_dask_items_are_variants_and_results_match_in_process(installed, tmp_path, clusters):
    suite = Suite(
        base=BASE,
        vary={"model.tau": [0.1, 0.2]},
        seeds=2,
        comparisons=["pid_outputs"],
        plugins=installed,
    )
    dask = suite.build_executor({"name": "dask", "n_workers": 1})
    groups = suite._group(suite.runs, dask)
    assert [[p.variant.label for p in g] for g in groups] == [
        ["model.tau=0.1"] * 2,
        ["model.tau=0.2"] * 2,
    ]
    local = suite.run(store=tmp_path / "local", progress=False)
    pairs_local = suite.pairs(tmp_path / "local")
    where = tmp_path / "where.log"
    here = _lines(where)
    assert all(line.split()[1] == str(os.getpid()) for line in here)
    where.write_text("")
    fits = tmp_path / "fits.log"
    fits.write_text("")
    loads = []
    load = RunStoreComparisons.load_representation

    def counted(self, run_id, key):
        loads.append(run_id)
        return load(self, run_id, key)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunStoreComparisons, "load_representation", counted)
        distributed = suite.run(executor=dask, store=tmp_path / "dask", progress=False)
    # Training and the comparison stage share one cluster, closed when the suite ends.
    assert clusters == {"started": 1, "closed": 1}
    # The workers stored every representation; this process read each of them once.
    assert sorted(loads) == sorted(p.run_id for p in suite.runs)
    assert list(distributed["run_id"]) == list(local["run_id"])
    assert list(distributed["status"]) == ["completed"] * 4
    metrics = [c for c in local.columns if c.startswith(("toy_probe.", "train."))]
    np.testing.assert_allclose(
        distributed[metrics].to_numpy(float), local[metrics].to_numpy(float), rtol=METRIC_RTOL
    )
    pairs_dask = suite.pairs(tmp_path / "dask")
    assert len(pairs_dask) == 6
    pd.testing.assert_frame_equal(
        pairs_dask.drop(columns="value"), pairs_local.drop(columns="value")
    )
    np.testing.assert_allclose(pairs_dask["value"], pairs_local["value"], rtol=METRIC_RTOL)
    # Trained, represented and compared off this process: representations where the runs
    # were trained (the worker), pairs in two batches of at most four.
    workers = {int(line) for line in _lines(fits)}
    assert workers and os.getpid() not in workers
    logged = [line.split() for line in _lines(where)]
    represented = [int(line[1]) for line in logged if line[0] == "represent"]
    assert len(represented) == 4 and set(represented) <= workers
    batches = [(int(line[1]), int(line[2])) for line in logged if line[0] == "pairs"]
    assert sorted(n for _, n in batches) == [2, 4]
    assert os.getpid() not in {pid for pid, _ in batches}


def _worker_state() -> tuple[bool, str | None, list[int]]:
    import dask.config

    return (
        dask.config.get("distributed.worker.profile.enabled"),
        os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        sorted(os.sched_getaffinity(0)),
    )


def _index(outcome: mechscope.Outcome) -> int:
    return outcome.index


def test_a_session_starts_one_cluster_on_first_use_and_closes_it_on_error(clusters):
    from mechscope_executors import DaskExecutor, DaskExecutorConfig

    from mechscope.testing import contract_item

    executor = DaskExecutor(DaskExecutorConfig(n_workers=1, compute_cores=1))
    with pytest.raises(RuntimeError, match="stage failed"):
        with executor.session() as session:
            assert clusters["started"] == 0, "nothing needed the cluster yet"
            assert session.parallelism == 1
            first = [o.value for o in sorted(session.map(contract_item, [1, 2]), key=_index)]
            second = [o.value for o in session.map(contract_item, [4])]
            assert (first, second) == ([1, 4], [16])
            assert clusters == {"started": 1, "closed": 0}
            # The worker computes like a plain process: no profiler sampling its core, glibc's
            # malloc defaults, pinned to one core from its start.
            assert session.connection is not None
            client = session.connection.client()
            (state,) = client.run(_worker_state).values()
            assert state[:2] == (False, None)
            assert len(state[2]) == 1
            raise RuntimeError("stage failed")
    assert clusters == {"started": 1, "closed": 1}
    # A bare map (no session) starts and closes its own cluster.
    assert [o.value for o in executor.map(contract_item, [5])] == [25]
    assert clusters == {"started": 2, "closed": 2}


def test_a_scheduler_given_by_address_sets_parallelism_and_is_not_closed(installed, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        dashboard_address=None,  # pyright: ignore[reportArgumentType]
    ) as cluster:
        address = cluster.scheduler_address
        suite = Suite(base=BASE, seeds=2, plugins=installed)
        executor = suite.build_executor({"name": "dask", "address": address})
        assert executor.parallelism == 1, "outside a session the scheduler is not asked"
        with executor.session() as session:
            # Two threads: the two seeds become two items, so neither thread idles.
            assert session.parallelism == 2
            assert [len(g) for g in suite._group(suite.runs, session)] == [1, 1]
        table = suite.run(executor=executor, store=tmp_path / "store", progress=False)
        assert list(table["status"]) == ["completed", "completed"]
        # The user's scheduler and worker are still there and still compute.
        with distributed.Client(address, timeout="20s") as client:
            assert sum(client.nthreads().values()) == 2
            assert client.submit(pow, 3, 2).result() == 9


def test_run_configs_never_fails_stored_runs_for_a_comparison_it_cannot_resolve(
    installed, tmp_path
):
    from mechscope.suite import run_configs

    suite = Suite(base=BASE, seeds=2, plugins=installed)
    configs = [p.experiment.config for p in suite.runs]
    store = tmp_path / "store"
    # The worker lacks this comparison (not installed there): the runs are trained and
    # stored all the same, and the comparison stage reports what it cannot compare.
    statuses = run_configs(
        configs, store=str(store), plugins=installed, comparisons=[{"name": "not_installed"}]
    )
    assert [s["status"] for s in statuses] == ["completed", "completed"]
    runs = RunStore(store)
    assert all(runs.is_complete(p.run_id) for p in suite.runs)
    # Negative control: the name really does not resolve.
    with pytest.raises(ConfigError):
        from mechscope.pairwise import resolve_comparisons

        resolve_comparisons(["not_installed"], installed.registry, probes=["toy_probe"])


def test_worker_killed_mid_item_leaves_no_half_run_and_item_is_retried(
    installed, tmp_path, monkeypatch
):
    pytest.importorskip("dask.distributed")
    marker = tmp_path / "died"
    monkeypatch.setenv("MECHSCOPE_TEST_DIE_MARKER", str(marker))
    base = {**BASE, "probes": ["dying_probe"]}
    suite = Suite(base=base, seeds=2, plugins=installed)
    store = tmp_path / "store"
    # One item (both seeds); the worker dies probing the second seed, after the first run
    # of the item was stored.
    table = suite.run(
        executor={"name": "dask", "n_workers": 1, "retries": 0}, store=store, progress=False
    )
    assert marker.exists(), "the worker was never killed: the test tests nothing"
    assert list(table["status"]) == ["completed", "completed"]
    runs = RunStore(store)
    assert runs.run_ids() == sorted(p.run_id for p in suite.runs)
    assert all(runs.is_complete(p.run_id) for p in suite.runs)
    # Nothing half written is left: no temporaries, no locks of the dead worker.
    leftovers = [p.name for p in store.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []
    # The item ran twice, in two processes; the retry loaded the run the dead worker had
    # stored and trained only the other seed: 2 fits, then 1.
    fits = [int(line) for line in _lines(tmp_path / "fits.log")]
    assert len(fits) == 3 and len(set(fits)) == 2
    assert fits[0] == fits[1] != fits[2]


_COUNT_COMPILATIONS = """
import json, sys
import jax
from jax import monitoring
# Every XLA compile-or-load request is timed under one event; a request the persistent
# cache answers also records a hit. What was compiled is the difference.
counts = {"requests": 0, "hits": 0}
def on_event(name, **kwargs):
    if name == "/jax/compilation_cache/cache_hits":
        counts["hits"] += 1
def on_duration(name, duration, **kwargs):
    if name == "/jax/core/compile/backend_compile_duration":
        counts["requests"] += 1
monitoring.register_event_listener(on_event)
monitoring.register_event_duration_secs_listener(on_duration)
from mechscope.suite import run_configs
configs, store, cache = json.loads(sys.argv[1])
statuses = run_configs(configs, store=store, compilation_cache=cache)
counts["compiled"] = counts["requests"] - counts["hits"]
print(json.dumps({**counts, "statuses": [s["status"] for s in statuses]}))
"""


def _worker_process(configs, store, cache) -> dict:
    """run_configs in a fresh process (a restarted worker): its compilations and cache hits."""
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_COMPILATIONS, json.dumps([configs, str(store), cache])],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_persistent_compilation_cache_is_hit_by_a_restarted_worker(installed, tmp_path):
    suite = Suite(base=BASE, seeds=2, plugins=installed)
    configs = [p.experiment.config for p in suite.runs]
    cache = str(tmp_path / "cache")
    first = _worker_process(configs, tmp_path / "a", cache)
    second = _worker_process(configs, tmp_path / "b", cache)
    assert first["statuses"] == second["statuses"] == ["completed", "completed"]
    assert first["compiled"] >= 5 and first["hits"] == 0
    # The second process asks for the same programs, and the cache answers every one.
    assert second["requests"] == first["requests"]
    assert second["hits"] == second["requests"] and second["compiled"] == 0


def test_compilation_cache_setting_resolves_auto_env_and_off(tmp_path, monkeypatch):
    from mechscope.experiment import compilation_cache_directory

    monkeypatch.delenv("MECHSCOPE_COMPILATION_CACHE", raising=False)
    assert compilation_cache_directory("auto", tmp_path) == tmp_path / "compilation-cache"
    assert compilation_cache_directory("auto", None) is None
    assert compilation_cache_directory("off", tmp_path) is None
    assert compilation_cache_directory(None, tmp_path) is None
    assert compilation_cache_directory("/x/cache", tmp_path) == Path("/x/cache")
    monkeypatch.setenv("MECHSCOPE_COMPILATION_CACHE", "/env/cache")
    assert compilation_cache_directory("auto", tmp_path) == Path("/env/cache")
    monkeypatch.setenv("MECHSCOPE_COMPILATION_CACHE", "off")
    assert compilation_cache_directory("auto", tmp_path) is None


SLURM_SUITE = """
name = "slurm_suite"
seeds = 2
executor = { name = "dask", SLURM }

[base]
task = "delayed_reach"
model = { name = "ctrnn", n_units = 16 }
trainer = { name = "bptt", steps = 10 }
probes = ["jpca"]

[vary]
"model.activation" = ["tanh", "relu"]
"""


def test_slurm_job_script_names_environment_store_and_cache(tmp_path, capsys):
    pytest.importorskip("dask_jobqueue")
    from mechscope.cli import main

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    python = venv / "bin" / "python"
    path = tmp_path / "suite.toml"
    slurm = f'slurm = {{ cores = 4, memory = "24GB", queue = "cpu", python = "{python}" }}'
    path.write_text(SLURM_SUITE.replace("SLURM", slurm))
    shared = tmp_path / "shared" / "runs"
    assert main(["cluster-script", str(path), "--out", str(shared)]) == 0
    script = capsys.readouterr().out
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    assert "#SBATCH -p cpu" in lines and "#SBATCH --cpus-per-task=4" in lines
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    # The environment: its activate script, its python runs the workers.
    assert f"source {venv / 'bin' / 'activate'}" in lines
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert worker.startswith(f"{python} -m ")
    # One one-thread worker per core, numerical libraries single-threaded.
    assert "--nthreads 1" in worker and "--nworkers 4" in worker
    assert "export OMP_NUM_THREADS=1" in lines
    assert any(
        line.startswith("export XLA_FLAGS=") and "multi_thread_eigen=false" in line
        for line in lines
    )
    # The store on the shared file system, checked on the node; the cache beside it.
    assert any(line.startswith(f"test -d {shared} ") for line in lines)
    assert f"export MECHSCOPE_COMPILATION_CACHE={shared / 'compilation-cache'}" in lines
    # dask's profiler does not sample the workers' compute cores.
    assert "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" in lines
    # Negative controls: a relative store, and an executor without SLURM jobs.
    executor = Suite.from_toml(path).build_executor()
    with pytest.raises(ConfigError, match="absolute path"):
        executor.job_script("runs")  # pyright: ignore[reportAttributeAccessIssue]
    path.write_text(SLURM_SUITE.replace(", SLURM", ""))
    assert main(["cluster-script", str(path), "--out", str(shared)]) == 2
    assert "no [slurm] table" in capsys.readouterr().err
