"""A quick look at a few trials: inputs, outputs, events and mask."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

import mechscope

_CHANNEL_COLORS = ("tab:blue", "tab:orange", "tab:olive")
_EVENT_STYLE = {
    "target_on": ("tab:green", "-"),
    "switch": ("tab:purple", "-"),
    "go": ("black", "-"),
    "movement_onset": ("tab:red", "--"),
    "movement_end": ("tab:red", ":"),
    "trial_end": ("grey", "-."),
}


def plot_trials(
    trials: mechscope.Trials, *, max_trials: int = 4, title: str | None = None
) -> Figure:
    """Plot inputs, velocity and position outputs with event markers for the first trials.

    One column per trial; rows show the inputs (target x, y, go cue), the velocity outputs and
    the position outputs. Vertical lines mark events; grey shading marks samples the loss mask
    ignores (padding after the trial, and the reaction window when it is masked).

    Args:
        trials: a batch of reach trials (inputs ``[B, T, 3]``, targets ``[B, T, 4]``).
        max_trials: plot at most this many trials (the first ones).
        title: optional figure title.

    Returns:
        The matplotlib Figure (not shown; call ``fig.savefig`` or display it in a notebook).
    """
    n = max(1, min(max_trials, trials.batch_size))
    times = np.asarray(trials.times)
    inputs = np.asarray(trials.inputs[:n])
    targets = np.asarray(trials.targets[:n])
    mask = np.asarray(trials.mask[:n]).max(axis=-1)
    events = {name: np.asarray(value[:n]) for name, value in trials.events.items()}
    labels = {name: np.asarray(value[:n]) for name, value in trials.labels.items()}

    figure = Figure(figsize=(2.9 * n + 0.6, 6.2), layout="constrained")
    axes = figure.subplots(3, n, sharex=True, sharey="row", squeeze=False)
    rows = [
        (inputs, ("target x", "target y", "go cue"), "inputs"),
        (targets[..., :2], ("vel x", "vel y"), "velocity"),
        (targets[..., 2:], ("pos x", "pos y"), "position"),
    ]
    for column in range(n):
        for row, (data, names, ylabel) in enumerate(rows):
            axis = axes[row, column]
            for channel, name in enumerate(names):
                color = _CHANNEL_COLORS[channel]
                axis.plot(times, data[column, :, channel], label=name, lw=1.4, color=color)
            _shade_masked(axis, times, mask[column])
            for event, values in events.items():
                value = values[column]
                if math.isfinite(value):
                    color, style = _EVENT_STYLE.get(event, ("tab:gray", "-"))
                    axis.axvline(value, color=color, ls=style, lw=0.9, label=event)
            if column == 0:
                axis.set_ylabel(ylabel)
        axes[0, column].set_title(_describe(labels, column), fontsize=9)
        axes[-1, column].set_xlabel("time (s)")
    for row in range(3):
        unique = {}
        for axis in axes[row]:
            handles, names = axis.get_legend_handles_labels()
            unique.update(zip(names, handles, strict=True))
        axes[row, -1].legend(
            unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1, 1)
        )
    if title:
        figure.suptitle(title)
    return figure


def _shade_masked(axis, times: np.ndarray, mask: np.ndarray) -> None:
    off = mask <= 0
    if not off.any():
        return
    half = 0.5 * (times[1] - times[0]) if len(times) > 1 else 0.0
    # Shade each run of masked samples once rather than sample by sample.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], off.astype(int), [0]])))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        axis.axvspan(times[start] - half, times[stop - 1] + half, color="0.9", lw=0)


def _describe(labels: dict[str, np.ndarray], column: int) -> str:
    parts = []
    if "condition" in labels:
        parts.append(f"cond {int(labels['condition'][column])}")
    if "angle" in labels:
        parts.append(f"{math.degrees(float(labels['angle'][column])):.0f}°")
    if "delay" in labels:
        parts.append(f"delay {float(labels['delay'][column]):.2f} s")
    if "catch" in labels and bool(labels["catch"][column]):
        parts.append("catch")
    return ", ".join(parts)
