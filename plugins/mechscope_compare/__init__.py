"""Comparisons between networks: DSA, shape metrics and fixed-point topology.

Each comparison is two parts: a per-network ``represent`` (the costly part, computed once per
run and stored beside it) and a pairwise ``distance`` that the core vmaps over pairs. The math
lives in ``_dsa``, ``_shape`` and ``_topology`` as pure functions on arrays; ``_systems`` holds
synthetic systems with known mechanisms (point, line and ring attractors, a limit cycle) and a
smooth warp, for the controls every comparison must pass.
"""

import mechscope
from mechscope_compare._comparisons import (
    DSAComparison,
    DSAConfig,
    ShapeComparison,
    ShapeConfig,
    TopologyComparison,
    TopologyConfig,
    condition_trajectories,
)


@mechscope.hookimpl
def mechscope_register_comparisons(register: mechscope.Register) -> None:
    """Register ``dsa``, ``shape`` and ``fixed_point_topology``."""
    register("dsa", DSAConfig, DSAComparison)
    register("shape", ShapeConfig, ShapeComparison)
    register("fixed_point_topology", TopologyConfig, TopologyComparison)


__all__ = [
    "DSAComparison",
    "DSAConfig",
    "ShapeComparison",
    "ShapeConfig",
    "TopologyComparison",
    "TopologyConfig",
    "condition_trajectories",
    "mechscope_register_comparisons",
]
