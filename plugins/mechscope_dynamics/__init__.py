"""First-party dynamics probes: fixed points, robustness, generalisation, delay generalisation.

``fixed_points`` finds zeros of a model's vector field for constant inputs (batched
Levenberg–Marquardt and Newton from many starts, merging, optimistix polish in float64),
classifies their stability, reports slow points separately and asks whether each condition's
end-of-delay state sits on a stable fixed point of its delay input; a compatibility search
follows Golub & Sussillo's FixedPointFinder. ``robustness`` sweeps input noise, recurrent noise
and state kicks at go; ``generalization`` runs a delayed-reach network on target-switch and
target-relocation trials; ``delay_generalization`` runs it at delays outside its training range
and under input noise during the delay only.
"""

from __future__ import annotations

import mechscope
from mechscope_dynamics._common import (
    ConditionRun,
    condition_run,
    endpoint_error,
    pca_basis,
    reach_success,
)
from mechscope_dynamics._delay_generalization import (
    DelayGeneralizationConfig,
    DelayGeneralizationProbe,
    delay_noise_inputs,
    plan_delays,
    trained_delays,
)
from mechscope_dynamics._fixed_points import (
    FixedPointsConfig,
    FixedPointsProbe,
    attractor_summary,
    constant_inputs,
    sample_starts,
)
from mechscope_dynamics._fp_config import (
    DenseLMConfig,
    GolubConfig,
    MatrixFreeLMConfig,
    NewtonConfig,
    SearchConfig,
    SolverConfig,
)
from mechscope_dynamics._fp_golub import GolubSearch
from mechscope_dynamics._fp_lm import AbstractLMSearch, DenseLMSearch, MatrixFreeLMSearch
from mechscope_dynamics._fp_search import AbstractCandidateSearch, AbstractSearch, NewtonSearch
from mechscope_dynamics._generalization import (
    GeneralizationConfig,
    GeneralizationProbe,
    matching_task,
    preparation_index,
    reach_metrics,
)
from mechscope_dynamics._robustness import RobustnessConfig, RobustnessProbe, area_under_curve
from mechscope_dynamics._solver import FixedPoints, find_fixed_points

__all__ = [
    "AbstractCandidateSearch",
    "AbstractLMSearch",
    "AbstractSearch",
    "ConditionRun",
    "DelayGeneralizationConfig",
    "DelayGeneralizationProbe",
    "DenseLMConfig",
    "DenseLMSearch",
    "FixedPoints",
    "FixedPointsConfig",
    "FixedPointsProbe",
    "GeneralizationConfig",
    "GeneralizationProbe",
    "GolubConfig",
    "GolubSearch",
    "MatrixFreeLMConfig",
    "MatrixFreeLMSearch",
    "NewtonConfig",
    "NewtonSearch",
    "RobustnessConfig",
    "RobustnessProbe",
    "SearchConfig",
    "SolverConfig",
    "area_under_curve",
    "attractor_summary",
    "condition_run",
    "constant_inputs",
    "delay_noise_inputs",
    "endpoint_error",
    "find_fixed_points",
    "matching_task",
    "mechscope_register_probes",
    "pca_basis",
    "plan_delays",
    "preparation_index",
    "reach_metrics",
    "reach_success",
    "sample_starts",
    "trained_delays",
]


@mechscope.hookimpl
def mechscope_register_probes(register: mechscope.Register) -> None:
    """Register ``fixed_points``, ``robustness``, ``generalization``, ``delay_generalization``."""
    register("fixed_points", FixedPointsConfig, FixedPointsProbe)
    register("robustness", RobustnessConfig, RobustnessProbe)
    register("generalization", GeneralizationConfig, GeneralizationProbe)
    register("delay_generalization", DelayGeneralizationConfig, DelayGeneralizationProbe)
