"""Initialising the student from its teachers, and counting its parameters.

Step 1 of the method: the encoder and the shared decoder blocks are copies of the trunk
task's teacher (the parsing teacher by default); each teacher's branch is a copy of that
teacher's own computation after the branch point (``kajax.teacher_model``); gates start
fresh (at identity by default). Every
copied block is checked leaf by leaf against the shapes the student expects.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kajax.gates import ChannelGate
from kajax.segnet import DECODER_BLOCKS, ENCODER_BLOCKS, widen_first_conv
from kajax.student_model import TRUNK_BLOCKS, Student, StudentTrunk
from kajax.student_spec import StudentSpec, check_branch_points

# --- Initialisation from the teachers (docs/method.md §1, step 1) ---------------------------
# Essential: a reproduction with randomly initialised branches reached 0.28 mIoU instead of
# 0.52 (KamalEngine issue 8). Every copied block is checked leaf by leaf against the shapes
# from jax.eval_shape, so nothing full-width is materialised to check.
# Merging the teachers' encoders is no better start, although the synthetic-rooms teachers of
# one seed share their initial encoder (their first convs still correlate 0.71 after
# training). Measured on validation (2026-12-03, the seed-0 demo teachers, 0.468 mIoU /
# 0.529 m with batch statistics; each teacher's own decoder on the start encoder, no
# training): the parsing encoder (this module's choice) 0.468 / 0.948 m, the two encoders
# averaged 0.354 / 1.008 m, "task arithmetic" (both teachers' changes added to the shared
# initial weights) 0.384 / 0.938 m. Depth is lost in every case.

# Probe input for eval_shape; variable shapes do not depend on the image size.
_PROBE_SHAPE = (1, 64, 64, 3)


def variable_shapes(module: nn.Module) -> dict[str, Any]:
  """``{'params': ..., 'batch_stats': ...}`` of ShapeDtypeStructs, without initialising.

  Works for any module called as ``module(x, train)`` (SegNet, Student, StudentTrunk).
  """
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(_PROBE_SHAPE), False))


def count_student_params(spec: StudentSpec, branch_points: Sequence[int],
                         include_gates: bool = True) -> int:
  """Trainable parameters of the fixed-branch (pruned) :class:`Student`.

  For two SegNet teachers the count depends on min(k_g) only: decoder block j exists once in
  the trunk if j < max k, plus once per teacher with k_g <= j. The published sizes (37.1M /
  31.2M / 29.7M for min k = 1 / 2 / 3 with VGG16-BN teachers) match ``include_gates=False``;
  each gate adds 2 * C * max(16, C // 4) parameters (131,072 per task at k = 1).
  """
  params = variable_shapes(Student(spec, check_branch_points(spec, branch_points)))["params"]
  # Gates can sit inside a branch too (an old student's gates, option B).
  return int(sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                 if include_gates or not any(str(getattr(p, "key", "")).startswith("gate_")
                                             for p in path)))


def _check_teacher_keys(spec: StudentSpec, teacher_variables: Mapping[str, Any],
                        needed: Sequence[str]) -> None:
  unknown = [t for t in teacher_variables if t not in spec.teacher_names]
  missing = [t for t in needed if t not in teacher_variables]
  if unknown or missing:
    raise ValueError(f"teacher_variables has teachers {sorted(teacher_variables)}; the "
                     f"student's teachers are {spec.teacher_names}: not in the student "
                     f"{unknown}, missing {missing}.")


def _flat(tree: Any) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _checked_copy(expected: Any, found: Any, where: str) -> Any:
  """Returns ``found`` as jnp arrays after checking it has exactly ``expected``'s shapes."""
  want, got = _flat(expected), _flat(found)
  problems = [f"missing {k}" for k in sorted(set(want) - set(got))]
  problems += [f"unexpected {k}" for k in sorted(set(got) - set(want))]
  problems += [f"{k} has shape {tuple(got[k].shape)}, expected {tuple(want[k].shape)}"
               for k in sorted(set(want) & set(got)) if tuple(got[k].shape) != want[k].shape]
  if problems:
    raise ValueError(f"{where} does not fit the student: " + "; ".join(problems[:8]) +
                     ". Check that the StudentSpec's arch, width_multiplier, num_outputs and "
                     "heads describe these teachers.")
  return jax.tree_util.tree_map(jnp.asarray, found)


def _assemble(expected: dict[str, Any], sources: dict[str, tuple[str, dict[str, Any]]],
              fresh: dict[str, Any]) -> dict[str, Any]:
  """Builds variables with ``expected``'s structure.

  ``sources[name] = (description, {collection: subtree})`` gives top-level block ``name`` of
  each collection; ``fresh[name]`` gives already initialised params (gates without a source).
  """
  out = {collection: {} for collection in expected}
  for collection, blocks in expected.items():
    for name, shapes in blocks.items():
      if collection == "params" and name in fresh:
        out[collection][name] = _checked_copy(shapes, fresh[name], f"new {name}")
        continue
      description, subtrees = sources[name]
      if collection not in subtrees:
        raise ValueError(f"{description} has no {collection!r} for the student's block "
                         f"{name!r}.")
      out[collection][name] = _checked_copy(shapes, subtrees[collection],
                                            f"{description}[{collection!r}]")
  return out


def _add_coordinate_inputs(expected: dict[str, Any],
                           sources: dict[str, tuple[str, dict[str, Any]]]) -> None:
  """Zero weights for coordinate channels the student reads and its source encoder does not
  (``StudentSpec.input_coords``): the student still starts as that encoder."""
  want = expected["params"]["down1"]["layer0"]["conv"]["kernel"].shape[2]
  description, subtrees = sources["down1"]
  kernel = subtrees.get("params", {}).get("layer0", {}).get("conv", {}).get("kernel")
  if kernel is None or kernel.shape[2] >= want:
    return  # nothing to add (or a mismatch that _checked_copy reports)
  sources["down1"] = (description + " (+ zero weights for coordinate channels)",
                      {**subtrees, "params": widen_first_conv(subtrees["params"], want)})


def _block(variables: Mapping[str, Any], name: str, description: str
           ) -> tuple[str, dict[str, Any]]:
  """Source entry for block ``name`` of a ``{'params', 'batch_stats'}`` tree."""
  return (f"{description} block {name!r}",
          {c: v[name] for c, v in variables.items() if isinstance(v, Mapping) and name in v})


def _fresh_gate(spec: StudentSpec, shapes: Any, rng: jax.Array) -> Any:
  channels = shapes["reduce"]["kernel"].shape[2]
  return ChannelGate(spec.gate_form).init(rng, jnp.zeros((1, 1, 1, channels)))["params"]


def init_trunk_from_teachers(spec: StudentSpec, teacher_variables: Mapping[str, Any],
                             rng: jax.Array) -> dict[str, Any]:
  """Variables of :class:`StudentTrunk`: encoder and up5..up2 copied from the trunk teacher.

  Args:
    spec: the student.
    teacher_variables: teacher name -> its variables; needs the trunk teacher's.
    rng: initialises the gates (identity gates are exactly 1 whatever the rng).

  Returns:
    ``{'params': ..., 'batch_stats': ...}``; the encoder and trunk are the trunk teacher's
    blocks along its trunk task's path (``teacher.trunk_variables``).
  """
  owner = spec.trunk_teacher
  _check_teacher_keys(spec, teacher_variables, [owner.name])
  expected = variable_shapes(StudentTrunk(spec))
  where = f"teacher_variables[{owner.name!r}]"
  trunk = owner.trunk_variables(teacher_variables[owner.name])
  sources = {name: _block(trunk, name, where) for name in ENCODER_BLOCKS + TRUNK_BLOCKS}
  _add_coordinate_inputs(expected, sources)
  gates = [name for name in expected["params"] if name.startswith("gate_")]
  fresh = {name: _fresh_gate(spec, expected["params"][name], key)
           for name, key in zip(gates, jax.random.split(rng, len(gates)))}
  return _assemble(expected, sources, fresh)


def init_student_from_teachers(spec: StudentSpec, branch_points: Sequence[int],
                               teacher_variables: Mapping[str, Any],
                               trunk_variables: Mapping[str, Any] | None = None,
                               rng: jax.Array | None = None) -> dict[str, Any]:
  """Variables of the fixed-branch :class:`Student`.

  Encoder and trunk blocks come from ``trunk_variables`` (the trained block-wise trunk, so
  step 2 carries over to step 4) or, without it, from the trunk teacher. Gate
  ``gate_{g}_{k_g}`` comes from ``trunk_variables`` or is freshly initialised with ``rng``.
  ``branch_{g}`` is a copy of teacher g's tail after k_g (``teacher.tail_variables``): its
  decoder blocks for a SegNet teacher, its remaining trunk, gates and branches for a student
  teacher (params and batch_stats).

  Args:
    spec: the student.
    branch_points: one k_g in 0..4 per teacher.
    teacher_variables: teacher name -> its variables, every teacher.
    trunk_variables: optional :class:`StudentTrunk` variables (from
      :func:`init_trunk_from_teachers` and block-wise training).
    rng: needed when ``trunk_variables`` is None (gate initialisation).
  """
  ks = check_branch_points(spec, branch_points)
  _check_teacher_keys(spec, teacher_variables, spec.teacher_names)
  if trunk_variables is None and rng is None:
    raise ValueError("init_student_from_teachers needs rng to initialise the gates when no "
                     "trunk_variables are given.")
  expected = variable_shapes(Student(spec, ks))
  if trunk_variables is not None:
    shared, shared_name = trunk_variables, "trunk_variables"
  else:
    owner = spec.trunk_teacher
    shared = owner.trunk_variables(teacher_variables[owner.name])
    shared_name = f"teacher_variables[{owner.name!r}]"
  sources = {name: _block(shared, name, shared_name)
             for name in ENCODER_BLOCKS + DECODER_BLOCKS[:max(ks)]}
  _add_coordinate_inputs(expected, sources)
  fresh = {}
  for i, (teacher, k) in enumerate(zip(spec.teachers, ks)):
    gate = f"gate_{teacher.name}_{k}"
    if trunk_variables is not None:
      sources[gate] = _block(trunk_variables, gate, "trunk_variables")
    else:
      fresh[gate] = _fresh_gate(spec, expected["params"][gate], jax.random.fold_in(rng, i))
    # branch_{g} holds the teacher's tail after k under the tail's own names.
    sources[f"branch_{teacher.name}"] = (
        f"teacher_variables[{teacher.name!r}] after branch point {k}",
        teacher.tail_variables(teacher_variables[teacher.name], k))
  return _assemble(expected, sources, fresh)
