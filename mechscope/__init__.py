"""mechscope: train recurrent networks on motor tasks and compare the mechanisms they learn.

The public API: interfaces for tasks, models, trainers, probes, executors and comparisons;
the config base class; the plugin markers; and the experiment runner. Plugins, first-party ones
included, use only what this module exports.
"""

from importlib.metadata import PackageNotFoundError, version

from mechscope.comparison import AbstractComparison, Representation
from mechscope.concurrency import (
    LAPACK_LOCK,
    calls_lapack,
    program_key,
    run_concurrently,
    runs_on_cpu,
    usable_cores,
)
from mechscope.config import COMPONENT_KINDS, ComponentSpec, Config
from mechscope.errors import (
    ConfigError,
    DuplicateComponentError,
    MechscopeError,
    PluginLoadError,
    StoreError,
    UnknownComponentError,
)
from mechscope.executor import AbstractExecutor, Outcome
from mechscope.hookspecs import Register, hookimpl
from mechscope.metrics import masked_r2
from mechscope.model import AbstractModel, Noise, Trajectory, simulate
from mechscope.plugins import (
    ComponentEntry,
    PluginManager,
    Registry,
    get_plugin_manager,
    get_registry,
)
from mechscope.probe import AbstractProbe, ConditionRun, Metric, ProbeResult, condition_run
from mechscope.resources import RunShape
from mechscope.shape import pad_units, shape_distance, shape_represent, whiten
from mechscope.task import AbstractTask, Trials
from mechscope.training import AbstractTrainer, Callback, TrainedRun

try:
    __version__ = version("mechscope")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "COMPONENT_KINDS",
    "LAPACK_LOCK",
    "AbstractComparison",
    "AbstractExecutor",
    "AbstractModel",
    "AbstractProbe",
    "AbstractTask",
    "AbstractTrainer",
    "Callback",
    "ComponentEntry",
    "ComponentSpec",
    "ConditionRun",
    "Config",
    "ConfigError",
    "DuplicateComponentError",
    "MechscopeError",
    "Metric",
    "Noise",
    "Outcome",
    "PluginLoadError",
    "PluginManager",
    "ProbeResult",
    "Register",
    "Registry",
    "Representation",
    "RunShape",
    "StoreError",
    "TrainedRun",
    "Trajectory",
    "Trials",
    "UnknownComponentError",
    "__version__",
    "calls_lapack",
    "condition_run",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "masked_r2",
    "pad_units",
    "program_key",
    "run_concurrently",
    "runs_on_cpu",
    "shape_distance",
    "shape_represent",
    "simulate",
    "usable_cores",
    "whiten",
]
