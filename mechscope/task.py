"""The task interface: what a network is trained on and probed with."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from mechscope.config import Config


class Trials(eqx.Module):
    """A batch of trials on a shared time grid.

    Attributes:
        inputs: network inputs, shape ``[batch, time, n_inputs]``.
        targets: desired outputs, shape ``[batch, time, n_outputs]``.
        mask: loss weights (1 = counts, 0 = ignored, e.g. padding), same shape as ``targets``.
        times: sample times in seconds, shape ``[time]``; shared by all trials.
        events: named event times in seconds per trial (``"target_on"``, ``"go"``,
            ``"movement_onset"``, ...), each of shape ``[batch]``; ``NaN`` where a trial has no
            such event (e.g. the go cue of a catch trial).
        labels: named per-trial labels with a leading ``[batch]`` axis (condition id, target
            position, delay, ...), used by probes to group and colour trials.
    """

    inputs: Float[Array, "batch time n_inputs"]
    targets: Float[Array, "batch time n_outputs"]
    mask: Float[Array, "batch time n_outputs"]
    times: Float[Array, " time"]
    events: dict[str, Float[Array, " batch"]] = eqx.field(default_factory=dict)
    labels: dict[str, Array] = eqx.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """Number of trials."""
        return self.inputs.shape[0]

    @property
    def n_times(self) -> int:
        """Number of time samples."""
        return self.times.shape[0]

    def select(self, index: Int[Array, " k"] | Bool[Array, " batch"] | slice) -> Trials:
        """The trials at `index` (integer indices, a boolean mask or a slice)."""
        pick = lambda leaf: leaf[index]  # noqa: E731
        return Trials(
            inputs=self.inputs[index],
            targets=self.targets[index],
            mask=self.mask[index],
            times=self.times,
            events=jax.tree.map(pick, self.events),
            labels=jax.tree.map(pick, self.labels),
        )

    def event_index(self, event: str) -> Int[Array, " batch"]:
        """Index of the time sample nearest to each trial's `event` (clipped to the grid)."""
        dt = self.times[1] - self.times[0]
        index = jnp.round((self.events[event] - self.times[0]) / dt)
        return jnp.clip(jnp.nan_to_num(index, nan=0.0), 0, self.n_times - 1).astype(int)


class AbstractTask(eqx.Module):
    """A task: trial generator for training and a fixed set of conditions for probing.

    Concrete tasks are final equinox modules that hold their validated config as a static field
    (``config: MyTaskConfig = eqx.field(static=True)``) and derive every array from it.
    """

    config: eqx.AbstractVar[Config]

    @property
    @abc.abstractmethod
    def n_inputs(self) -> int:
        """Number of input channels."""

    @property
    @abc.abstractmethod
    def n_outputs(self) -> int:
        """Number of output channels."""

    @property
    @abc.abstractmethod
    def dt(self) -> float:
        """Sample interval in seconds."""

    @abc.abstractmethod
    def sample(self, batch_size: int, *, key: PRNGKeyArray) -> Trials:
        """Draw a batch of training trials. Jit-able; deterministic in `key`.

        Args:
            batch_size: number of trials (static).
            key: PRNG key.
        """

    @abc.abstractmethod
    def conditions(self) -> Trials:
        """One noiseless trial per condition, for probes (deterministic, no key)."""
