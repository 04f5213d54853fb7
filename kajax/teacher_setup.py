"""The frozen teachers of an amalgamation run: find them, train the missing ones, load them.

``config.teachers`` maps each task to a block with ``dir`` (a teacher directory: converted
from PyTorch by ``kajax.convert_torch`` or exported by teacher training) and optionally
``train_config`` (a teacher config used to train it first when ``dir`` holds no teacher —
how the demo gets its teachers). Relative ``dir`` paths are taken inside the workdir.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from kajax import multihost, segnet, storage, tasks, teacher_files


@dataclasses.dataclass(frozen=True)
class Teacher:
  """One frozen teacher: its module, its variables and its metadata."""
  task: str
  module: segnet.SegNet
  variables: Any
  info: teacher_files.TeacherInfo


def teacher_dir(config: ml_collections.ConfigDict, task: str, workdir: str) -> str:
  path = os.path.expanduser(config.teachers[task].dir)
  return path if os.path.isabs(path) or storage.is_url(path) else storage.join(workdir, path)


def ensure_teachers(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains every teacher whose directory is empty and that has a ``train_config``."""
  from kajax import train_teacher  # Only needed when something must be trained.
  for task in config.tasks:
    path = teacher_dir(config, task, workdir)
    # Decided once: processes that disagreed would run different collectives and hang.
    if multihost.broadcast_decision(teacher_files.is_teacher_dir(path)):
      continue
    block = config.teachers[task]
    if not block.get("train_config"):
      raise FileNotFoundError(
          f"No teacher for task {task!r} in {path} (--config.teachers.{task}.dir). Convert a "
          "PyTorch checkpoint there with `python -m kajax.convert_torch --checkpoint=... "
          f"--task={task} --output_dir={path}`, or train one with a teacher config.")
    teacher_config = ml_collections.ConfigDict(block.train_config)
    with teacher_config.unlocked():
      teacher_config.export_dir = path
      if not teacher_config.get("data_dir"):
        teacher_config.data_dir = config.get("data_dir", "")
    multihost.log("Training the %s teacher (no teacher in %s yet)...", task, path)
    # Exports (process 0) and waits for every process: all may load it afterwards.
    train_teacher.train_and_evaluate(teacher_config, storage.join(workdir, "teacher_runs",
                                                                  task))


def load_teachers(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Teacher]:
  """Loads one teacher per task of ``config.tasks``; checks tasks and splicing geometry."""
  loaded = {}
  for task in config.tasks:
    tasks.check_task(task, "--config.tasks entry")
    path = teacher_dir(config, task, workdir)
    module, variables, info = teacher_files.load_teacher(path)
    if info.task != task:
      raise ValueError(f"--config.teachers.{task}.dir={path} holds a {info.task!r} teacher, "
                       f"not a {task!r} one; point it at the right directory.")
    loaded[task] = Teacher(task, module, jax.device_get(variables), info)
  geometry = {t: (tc.info.arch, tc.info.width_multiplier) for t, tc in loaded.items()}
  if len(set(geometry.values())) > 1:
    raise ValueError("Teachers cannot be spliced into one student: their encoders differ "
                     f"(arch, width_multiplier) = {geometry}. Use teachers of one geometry.")
  return loaded
