"""The training loop shared by teacher training and both amalgamation phases.

Runs a compiled step from the state's current step to ``num_steps``: feeds global batches,
shows a progress bar, logs to TensorBoard, checkpoints (with the data-iterator state) and
stops on a non-finite loss *before* saving it, so the last checkpoint is always a good one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np

from kajax import checkpointing, input_pipeline, parallel, training_logs


@dataclasses.dataclass
class LoopConfig:
  """How often to log and save (config keys ``log_every``, ``checkpoint_every``)."""
  num_steps: int
  log_every: int
  checkpoint_every: int


def _check_finite(metrics: Mapping[str, Any], step: int, phase: str, ckpt_dir: str) -> None:
  bad = [k for k in ("loss", "grad_norm") if k in metrics and not np.isfinite(metrics[k])]
  if bad:
    raise FloatingPointError(
        f"{phase}: non-finite {', '.join(bad)} at step {step}. Training stopped; the last "
        f"good checkpoint in {ckpt_dir} is kept. Lower the learning rate "
        "(--config.optimizer.learning_rate) and rerun the same command to resume.")


def run(phase: str, step_fn: Callable[[Any, Any], tuple[Any, dict[str, Any]]], state: Any,
        train_iter: Any, mesh: Any, loop: LoopConfig, ckpt: checkpointing.Checkpointer,
        writer: training_logs.Writer, meta: Mapping[str, Any] | None = None,
        log_offset: int = 0) -> Any:
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

  Returns:
    The final state (its last checkpoint is saved and finished).
  """
  start = int(state.step)
  progress = training_logs.PhaseProgress(phase, loop.num_steps, start)
  pending = 0
  try:
    for step in range(start, loop.num_steps):
      batch = parallel.global_batch(next(train_iter), mesh)
      state, metrics = step_fn(state, batch)
      done, pending = step + 1, pending + 1
      log_now = done % loop.log_every == 0 or done == loop.num_steps
      save_now = done % loop.checkpoint_every == 0 or done == loop.num_steps
      if log_now or save_now:
        metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, done, phase, ckpt.directory)
        scalars = {k: float(v) for k, v in metrics.items() if v.ndim == 0}
        writer.scalars(log_offset + done, scalars, f"{phase}/")
        progress.update(pending, {"loss": scalars["loss"]})
        pending = 0
      if save_now:
        ckpt.save(done, state, {"phase": phase, **(meta or {}),
                                "data_iterator": input_pipeline.iterator_state(train_iter)})
  finally:
    progress.close()
    ckpt.wait()
  return state
