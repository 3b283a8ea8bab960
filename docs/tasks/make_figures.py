"""Draw the reach-task figures and refresh the config tables of docs/tasks/*.md.

Run from the repository root: ``python docs/tasks/make_figures.py``. Each page holds its table
between ``<!-- config-table:start -->`` and ``<!-- config-table:end -->``; the table is built
from the task's pydantic config so it cannot drift from the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import matplotlib
import mechscope_reach as reach

import mechscope

matplotlib.use("Agg")

HERE = Path(__file__).parent
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def config_table(config_class: type[reach.ReachConfig]) -> str:
    """A Markdown table of every field: name, type, default, description."""
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in config_class.model_fields.items():
        annotation = str(field.annotation).replace("typing.", "").replace("|", "\\|")
        annotation = re.sub(r"<class '(\w+)'>", r"\1", annotation)
        default = repr(field.default).replace("|", "\\|")
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | `{annotation}` | `{default}` | {description} |")
    return "\n".join(rows)


def write_table(page: Path, config_class: type[reach.ReachConfig]) -> None:
    text = page.read_text()
    table = f"{START}\n{config_table(config_class)}\n{END}"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    page.write_text(pattern.sub(lambda _: table, text))


def save(trials, name: str, title: str, max_trials: int = 3) -> None:
    figure = reach.plot_trials(trials, max_trials=max_trials, title=title)
    figure.savefig(HERE / name, dpi=72)


def main() -> None:
    key = jax.random.key(0)
    reach_task = reach.DelayedReach(reach.DelayedReachConfig(catch_fraction=0.25))
    trials = reach_task.sample(16, key=key)
    # Two ordinary trials and one catch trial.
    catch = int(jax.numpy.argmax(trials.labels["catch"]))
    others = [i for i in range(16) if i != catch]
    picks = jax.numpy.asarray([*others[:2], catch])
    save(trials.select(picks), "delayed_reach.png", "delayed_reach: sampled trials")

    switch = reach.TargetSwitch(reach.TargetSwitchConfig())
    moving = reach.TargetSwitch(reach.TargetSwitchConfig(switch_epoch="after_go"))
    both = [
        switch.conditions().select(jax.numpy.asarray([0, 3])),
        moving.conditions().select(jax.numpy.asarray([3])),
    ]
    save(
        _concat(both),
        "target_switch.png",
        "target_switch: mid-delay switches (left), a mid-movement jump (right)",
    )

    relocation = reach.TargetRelocation(reach.TargetRelocationConfig())
    jump = reach.TargetRelocation(reach.TargetRelocationConfig(switch_epoch="after_go"))
    appear = reach.TargetRelocation(
        reach.TargetRelocationConfig(switch_epoch="none", novel_radii=(1.5,))
    )
    parts = [
        relocation.conditions().select(jax.numpy.asarray([0])),
        jump.conditions().select(jax.numpy.asarray([2])),
        appear.conditions().select(jax.numpy.asarray([5])),
    ]
    save(
        _concat(parts),
        "target_relocation.png",
        "target_relocation: move in delay, jump after go, new radius",
    )

    write_table(HERE / "delayed_reach.md", reach.DelayedReachConfig)
    write_table(HERE / "target_switch.md", reach.TargetSwitchConfig)
    write_table(HERE / "target_relocation.md", reach.TargetRelocationConfig)


def _concat(parts):
    """Trials from tasks with different grids, padded to the longest (figures only)."""
    import jax.numpy as jnp

    length = max(p.n_times for p in parts)
    longest = next(p for p in parts if p.n_times == length)

    def pad(x, p):
        extra = length - p.n_times
        return jnp.concatenate([x, jnp.repeat(x[:, -1:], extra, axis=1)], axis=1)

    def mask_pad(x, p):
        return jnp.pad(x, ((0, 0), (0, length - p.n_times), (0, 0)))

    return mechscope.Trials(
        inputs=jnp.concatenate([pad(p.inputs, p) for p in parts]),
        targets=jnp.concatenate([pad(p.targets, p) for p in parts]),
        mask=jnp.concatenate([mask_pad(p.mask, p) for p in parts]),
        times=longest.times,
        events={k: jnp.concatenate([p.events[k] for p in parts]) for k in parts[0].events},
        labels={k: jnp.concatenate([p.labels[k] for p in parts]) for k in parts[0].labels},
    )


if __name__ == "__main__":
    main()
