"""The fixed-point solver's data: the problem it is given, its candidates and its result."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Problem:
    """What :func:`~mechscope_dynamics.find_fixed_points` is asked to solve, as NumPy arrays.

    Attributes:
        inputs: the constant inputs, ``[k, n_inputs]`` (float64).
        starts: initial states, ``[s, n_units]`` (float64); each input is solved from each.
        scale: typical size of the state; distances are measured in this unit.
        speed_scale: typical ‖f‖ along trajectories; speeds are measured in this unit.
        center: centroid of the trajectories, ``[n_units]``, for outlier removal.
        flow_starts: further states, ``[p, n_units]`` (e.g. the noise-free trajectory states),
            from which only the flow is followed, to find the stable points it settles on.
    """

    inputs: np.ndarray
    starts: np.ndarray
    scale: float
    speed_scale: float
    center: np.ndarray
    flow_starts: np.ndarray | None = None

    @property
    def flow_rows(self) -> np.ndarray:
        """Every state the flow is followed from: the starts, then the flow starts."""
        if self.flow_starts is None or len(self.flow_starts) == 0:
            return self.starts
        return np.concatenate([self.starts, self.flow_starts])

    @property
    def n_units(self) -> int:
        """State dimension."""
        return self.starts.shape[1]


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Candidate points of a search: one row per (point, input), with ‖f‖ there.

    Attributes:
        x: the points, ``[m, n_units]``.
        input: which input each row belongs to, ``[m]`` (int).
        norm: ‖f(x, u)‖ at each row, ``[m]``.
    """

    x: np.ndarray
    input: np.ndarray
    norm: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def take(self, rows: np.ndarray) -> Candidates:
        """The candidates at `rows` (indices or a boolean mask)."""
        return Candidates(self.x[rows], self.input[rows], self.norm[rows])

    @classmethod
    def empty(cls, n_units: int) -> Candidates:
        """No candidates, in a state space of `n_units` dimensions."""
        return cls(np.zeros((0, n_units)), np.zeros(0, dtype=int), np.zeros(0))

    @classmethod
    def concatenate(cls, parts: Sequence[Candidates], n_units: int) -> Candidates:
        """All rows of `parts`, in order (an empty set when there are none)."""
        if not parts:
            return cls.empty(n_units)
        return cls(
            np.concatenate([part.x for part in parts]),
            np.concatenate([part.input for part in parts]).astype(int),
            np.concatenate([part.norm for part in parts]),
        )


@dataclasses.dataclass
class FixedPoints:
    """Fixed points (and slow points) of one model for a set of constant inputs.

    Attributes:
        inputs: the constant inputs, ``[k, n_inputs]``.
        points: fixed points, ``[m, n_units]``.
        input_index: which input each fixed point belongs to, ``[m]``.
        speed: ‖f(x*, u)‖ at each fixed point, ``[m]``.
        eigenvalues: eigenvalues of the Jacobian at each point, ``[m, n_units]`` (complex),
            sorted by decreasing real part (decreasing modulus in compatibility mode).
        eigenvectors: the matching right eigenvectors (columns), ``[m, n_units, n_units]``.
        stable: whether each point is stable, ``[m]``.
        slow_points: slow points (local minima of q that are not zeros), ``[p, n_units]``.
        slow_input_index: input of each slow point, ``[p]``.
        slow_speed: ‖f‖ at each slow point, ``[p]``.
        discrete: True in compatibility mode (eigenvalues are of the discrete map).
        n_candidates: distinct candidates that reached the search stage, plus the settled
            flow points and the points followed from those found (the fast solver's work).
    """

    inputs: np.ndarray
    points: np.ndarray
    input_index: np.ndarray
    speed: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    stable: np.ndarray
    slow_points: np.ndarray
    slow_input_index: np.ndarray
    slow_speed: np.ndarray
    discrete: bool = False
    n_candidates: int = 0

    def for_input(self, k: int) -> np.ndarray:
        """Indices of the fixed points of input `k`."""
        return np.flatnonzero(self.input_index == k)

    @property
    def time_constants(self) -> np.ndarray:
        """−1/Re λ of every mode (continuous time; ``inf`` for Re λ = 0), ``[m, n_units]``."""
        real = np.real(self.eigenvalues)
        with np.errstate(divide="ignore"):
            return np.where(real != 0, -1.0 / real, np.inf)
