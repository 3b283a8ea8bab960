"""Configuration of the fixed-point solver: shared settings and one config per search.

:class:`SolverConfig` holds the settings every search of the fast pipeline shares; the probe's
config (:class:`~mechscope_dynamics.FixedPointsConfig`) extends it, so each is declared once.
The search is chosen by its own config, a tagged union on ``kind``; each builds the equinox
search module of the same settings (:meth:`MatrixFreeLMConfig.build` etc.). In a suite file::

    [[base.probes]]
    name = "fixed_points"
    n_starts = 128
    search = { kind = "dense_lm", steps = 300 }
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

import pydantic
from pydantic import Field

import mechscope
from mechscope_dynamics._fp_golub import GolubSearch
from mechscope_dynamics._fp_lm import DenseLMSearch, MatrixFreeLMSearch
from mechscope_dynamics._fp_search import NewtonSearch


class SolverConfig(mechscope.Config):
    """Settings of the fixed-point solver that every search shares."""

    relax_steps: int = Field(
        default=60,
        ge=0,
        description="Euler steps along the flow from every start first. Where an "
        "input's flow collapses the starts (attractors), the search starts from the relaxed "
        "end points and the slowest point of each path (where it passed a saddle); elsewhere "
        "(a chaotic flow) from the raw starts. 0 = always the raw starts.",
    )
    relax_step: float | None = Field(
        default=None,
        gt=0,
        description="Length of those steps; None = 1 / spectral radius of the "
        "Jacobian at the trajectories' centroid.",
    )
    flow_blocks: int = Field(
        default=6,
        ge=0,
        description="Follow the flow further, in up to this many more blocks of relax_steps "
        "Euler steps, from every start and flow start whose path is still settling (its ‖f‖ "
        "halved over the last block), until it settles (‖f‖ ≤ flow_tol × typical speed); "
        "the settled points go straight to Newton, so every stable point the flow reaches "
        "from a start is found whatever the relaxed/raw choice and the merging do.",
    )
    flow_tol: float = Field(
        default=1e-2,
        gt=0,
        description="A path of the flow has settled when ‖f‖ ≤ flow_tol × typical speed.",
    )
    manifold_modes: int = Field(
        default=4,
        ge=0,
        description="From every unstable point found, follow the flow down this many of its "
        "leading unstable modes (both ways) to the stable points they lead to; 0 = never.",
    )
    continuation_steps: int = Field(
        default=20,
        ge=0,
        description="Follow every stable point found to every other input, moving the "
        "input there in this many steps (three Newton iterations each), to find the stable "
        "points on its branch that no start's search reaches; 0 = never.",
    )
    relaxed_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Use an input's relaxed points only if, merged, they "
        "number at most this fraction of the starts.",
    )
    newton_steps: int = Field(
        default=40, ge=1, description="Most float32 Newton iterations per distinct candidate."
    )
    stall_blocks: int = Field(
        default=2,
        ge=1,
        description="A candidate whose ‖f‖ falls by less than 20 % in this many "
        "consecutive blocks of two Newton iterations becomes a slow-point candidate.",
    )
    newton_tol: float = Field(
        default=1e-4,
        gt=0,
        description="A candidate has converged (and goes to the float64 polish) "
        "when ‖f‖ ≤ newton_tol × typical speed.",
    )
    merge_tol: float = Field(
        default=1e-2,
        gt=0,
        description="Merge candidates closer than this × trajectory scale, and "
        "drop candidates this close to a converged point.",
    )
    polish_steps: int = Field(
        default=40,
        ge=1,
        description="Polishing budget: Newton polish_steps / 4 iterations, then LM "
        "polish_steps, then BFGS 8 × polish_steps (slow points: BFGS polish_steps).",
    )
    fixed_tol: float = Field(
        default=1e-7,
        gt=0,
        description="Fixed point: ‖f(x*)‖ ≤ fixed_tol × typical speed along trajectories.",
    )
    slow_tol: float = Field(
        default=0.05,
        gt=0,
        description="Slow point: a non-zero local minimum of q with ‖f‖ ≤ slow_tol × typical "
        "speed.",
    )
    unique_tol: float = Field(
        default=1e-4, gt=0, description="Fixed points closer than this × trajectory scale are one."
    )
    outlier_scale: float = Field(
        default=10.0,
        gt=0,
        description="Drop points farther than this × trajectory scale from the "
        "trajectories' centroid.",
    )
    float64: bool = Field(default=True, description="Polish and classify in float64.")

    @pydantic.model_validator(mode="after")
    def _check_tolerances(self) -> Self:
        if self.fixed_tol >= self.slow_tol:
            raise ValueError("fixed_tol must be smaller than slow_tol")
        return self


class MatrixFreeLMConfig(mechscope.Config):
    """Matrix-free Levenberg–Marquardt (CG on JVPs/VJPs) on every candidate, then Newton."""

    kind: Literal["lm"] = "lm"
    steps: int = Field(default=120, ge=1, description="Most LM iterations per candidate.")
    handoff_tol: float = Field(
        default=1e-2,
        gt=0,
        description="Leave LM for dense Newton when ‖f‖ ≤ handoff_tol × typical speed "
        "(inexact steps do not converge much closer).",
    )
    cg_steps: int = Field(
        default=20, ge=1, description="Conjugate-gradient iterations per LM step."
    )

    def build(self, dt: float) -> MatrixFreeLMSearch:
        """The search module of these settings (`dt`, the task's step, is not used)."""
        del dt
        return MatrixFreeLMSearch(
            steps=self.steps, handoff_tol=self.handoff_tol, cg_steps=self.cg_steps
        )


class DenseLMConfig(mechscope.Config):
    """Levenberg–Marquardt with exact dense steps (Cholesky per candidate), then Newton."""

    kind: Literal["dense_lm"] = "dense_lm"
    steps: int = Field(default=200, ge=1, description="Most LM iterations per candidate.")
    handoff_tol: float = Field(
        default=1e-4,
        gt=0,
        description="Leave LM for dense Newton when ‖f‖ ≤ handoff_tol × typical speed "
        "(exact paths are worth following closer to the zero).",
    )
    chunk_elements: int = Field(
        default=1 << 26,
        ge=1,
        description="Most elements of one [rows, n_units, n_units] array per call; "
        "candidates run in chunks of max(64, chunk_elements / n_units²) rows.",
    )

    def build(self, dt: float) -> DenseLMSearch:
        """The search module of these settings (`dt`, the task's step, is not used)."""
        del dt
        return DenseLMSearch(
            steps=self.steps, handoff_tol=self.handoff_tol, chunk_elements=self.chunk_elements
        )


class NewtonConfig(mechscope.Config):
    """Dense globalised Newton on every candidate (cheaper than LM, finds fewer zeros)."""

    kind: Literal["newton"] = "newton"

    def build(self, dt: float) -> NewtonSearch:
        """The search module (`dt`, the task's step, is not used)."""
        del dt
        return NewtonSearch()


class GolubConfig(mechscope.Config):
    """FixedPointFinder compatibility: Adam on q of the discrete map, every end point kept."""

    kind: Literal["golub"] = "golub"
    dt: float | None = Field(
        default=None, gt=0, description="Step of the discrete map; None = the task's dt."
    )
    max_iters: int = Field(default=5000, ge=1, description="Most Adam iterations.")
    tol_q: float = Field(default=1e-12, gt=0, description="Stop when every q is below this.")
    tol_dq: float = Field(
        default=1e-20, ge=0, description="Stop when the mean q changes by less than this."
    )
    learning_rate: float = Field(default=1.0, gt=0, description="Initial Adam learning rate.")
    unique_tol: float = Field(
        default=1e-3, gt=0, description="Absolute distance below which end points are the same."
    )

    def build(self, dt: float) -> GolubSearch:
        """The search module of these settings; the map's step is `dt` unless set here."""
        return GolubSearch(
            dt=self.dt or dt,
            max_iters=self.max_iters,
            tol_q=self.tol_q,
            tol_dq=self.tol_dq,
            learning_rate=self.learning_rate,
            unique_tol=self.unique_tol,
        )


SearchConfig = Annotated[
    MatrixFreeLMConfig | DenseLMConfig | NewtonConfig | GolubConfig,
    Field(discriminator="kind"),
]
