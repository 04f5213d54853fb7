"""What a user sees while training: a progress bar per phase and TensorBoard logs.

Only process 0 writes (multi-host runs would otherwise print N bars and N event files).
TensorBoard files go to ``WORKDIR/tensorboard`` (tensorboardX; no TensorFlow needed), also
when the workdir is in a bucket (``gs://``, through ``etils.epath``). Besides the scalars of
each phase the writer records the run's config as text and as hyper-parameters (the
TensorBoard HPARAMS tab compares runs by them).
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any, Iterable, Mapping

import numpy as np
import tqdm
from etils import epath

from kajax import multihost, storage


class PhaseProgress:
  """A tqdm bar for one training phase showing step, loss and ETA (process 0 only)."""

  def __init__(self, phase: str, total_steps: int, initial_step: int = 0):
    self._bar = None
    if multihost.is_main_process():
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


class _EpathEventFile:
  """A TensorBoard event file in an object store: buffered, the whole object rewritten on
  each flush (objects cannot be appended to; tensorboardX's own gs:// writer needs the
  google-cloud-storage client, this one only ``etils.epath``)."""

  def __init__(self, path: str):
    self._path, self._buffer = epath.Path(path), io.BytesIO()

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    self._path.write_bytes(self._buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathEventFileFactory:
  def open(self, path: str) -> _EpathEventFile:
    return _EpathEventFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _register_bucket_writers() -> None:
  from tensorboardX import record_writer
  record_writer.register_writer_factory("gs", _EpathEventFileFactory())


def flatten_config(config: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
  """A (nested) config as ``{'optimizer.learning_rate': 0.001, ...}`` of plain values."""
  items = config.items() if hasattr(config, "items") else {}
  flat: dict[str, bool | int | float | str] = {}
  for key, value in items:
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      flat.update(flatten_config(value, name + "."))
    elif isinstance(value, (bool, int, float, str)):
      flat[name] = value
    else:  # Tuples, None: as text, so they still identify the run.
      flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
  return flat


class Writer:
  """Scalars, text, hyper-parameters and image grids to TensorBoard (process 0 only)."""

  def __init__(self, workdir: str | os.PathLike):
    self._writer = None
    if multihost.is_main_process():
      from tensorboardX import SummaryWriter  # Imported lazily: slow import.
      _register_bucket_writers()
      self._writer = SummaryWriter(storage.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: Mapping[str, Any], prefix: str = "") -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(prefix + name, float(value), step)

  def text(self, step: int, tag: str, text: str) -> None:
    if self._writer is not None:
      self._writer.add_text(tag, text, step)

  def config(self, config: Any, metrics: Iterable[str] = ()) -> None:
    """The run's config as text (JSON) and as hyper-parameters.

    Args:
      config: the run's ConfigDict.
      metrics: scalar tags the HPARAMS tab shows next to the hyper-parameters.
    """
    if self._writer is None:
      return
    text = config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort") \
        else json.dumps(config, indent=2, default=str)
    # Indented: TensorBoard renders text as Markdown, and a code block keeps the layout.
    self._writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)
    from tensorboardX.summary import hparams
    for summary in hparams(flatten_config(config), {m: 0.0 for m in metrics}):
      self._writer.file_writer.add_summary(summary)

  def image(self, step: int, tag: str, image_hwc_uint8: np.ndarray) -> None:
    if self._writer is not None:
      self._writer.add_image(tag, np.asarray(image_hwc_uint8), step, dataformats="HWC")

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class _KajaxInfoOnly:
  """absl-handler filter: warnings and errors from everyone, INFO only from kajax itself."""

  _PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

  def filter(self, record: Any) -> bool:
    return record.levelno >= 30 or record.pathname.startswith(self._PACKAGE_DIR)


def show_status_lines() -> None:
  """INFO verbosity for kajax's status lines without the INFO chatter of other libraries
  (Orbax logs every checkpoint step). For ``kajax.main`` when ``--verbosity`` is not given."""
  from absl import logging
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _KajaxInfoOnly) for f in handler.filters):
    handler.addFilter(_KajaxInfoOnly())
