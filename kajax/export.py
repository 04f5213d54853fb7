"""The deployable (pruned) student: only the blocks its branch points use, saved once.

A student directory holds ``student.json`` (tasks, output channels, heads, geometry, gate form,
branch points, per-task readout settings, parameter count, and ``input``: the resolution
``image_size`` [H, W] it was trained at and the RGB ``mean``/``std`` its inputs are normalised
with, which ``kajax.predict`` repeats) and ``variables/`` (Orbax). Blocks
that no task uses — trunk blocks past the deepest branch point, the gates of other candidate
branch points — are not part of ``kajax.student.Student`` and so never exported; KamalEngine
keeps them (a known defect).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from etils import epath

from kajax import multihost, segnet, storage, student_model, student_spec, teacher_files

INFO_FILE = "student.json"
VARIABLES_DIR = "variables"


def save_student(out_dir: str, spec: student_spec.StudentSpec, branch_points: Sequence[int],
                 variables: Any, extras: Mapping[str, Mapping[str, Any]],
                 input_info: Mapping[str, Any] | None = None) -> str:
  """Writes the student directory atomically (``kajax.storage.atomic_directory``).

  Called by every process: process 0 writes, then all wait until it is written, so every
  process may read it when this returns. ``input_info``: ``{'image_size': [H, W], 'mean':
  [3], 'std': [3]}`` of training (``kajax.input_pipeline.image_size_and_normalization``);
  None for unknown.
  """
  out_dir = os.fspath(storage.resolve(out_dir))
  variables = jax.tree_util.tree_map(np.asarray, jax.device_get(variables))
  info = {
      "tasks": list(spec.tasks), "num_outputs": list(spec.num_outputs),
      "heads": list(spec.heads), "arch": spec.arch,
      "width_multiplier": spec.width_multiplier, "gate_form": spec.gate_form,
      "trunk_task": spec.trunk_task, "branch_points": [int(k) for k in branch_points],
      "extras": {t: dict(extras.get(t, {})) for t in spec.tasks},
      "params": segnet.count_params(variables["params"]),
  }
  if input_info is not None:
    info["input"] = dict(input_info)
  if multihost.is_main_process():
    with storage.atomic_directory(out_dir, INFO_FILE) as tmp:
      checkpointer = teacher_files.process_local_checkpointer()  # Process 0 writes alone.
      try:
        checkpointer.save(tmp / VARIABLES_DIR, variables)
        checkpointer.wait_until_finished()
      finally:
        checkpointer.close()
      storage.write_json(tmp / INFO_FILE, info)  # Last: it marks the directory complete.
  multihost.sync("student exported")  # Other hosts read it next (evaluation).
  return out_dir


def read_info(student_dir: str) -> dict[str, Any]:
  """The ``student.json`` of a student directory (cheap: no variables are read)."""
  info_path = epath.Path(student_dir) / INFO_FILE
  if not info_path.exists():
    raise FileNotFoundError(f"{student_dir} is not an exported kajax student (no {INFO_FILE}"
                            "); point at WORKDIR/student of a finished amalgamation run.")
  return storage.read_json(info_path)


def load_student(student_dir: str) -> tuple[student_model.Student, Any, dict[str, Any]]:
  """Loads a student directory. Returns (module, variables, info)."""
  info = read_info(student_dir)
  spec = student_spec.StudentSpec(tuple(info["tasks"]), tuple(info["num_outputs"]),
                             tuple(info["heads"]), info["arch"], info["width_multiplier"],
                             info["gate_form"], info["trunk_task"])
  module = student_model.Student(spec, tuple(info["branch_points"]))
  checkpointer = teacher_files.process_local_checkpointer()
  try:
    variables = checkpointer.restore(storage.resolve(student_dir) / VARIABLES_DIR)
  finally:
    checkpointer.close()
  return module, variables, info
