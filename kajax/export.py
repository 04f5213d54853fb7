"""The deployable (pruned) student: only the blocks its branch points use, saved once.

A student directory holds ``student.json`` (tasks, output channels, heads, geometry, gate form,
branch points, per-task readout settings, parameter count) and ``variables/`` (Orbax). Blocks
that no task uses — trunk blocks past the deepest branch point, the gates of other candidate
branch points — are not part of ``kajax.student.Student`` and so never exported; KamalEngine
keeps them (a known defect).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from kajax import segnet, student_model, student_spec, teacher_files

INFO_FILE = "student.json"
VARIABLES_DIR = "variables"


def save_student(out_dir: str, spec: student_spec.StudentSpec, branch_points: Sequence[int],
                 variables: Any, extras: Mapping[str, Mapping[str, Any]]) -> str:
  """Writes the student directory atomically (temporary sibling, then rename)."""
  out_dir = os.path.abspath(out_dir)
  variables = jax.tree_util.tree_map(np.asarray, jax.device_get(variables))
  info = {
      "tasks": list(spec.tasks), "num_outputs": list(spec.num_outputs),
      "heads": list(spec.heads), "arch": spec.arch,
      "width_multiplier": spec.width_multiplier, "gate_form": spec.gate_form,
      "trunk_task": spec.trunk_task, "branch_points": [int(k) for k in branch_points],
      "extras": {t: dict(extras.get(t, {})) for t in spec.tasks},
      "params": segnet.count_params(variables["params"]),
  }
  if jax.process_index() != 0:
    return out_dir
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".student-", dir=parent)
  try:
    checkpointer = teacher_files.process_local_checkpointer()  # Process 0 writes alone.
    checkpointer.save(os.path.join(tmp, VARIABLES_DIR), variables)
    checkpointer.wait_until_finished()
    checkpointer.close()
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
      json.dump(info, f, indent=2)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def load_student(student_dir: str) -> tuple[student_model.Student, Any, dict[str, Any]]:
  """Loads a student directory. Returns (module, variables, info)."""
  info_path = os.path.join(student_dir, INFO_FILE)
  if not os.path.isfile(info_path):
    raise FileNotFoundError(f"{student_dir} is not an exported kajax student (no {INFO_FILE}"
                            "); point at WORKDIR/student of a finished amalgamation run.")
  with open(info_path) as f:
    info = json.load(f)
  spec = student_spec.StudentSpec(tuple(info["tasks"]), tuple(info["num_outputs"]),
                             tuple(info["heads"]), info["arch"], info["width_multiplier"],
                             info["gate_form"], info["trunk_task"])
  module = student_model.Student(spec, tuple(info["branch_points"]))
  checkpointer = teacher_files.process_local_checkpointer()
  variables = checkpointer.restore(os.path.abspath(os.path.join(student_dir, VARIABLES_DIR)))
  checkpointer.close()
  return module, variables, info
