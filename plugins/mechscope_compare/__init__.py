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
    analysed_window,
)
from mechscope_compare._dsa import dsa_align, dsa_distance, dsa_represent
from mechscope_compare._shape import shape_distance, shape_represent
from mechscope_compare._systems import (
    LimitCycle,
    LineAttractor,
    PointAttractor,
    RingAttractor,
    SyntheticConfig,
    condition_trajectories,
    make_system,
    random_orthogonal,
    warp,
)
from mechscope_compare._topology import topology_distance, topology_represent


@mechscope.hookimpl
def mechscope_register_comparisons(register: mechscope.Register) -> None:
    """Register ``dsa``, ``shape`` and ``fixed_point_topology``."""
    register("dsa", DSAConfig, DSAComparison)
    register("shape", ShapeConfig, ShapeComparison)
    register("fixed_point_topology", TopologyConfig, TopologyComparison)


__all__ = [
    "DSAComparison",
    "DSAConfig",
    "LimitCycle",
    "LineAttractor",
    "PointAttractor",
    "RingAttractor",
    "ShapeComparison",
    "ShapeConfig",
    "SyntheticConfig",
    "TopologyComparison",
    "TopologyConfig",
    "analysed_window",
    "condition_trajectories",
    "dsa_align",
    "dsa_distance",
    "dsa_represent",
    "make_system",
    "mechscope_register_comparisons",
    "random_orthogonal",
    "shape_distance",
    "shape_represent",
    "topology_distance",
    "topology_represent",
    "warp",
]
