"""The student's description: its teachers (each a group of tasks) and its branch points.

A student branches once per *teacher*: a single-task SegNet teacher, or a finished kajax
student used as a multi-task teacher (option B, ``kajax.teacher_model.StudentTeacher``).
:class:`StudentSpec` lists those teachers; it is what ``kajax.student_model``'s modules are
built from and what an exported student stores (``kajax.export``). Teachers must share one
SegNet geometry (arch and width): otherwise their blocks could not be spliced into one
network, and the error says which teacher differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp

from kajax.gates import check_gate_form
from kajax.segnet import ARCH_CONVS, NUM_BRANCH_POINTS


@dataclasses.dataclass(frozen=True)
class StudentSpec:
  """What the student is made of: one branch (group of tasks) per teacher.

  Attributes:
    teachers: teacher models (``kajax.teacher_model``), in branch order. Each has ``name``
      (used in parameter names), ``tasks``, ``arch``, ``width_multiplier`` and ``tail``.
    gate_form: 'identity' (default) or 'port' (see ``kajax.gates``).
    trunk_task: task whose teacher initialises the encoder and trunk; None picks the first
      task whose name starts with 'seg', else the first task.
    input_coords: whether the student appends coordinate channels to its image
      (``kajax.segnet.with_coordinate_channels``); None: as its trunk teacher does. A
      student may add them to a trunk teacher without them (their weights start at zero,
      ``kajax.student_init``), not drop them.
  """
  teachers: tuple[Any, ...]
  gate_form: str = "identity"
  trunk_task: str | None = None
  input_coords: bool | None = None

  def __post_init__(self):
    object.__setattr__(self, "teachers", tuple(self.teachers))
    if not self.teachers:
      raise ValueError("StudentSpec.teachers is empty; give at least one teacher.")
    names = [t.name for t in self.teachers]
    for name in names:
      if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"Teacher name {name!r} must be a non-empty string without '/' "
                         "(it becomes part of parameter names).")
    if len(set(names)) != len(names):
      raise ValueError(f"Teacher names {names} are not unique; give each teacher its own "
                       "name (--config.teachers.<name>).")
    owner: dict[str, str] = {}
    for teacher in self.teachers:
      for task in teacher.tasks:
        if task in owner:
          raise ValueError(
              f"Task {task!r} is given twice: by teacher {owner[task]!r} and by teacher "
              f"{teacher.name!r}. Each task needs exactly one teacher; remove it from one of "
              "them (--config.teachers.<name>) or rename the task.")
        owner[task] = teacher.name
    geometry = {(t.arch, float(t.width_multiplier)) for t in self.teachers}
    if len(geometry) != 1:
      described = ", ".join(f"{t.name} ({t.kind}): {t.arch} x{t.width_multiplier}"
                            for t in self.teachers)
      raise ValueError(
          "All teachers must share one encoder (SegNet arch and width_multiplier) so their "
          f"blocks can be spliced into one student; got {described}. Convert, train or "
          "amalgamate the teachers with the same preset and width.")
    if self.arch not in ARCH_CONVS:
      raise ValueError(f"StudentSpec arch {self.arch!r} is not one of {sorted(ARCH_CONVS)}.")
    check_gate_form(self.gate_form)
    if self.trunk_task is None:
      seg = [t for t in self.tasks if t.startswith("seg")]
      object.__setattr__(self, "trunk_task", seg[0] if seg else self.tasks[0])
    elif self.trunk_task not in self.tasks:
      raise ValueError(f"trunk_task={self.trunk_task!r} is not one of the student's tasks "
                       f"{self.tasks}.")
    trunk_coords = bool(self.trunk_teacher.input_coords)
    if self.input_coords is None:
      object.__setattr__(self, "input_coords", trunk_coords)
    elif not isinstance(self.input_coords, bool):
      raise ValueError(f"input_coords={self.input_coords!r} must be True, False or None (as "
                       "the trunk teacher).")
    elif trunk_coords and not self.input_coords:
      raise ValueError(
          f"input_coords=False, but the trunk teacher {self.trunk_teacher.name!r} reads "
          "coordinate channels and the student starts from its encoder; leave "
          "--config.input_coords unset (or True), or pick another --config.trunk_task.")

  @property
  def arch(self) -> str:
    return self.teachers[0].arch

  @property
  def width_multiplier(self) -> float:
    return float(self.teachers[0].width_multiplier)

  @property
  def tasks(self) -> tuple[str, ...]:
    """Every task of every teacher, in branch order."""
    return tuple(task for t in self.teachers for task in t.tasks)

  @property
  def teacher_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.teachers)

  def teacher_of(self, task: str) -> Any:
    """The teacher (branch) that supervises ``task``."""
    for teacher in self.teachers:
      if task in teacher.tasks:
        return teacher
    raise ValueError(f"Task {task!r} is not in this student; its tasks are {self.tasks}.")

  @property
  def trunk_teacher(self) -> Any:
    """The teacher whose encoder and trunk path initialise the student's."""
    return self.teacher_of(self.trunk_task)

  def extras(self) -> dict[str, dict[str, Any]]:
    """Readout settings of every task (``kajax.tasks``), from its teacher."""
    return {task: dict(extra) for t in self.teachers for task, extra in t.extras.items()}

  def num_outputs(self) -> dict[str, int]:
    """Output channels of every task."""
    return {task: n for t in self.teachers for task, n in t.num_outputs_by_task.items()}


def check_branch_points(spec: StudentSpec, branch_points: Sequence[int]) -> tuple[int, ...]:
  """Validates one static branch point per teacher in 0..4; returns them as ints."""
  branch_points = tuple(branch_points)
  if len(branch_points) != len(spec.teachers):
    raise ValueError(f"branch_points={branch_points} must give one branch point per teacher "
                     f"{spec.teacher_names}.")
  for name, k in zip(spec.teacher_names, branch_points):
    if isinstance(k, bool) or not isinstance(k, (int, jnp.integer)) or not (
        0 <= int(k) < NUM_BRANCH_POINTS):
      raise ValueError(f"Branch point {k!r} of teacher {name!r} is out of range; it must be "
                       f"an integer in 0..{NUM_BRANCH_POINTS - 1} (number of shared decoder "
                       "blocks).")
  return tuple(int(k) for k in branch_points)
