"""The report's own figures: per-variant distributions, curves over seeds, mechanism maps.

Each function returns a matplotlib Figure drawn from the numbers it is given (so a test can
read the plotted data back); :func:`save` writes it as PNG and SVG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mechscope import stats
from mechscope.report._data import MIN_N_FOR_CI, completed

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Panels per dot-plot figure: more figures rather than a cap on the metrics shown.
PANELS_PER_FIGURE = 12


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def colours(variants: Sequence[str]) -> dict[str, Any]:
    """One colour per variant, the same in every figure of the report."""
    plt = _pyplot()
    palette = plt.get_cmap("tab10")
    return {variant: palette(i % 10) for i, variant in enumerate(variants)}


def short(label: str, limit: int = 32) -> str:
    """A variant label short enough for a tick or a legend (last path parts only)."""
    parts = [part.partition("=") for part in label.split(", ")]
    label = ", ".join(f"{path.split('.')[-1]}{equals}{value}" for path, equals, value in parts)
    return label if len(label) <= limit else label[: limit - 1] + "…"


def save(figure: Figure, stem: Path) -> Path:
    """Write `figure` as ``stem.png`` and ``stem.svg``, close it, return the PNG's path."""
    plt = _pyplot()
    try:
        for extension in ("png", "svg"):
            figure.savefig(stem.with_suffix(f".{extension}"), dpi=100)
    finally:
        plt.close(figure)
    return stem.with_suffix(".png")


def dot_plots(
    table: pd.DataFrame, metrics: Sequence[str], variants: Sequence[str], titles: Mapping[str, str]
) -> Figure:
    """One panel per metric: each network a dot, per variant its mean and (n ≥ 3) 95% CI.

    Args:
        table: the suite table; only completed runs are drawn.
        metrics: the columns to draw (at most :data:`PANELS_PER_FIGURE` make one figure).
        variants: the variants, in order.
        titles: metric → panel title (its name with the unit).
    """
    plt = _pyplot()
    done = completed(table)
    palette = colours(variants)
    columns = min(4, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.7 * rows), squeeze=False)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        for position, variant in enumerate(variants):
            values = done.loc[done["variant"].astype(str) == variant, metric].to_numpy(float)
            values = values[np.isfinite(values)]
            if not len(values):
                continue  # nothing finite to draw (e.g. every network diverged)
            spread = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            axis.scatter(
                position + spread, values, s=16, alpha=0.75, color=palette[variant], zorder=2
            )
            mean = float(values.mean())
            error = None
            if len(values) >= MIN_N_FOR_CI:
                low, high = stats.bootstrap_ci(values)
                if math.isfinite(low):
                    # Identical values give an interval whose ends differ from their mean by
                    # rounding only (0.1, 0.1, 0.1: high − mean = −1.4e-17); matplotlib refuses
                    # negative error lengths.
                    error = [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]
            axis.errorbar(
                position + 0.3, mean, yerr=error, fmt="o", color="k", ms=4, capsize=3, zorder=3
            )
        axis.set_title(titles.get(metric, metric), fontsize=8)
        axis.set_xticks(range(len(variants)))
        axis.set_xticklabels([short(v, 24) for v in variants], fontsize=7, rotation=20, ha="right")
        axis.tick_params(axis="y", labelsize=7)
        axis.set_xlim(-0.5, len(variants) - 0.3)
    for axis in list(axes.flat)[len(metrics) :]:
        axis.axis("off")
    figure.tight_layout()
    return figure


def _band(axis: Any, frame: pd.DataFrame, x: str, colour: Any, label: str) -> None:
    frame = frame.sort_values(x)
    xs = frame[x].to_numpy(float)
    axis.plot(xs, frame["mean"].to_numpy(float), color=colour, label=label, lw=1.6, marker=".")
    low, high = frame["ci_low"].to_numpy(float), frame["ci_high"].to_numpy(float)
    shown = np.isfinite(low) & np.isfinite(high)
    if shown.any():
        axis.fill_between(xs, low, high, where=shown, color=colour, alpha=0.2, lw=0)


def learning_figure(curves: pd.DataFrame, variants: Sequence[str]) -> Figure:
    """Loss and R² over training steps: per variant the mean over seeds and its 95% CI band.

    Args:
        curves: :func:`~mechscope.report._data.learning_curves`' frame.
        variants: the variants, in order (colours match the other figures).
    """
    plt = _pyplot()
    quantities = list(dict.fromkeys(curves["quantity"]))
    palette = colours(variants)
    figure, axes = plt.subplots(
        1, len(quantities), figsize=(5.2 * len(quantities), 3.6), squeeze=False
    )
    for axis, quantity in zip(axes.flat, quantities, strict=True):
        chosen = curves[curves["quantity"] == quantity]
        for variant in variants:
            frame = chosen[chosen["variant"] == variant]
            if len(frame):
                n = int(frame["n"].max())
                _band(axis, frame, "step", palette[variant], f"{short(variant)} (n = {n})")
        values = chosen["mean"].to_numpy(float)
        if quantity == "loss" and len(values) and np.all(values[np.isfinite(values)] > 0):
            axis.set_yscale("log")
        axis.set_xlabel("training step", fontsize=8)
        axis.set_title({"loss": "training loss", "r2": "output R²"}.get(quantity, quantity))
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def curves_figure(
    curves: pd.DataFrame, names: Sequence[str], variants: Sequence[str], titles: Mapping[str, str]
) -> Figure:
    """One panel per sweep: per variant the mean over seeds at each level and its 95% CI band."""
    plt = _pyplot()
    palette = colours(variants)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.2 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        chosen = curves[curves["curve"] == name]
        for variant in variants:
            frame = chosen[chosen["variant"] == variant]
            if len(frame):
                _band(axis, frame, "x", palette[variant], short(variant))
        axis.set_title(titles.get(name, name), fontsize=8)
        axis.set_xlabel("x: the level in the column name", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    figure.tight_layout()
    return figure


def mechanism_figure(
    matrix: np.ndarray, labels: Sequence[str], title: str, variants: Sequence[str]
) -> Figure:
    """A distance matrix ordered by variant, its 2-D MDS embedding and its dendrogram.

    Args:
        matrix: distances between the networks, ordered so each variant is one block.
        labels: each network's variant.
        title: the figure's title.
        variants: every variant of the suite, in order (so colours match the other figures).
    """
    plt = _pyplot()
    from scipy.cluster.hierarchy import dendrogram

    palette = colours(variants)
    variants = [v for v in variants if v in labels]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.6))
    image = left.imshow(matrix, cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=left, fraction=0.046)
    for edge in [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]:
        left.axhline(edge - 0.5, color="w", lw=0.8)
        left.axvline(edge - 0.5, color="w", lw=0.8)
    left.set_title("distance matrix (ordered by variant)", fontsize=9)
    left.set_xticks([])
    centres = [float(np.mean([i for i, lab in enumerate(labels) if lab == v])) for v in variants]
    left.set_yticks(centres, [short(v, 20) for v in variants], fontsize=7)
    coordinates = stats.mds(matrix)
    for variant in variants:
        chosen = [i for i, label in enumerate(labels) if label == variant]
        middle.scatter(*coordinates[chosen].T, color=palette[variant], label=short(variant), s=30)
    middle.legend(fontsize=7, loc="best")
    middle.set_title("2-D MDS embedding", fontsize=9)
    middle.set_xticks([])
    middle.set_yticks([])
    if len(labels) > 2:
        tree = dendrogram(
            stats.linkage_of(matrix),
            ax=right,
            no_labels=True,
            color_threshold=0,
            above_threshold_color="#555",
        )
        for position, leaf in enumerate(tree.get("leaves") or []):
            right.scatter(5 + 10 * position, 0, color=palette[labels[leaf]], s=25, clip_on=False)
    right.set_title("average-linkage dendrogram (leaves coloured by variant)", fontsize=9)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure
