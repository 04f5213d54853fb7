"""The frozen teachers of an amalgamation run: find them, train the missing ones, load them.

``config.teachers`` maps each task to a block with ``dir`` (a teacher directory: converted
from PyTorch by ``kajax.convert_torch`` or exported by teacher training) and optionally
``train_config`` (a teacher config used to train it first when ``dir`` holds no teacher —
how the demo gets its teachers).

``dir`` means what it means in a shell: a relative path is taken from the current directory
(``--config.teachers.seg.dir=teachers/seg`` right after ``convert_torch
--output_dir=teachers/seg``). Only a path starting with ``{workdir}`` is inside the run's
workdir: the demo's default ``{workdir}/teachers/<task>`` keeps the teachers it trains next
to the student.
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


WORKDIR_PREFIX = "{workdir}"


def resolve_dir(path: str, workdir: str) -> str:
  """``{workdir}/x`` -> WORKDIR/x (also in a ``gs://`` workdir); otherwise a user-typed path:
  ``~`` expanded, relative -> from the current directory, URLs unchanged."""
  if path.startswith(WORKDIR_PREFIX):
    return storage.join(workdir, path[len(WORKDIR_PREFIX):].lstrip("/"))
  return os.fspath(storage.resolve(path))


def teacher_dir(config: ml_collections.ConfigDict, task: str, workdir: str) -> str:
  """The resolved ``--config.teachers.<task>.dir`` (see :func:`resolve_dir`)."""
  return resolve_dir(config.teachers[task].dir, workdir)


def _missing_teacher_hint(config: ml_collections.ConfigDict, task: str, workdir: str) -> str:
  """Points at a teacher inside the workdir when a relative dir was meant as one."""
  typed = config.teachers[task].dir
  if (typed.startswith(WORKDIR_PREFIX) or storage.is_url(typed)
      or os.path.isabs(os.path.expanduser(typed))):
    return ""
  inside = storage.join(workdir, typed)
  if teacher_files.is_teacher_dir(inside):
    return (f" (There is one in {inside}: relative paths are taken from the current "
            f"directory; write --config.teachers.{task}.dir={WORKDIR_PREFIX}/{typed} to use "
            "the workdir's.)")
  return ""


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
          f"No teacher for task {task!r} in {path} (--config.teachers.{task}.dir="
          f"{block.dir}). Convert a "
          "PyTorch checkpoint there with `python -m kajax.convert_torch --checkpoint=... "
          f"--task={task} --output_dir={path}`, or train one with a teacher config."
          + _missing_teacher_hint(config, task, workdir))
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
