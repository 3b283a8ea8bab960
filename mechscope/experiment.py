"""Experiments: one task + model + trainer + probes + seed, run once and cached in a store.

A run's identity is the hash of its fully validated config (every default filled in), its seed
and the mechscope version, so the same experiment written in TOML or Python, with or without
default values spelled out, maps to the same run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import tomllib
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from mechscope.config import (
    PROBES_EXAMPLE,
    ComponentSpec,
    Config,
    canonical_json,
    check_keys,
    validate_list,
    validate_seed,
)
from mechscope.errors import ConfigError, MechscopeError, StoreError
from mechscope.model import AbstractModel
from mechscope.plugins import ComponentEntry, PluginManager, Registry, get_plugin_manager
from mechscope.probe import (
    AbstractProbe,
    ProbeResult,
    accepts,
    accepts_conditions,
    condition_run,
)
from mechscope.progress import HookBridge, ProgressBar
from mechscope.resources import MemoryEstimate, check_memory
from mechscope.store import (
    HOST,
    RunHeader,
    RunLock,
    RunStore,
    StoredRun,
    metric_columns,
    read_run,
    write_run,
)
from mechscope.task import AbstractTask
from mechscope.training import Callback, TrainedRun

DEFAULT_STORE = Path("mechscope-runs")
#: Environment variable naming the persistent compilation cache: a directory, or ``off``.
COMPILATION_CACHE_ENV = "MECHSCOPE_COMPILATION_CACHE"
#: Where the persistent compilation cache lives by default, inside the store's root.
COMPILATION_CACHE_NAME = "compilation-cache"
_TOP_LEVEL_KEYS = ("task", "model", "trainer", "probes", "seed")


@dataclasses.dataclass(frozen=True)
class _Resolved:
    entry: ComponentEntry
    config: Config

    def canonical(self) -> dict[str, Any]:
        return {"name": self.entry.name, **json.loads(self.config.model_dump_json())}


class Experiment:
    """A fully validated experiment, ready to run.

    Components are given as a registered name, a table ``{"name": ..., **params}``, a
    ``{"preset": ...}`` table or a :class:`~mechscope.ComponentSpec`. Validation happens here,
    once, so a typo fails before any training.

    Example:
        >>> experiment = Experiment(
        ...     task="delayed_reach",
        ...     model={"name": "ctrnn", "activation": "relu"},
        ...     trainer={"name": "bptt", "steps": 500},
        ...     probes=["jpca", "fixed_points"],
        ...     seed=1,
        ... )
        >>> result = experiment.run()
    """

    def __init__(
        self,
        *,
        task: Any,
        model: Any,
        trainer: Any = None,
        probes: Sequence[Any] = (),
        seed: int = 0,
        plugins: PluginManager | None = None,
        check_resources: bool = True,
    ) -> None:
        self.plugins = plugins or get_plugin_manager()
        registry = self.plugins.registry
        self.seed = validate_seed(seed)
        probes = validate_list(probes, where="probes", example=PROBES_EXAMPLE)
        self._task = _Resolved(*registry.resolve(ComponentSpec.parse("task", task)))
        self._model = _Resolved(*registry.resolve(ComponentSpec.parse("model", model)))
        if trainer is None:
            trainer = registry.default("trainer")
        self._trainer = _Resolved(*registry.resolve(ComponentSpec.parse("trainer", trainer)))
        self._probes = self._with_requirements(
            [_Resolved(*registry.resolve(ComponentSpec.parse("probe", p))) for p in probes]
        )
        if check_resources:  # False to rebuild a stored run only to read its components
            self.check_memory()

    def check_memory(self, *, n_networks: int = 1, where: str = "run") -> MemoryEstimate:
        """Refuse (ConfigError) a run whose estimated peak memory exceeds what is available.

        Args:
            n_networks: networks trained at once (seeds of one variant trained together).
            where: how to name the run in the message.
        """
        return check_memory(
            task=self._task.config,
            model=self._model.config,
            trainer=self._trainer.config,
            probes={p.entry.name: p.config for p in self._probes},
            n_networks=n_networks,
            where=where,
        )

    def _with_requirements(self, probes: list[_Resolved]) -> list[_Resolved]:
        """Add probes that listed probes require (with defaults) and order dependencies first."""
        registry = self.plugins.registry
        by_name = {p.entry.name: p for p in probes}
        if len(by_name) != len(probes):
            names = [p.entry.name for p in probes]
            duplicate = next(n for n in names if names.count(n) > 1)
            raise ConfigError(f"probe '{duplicate}' is listed twice")
        ordered: list[_Resolved] = []
        visiting: set[str] = set()

        def visit(name: str, needed_by: str | None) -> None:
            if any(p.entry.name == name for p in ordered):
                return
            if name in visiting:
                raise ConfigError(f"probes require each other in a cycle through '{name}'")
            visiting.add(name)
            if name not in by_name:
                try:
                    entry = registry.get("probe", name)
                except MechscopeError as error:
                    raise ConfigError(f"probe '{needed_by}' requires: {error}") from None
                by_name[name] = _Resolved(entry, entry.validate({}))
            resolved = by_name[name]
            # Requirements are a class attribute; building a probe is cheap (config only).
            for requirement in resolved.entry.build(resolved.config).requires:
                visit(requirement, name)
            visiting.discard(name)
            ordered.append(resolved)

        for probe in probes:
            visit(probe.entry.name, None)
        return ordered

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str = "experiment", **kwargs: Any
    ) -> Experiment:
        """Build from a mapping with keys task, model, trainer, probes and seed."""
        check_keys(data, _TOP_LEVEL_KEYS, where=source)
        for required in ("task", "model"):
            if required not in data:
                raise ConfigError(f"{source}: missing [{required}] table")
        return cls(**{k: data[k] for k in _TOP_LEVEL_KEYS if k in data}, **kwargs)

    @classmethod
    def from_toml(cls, path: str | Path, **kwargs: Any) -> Experiment:
        """Read an experiment TOML file (tables [task], [model], [trainer], [[probes]])."""
        return cls.from_dict(read_toml(path), source=str(path), **kwargs)

    @property
    def config(self) -> dict[str, Any]:
        """The fully validated configuration (every default filled in) as JSON types."""
        return {
            "task": self._task.canonical(),
            "model": self._model.canonical(),
            "trainer": self._trainer.canonical(),
            "probes": [p.canonical() for p in self._probes],
            "seed": self.seed,
        }

    @property
    def run_id(self) -> str:
        """Content hash of the config, seed and mechscope version."""
        from mechscope import __version__

        payload = canonical_json({"config": self.config, "mechscope": __version__})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def build_task(self) -> AbstractTask:
        """Instantiate the task."""
        return self._task.entry.build(self._task.config)

    def build_model(self, task: AbstractTask, *, key: jax.Array) -> Any:
        """Instantiate an untrained model sized for `task`."""
        return self._model.entry.build(
            self._model.config, n_inputs=task.n_inputs, n_outputs=task.n_outputs, key=key
        )

    def build_trainer(self) -> Any:
        """Instantiate the trainer."""
        return self._trainer.entry.build(self._trainer.config)

    def build_probes(self) -> dict[str, AbstractProbe]:
        """Instantiate the probes, dependencies first."""
        return {p.entry.name: p.entry.build(p.config) for p in self._probes}

    def keys(self) -> dict[str, jax.Array]:
        """The PRNG keys of each stage, derived from the seed."""
        model_key, train_key, probe_key = jax.random.split(jax.random.key(self.seed), 3)
        return {"model": model_key, "train": train_key, "probe": probe_key}

    @property
    def config_without_seed(self) -> str:
        """The config minus the seed, as canonical JSON: equal for seeds trained together."""
        return canonical_json({k: v for k, v in self.config.items() if k != "seed"})

    def named(self, trained: TrainedRun) -> TrainedRun:
        """`trained` labelled with this experiment's registered model name (for reloading)."""
        return dataclasses.replace(trained, model_name=self._model.entry.name)

    def run(
        self,
        *,
        store: str | Path | None = DEFAULT_STORE,
        force: bool = False,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
    ) -> ExperimentResult:
        """Train and probe, or load the finished run from `store`.

        Args:
            store: directory holding one subdirectory per run; None keeps nothing on disk.
            force: recompute even if a finished run exists.
            progress: show a training progress bar.
            callbacks: extra training callbacks.

        Raises:
            Exception: whatever stopped training (the run is recorded as failed first).
        """
        (outcome,) = run_experiments(
            [self], store=store, force=force, progress=progress, callbacks=callbacks
        )
        if isinstance(outcome, RunFailure):
            raise outcome.error
        return outcome

    def probe(
        self, trained: TrainedRun, task: AbstractTask
    ) -> tuple[dict[str, ProbeResult], dict[str, str]]:
        """Run every probe on a trained network, dependencies first.

        A failing probe is recorded (and the probes that require it skipped) without stopping
        the others; each result fires ``mechscope_probe_result``.

        Returns:
            The results and, for probes that failed or were skipped, why.
        """
        results: dict[str, ProbeResult] = {}
        errors: dict[str, str] = {}
        probe_key = self.keys()["probe"]
        probes = self.build_probes()
        # One noise-free run on the conditions, shared by every probe that takes it.
        shared: dict[str, Any] = {}
        if any(accepts_conditions(probe) for probe in probes.values()):
            try:
                shared["conditions"] = condition_run(trained.model, task)
            except Exception:  # noqa: BLE001 - each probe then runs it and reports the error
                pass
        context = {**shared, "registry": self.plugins.registry}
        for name, probe in probes.items():
            missing = [r for r in probe.requires if r not in results]
            if missing:
                errors[name] = f"skipped: required probe(s) {', '.join(missing)} failed"
                continue
            # A stable per-probe key: adding a probe does not change the others' randomness.
            key = jax.random.fold_in(probe_key, zlib.crc32(name.encode()))
            self.plugins.hook.mechscope_probe_start(run_id=self.run_id, probe=name)
            try:
                results[name] = probe.run(
                    trained,
                    task,
                    key=key,
                    dependencies={r: results[r] for r in probe.requires},
                    **{k: v for k, v in context.items() if accepts(probe, k)},
                )
            except Exception as error:  # noqa: BLE001 - one failing probe must not lose the run
                errors[name] = f"{type(error).__name__}: {error}"
                continue
            self.plugins.hook.mechscope_probe_result(
                run_id=self.run_id, probe=name, metrics=dict(results[name].metrics)
            )
        return results, errors

    def finish(
        self, trained: TrainedRun, *, task: AbstractTask | None = None, store: RunStore | None
    ) -> ExperimentResult:
        """Probe a trained network and save the run (atomically) to `store`."""
        task = task or self.build_task()
        started = time.perf_counter()
        results, errors = self.probe(trained, task)
        result = ExperimentResult(
            run_id=self.run_id,
            config=self.config,
            trained=trained,
            probes=results,
            probe_errors=errors,
            timings={
                "train_s": float(trained.metadata.get("wall_time_s", float("nan"))),
                "probes_s": time.perf_counter() - started,
            },
        )
        if store is not None:
            directory = store.save(
                result.header(), trained, results, registry=self.plugins.registry
            )
            result = dataclasses.replace(result, directory=directory)
        return result


@dataclasses.dataclass(frozen=True)
class RunFailure:
    """A run that could not be trained: which, why, and the error itself."""

    run_id: str
    reason: str
    error: Exception

    @classmethod
    def of(cls, experiment: Experiment, error: Exception) -> RunFailure:
        """The failure of `experiment` with `error`."""
        return cls(experiment.run_id, f"{type(error).__name__}: {error}", error)


def run_experiments(
    experiments: Sequence[Experiment],
    *,
    store: str | Path | RunStore | None = DEFAULT_STORE,
    force: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> list[ExperimentResult | RunFailure]:
    """Run experiments, training the seeds of one configuration together.

    The one code path for every run: a finished run is loaded from `store`; a damaged one
    whose trained network is intact is only re-probed; the rest train, experiments that
    differ only in their seed with the trainer's ``fit_many`` (vmapped where it can). If a
    joint fit fails, that is reported and each of its seeds is retried alone, so one bad seed
    is isolated. Every ``mechscope_run_start`` is paired with exactly one
    ``mechscope_run_end``, whatever happens.

    The store may be shared with other processes: each run is computed under its lock, and a
    run another process is computing is waited for and then loaded, not trained again (see
    :meth:`~mechscope.store.RunStore.lock`; giving up after the store's ``lock_timeout_s``
    makes that run a :class:`RunFailure`).

    Args:
        experiments: the experiments to run.
        store: the run store (a path or a :class:`~mechscope.store.RunStore`); None keeps
            nothing on disk.
        force: recompute finished runs.
        progress: show a training progress bar.
        callbacks: extra training callbacks (attached to every fit).

    Returns:
        For each experiment, in order, its result or a :class:`RunFailure`.
    """
    if store is not None and not isinstance(store, RunStore):
        store = RunStore(store)
    outcomes: dict[int, ExperimentResult | RunFailure] = {}
    groups: dict[str, list[int]] = {}
    for index, experiment in enumerate(experiments):
        groups.setdefault(experiment.config_without_seed, []).append(index)
    for indices in groups.values():
        group = [experiments[i] for i in indices]
        results = _run_group(group, store, force, progress, callbacks)
        outcomes.update(zip(indices, results, strict=True))
    return [outcomes[i] for i in range(len(experiments))]


def _run_group(
    group: list[Experiment],
    store: RunStore | None,
    force: bool,
    progress: bool,
    callbacks: Sequence[Callback],
) -> list[ExperimentResult | RunFailure]:
    """Run experiments that differ only in their seed (see :func:`run_experiments`).

    With a store, every run is computed under its lock, so two processes never train the same
    run: this process takes the locks it can (without waiting, in sorted order) and trains
    those runs together; then it waits for each run another process holds (in sorted order,
    so two processes never wait for each other) and loads it, training it only if its holder
    gave up without storing it.
    """
    done: dict[str, ExperimentResult | RunFailure] = {}
    if store is None:
        done.update(_compute(group, store, {}, progress, callbacks))
        return [done[e.run_id] for e in group]
    registry = group[0].plugins.registry
    held: dict[str, RunLock] = {}
    try:
        todo = []
        for experiment in group:
            # A first look without the lock: a complete run never changes (its id is its
            # content), so it can be reused at once. Damage is reported under the lock.
            stored = None
            if not force:
                stored = store.load(experiment.run_id, registry=registry, report_damage=False)
            if stored is not None:
                done[experiment.run_id] = ExperimentResult.from_stored(stored)
            else:
                todo.append(experiment)
        ordered = sorted(todo, key=lambda e: e.run_id)
        # What another process stores from the moment its lock is found is reused, even with
        # `force`: the user asked to recompute old results, not to repeat a run just finished.
        waiting_since = time.time()
        elsewhere = []
        for experiment in ordered:
            lock = store.try_lock(experiment.run_id)
            if lock is None:
                elsewhere.append(experiment)
            else:
                held[experiment.run_id] = lock
        mine = [e for e in ordered if e.run_id in held]
        # Another process may have stored a run between the first look and the lock.
        reuse_after = math.inf if force else None
        done.update(_compute_locked(mine, store, reuse_after, progress, callbacks))
        for experiment in mine:
            held.pop(experiment.run_id).release()
        waited = []
        for experiment in elsewhere:
            try:
                held[experiment.run_id] = store.lock(experiment.run_id)
            except StoreError as error:  # gave up waiting: this run fails, the others go on
                done[experiment.run_id] = RunFailure.of(experiment, error)
                continue
            waited.append(experiment)
        # What another process stored while this one waited is reused, even with `force`.
        reuse_after = waiting_since if force else None
        done.update(_compute_locked(waited, store, reuse_after, progress, callbacks))
    finally:
        for lock in held.values():
            lock.release()
    return [done[e.run_id] for e in group]


def _compute_locked(
    group: list[Experiment],
    store: RunStore,
    reuse_after: float | None,
    progress: bool,
    callbacks: Sequence[Callback],
) -> dict[str, ExperimentResult | RunFailure]:
    """Load, re-probe or train runs whose locks this process holds.

    `reuse_after` None reuses any stored run; a time (``time.time()``) only runs stored since
    then (``math.inf``: none, as ``force`` asks).
    """
    done: dict[str, ExperimentResult | RunFailure] = {}
    salvaged: dict[str, TrainedRun] = {}
    if not group:
        return done
    registry = group[0].plugins.registry
    for experiment in group:
        if reuse_after is not None:
            stored_at = store.stored_at(experiment.run_id)
            if stored_at is None or stored_at < reuse_after:
                continue
        stored = store.load(experiment.run_id, registry=registry)
        if stored is not None:
            done[experiment.run_id] = ExperimentResult.from_stored(stored)
            continue
        # A damaged run whose trained network is intact keeps it: only the probes rerun.
        trained = store.salvage_trained(experiment.run_id, registry=registry)
        if trained is not None:
            salvaged[experiment.run_id] = trained
    todo = [e for e in group if e.run_id not in done]
    done.update(_compute(todo, store, salvaged, progress, callbacks))
    return done


def _compute(
    todo: list[Experiment],
    store: RunStore | None,
    salvaged: Mapping[str, TrainedRun],
    progress: bool,
    callbacks: Sequence[Callback],
) -> dict[str, ExperimentResult | RunFailure]:
    """Train (unless `salvaged` has the network), probe and store runs of one configuration.

    Every ``mechscope_run_start`` fired here is paired with one ``mechscope_run_end``.
    """
    done: dict[str, ExperimentResult | RunFailure] = {}
    if not todo:
        return done
    first = todo[0]
    hook = first.plugins.hook
    trained: dict[str, TrainedRun | RunFailure] = dict(salvaged)
    task = first.build_task()
    started: list[Experiment] = []
    try:
        for experiment in todo:
            hook.mechscope_run_start(run_id=experiment.run_id, config=experiment.config)
            started.append(experiment)
        fresh = [e for e in todo if e.run_id not in trained]
        trained.update(_fit(fresh, task, store, progress, callbacks))
        for experiment in todo:
            outcome = trained[experiment.run_id]
            if isinstance(outcome, RunFailure):
                done[experiment.run_id] = outcome
                started.remove(experiment)
                hook.mechscope_run_end(
                    run_id=experiment.run_id,
                    config=experiment.config,
                    status="failed",
                    reason=outcome.reason,
                )
            else:
                try:
                    result = experiment.finish(outcome, task=task, store=store)
                except Exception as error:  # noqa: BLE001 - e.g. a full disk: the other seeds go on
                    failure = RunFailure.of(experiment, error)
                    done[experiment.run_id] = failure
                    started.remove(experiment)
                    hook.mechscope_run_end(
                        run_id=experiment.run_id,
                        config=experiment.config,
                        status="failed",
                        reason=failure.reason,
                    )
                    continue
                done[experiment.run_id] = result
                started.remove(experiment)
                hook.mechscope_run_end(
                    run_id=experiment.run_id,
                    config=experiment.config,
                    status=result.status,
                    reason=result.trained.reason,
                )
    except BaseException as error:
        # Interrupted, or the store refused a write: close every run that was opened.
        reason = (
            "interrupted"
            if isinstance(error, KeyboardInterrupt)
            else f"{type(error).__name__}: {error}"
        )
        for experiment in started:
            hook.mechscope_run_end(
                run_id=experiment.run_id, config=experiment.config, status="failed", reason=reason
            )
        raise
    return done


def _fit(
    fresh: list[Experiment],
    task: AbstractTask,
    store: RunStore | None,
    progress: bool,
    callbacks: Sequence[Callback],
) -> dict[str, TrainedRun | RunFailure]:
    """Train `fresh` (seeds of one configuration): together if there are several, then alone."""
    fitted: dict[str, TrainedRun | RunFailure] = {}
    models: dict[str, AbstractModel] = {}
    for experiment in fresh:
        try:
            models[experiment.run_id] = experiment.build_model(task, key=experiment.keys()["model"])
        except Exception as error:  # noqa: BLE001 - recorded; the other seeds go on
            fitted[experiment.run_id] = RunFailure.of(experiment, error)
    buildable = [e for e in fresh if e.run_id in models]

    def checkpoint(experiment: Experiment) -> Path | None:
        return None if store is None else store.checkpoint_directory(experiment.run_id)

    if len(buildable) > 1:
        bridge, attached = _callbacks(buildable, callbacks, progress, f"{len(buildable)} seeds")
        try:
            runs = (
                buildable[0]
                .build_trainer()
                .fit_many(
                    [models[e.run_id] for e in buildable],
                    task,
                    keys=[e.keys()["train"] for e in buildable],
                    callbacks=attached,
                    checkpoint_dirs=[checkpoint(e) for e in buildable],
                )
            )
            fitted.update(
                {e.run_id: _stamped(e.named(r)) for e, r in zip(buildable, runs, strict=True)}
            )
            return fitted
        except Exception as error:  # noqa: BLE001 - retried seed by seed below
            reason = f"{type(error).__name__}: {error}"
            bridge.close_unfinished(reason=f"training together failed: {reason}")
            warnings.warn(
                f"training {len(buildable)} seeds together failed ({reason}); "
                "retrying each seed alone",
                stacklevel=4,
            )
    for experiment in buildable:
        bridge, attached = _callbacks([experiment], callbacks, progress, experiment.run_id[:8])
        try:
            run = experiment.build_trainer().fit(
                models[experiment.run_id],
                task,
                key=experiment.keys()["train"],
                callbacks=attached,
                checkpoint_dir=checkpoint(experiment),
            )
        except Exception as error:  # noqa: BLE001 - recorded; the other seeds go on
            bridge.close_unfinished(reason=f"{type(error).__name__}: {error}")
            fitted[experiment.run_id] = RunFailure.of(experiment, error)
            continue
        fitted[experiment.run_id] = _stamped(experiment.named(run))
    return fitted


def compilation_cache_directory(setting: str | None, store: str | Path | None) -> Path | None:
    """Where JAX's persistent compilation cache should live for a run in `store`.

    Args:
        setting: ``"auto"`` (the environment variable ``MECHSCOPE_COMPILATION_CACHE`` if set,
            else ``<store>/compilation-cache``), ``"off"`` or None (no persistent cache), or a
            directory.
        store: the run store (None: no default directory).
    """
    if setting == "auto":
        setting = os.environ.get(COMPILATION_CACHE_ENV) or "auto"
    if setting is None or setting.lower() in ("off", "none", ""):
        return None
    if setting == "auto":
        return None if store is None else Path(store) / COMPILATION_CACHE_NAME
    return Path(setting)


def use_compilation_cache(directory: str | Path | None) -> None:
    """Point JAX's persistent compilation cache at `directory` (None: leave JAX as it is).

    Every compiled program is kept, however small or quick to compile (JAX's defaults skip
    programs that compile in under a second, which is most of a small CPU network's), so a
    restarted worker or a second suite loads them instead of compiling again. The directory
    may be shared by many processes (JAX writes each entry atomically); it must be trusted,
    as loading an entry runs its code.
    """
    if directory is None:
        return
    from jax._src import compilation_cache  # reset_cache has no public home yet

    path = str(Path(directory).resolve())
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if jax.config.jax_compilation_cache_dir == path:  # pyright: ignore[reportAttributeAccessIssue]
        return
    jax.config.update("jax_compilation_cache_dir", path)
    # JAX opens its cache once per process; a new directory needs it reopened.
    compilation_cache.reset_cache()


def training_environment() -> dict[str, str]:
    """Where this process trains: mechscope and JAX versions, JAX backend, device kind, host."""
    from mechscope import __version__

    return {
        "mechscope_version": __version__,
        "jax_version": jax.__version__,
        "platform": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "host": HOST,
    }


def _stamped(run: TrainedRun) -> TrainedRun:
    """`run` with how it was trained recorded in its metadata (the run header reads it).

    A trainer that fits several networks in one vmapped loop says how many in
    ``metadata["parallel_seeds"]`` (bptt does); otherwise each network was trained alone.
    """
    jointly = run.metadata.get("parallel_seeds", 1)
    metadata = {
        **run.metadata,
        "trained_jointly_with": jointly if type(jointly) is int and jointly >= 1 else 1,
        "environment": training_environment(),
    }
    return dataclasses.replace(run, metadata=metadata)


def _callbacks(
    experiments: Sequence[Experiment],
    callbacks: Sequence[Callback],
    progress: bool,
    label: str,
) -> tuple[HookBridge, list[Callback]]:
    """The callbacks of one fit: the hook bridge, the caller's, and a progress bar."""
    bridge = HookBridge(experiments[0].plugins.hook, [e.run_id for e in experiments])
    attached: list[Callback] = [bridge, *callbacks]
    if progress:
        attached.append(ProgressBar(f"run {label}" if len(experiments) == 1 else label))
    return bridge, attached


@dataclasses.dataclass(frozen=True)
class ExperimentResult:
    """A finished run: its config, trained network, probe results and timings.

    Attributes:
        run_id: content hash identifying the run.
        config: the fully validated configuration.
        trained: the trained network and its history.
        probes: probe name → result.
        probe_errors: probe name → why it failed (failed probes do not stop the others).
        timings: seconds spent training and probing.
        directory: where the run is stored, if it is.
        loaded: True when this result was read back from the store rather than computed now
            (by this process or, while it waited, by another one).
    """

    run_id: str
    config: Mapping[str, Any]
    trained: TrainedRun
    probes: Mapping[str, ProbeResult]
    probe_errors: Mapping[str, str] = dataclasses.field(default_factory=dict)
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)
    directory: Path | None = None
    loaded: bool = False

    @property
    def status(self) -> str:
        """The training status (``completed``, ``diverged``, ``stopped``)."""
        return self.trained.status

    def metrics(self) -> dict[str, float]:
        """Every probe metric, keyed ``"probe.metric"``, plus the final training loss and R²."""
        return metric_columns(
            self.trained.history, {name: r.metrics for name, r in self.probes.items()}
        )

    @property
    def trained_jointly_with(self) -> int:
        """How many networks were trained together in the fit that made this one (1: alone)."""
        return int(self.trained.metadata.get("trained_jointly_with", 1))

    @property
    def environment(self) -> dict[str, str]:
        """Where the network was trained (versions, JAX platform, device, host)."""
        return {str(k): str(v) for k, v in self.trained.metadata.get("environment", {}).items()}

    def header(self) -> RunHeader:
        """What the store keeps about the run besides its arrays."""
        return RunHeader(
            run_id=self.run_id,
            config=dict(self.config),
            status=self.trained.status,
            reason=self.trained.reason,
            probe_errors=dict(self.probe_errors),
            timings=dict(self.timings),
            probes=list(self.probes),
            trained_jointly_with=self.trained_jointly_with,
            environment=self.environment,
        )

    def save(self, directory: str | Path, *, registry: Registry) -> None:
        """Write the run atomically (replacing one already there): complete or not at all."""
        write_run(Path(directory), self.header(), self.trained, self.probes, registry=registry)

    @classmethod
    def load(cls, directory: str | Path, *, registry: Registry) -> ExperimentResult:
        """Load a stored run (checksums verified; no retraining).

        Args:
            directory: the run's directory.
            registry: where to find the model (e.g. ``experiment.plugins.registry``).

        Raises:
            StoreError: if the run is incomplete or a file is damaged.
        """
        return cls.from_stored(read_run(Path(directory), registry=registry))

    @classmethod
    def from_stored(cls, stored: StoredRun) -> ExperimentResult:
        """The result a stored run holds."""
        header = stored.header
        return cls(
            run_id=header.run_id,
            config=header.config,
            trained=stored.trained,
            probes=stored.probes,
            probe_errors=header.probe_errors,
            timings={k: math.nan if v is None else v for k, v in header.timings.items()},
            directory=stored.directory,
            loaded=True,
        )


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into a one-line ConfigError."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:  # a directory, unreadable, not text
        raise ConfigError(f"{path}: cannot read it as a TOML file ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
