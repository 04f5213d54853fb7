"""The deployable (pruned) student: only the blocks its branch points use, saved once.

A student directory holds ``student.json`` (tasks, its teachers' descriptions, branch points,
per-task readout settings, parameter count, and ``input``: the resolution ``image_size``
[H, W] it was trained at and the RGB ``mean``/``std`` its inputs are normalised with, which
``kajax.predict`` repeats) and ``variables/`` (Orbax). Blocks that no task uses — trunk
blocks past the deepest branch point, the gates of other candidate branch points — are not
part of ``kajax.student_model.Student`` and so never exported; KamalEngine keeps them (a
known defect).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from etils import epath

from kajax import (multihost, segnet, storage, student_model, student_spec, teacher_files,
                   teacher_model)

INFO_FILE = "student.json"
VARIABLES_DIR = "variables"


def is_student_dir(path: str) -> bool:
  """Whether ``path`` is an exported student (it holds ``student.json``)."""
  return (epath.Path(path) / INFO_FILE).exists()


def save_student(out_dir: str, spec: student_spec.StudentSpec, branch_points: Sequence[int],
                 variables: Any, input_info: Mapping[str, Any] | None = None) -> str:
  """Writes the student directory atomically (``kajax.storage.atomic_directory``).

  ``student.json`` holds the full description of the student's teachers (recursively: an
  option-B student records the student it grew from), so any student directory can serve
  as a teacher itself (``kajax.teacher_model.StudentTeacher``). Called by every process:
  process 0 writes, then all wait until it is written, so every process may read it when
  this returns. ``input_info``: ``{'image_size': [H, W], 'mean': [3], 'std': [3]}`` of
  training (``kajax.input_pipeline.image_size_and_normalization``); None for unknown.
  """
  out_dir = os.fspath(storage.resolve(out_dir))
  variables = jax.tree_util.tree_map(np.asarray, jax.device_get(variables))
  ks = student_spec.check_branch_points(spec, branch_points)
  info = {
      "tasks": list(spec.tasks), "teachers": list(spec.teacher_names),
      "branch_points": list(ks), "arch": spec.arch,
      "width_multiplier": spec.width_multiplier,
      "num_outputs": spec.num_outputs(), "extras": spec.extras(),
      "params": segnet.count_params(variables["params"]),
      "spec": teacher_model.spec_to_dict(spec),
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
  info = storage.read_json(info_path)
  if "spec" not in info:  # Written before students recorded their teachers: SegNets only.
    teachers = teacher_model.segnet_teachers(
        info["tasks"], info["num_outputs"], info["heads"], info["arch"],
        info["width_multiplier"], info.get("extras"))
    info["spec"] = teacher_model.spec_to_dict(student_spec.StudentSpec(
        teachers, info["gate_form"], info.get("trunk_task")))
    info["teachers"] = list(info["tasks"])
  return info


def spec_of(info: Mapping[str, Any]) -> tuple[student_spec.StudentSpec, tuple[int, ...]]:
  """(spec, branch points) described by a ``student.json``."""
  return teacher_model.spec_from_dict(info["spec"]), tuple(info["branch_points"])


def load_student(student_dir: str) -> tuple[student_model.Student, Any, dict[str, Any]]:
  """Loads a student directory. Returns (module, variables, info)."""
  info = read_info(student_dir)
  spec, branch_points = spec_of(info)
  module = student_model.Student(spec, branch_points)
  checkpointer = teacher_files.process_local_checkpointer()
  try:
    variables = checkpointer.restore(storage.resolve(student_dir) / VARIABLES_DIR)
  finally:
    checkpointer.close()
  return module, variables, info
