"""The frozen teachers of an amalgamation run: find them, train the missing ones, load them.

``config.teachers`` maps each teacher's *name* to a block with ``dir`` and optionally
``train_config``. ``dir`` is either

* a teacher directory (one task: converted from PyTorch by ``kajax.convert_torch`` or
  exported by teacher training), or
* an exported student directory (``WORKDIR/student`` of a finished run): the student becomes
  a multi-task teacher and the run adds the other teachers' tasks to it (option B). Nothing
  else is needed: the directory's ``student.json`` is detected.

A single-task teacher is named after its task by convention (``teachers.seg``); when the name
is a task name the directory must hold that task. ``train_config`` (a teacher config) trains
the teacher first when ``dir`` holds nothing yet — how the demos get their teachers.

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

from kajax import export, multihost, segnet, storage, tasks, teacher_files, teacher_model


@dataclasses.dataclass(frozen=True)
class Teacher:
  """One frozen teacher: its model (``kajax.teacher_model``), variables and origin."""
  name: str
  model: Any
  variables: Any
  path: str

  @property
  def tasks(self) -> tuple[str, ...]:
    return self.model.tasks

  @property
  def params(self) -> int:
    return segnet.count_params(self.variables["params"])

  def describe(self) -> str:
    what = "student" if self.model.kind == "student" else "teacher"
    return f"teachers.{self.name} ({what} {self.path})"


WORKDIR_PREFIX = "{workdir}"


def resolve_dir(path: str, workdir: str) -> str:
  """``{workdir}/x`` -> WORKDIR/x (also in a ``gs://`` workdir); otherwise a user-typed path:
  ``~`` expanded, relative -> from the current directory, URLs unchanged."""
  if path.startswith(WORKDIR_PREFIX):
    return storage.join(workdir, path[len(WORKDIR_PREFIX):].lstrip("/"))
  return os.fspath(storage.resolve(path))


def teacher_dir(config: ml_collections.ConfigDict, name: str, workdir: str) -> str:
  """The resolved ``--config.teachers.<name>.dir`` (see :func:`resolve_dir`)."""
  if not config.teachers[name].get("dir"):
    raise ValueError(f"--config.teachers.{name}.dir is empty; point it at a teacher directory "
                     "or at WORKDIR/student of a finished amalgamation run.")
  return resolve_dir(config.teachers[name].dir, workdir)


def _missing_teacher_hint(config: ml_collections.ConfigDict, name: str, workdir: str) -> str:
  """Points at a teacher inside the workdir when a relative dir was meant as one."""
  typed = config.teachers[name].dir
  if (typed.startswith(WORKDIR_PREFIX) or storage.is_url(typed)
      or os.path.isabs(os.path.expanduser(typed))):
    return ""
  inside = storage.join(workdir, typed)
  if _has_teacher(inside):
    return (f" (There is one in {inside}: relative paths are taken from the current "
            f"directory; write --config.teachers.{name}.dir={WORKDIR_PREFIX}/{typed} to use "
            "the workdir's.)")
  return ""


def _has_teacher(path: str) -> bool:
  return teacher_files.is_teacher_dir(path) or export.is_student_dir(path)


def ensure_teachers(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains every teacher whose directory is empty and that has a ``train_config``."""
  from kajax import train_teacher  # Only needed when something must be trained.
  for name in config.teachers:
    path = teacher_dir(config, name, workdir)
    # Decided once: processes that disagreed would run different collectives and hang.
    if multihost.broadcast_decision(_has_teacher(path)):
      continue
    block = config.teachers[name]
    if not block.get("train_config"):
      raise FileNotFoundError(
          f"No teacher or student in {path} (--config.teachers.{name}.dir={block.dir}). "
          "Convert a PyTorch checkpoint there with `python -m kajax.convert_torch "
          f"--checkpoint=... --task=TASK --output_dir={path}`, train one with a teacher "
          "config, or point it at WORKDIR/student of a finished amalgamation run."
          + _missing_teacher_hint(config, name, workdir))
    teacher_config = ml_collections.ConfigDict(block.train_config)
    with teacher_config.unlocked():
      teacher_config.export_dir = path
      if not teacher_config.get("data_dir"):
        teacher_config.data_dir = config.get("data_dir", "")
    multihost.log("Training the %s teacher (no teacher in %s yet)...", name, path)
    # Exports (process 0) and waits for every process: all may load it afterwards.
    train_teacher.train_and_evaluate(teacher_config, storage.join(workdir, "teacher_runs",
                                                                  name))


def _load_one(name: str, path: str) -> Teacher:
  if export.is_student_dir(path):
    _, variables, info = export.load_student(path)
    spec, branch_points = export.spec_of(info)
    model = teacher_model.StudentTeacher(name, spec, branch_points)
  else:
    _, variables, info = teacher_files.load_teacher(path)
    if name in tasks.registered() and info.task != name:
      raise ValueError(f"--config.teachers.{name}.dir={path} holds a {info.task!r} teacher, "
                       f"not a {name!r} one; point it at the right directory.")
    model = teacher_model.from_teacher_info(name, info)
  return Teacher(name, model, jax.device_get(variables), path)


def check_teachers(loaded: dict[str, Teacher], task_names: tuple[str, ...]) -> None:
  """Clear errors for teachers that cannot form one student with ``--config.tasks``."""
  geometry = {(t.model.arch, float(t.model.width_multiplier)) for t in loaded.values()}
  if len(geometry) > 1:
    described = "; ".join(f"{t.describe()}: {t.model.arch}, width_multiplier "
                          f"{t.model.width_multiplier}" for t in loaded.values())
    raise ValueError(
        "These teachers cannot be spliced into one student: their encoders differ. "
        f"{described}. Use teachers of one encoder: train or convert the odd one with the "
        "same arch and width_multiplier (e.g. --config.teachers.<name>.train_config.model."
        "width_multiplier); a student directory can only take teachers of its own encoder.")
  owner: dict[str, Teacher] = {}
  for teacher in loaded.values():
    for task in teacher.tasks:
      if task in owner:
        raise ValueError(
            f"Task {task!r} is given twice: by {owner[task].describe()} and by "
            f"{teacher.describe()}. Each task needs exactly one teacher; drop one of them "
            "from --config.teachers.")
      owner[task] = teacher
  if set(owner) != set(task_names):
    raise ValueError(
        f"--config.tasks={task_names} but the teachers supervise {tuple(owner)} ("
        + "; ".join(f"{t.describe()}: {', '.join(t.tasks)}" for t in loaded.values())
        + "). Make --config.tasks list exactly the teachers' tasks.")


def load_teachers(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Teacher]:
  """Loads every teacher of ``config.teachers``; checks tasks and splicing geometry.

  Returns the teachers in the order of ``config.tasks`` (a teacher comes where its first
  task does): the student's branch order, and the order of ``--config.branch.override``.
  """
  task_names = tuple(config.tasks)
  for task in task_names:
    tasks.check_task(task, "--config.tasks entry")
  loaded = {name: _load_one(name, teacher_dir(config, name, workdir))
            for name in config.teachers}
  check_teachers(loaded, task_names)
  order = sorted(loaded, key=lambda n: min(task_names.index(t) for t in loaded[n].tasks))
  return {name: loaded[name] for name in order}
