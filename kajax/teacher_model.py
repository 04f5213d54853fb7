"""What a frozen teacher computes during amalgamation: its outputs and its projections.

A teacher supervises a group of tasks and the student branches once per teacher
(docs/method.md §1, "Three or more tasks"). Two kinds of teacher share one interface:

* :class:`SegNetTeacher` — a single-task SegNet (converted from PyTorch or trained by kajax);
* :class:`StudentTeacher` — a finished kajax student (``WORKDIR/student``) used as a
  multi-task teacher: option B, amalgamating one more teacher into an existing student.

Interface (all static: a teacher model is a hashable description, its variables are passed
separately as part of the frozen ``teachers`` pytree of a compiled step):

* ``outputs(variables, images) -> {task: raw output}``: the full forward pass Y_t;
* ``project(variables, f_k, indices, k) -> {task: raw output}``: the projection of a shared
  feature f_k onto the teacher's domain, i.e. the teacher's own computation after branch point
  k (static), run with the *student's* pooling indices;
* ``tail(k)``: that computation as a module (the student's branch is a trainable copy of it)
  and ``tail_variables(variables, k)`` its variables;
* ``trunk_variables(variables)``: encoder and decoder blocks up5..up2 along the path of the
  teacher's trunk task, which initialise a student's encoder and trunk (step 1).

For a student teacher the tail from k runs its own remaining trunk blocks, then for each of
its branches: the gate and the whole branch when k <= its branch point, or the branch's
remaining blocks when k is past it (that branch has already split off; the new student's
shared blocks stand in for the skipped ones). Teachers serialise to JSON dicts
(:func:`to_dict` / :func:`from_dict`) so an exported student records its teachers and can
itself become a teacher, recursively.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kajax import segnet
from kajax.segnet import DECODER_BLOCKS, ENCODER_BLOCKS
from kajax.student_model import TRUNK_BLOCKS, Student, StudentTail, TaskBranch
from kajax.student_spec import StudentSpec, check_branch_points

Variables = Mapping[str, Mapping[str, Any]]  # {collection: {block name: subtree}}


def _select(variables: Variables, names: Sequence[str]) -> dict[str, dict[str, Any]]:
  """The named top-level entries of every collection (entries a collection lacks are
  skipped: gates have no ``batch_stats``)."""
  return {c: {n: v[n] for n in names if n in v} for c, v in variables.items()}


def _frozen(variables: Any) -> Any:
  return jax.lax.stop_gradient(variables)


class _Projecting:
  """``outputs`` and ``project`` from ``module`` / ``tail`` (shared by both kinds)."""

  def outputs(self, variables: Any, images: jax.Array, dtype: Any = None
              ) -> dict[str, jax.Array]:
    """Y: the teacher's full outputs, inference mode, no gradient.

    ``dtype`` is the compute dtype (None: the variables'); outputs are returned in it.
    """
    out, _ = self.module(dtype).apply(_frozen(variables), images, train=False)
    return dict(self._as_dict(out))

  def project(self, variables: Any, f_k: jax.Array, indices: Sequence[Any], k: int,
              dtype: Any = None) -> dict[str, jax.Array]:
    """The teacher's computation after static branch point k applied to f_k (frozen)."""
    out, _ = self.tail(k, dtype=dtype).apply(_frozen(self.tail_variables(variables, k)), f_k,
                                             tuple(indices), False)
    return out

  def trunk_variables(self, variables: Variables) -> dict[str, dict[str, Any]]:
    """Encoder + up5..up2 along the trunk task's path (initialises a student trunk)."""
    encoder = _select(variables, ENCODER_BLOCKS)
    path = self.trunk_path(self.tail_variables(variables, 0), 0)
    return {c: {**encoder.get(c, {}), **path.get(c, {})} for c in variables}


@dataclasses.dataclass(frozen=True)
class SegNetTeacher(_Projecting):
  """A single-task SegNet teacher.

  Attributes:
    name: the teacher's name (``--config.teachers.<name>``; the task name by convention).
    task: its task (a name registered in ``kajax.tasks``).
    num_outputs, head, arch, width_multiplier: its SegNet (see ``kajax.segnet``).
    extra_json: readout settings of its output (e.g. depth bins), as sorted JSON so the
      description stays hashable.
    input_coords: its SegNet appends coordinate channels to the image (a student whose
      trunk teacher does so does the same).
  """
  name: str
  task: str
  num_outputs: int
  head: str = "conv"
  arch: str = "segnet_vgg16_bn"
  width_multiplier: float = 1.0
  extra_json: str = "{}"
  input_coords: bool = False
  kind = "segnet"

  @property
  def tasks(self) -> tuple[str, ...]:
    return (self.task,)

  @property
  def extras(self) -> dict[str, dict[str, Any]]:
    return {self.task: json.loads(self.extra_json)}

  @property
  def num_outputs_by_task(self) -> dict[str, int]:
    return {self.task: self.num_outputs}

  def module(self, dtype: Any = None) -> segnet.SegNet:
    return segnet.SegNet(self.num_outputs, self.arch, self.width_multiplier, self.head,
                         dtype=dtype, input_coords=self.input_coords)

  def _as_dict(self, out: jax.Array) -> dict[str, jax.Array]:
    return {self.task: out}

  def tail(self, start: int, bn_axis_name: str | None = None,
           param_dtype: Any = jnp.float32, name: str | None = None,
           dtype: Any = None) -> nn.Module:
    return TaskBranch(self.task, start, self.arch, self.num_outputs, self.width_multiplier,
                      self.head, bn_axis_name, param_dtype, dtype, name=name)

  def tail_variables(self, variables: Variables, start: int) -> dict[str, dict[str, Any]]:
    """Variables of ``tail(start)`` from the SegNet's (or from a longer tail's)."""
    return _select(variables, DECODER_BLOCKS[start:])

  def trunk_path(self, tail_variables: Variables, start: int) -> dict[str, dict[str, Any]]:
    return _select(tail_variables, TRUNK_BLOCKS[start:])


@dataclasses.dataclass(frozen=True)
class StudentTeacher(_Projecting):
  """A finished kajax student used as a multi-task teacher (option B).

  Attributes:
    name: the teacher's name (``--config.teachers.<name>``).
    student: the old student's :class:`~kajax.student_spec.StudentSpec`.
    branch_points: the old student's branch points, one per its own teacher.
  """
  name: str
  student: StudentSpec
  branch_points: tuple[int, ...]
  kind = "student"

  def __post_init__(self):
    object.__setattr__(self, "branch_points",
                       check_branch_points(self.student, self.branch_points))

  @property
  def tasks(self) -> tuple[str, ...]:
    return self.student.tasks

  @property
  def arch(self) -> str:
    return self.student.arch

  @property
  def width_multiplier(self) -> float:
    return self.student.width_multiplier

  @property
  def input_coords(self) -> bool:
    return self.student.input_coords

  @property
  def extras(self) -> dict[str, dict[str, Any]]:
    return self.student.extras()

  @property
  def num_outputs_by_task(self) -> dict[str, int]:
    return self.student.num_outputs()

  def module(self, dtype: Any = None) -> Student:
    return Student(self.student, self.branch_points, dtype=dtype)

  def _as_dict(self, out: Mapping[str, jax.Array]) -> Mapping[str, jax.Array]:
    return out

  def tail(self, start: int, bn_axis_name: str | None = None,
           param_dtype: Any = jnp.float32, name: str | None = None,
           dtype: Any = None) -> nn.Module:
    return StudentTail(self.student, self.branch_points, start, bn_axis_name, param_dtype,
                       dtype, name=name)

  def tail_variables(self, variables: Variables, start: int) -> dict[str, dict[str, Any]]:
    """Variables of ``tail(start)`` from the student's (or from a longer tail's): trunk
    blocks from ``start``, the gates still ahead, each branch restricted to what runs."""
    keep = [b for j, b in enumerate(TRUNK_BLOCKS) if start <= j < max(self.branch_points)]
    keep += [f"gate_{t.name}_{k}" for t, k in zip(self.student.teachers, self.branch_points)
             if k >= start]
    out = _select(variables, keep)
    for t, k in zip(self.student.teachers, self.branch_points):
      branch = f"branch_{t.name}"
      inner = t.tail_variables({c: v[branch] for c, v in variables.items() if branch in v},
                               max(k, start))
      for c, v in inner.items():
        if v:
          out.setdefault(c, {})[branch] = v
    return out

  def trunk_path(self, tail_variables: Variables, start: int) -> dict[str, dict[str, Any]]:
    """Blocks up5..up2 after ``start`` along the trunk task's path: the old trunk before
    that task's branch point, its branch's blocks after it (its gate cannot be folded in)."""
    owner = self.student.trunk_teacher
    k = self.branch_points[self.student.teachers.index(owner)]
    out = _select(tail_variables, TRUNK_BLOCKS[start:k])
    branch = f"branch_{owner.name}"
    inner = owner.trunk_path({c: v[branch] for c, v in tail_variables.items() if branch in v},
                             max(k, start))
    for c, v in inner.items():
      out.setdefault(c, {}).update(v)
    return out


def segnet_teachers(tasks: Sequence[str], num_outputs: Sequence[int], heads: Sequence[str]
                    | None = None, arch: str = "segnet_vgg16_bn",
                    width_multiplier: float = 1.0,
                    extras: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> tuple[SegNetTeacher, ...]:
  """One :class:`SegNetTeacher` per task, each named after its task."""
  heads = heads or ("conv",) * len(tasks)
  extras = extras or {}
  return tuple(SegNetTeacher(t, t, int(c), h, arch, float(width_multiplier),
                             json.dumps(dict(extras.get(t, {})), sort_keys=True))
               for t, c, h in zip(tasks, num_outputs, heads))


def from_teacher_info(name: str, info: Any) -> SegNetTeacher:
  """The model of a teacher directory's ``TeacherInfo`` (``kajax.teacher_files``)."""
  return SegNetTeacher(name, info.task, int(info.num_outputs), info.head, info.arch,
                       float(info.width_multiplier), json.dumps(info.extra, sort_keys=True),
                       bool(info.input_coords))


# ----------------------------------------------------------------------------- JSON form

def to_dict(teacher: Any) -> dict[str, Any]:
  """JSON-ready description of a teacher model (recursive for student teachers)."""
  if isinstance(teacher, SegNetTeacher):
    return {"kind": "segnet", "name": teacher.name, "task": teacher.task,
            "num_outputs": teacher.num_outputs, "head": teacher.head, "arch": teacher.arch,
            "width_multiplier": teacher.width_multiplier,
            "extra": json.loads(teacher.extra_json), "input_coords": teacher.input_coords}
  return {"kind": "student", "name": teacher.name, "student": spec_to_dict(teacher.student),
          "branch_points": list(teacher.branch_points)}


def from_dict(data: Mapping[str, Any]) -> Any:
  """Inverse of :func:`to_dict`."""
  kind = data.get("kind")
  if kind == "segnet":
    return SegNetTeacher(data["name"], data["task"], int(data["num_outputs"]), data["head"],
                         data["arch"], float(data["width_multiplier"]),
                         json.dumps(data.get("extra", {}), sort_keys=True),
                         bool(data.get("input_coords", False)))  # absent before coords
  if kind == "student":
    return StudentTeacher(data["name"], spec_from_dict(data["student"]),
                          tuple(data["branch_points"]))
  raise ValueError(f"Unknown teacher kind {kind!r} in {dict(data)}; expected 'segnet' or "
                   "'student'.")


def spec_to_dict(spec: StudentSpec) -> dict[str, Any]:
  return {"teachers": [to_dict(t) for t in spec.teachers], "gate_form": spec.gate_form,
          "trunk_task": spec.trunk_task, "input_coords": spec.input_coords}


def spec_from_dict(data: Mapping[str, Any]) -> StudentSpec:
  return StudentSpec(tuple(from_dict(t) for t in data["teachers"]), data["gate_form"],
                     data.get("trunk_task"), data.get("input_coords"))  # older: as trunk
