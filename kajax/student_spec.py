"""The student's description: tasks, their teachers' geometry, and branch points.

:class:`StudentSpec` is what ``kajax.student``'s modules are built from and what an exported
student stores (``kajax.export``); :func:`spec_from_teachers` derives it from the teachers and
refuses teachers whose blocks could not be spliced into one network.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax.numpy as jnp

from kajax.gates import check_gate_form
from kajax.segnet import ARCH_CONVS, HEADS, NUM_BRANCH_POINTS, SegNet


@dataclasses.dataclass(frozen=True)
class StudentSpec:
  """What the student is made of: one entry per task, all teachers of one SegNet geometry.

  Attributes:
    tasks: task names, e.g. ('seg', 'depth'); used in parameter names.
    num_outputs: output channels per task (e.g. (13, 1)).
    heads: SegNet head per task ('conv' or 'conv_bn_relu', see ``kajax.segnet.HEADS``).
    arch: SegNet preset shared by all teachers, e.g. 'segnet_vgg16_bn'.
    width_multiplier: channel multiplier shared by all teachers.
    gate_form: 'identity' (default) or 'port' (see ``kajax.gates``).
    trunk_task: task whose teacher initialises the encoder and trunk; None picks the first
      task whose name starts with 'seg', else ``tasks[0]``.
  """
  tasks: tuple[str, ...]
  num_outputs: tuple[int, ...]
  heads: tuple[str, ...]
  arch: str = "segnet_vgg16_bn"
  width_multiplier: float = 1.0
  gate_form: str = "identity"
  trunk_task: str | None = None

  def __post_init__(self):
    for name in ("tasks", "num_outputs", "heads"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    n = len(self.tasks)
    if n < 1:
      raise ValueError("StudentSpec.tasks is empty; give at least one task name.")
    if len(self.num_outputs) != n or len(self.heads) != n:
      raise ValueError(f"StudentSpec: tasks={self.tasks} needs one num_outputs and one head "
                       f"per task, got num_outputs={self.num_outputs}, heads={self.heads}.")
    if len(set(self.tasks)) != n:
      raise ValueError(f"StudentSpec.tasks={self.tasks} has duplicate names.")
    for task in self.tasks:
      if not isinstance(task, str) or not task or "/" in task:
        raise ValueError(f"StudentSpec task name {task!r} must be a non-empty string "
                         "without '/' (it becomes part of parameter names).")
    for task, c in zip(self.tasks, self.num_outputs):
      if not isinstance(c, int) or c < 1:
        raise ValueError(f"StudentSpec.num_outputs for task {task!r} is {c!r}; "
                         "it must be a positive integer.")
    for task, head in zip(self.tasks, self.heads):
      if head not in HEADS:
        raise ValueError(f"StudentSpec head {head!r} of task {task!r} is not one of {HEADS}.")
    if self.arch not in ARCH_CONVS:
      raise ValueError(f"StudentSpec.arch={self.arch!r} is not one of {sorted(ARCH_CONVS)}.")
    if not float(self.width_multiplier) > 0:
      raise ValueError(f"StudentSpec.width_multiplier={self.width_multiplier!r} must be "
                       "positive.")
    check_gate_form(self.gate_form)
    if self.trunk_task is None:
      seg = [t for t in self.tasks if t.startswith("seg")]
      object.__setattr__(self, "trunk_task", seg[0] if seg else self.tasks[0])
    elif self.trunk_task not in self.tasks:
      raise ValueError(f"StudentSpec.trunk_task={self.trunk_task!r} is not one of the tasks "
                       f"{self.tasks}.")

  def task_index(self, task: str) -> int:
    """Position of ``task`` in ``tasks``; a ValueError naming the known tasks otherwise."""
    if task not in self.tasks:
      raise ValueError(f"Task {task!r} is not in this student; its tasks are {self.tasks}.")
    return self.tasks.index(task)

  def teacher_module(self, task: str) -> SegNet:
    """The (unbound) SegNet of ``task``'s teacher, as this spec describes it."""
    i = self.task_index(task)
    return SegNet(self.num_outputs[i], self.arch, self.width_multiplier, self.heads[i])


def spec_from_teachers(tasks: Sequence[str], teachers: Sequence[Any] | Mapping[str, Any],
                       gate_form: str = "identity", trunk_task: str | None = None
                       ) -> StudentSpec:
  """Builds a :class:`StudentSpec` from the teachers' descriptions.

  Args:
    tasks: task names, in the student's order.
    teachers: per task (a sequence aligned with ``tasks`` or a mapping task -> teacher), a
      ``kajax.teacher_files.TeacherInfo`` or a ``kajax.segnet.SegNet``: anything with
      ``num_outputs``, ``arch``, ``width_multiplier`` and ``head`` attributes.
    gate_form: 'identity' or 'port'.
    trunk_task: see :class:`StudentSpec`.

  Raises:
    ValueError: if the teachers do not share one arch and width multiplier (their blocks could
      not be spliced), or the teachers do not match the tasks.
  """
  tasks = tuple(tasks)
  if isinstance(teachers, Mapping):
    missing = [t for t in tasks if t not in teachers]
    extra = [t for t in teachers if t not in tasks]
    if missing or extra:
      raise ValueError(f"teachers has keys {sorted(teachers)}, tasks are {tasks}: missing "
                       f"{missing}, not in tasks {extra}.")
    teachers = [teachers[t] for t in tasks]
  teachers = list(teachers)
  if len(teachers) != len(tasks):
    raise ValueError(f"Got {len(teachers)} teachers for {len(tasks)} tasks {tasks}.")
  for task, teacher in zip(tasks, teachers):
    own = getattr(teacher, "task", None)
    if own is not None and own != task and task in ("seg", "depth", "normals"):
      raise ValueError(f"The teacher given for task {task!r} is a {own!r} teacher; pass the "
                       "teachers in the order of tasks.")
  geometry = {(t.arch, float(t.width_multiplier)) for t in teachers}
  if len(geometry) != 1:
    described = ", ".join(f"{task}: {t.arch} x{t.width_multiplier}"
                          for task, t in zip(tasks, teachers))
    raise ValueError("All teachers must share one SegNet arch and width_multiplier so their "
                     f"blocks can be spliced into one student; got {described}. Convert or "
                     "train the teachers with the same preset and width.")
  arch, width = geometry.pop()
  return StudentSpec(tasks, tuple(int(t.num_outputs) for t in teachers),
                     tuple(t.head for t in teachers), arch, width, gate_form, trunk_task)


def check_branch_points(spec: StudentSpec, branch_points: Sequence[int]) -> tuple[int, ...]:
  """Validates one static branch point per task in 0..4; returns them as a tuple of ints."""
  branch_points = tuple(branch_points)
  if len(branch_points) != len(spec.tasks):
    raise ValueError(f"branch_points={branch_points} must give one branch point per task "
                     f"{spec.tasks}.")
  for task, k in zip(spec.tasks, branch_points):
    if isinstance(k, bool) or not isinstance(k, (int, jnp.integer)) or not (
        0 <= int(k) < NUM_BRANCH_POINTS):
      raise ValueError(f"Branch point {k!r} of task {task!r} is out of range; it must be an "
                       f"integer in 0..{NUM_BRANCH_POINTS - 1} (number of shared decoder "
                       "blocks).")
  return tuple(int(k) for k in branch_points)
