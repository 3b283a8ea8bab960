"""Experiments: one task + model + trainer + probes + seed, run once and cached in a store.

A run's identity is the hash of its fully validated config (every default filled in), its seed
and the mechscope version, so the same experiment written in TOML or Python, with or without
default values spelled out, maps to the same run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import tomllib
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from mechscope.config import ComponentSpec, Config, canonical_json, check_keys
from mechscope.errors import ConfigError, MechscopeError, StoreError
from mechscope.plugins import ComponentEntry, PluginManager, Registry, get_plugin_manager
from mechscope.probe import (
    AbstractProbe,
    ConditionRun,
    ProbeResult,
    accepts_conditions,
    condition_run,
)
from mechscope.progress import HookBridge, ProgressBar
from mechscope.store import atomic_directory, verify_manifest
from mechscope.task import AbstractTask
from mechscope.training import Callback, TrainedRun

DEFAULT_STORE = Path("mechscope-runs")
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
        trainer: Any = "bptt",
        probes: Sequence[Any] = (),
        seed: int = 0,
        plugins: PluginManager | None = None,
    ) -> None:
        self.plugins = plugins or get_plugin_manager()
        registry = self.plugins.registry
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        if isinstance(probes, str | Mapping):
            probes = [probes]
        self.seed = seed
        self._task = _Resolved(*registry.resolve(ComponentSpec.parse("task", task)))
        self._model = _Resolved(*registry.resolve(ComponentSpec.parse("model", model)))
        self._trainer = _Resolved(*registry.resolve(ComponentSpec.parse("trainer", trainer)))
        self._probes = self._with_requirements(
            [_Resolved(*registry.resolve(ComponentSpec.parse("probe", p))) for p in probes]
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
        """
        directory = Path(store) / self.run_id if store is not None else None
        if directory is not None and not force:
            cached = _load_if_complete(directory, self.plugins.registry)
            if cached is not None:
                return cached
            # A damaged run whose trained network is intact keeps it: only the probes rerun.
            salvaged = salvage_trained(directory, self.plugins.registry)
            if salvaged is not None:
                self.plugins.hook.mechscope_run_start(run_id=self.run_id, config=self.config)
                return self.finish(salvaged, store=store)
        keys = self.keys()
        task = self.build_task()
        model = self.build_model(task, key=keys["model"])
        trained = self.train(
            task,
            model,
            key=keys["train"],
            progress=progress,
            callbacks=callbacks,
            checkpoint_dir=None if store is None else Path(store) / ".checkpoints" / self.run_id,
        )
        return self.finish(trained, task=task, store=store, force=force)

    def train(
        self,
        task: AbstractTask,
        model: Any,
        *,
        key: jax.Array,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: Path | None = None,
    ) -> TrainedRun:
        """Fit the model, firing lifecycle hooks and showing progress."""
        hook = self.plugins.hook
        hook.mechscope_run_start(run_id=self.run_id, config=self.config)
        attached = [HookBridge(hook, self.run_id), *callbacks]
        if progress:
            attached.append(ProgressBar(f"run {self.run_id[:8]}"))
        try:
            trained = self.build_trainer().fit(
                model, task, key=key, callbacks=attached, checkpoint_dir=checkpoint_dir
            )
        except BaseException as error:
            hook.mechscope_run_end(
                run_id=self.run_id,
                config=self.config,
                status="failed",
                reason=f"{type(error).__name__}: {error}",
            )
            raise
        return dataclasses.replace(trained, model_name=self._model.entry.name)

    def finish(
        self,
        trained: TrainedRun,
        *,
        task: AbstractTask | None = None,
        store: str | Path | None = DEFAULT_STORE,
        force: bool = False,
    ) -> ExperimentResult:
        """Run the probes on a trained network and save everything (atomically) to `store`."""
        task = task or self.build_task()
        started = time.perf_counter()
        results: dict[str, ProbeResult] = {}
        errors: dict[str, str] = {}
        probe_key = self.keys()["probe"]
        probes = self.build_probes()
        # One noise-free run on the conditions, shared by every probe that takes it.
        shared: dict[str, ConditionRun] = {}
        if any(accepts_conditions(probe) for probe in probes.values()):
            try:
                shared["conditions"] = condition_run(trained.model, task)
            except Exception:  # noqa: BLE001 - each probe then runs it and reports the error
                pass
        for name, probe in probes.items():
            missing = [r for r in probe.requires if r not in results]
            if missing:
                errors[name] = f"skipped: required probe(s) {', '.join(missing)} failed"
                continue
            # A stable per-probe key: adding a probe does not change the others' randomness.
            key = jax.random.fold_in(probe_key, zlib.crc32(name.encode()))
            try:
                results[name] = probe.run(
                    trained,
                    task,
                    key=key,
                    dependencies={r: results[r] for r in probe.requires},
                    **(shared if accepts_conditions(probe) else {}),
                )
            except Exception as error:  # noqa: BLE001 - one failing probe must not lose the run
                errors[name] = f"{type(error).__name__}: {error}"
                continue
            self.plugins.hook.mechscope_probe_result(
                run_id=self.run_id, probe=name, metrics=dict(results[name].metrics)
            )
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
            directory = Path(store) / self.run_id
            result.save(directory, overwrite=True, registry=self.plugins.registry)
            shutil.rmtree(Path(store) / ".checkpoints" / self.run_id, ignore_errors=True)
            result = dataclasses.replace(result, directory=directory)
        self.plugins.hook.mechscope_run_end(
            run_id=self.run_id, config=self.config, status=trained.status, reason=trained.reason
        )
        return result


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
    """

    run_id: str
    config: Mapping[str, Any]
    trained: TrainedRun
    probes: Mapping[str, ProbeResult]
    probe_errors: Mapping[str, str] = dataclasses.field(default_factory=dict)
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)
    directory: Path | None = None

    @property
    def status(self) -> str:
        """The training status (``completed``, ``diverged``, ``stopped``)."""
        return self.trained.status

    def metrics(self) -> dict[str, float]:
        """Every probe metric, keyed ``"probe.metric"``, plus the final training loss and R²."""
        flat: dict[str, float] = {}
        for key in ("loss", "r2"):
            values = self.trained.history.get(key)
            if values is not None and len(values):
                flat[f"train.{key}"] = float(values[-1])
        for probe, result in self.probes.items():
            for name, value in result.metrics.items():
                flat[f"{probe}.{name}"] = value
        return flat

    def save(
        self, directory: str | Path, *, overwrite: bool = False, registry: Registry | None = None
    ) -> None:
        """Write the run atomically: it appears complete or not at all."""
        with atomic_directory(Path(directory), overwrite=overwrite) as temporary:
            header = {
                "run_id": self.run_id,
                "config": self.config,
                "status": self.trained.status,
                "reason": self.trained.reason,
                "probe_errors": dict(self.probe_errors),
                "timings": dict(self.timings),
                "probes": list(self.probes),
            }
            (temporary / "experiment.json").write_text(json.dumps(header, indent=1))
            self.trained.save(temporary / "trained", registry=registry)
            for name, result in self.probes.items():
                result.save(temporary / "probes" / name)

    @classmethod
    def load(cls, directory: str | Path, *, registry: Registry | None = None) -> ExperimentResult:
        """Load a stored run (checksums verified; no retraining).

        Args:
            directory: the run's directory.
            registry: where to find the model (default: the process-wide registry).

        Raises:
            StoreError: if the run is incomplete or a file is corrupted.
        """
        directory = Path(directory)
        verify_manifest(directory)
        try:
            header = json.loads((directory / "experiment.json").read_text())
        except (OSError, ValueError) as error:
            raise StoreError(f"{directory}: unreadable experiment.json ({error})") from None
        return cls(
            run_id=header["run_id"],
            config=header["config"],
            trained=TrainedRun.load(directory / "trained", registry=registry),
            probes={n: ProbeResult.load(directory / "probes" / n) for n in header["probes"]},
            probe_errors=header.get("probe_errors", {}),
            timings=header.get("timings", {}),
            directory=directory,
        )


def _load_if_complete(directory: Path, registry: Registry) -> ExperimentResult | None:
    """The stored run, or None if absent; a corrupted one is reported and recomputed."""
    if not directory.exists():
        return None
    try:
        return ExperimentResult.load(directory, registry=registry)
    except StoreError as error:
        warnings.warn(f"recomputing run: {error}", stacklevel=3)
        return None


def salvage_trained(directory: Path, registry: Registry | None = None) -> TrainedRun | None:
    """The trained network of a stored run whose other files are damaged, if it is intact.

    A run's probe results are cheap to recompute next to its training, so a run that fails
    verification elsewhere (a truncated probe file, a lost figure) is re-probed from its
    trained network rather than retrained.

    Returns:
        The trained run if every file under ``trained/`` matches the run's manifest, else None.
    """
    directory = Path(directory)
    if not directory.exists():
        return None
    try:
        verify_manifest(directory, under="trained")
        trained = TrainedRun.load(directory / "trained", registry=registry)
    except Exception:  # noqa: BLE001 - anything that stops the reload means: retrain
        return None
    warnings.warn(
        f"{directory}: the trained network is intact; recomputing only the probes", stacklevel=3
    )
    return trained


def is_complete(directory: Path) -> bool:
    """Whether a finished run is stored in `directory` with every checksum intact.

    Cheap (no model is deserialised); a corrupted run is reported and counts as missing.
    """
    if not directory.exists():
        return False
    try:
        verify_manifest(directory)
    except StoreError as error:
        warnings.warn(f"recomputing run: {error}", stacklevel=3)
        return False
    return True


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into a one-line ConfigError."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
