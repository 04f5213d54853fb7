"""What a user sees while training: a progress bar per phase and TensorBoard logs.

Only process 0 writes (multi-host runs would otherwise print N bars and N event files).
TensorBoard files go to ``WORKDIR/tensorboard`` (tensorboardX; no TensorFlow needed).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

import jax
import numpy as np
import tqdm


class PhaseProgress:
  """A tqdm bar for one training phase showing step, loss and ETA."""

  def __init__(self, phase: str, total_steps: int, initial_step: int = 0):
    self._bar = None
    if jax.process_index() == 0:
      self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc=phase, unit="step",
                            dynamic_ncols=True, file=sys.stdout,
                            mininterval=0.5 if sys.stdout.isatty() else 10.0)

  def update(self, steps: int, metrics: Mapping[str, float] | None = None) -> None:
    if self._bar is None:
      return
    if metrics:
      self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()},
                            refresh=False)
    self._bar.update(steps)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class Writer:
  """Scalars, text and image grids to TensorBoard (process 0 only)."""

  def __init__(self, workdir: str):
    self._writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # Imported lazily: slow import.
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: Mapping[str, Any], prefix: str = "") -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(prefix + name, float(value), step)

  def text(self, step: int, tag: str, text: str) -> None:
    if self._writer is not None:
      self._writer.add_text(tag, text, step)

  def image(self, step: int, tag: str, image_hwc_uint8: np.ndarray) -> None:
    if self._writer is not None:
      self._writer.add_image(tag, np.asarray(image_hwc_uint8), step, dataformats="HWC")

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
