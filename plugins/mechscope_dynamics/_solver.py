"""Fixed and slow points of a model's vector field: the solver's entry point.

:func:`find_fixed_points` states the problem and hands it to a search (an
:class:`~mechscope_dynamics._fp_search.AbstractSearch`), under the shared settings of a
:class:`~mechscope_dynamics._fp_config.SolverConfig`. The solver is split by concept:

* :mod:`~mechscope_dynamics._fp_search`: the search interface, the fast pipeline (relax,
  merge, approach, Newton with merging, float64 polish, classification) and the Newton-only
  search;
* :mod:`~mechscope_dynamics._fp_lm`: the Levenberg–Marquardt searches (one LM loop; matrix-
  free CG or dense Cholesky steps, chosen by the lineax solver);
* :mod:`~mechscope_dynamics._fp_golub`: FixedPointFinder compatibility;
* :mod:`~mechscope_dynamics._fp_kernels`: the JAX iterations;
* :mod:`~mechscope_dynamics._fp_batching` and :mod:`~mechscope_dynamics._fp_clustering`:
  host-side padding and merging;
* :mod:`~mechscope_dynamics._fp_config`: the pydantic configs (shared settings, searches).
"""

from __future__ import annotations

import jax
import numpy as np
from jaxtyping import ArrayLike, Float

import mechscope
from mechscope_dynamics._fp_config import SolverConfig
from mechscope_dynamics._fp_lm import MatrixFreeLMSearch
from mechscope_dynamics._fp_search import AbstractSearch
from mechscope_dynamics._fp_types import FixedPoints, Problem

__all__ = ["FixedPoints", "find_fixed_points"]

# Both are immutable, so one shared instance is a safe default.
DEFAULT_SEARCH = MatrixFreeLMSearch()
DEFAULT_SETTINGS = SolverConfig()


def find_fixed_points(
    model: mechscope.AbstractModel,
    inputs: Float[ArrayLike, "k n_inputs"],
    starts: Float[ArrayLike, "s n_units"],
    *,
    scale: float,
    speed_scale: float,
    center: Float[ArrayLike, " n_units"] | None = None,
    flow_starts: Float[ArrayLike, "p n_units"] | None = None,
    search: AbstractSearch = DEFAULT_SEARCH,
    settings: SolverConfig = DEFAULT_SETTINGS,
) -> FixedPoints:
    """Fixed and slow points of `model` for each constant input, started from `starts`.

    The whole search runs with full-precision matrix products: on GPUs, JAX's default float32
    products use TF32 (a 10-bit mantissa), too coarse for Newton to converge to the
    tolerances here. CPUs compute them in full precision either way.

    Args:
        model: any :class:`mechscope.AbstractModel` (its vector field is used at t = 0).
        inputs: constant inputs, ``[k, n_inputs]``; each is solved from every start.
        starts: initial states, ``[s, n_units]`` (e.g. trajectory states plus noise).
        scale: typical size of the state (e.g. RMS distance of trajectory states from their
            mean); distances (merging, unique-ing, outliers) are measured in this unit.
        speed_scale: typical ‖f‖ along trajectories; speeds are measured in this unit.
        center: centroid of the trajectories for outlier removal (default: mean of starts).
        flow_starts: further states (e.g. the noise-free trajectory states) from which the
            flow is followed until it settles, so that the stable points it reaches are found
            even where no start's search reaches them (default: none, only the starts).
        search: the search (default: matrix-free Levenberg–Marquardt, then dense Newton).
        settings: the settings every search shares (the probe passes its config).

    Returns:
        The fixed points (unique per input, outliers removed, with Jacobian eigen-decomposition
        and stability) and, separately, the slow points.
    """
    starts_np = np.asarray(starts, dtype=np.float64)
    problem = Problem(
        inputs=np.asarray(inputs, dtype=np.float64).reshape(-1, model.n_inputs),
        starts=starts_np,
        scale=scale,
        speed_scale=speed_scale,
        center=starts_np.mean(0) if center is None else np.asarray(center, dtype=np.float64),
        flow_starts=None
        if flow_starts is None
        else np.asarray(flow_starts, dtype=np.float64).reshape(-1, starts_np.shape[1]),
    )
    with jax.default_matmul_precision("highest"):
        return search.find(model, problem, settings)
