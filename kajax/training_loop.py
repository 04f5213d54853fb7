"""The training loop shared by teacher training and both amalgamation phases.

Runs a compiled step from the state's current step to ``num_steps``: feeds global batches,
shows a progress bar, logs to TensorBoard, checkpoints (with the data-iterator state) and
stops on a non-finite loss *before* saving it, so the last checkpoint is always a good one.

Logged values are means over the logging interval (accumulated on the device, so the loop
never waits for a step to finish before dispatching the next one), plus the learning rate,
steps/s and images/s. On SIGTERM (preemption) every process saves at the same step and the
loop raises ``multihost.Preempted``; rerunning the same command resumes there.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kajax import checkpointing, input_pipeline, multihost, parallel, training_logs


@dataclasses.dataclass
class LoopConfig:
  """How often to log and save (config keys ``log_every``, ``checkpoint_every``).

  ``batch_size`` is the global batch (images per step), used for images/s.
  """
  num_steps: int
  log_every: int
  checkpoint_every: int
  batch_size: int = 0


def _check_finite(metrics: Mapping[str, Any], step: int, phase: str, ckpt_dir: str) -> None:
  bad = [k for k in ("loss", "grad_norm") if k in metrics and not np.isfinite(metrics[k])]
  if bad:
    raise FloatingPointError(
        f"{phase}: non-finite {', '.join(bad)} at step {step}. Training stopped; the last "
        f"good checkpoint in {ckpt_dir} is kept. Lower the learning rate "
        "(--config.optimizer.learning_rate) and rerun the same command to resume.")


@jax.jit
def _accumulate(sums: dict[str, jax.Array], metrics: dict[str, jax.Array]
                ) -> dict[str, jax.Array]:
  return {k: sums[k] + metrics[k].astype(jnp.float32) for k in sums}


def _scalar_names(metrics: Mapping[str, Any]) -> tuple[str, ...]:
  return tuple(k for k, v in metrics.items() if np.ndim(v) == 0)


class _Interval:
  """Sums of the scalar metrics since the last log, and the time it took."""

  def __init__(self) -> None:
    self.sums: dict[str, jax.Array] | None = None
    self.steps = 0
    self.start = time.perf_counter()

  def add(self, metrics: Mapping[str, jax.Array]) -> None:
    scalars = {k: metrics[k] for k in _scalar_names(metrics)}
    if self.sums is None:
      self.sums = jax.tree.map(lambda x: jnp.zeros((), jnp.float32), scalars)
    self.sums = _accumulate(self.sums, scalars)
    self.steps += 1

  def means(self) -> dict[str, float]:
    sums = jax.device_get(self.sums or {})  # Waits for the interval's last step.
    return {k: float(v) / self.steps for k, v in sums.items()}

  def rates(self, batch_size: int) -> dict[str, float]:
    seconds = max(time.perf_counter() - self.start, 1e-9)
    rates = {"steps_per_s": self.steps / seconds}
    if batch_size:
      rates["images_per_s"] = self.steps * batch_size / seconds
    return rates


def run(phase: str, step_fn: Callable[[Any, Any], tuple[Any, dict[str, Any]]], state: Any,
        train_iter: Any, mesh: Any, loop: LoopConfig, ckpt: checkpointing.Checkpointer,
        writer: training_logs.Writer, meta: Mapping[str, Any] | None = None,
        log_offset: int = 0, learning_rate: Callable[[int], Any] | None = None) -> Any:
  """Trains ``state`` with ``step_fn(state, batch)`` until ``state.step == num_steps``.

  Args:
    phase: name shown on the progress bar and used as the TensorBoard prefix.
    step_fn: compiled step, teachers and rng already bound.
    state: TrainState (its ``step`` says where to start: resumed runs continue).
    train_iter: per-process batch iterator (``kajax.input_pipeline``).
    mesh: device mesh the batches are placed on.
    loop: step counts and intervals.
    ckpt: where checkpoints go.
    writer: TensorBoard writer.
    meta: extra JSON saved with every checkpoint.
    log_offset: added to TensorBoard steps (phases share one time axis).
    learning_rate: the optimiser's schedule (step -> rate), logged as ``learning_rate``.

  Returns:
    The final state (its last checkpoint is saved and finished).

  Raises:
    multihost.Preempted: after saving, when the job received SIGTERM.
    FloatingPointError: on a non-finite loss (nothing saved for the bad interval).
  """
  start = int(state.step)
  progress = training_logs.PhaseProgress(phase, loop.num_steps, start)
  interval = _Interval()

  def save(step: int) -> None:
    ckpt.save(step, state, {"phase": phase, **(meta or {}),
                            "data_iterator": input_pipeline.iterator_state(train_iter)},
              force=True)

  try:
    with multihost.PREEMPTION.training():
      for step in range(start, loop.num_steps):
        batch = parallel.global_batch(next(train_iter), mesh)
        state, metrics = step_fn(state, batch)
        interval.add(metrics)
        done = step + 1
        log_now = done % loop.log_every == 0 or done == loop.num_steps
        save_now = done % loop.checkpoint_every == 0 or done == loop.num_steps
        preempted = multihost.PREEMPTION.reached()
        if log_now or save_now or preempted:
          means = interval.means()
          _check_finite(means, done, phase, ckpt.directory)
          scalars = dict(means, **interval.rates(loop.batch_size))
          if learning_rate is not None:
            scalars["learning_rate"] = float(learning_rate(step))  # Rate of this step.
          writer.scalars(log_offset + done, scalars, f"{phase}/")
          progress.update(interval.steps, {"loss": means["loss"]} if "loss" in means else {})
          interval = _Interval()
        if save_now or preempted:
          save(done)
        if preempted:
          ckpt.wait()
          writer.flush()
          raise multihost.Preempted(
              f"{phase}: preempted (SIGTERM) at step {done}; checkpoint saved in "
              f"{ckpt.directory}. Rerun the same command to resume.")
  finally:
    progress.close()
    ckpt.wait()
  return state
