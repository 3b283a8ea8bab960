"""First-party population and single-neuron probes: ``jpca``, ``tuning`` and ``population``.

The analyses are plain functions on :class:`NeuralData` (condition × time × neuron rates), so
the probes (which run them on a model's rates) and users (who run them on recordings loaded
with :func:`load_neural_data`) share one implementation.
"""

from __future__ import annotations

import mechscope
from mechscope_population.data import (
    NeuralData,
    align_to_event,
    condition_average,
    load_neural_data,
    model_neural_data,
)
from mechscope_population.jpca import (
    JPCAConfig,
    JPCAResult,
    fit_skew_symmetric,
    fit_skew_symmetric_iterative,
    jpca_analysis,
)
from mechscope_population.population import (
    PopulationConfig,
    PopulationResult,
    canonical_correlations,
    compare_trajectories,
    match_times,
    null_potent_variance,
    participation_ratio,
    population_analysis,
    procrustes_similarity,
    tangling,
)
from mechscope_population.preprocessing import PCA, pca, soft_normalize_factors
from mechscope_population.probes import JPCAProbe, PopulationProbe, TuningProbe
from mechscope_population.tuning import (
    CosineFit,
    TuningConfig,
    TuningResult,
    fit_cosine_tuning,
    tuning_analysis,
)

__all__ = [
    "PCA",
    "CosineFit",
    "JPCAConfig",
    "JPCAProbe",
    "JPCAResult",
    "NeuralData",
    "PopulationConfig",
    "PopulationProbe",
    "PopulationResult",
    "TuningConfig",
    "TuningProbe",
    "TuningResult",
    "align_to_event",
    "canonical_correlations",
    "compare_trajectories",
    "condition_average",
    "fit_cosine_tuning",
    "fit_skew_symmetric",
    "fit_skew_symmetric_iterative",
    "jpca_analysis",
    "load_neural_data",
    "match_times",
    "model_neural_data",
    "null_potent_variance",
    "participation_ratio",
    "pca",
    "population_analysis",
    "procrustes_similarity",
    "soft_normalize_factors",
    "tangling",
    "tuning_analysis",
]


@mechscope.hookimpl
def mechscope_register_probes(register: mechscope.Register) -> None:
    """Register the ``jpca``, ``tuning`` and ``population`` probes."""
    register("jpca", JPCAConfig, JPCAProbe)
    register("tuning", TuningConfig, TuningProbe)
    register("population", PopulationConfig, PopulationProbe)
