"""An example third-party mechscope plugin: a pulse-memory task and an output-error probe.

It uses only the public API (``import mechscope``), exactly as an outside lab would.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
from jaxtyping import PRNGKeyArray

import mechscope


class PulseMemoryConfig(mechscope.Config):
    """Hold the amplitude of a brief input pulse at the output until the trial ends."""

    dt: float = pydantic.Field(0.01, gt=0, description="Sample interval (s).")
    pulse_start: float = pydantic.Field(0.1, ge=0, description="Pulse onset (s).")
    pulse_duration: float = pydantic.Field(0.05, gt=0, description="Pulse length (s).")
    duration: float = pydantic.Field(0.6, gt=0, description="Trial length (s).")
    n_levels: int = pydantic.Field(5, ge=2, description="Amplitudes in conditions().")
    max_amplitude: float = pydantic.Field(1.0, gt=0, description="Largest |amplitude|.")

    @pydantic.model_validator(mode="after")
    def _pulse_fits(self) -> PulseMemoryConfig:
        if self.pulse_start + self.pulse_duration >= self.duration:
            raise ValueError("the pulse must end before the trial does")
        return self


class PulseMemory(mechscope.AbstractTask):
    """The pulse-memory task: one input channel, one output channel."""

    config: PulseMemoryConfig = eqx.field(static=True)

    @property
    def n_inputs(self) -> int:
        """One input: the pulse."""
        return 1

    @property
    def n_outputs(self) -> int:
        """One output: the remembered amplitude."""
        return 1

    @property
    def dt(self) -> float:
        """Sample interval (s)."""
        return self.config.dt

    def _trials(self, amplitudes: jax.Array) -> mechscope.Trials:
        config = self.config
        times = jnp.arange(round(config.duration / config.dt)) * config.dt
        pulse_end = config.pulse_start + config.pulse_duration
        # Half a sample of slack so the windows do not depend on float rounding of the grid.
        eps = 0.5 * config.dt
        in_pulse = (times >= config.pulse_start - eps) & (times < pulse_end - eps)
        after = times >= pulse_end - eps
        inputs = amplitudes[:, None, None] * in_pulse[None, :, None]
        targets = amplitudes[:, None, None] * after[None, :, None]
        batch = amplitudes.shape[0]
        return mechscope.Trials(
            inputs=inputs.astype(jnp.float32),
            targets=targets.astype(jnp.float32),
            mask=jnp.ones_like(targets, dtype=jnp.float32),
            times=times.astype(jnp.float32),
            events={
                "pulse_on": jnp.full((batch,), config.pulse_start),
                "pulse_off": jnp.full((batch,), pulse_end),
            },
            labels={"amplitude": amplitudes, "condition": jnp.arange(batch)},
        )

    def sample(self, batch_size: int, *, key: PRNGKeyArray) -> mechscope.Trials:
        """Trials with amplitudes drawn uniformly from [-max, max]."""
        bound = self.config.max_amplitude
        amplitudes = jax.random.uniform(key, (batch_size,), minval=-bound, maxval=bound)
        trials = self._trials(amplitudes)
        return eqx.tree_at(lambda t: t.labels["condition"], trials, jnp.full(batch_size, -1))

    def conditions(self) -> mechscope.Trials:
        """One trial per amplitude level, evenly spaced in [-max, max]."""
        bound = self.config.max_amplitude
        return self._trials(jnp.linspace(-bound, bound, self.config.n_levels))


class OutputErrorConfig(mechscope.Config):
    """RMSE and R² of the outputs against the targets on the condition trials."""

    figure: bool = pydantic.Field(True, description="Draw outputs against targets.")


class OutputError(mechscope.AbstractProbe):
    """Compares a network's outputs with the task's targets on noiseless condition trials."""

    config: OutputErrorConfig = eqx.field(static=True)

    def metrics(self) -> tuple[mechscope.Metric, ...]:
        """Declared up front, so suites can check the names a config uses before training."""
        return (
            mechscope.Metric(
                "rmse",
                "root-mean-square output error over the masked samples of the condition trials",
                unit="output units",
                direction="lower = better",
            ),
            mechscope.Metric(
                "r2",
                "R² of the outputs against the targets on the condition trials",
                direction="higher = better",
            ),
        )

    def run(
        self,
        trained: mechscope.TrainedRun,
        task: mechscope.AbstractTask,
        *,
        key: PRNGKeyArray,
        dependencies: Mapping[str, mechscope.ProbeResult] | None = None,
        conditions: mechscope.ConditionRun | None = None,
    ) -> mechscope.ProbeResult:
        """Masked RMSE and R² (``mechscope.masked_r2``, over every masked sample and channel).

        Uses the noise-free condition run the experiment shares between probes, or computes
        it when the probe is called on its own.
        """
        run = conditions or mechscope.condition_run(trained.model, task)
        outputs = run.outputs
        targets = np.asarray(run.trials.targets, dtype=np.float64)
        mask = np.asarray(run.trials.mask, dtype=np.float64)
        residual = ((outputs - targets) ** 2 * mask).sum()
        metrics = {
            "rmse": float(np.sqrt(residual / mask.sum())),
            "r2": float(mechscope.masked_r2(outputs, targets, mask)),
        }
        figures = {}
        if self.config.figure:
            times = np.asarray(run.trials.times)
            figures["outputs"] = lambda: _plot_outputs(times, outputs, targets)
        return mechscope.ProbeResult(
            metrics=metrics, arrays={"outputs": outputs, "targets": targets}, figures=figures
        )


def _plot_outputs(times: np.ndarray, outputs: np.ndarray, targets: np.ndarray):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        1, outputs.shape[-1], figsize=(4 * outputs.shape[-1], 3), squeeze=False
    )
    for channel, axis in enumerate(axes[0]):
        for trial in range(outputs.shape[0]):
            line = axis.plot(times, outputs[trial, :, channel], lw=1.5)[0]
            axis.plot(times, targets[trial, :, channel], ls="--", color=line.get_color(), lw=1)
        axis.set(xlabel="time (s)", ylabel=f"output {channel}", title="output (—) vs target (--)")
    figure.tight_layout()
    return figure


@mechscope.hookimpl
def mechscope_register_tasks(register: mechscope.Register) -> None:
    """Register the ``pulse_memory`` task."""
    register("pulse_memory", PulseMemoryConfig, PulseMemory)


@mechscope.hookimpl
def mechscope_register_probes(register: mechscope.Register) -> None:
    """Register the ``output_error`` probe."""
    register("output_error", OutputErrorConfig, OutputError)
