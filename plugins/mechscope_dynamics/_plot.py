"""Figures of the dynamics probes (matplotlib, drawn lazily by ProbeResult)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

import mechscope
from mechscope_dynamics._common import ConditionRun, pca_basis
from mechscope_dynamics._solver import FixedPoints

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _colors(n: int) -> np.ndarray:
    import matplotlib.pyplot as plt

    return plt.get_cmap("hsv")(np.linspace(0, 1, n, endpoint=False))


def fixed_points_figure(run: ConditionRun, fps: FixedPoints, delay_row: np.ndarray) -> Figure:
    """Condition trajectories in the plane of the first two PCs with the fixed points.

    Stable points are filled, unstable ones open; each unstable point's unstable modes are drawn
    as short segments along the projected eigenvectors.
    """
    import matplotlib.pyplot as plt

    flat = run.states.reshape(-1, run.states.shape[-1])
    mean, basis = pca_basis(flat, 2)
    figure, axis = plt.subplots(figsize=(4.5, 4.2))
    colors = _colors(run.states.shape[0])
    for c, states in enumerate(run.states):
        projected = (states - mean) @ basis.T
        axis.plot(projected[:, 0], projected[:, 1], color=colors[c], lw=0.8, alpha=0.7)
    length = 0.15 * run.scale
    for i, point in enumerate(fps.points):
        k = fps.input_index[i]
        owners = np.flatnonzero(delay_row == k)
        color = colors[owners[0]] if len(owners) else "k"
        p = (point - mean) @ basis.T
        if fps.stable[i]:
            axis.plot(*p, "o", color=color, ms=6, mec="k", mew=0.6)
        else:
            axis.plot(*p, "o", mfc="none", mec=color if len(owners) else "k", ms=6, mew=1.2)
            unstable = (
                np.abs(fps.eigenvalues[i]) > 1 if fps.discrete else fps.eigenvalues[i].real > 0
            )
            for vector in fps.eigenvectors[i][:, unstable].T:
                direction = np.real(vector) @ basis.T
                axis.plot(
                    *np.stack([p - length * direction, p + length * direction]).T, color="0.3", lw=1
                )
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.set_title("Fixed points (filled: stable, open: unstable)", fontsize=9)
    figure.tight_layout()
    return figure


def flow_field_figure(
    model: mechscope.AbstractModel,
    run: ConditionRun,
    fps: FixedPoints,
    delay_row: np.ndarray,
    *,
    grid: int = 25,
    condition: int = 0,
) -> Figure:
    """The vector field under one condition's delay input, in the plane of the first two PCs.

    The plane passes through the trajectories' mean; arrows are f projected onto the plane.
    """
    import matplotlib.pyplot as plt

    flat = run.states.reshape(-1, run.states.shape[-1])
    mean, basis = pca_basis(flat, 2)
    projected = (flat - mean) @ basis.T
    low, high = projected.min(axis=0), projected.max(axis=0)
    pad = 0.2 * (high - low + 1e-9)
    a = np.linspace(low[0] - pad[0], high[0] + pad[0], grid)
    b = np.linspace(low[1] - pad[1], high[1] + pad[1], grid)
    aa, bb = np.meshgrid(a, b)
    points = mean + aa.reshape(-1, 1) * basis[0] + bb.reshape(-1, 1) * basis[1]
    row = delay_row[condition] if len(delay_row) and delay_row[condition] >= 0 else None
    u = fps.inputs[row] if row is not None else np.zeros(model.n_inputs)
    velocity = jax.vmap(lambda x: model.vector_field(0.0, x, jnp.asarray(u, jnp.float32)))(
        jnp.asarray(points, jnp.float32)
    )
    flow = np.asarray(velocity, np.float64) @ basis.T
    figure, axis = plt.subplots(figsize=(4.5, 4.2))
    speed = np.linalg.norm(flow, axis=1).reshape(aa.shape)
    axis.streamplot(
        a,
        b,
        flow[:, 0].reshape(aa.shape),
        flow[:, 1].reshape(aa.shape),
        color=np.log10(speed + 1e-12),
        cmap="Greys",
        density=1.0,
        linewidth=0.7,
    )
    states = (run.states[condition] - mean) @ basis.T
    axis.plot(states[:, 0], states[:, 1], color="tab:red", lw=1.2, label=f"condition {condition}")
    if row is not None:
        for i in fps.for_input(row):
            p = (fps.points[i] - mean) @ basis.T
            axis.plot(*p, "o", mec="tab:blue", ms=7, mfc="tab:blue" if fps.stable[i] else "none")
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.set_title("Flow field under the delay input (PC plane)", fontsize=9)
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def curves_figure(
    levels: dict[str, np.ndarray], values: dict[str, np.ndarray], ylabel: str
) -> Figure:
    """One panel per perturbation kind: a metric against the perturbation level."""
    import matplotlib.pyplot as plt

    kinds = list(levels)
    figure, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        axis.plot(levels[kind], values[kind], "o-", color="k")
        axis.set_xlabel(f"{kind.replace('_', ' ')} level")
        axis.set_ylabel(ylabel)
        axis.set_ylim(min(-0.05, float(np.nanmin(values[kind])) - 0.05), 1.05)
    figure.tight_layout()
    return figure


def hands_figure(panels: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Hand paths (output position x, y) of each generalisation task, with the final targets."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False)
    for axis, (name, (paths, targets)) in zip(axes[0], panels.items(), strict=True):
        colors = _colors(len(paths))
        for path, target, color in zip(paths, targets, colors, strict=True):
            axis.plot(path[:, 0], path[:, 1], color=color, lw=0.8)
            axis.plot(*target, "x", color=color, ms=6)
        axis.set_aspect("equal")
        axis.set_title(name.replace("_", " "), fontsize=9)
        axis.set_xlabel("x")
    axes[0][0].set_ylabel("y")
    figure.tight_layout()
    return figure


def delay_generalization_figure(arrays: dict[str, np.ndarray]) -> Figure:
    """Endpoint error and success against delay (trained range shaded); R² against delay noise."""
    import matplotlib.pyplot as plt

    delays = np.asarray(arrays["delays"])
    order = np.argsort(delays, kind="stable")
    low, high = np.asarray(arrays["trained_range"], float)
    figure, axes = plt.subplots(1, 3, figsize=(9.6, 3))
    for axis, name, ylabel in (
        (axes[0], "endpoint_error", "endpoint error"),
        (axes[1], "success_rate", "success rate"),
    ):
        if high > low:
            axis.axvspan(low, high, color="0.85", label="trained delays")
        else:  # one trained delay: a band would be invisible
            axis.axvline(low, color="0.75", lw=6, label="trained delay")
        axis.plot(delays[order], np.asarray(arrays[name])[order], "o-", color="k")
        axis.set_xlabel("delay (s)")
        axis.set_ylabel(ylabel)
    axes[1].set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=7, loc="best")
    r2 = np.asarray(arrays["r2_delay_noise"])
    axes[2].plot(arrays["delay_noise_levels"], r2, "o-", color="k")
    axes[2].set_xlabel("delay-period input noise σ")
    axes[2].set_ylabel("output R²")
    axes[2].set_ylim(min(-0.05, float(np.nanmin(r2)) - 0.05), 1.05)
    figure.tight_layout()
    return figure
