"""The multi-task student of *Student Becoming the Master* (docs/method.md §1, "Student").

The encoder ``down1..down5`` is shared by every task; the decoder is shared up to a branch
point k_g in 0..4 (the number of shared decoder blocks) per *teacher* g. Shared feature f_k:
f_0 = down5 output, f_k = output of ``DECODER_BLOCKS[k-1]`` (up5, up4, up3, up2). After its
branch point, teacher g's branch applies its channel gate (``kajax.gates``) and then a copy of
the teacher's own remaining computation from k (``teacher.tail(k)``, ``kajax.teacher_model``):
for a SegNet teacher its decoder blocks ``DECODER_BLOCKS[k:]``; for an exported student used
as a teacher (option B) its own remaining trunk blocks, gates and branches. Pooling indices
are always the *student's*.

Modules:
  * :class:`StudentTrunk` (block-wise amalgamation, step 2): encoder, all trunk blocks
    up5..up2 and a gate for every (teacher, k). Each gated f_k is projected through the
    teacher's frozen tail (:func:`switch_tail`).
  * :class:`Student` (fine-tuning, step 4, and the deployable export): fixed branch points;
    only the trunk blocks ``DECODER_BLOCKS[:max k_g]`` exist (the pruning), then per teacher
    one gate and a ``branch_{teacher}`` submodule.
  * :class:`TaskBranch` (a SegNet teacher's tail) and :class:`StudentTail` (a student's tail
    from any branch point, the same code as :class:`Student` after its encoder).

Parameter names (stable; ``params`` and ``batch_stats`` use the same paths):
  ``down1..down5``, ``up5..up2``     encoder and trunk blocks, as in ``kajax.segnet.SegNet``
                                     (so a teacher's variables copy in unchanged);
  ``gate_{teacher}_{k}/reduce|expand``  channel gates (block-wise: every k; fixed: k = k_g);
  ``branch_{teacher}/...``           fixed mode only: the teacher's tail after k_g.

The student's description lives in ``kajax.student_spec``; initialisation from the teachers
and its size in ``kajax.student_init``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kajax.gates import ChannelGate
from kajax.segnet import (DECODER_BLOCKS, ENCODER_BLOCKS, NUM_BRANCH_POINTS, PoolIndices,
                          decoder_block, encoder_block, with_coordinate_channels)
from kajax.student_spec import StudentSpec, check_branch_points

# Trunk blocks that can be shared: up5..up2 (up1 always belongs to a task).
TRUNK_BLOCKS = DECODER_BLOCKS[:NUM_BRANCH_POINTS - 1]


def block_level(block: str) -> int:
  """'up3' -> 2: index of the encoder block whose pooling indices this block unpools with."""
  return int(block[len("up"):]) - 1


def _run_encoder(spec: StudentSpec, x: jax.Array, train: bool, bn_axis_name, param_dtype,
                 dtype=None, remat: bool = False
                 ) -> tuple[jax.Array, tuple[PoolIndices, ...], dict[str, jax.Array]]:
  # Called from a compact method: the blocks become children of the calling module.
  if x.ndim != 4:
    raise ValueError(f"The student expects NHWC images, got shape {x.shape}.")
  if spec.input_coords:
    x = with_coordinate_channels(x)
  features, indices = {}, []
  for name in ENCODER_BLOCKS:
    x, idx = encoder_block(name, spec.arch, spec.width_multiplier, bn_axis_name,
                           param_dtype, dtype, remat)(x, train)
    features[name] = x
    indices.append(idx)
  return x, tuple(indices), features


def trunk_block(spec: StudentSpec, name: str, bn_axis_name=None, param_dtype=jnp.float32,
                dtype=None) -> nn.Module:
  """Trunk block ``name`` (up5..up2) of the student, unbound."""
  # Trunk blocks are never up1, so the head and output count do not matter (1, 'conv').
  return decoder_block(name, spec.arch, 1, spec.width_multiplier, "conv", bn_axis_name,
                       param_dtype, dtype)


def _run_tail(spec: StudentSpec, branch_points: tuple[int, ...], start: int, f: jax.Array,
              indices: Sequence[PoolIndices], train: bool, bn_axis_name, param_dtype,
              dtype=None) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """A fixed-branch student from shared feature f_start on (``start`` = 0: after the encoder).

  Trunk blocks ``start..max k - 1`` run first; a teacher whose branch point is at or after
  ``start`` gates its f_k and runs its tail from k; one whose branch point is before
  ``start`` has already branched, so its tail continues from ``start`` on f_start, ungated.
  Called from compact methods: blocks become children of the caller (flat names).
  """
  shared, features = {start: f}, {}
  for j in range(start, max(branch_points)):
    name = TRUNK_BLOCKS[j]
    f = trunk_block(spec, name, bn_axis_name, param_dtype, dtype)(
        f, indices[block_level(name)], train)
    shared[j + 1] = f
    features[name] = f
  outputs = {}
  for teacher, k in zip(spec.teachers, branch_points):
    if k >= start:
      x = ChannelGate(spec.gate_form, param_dtype, name=f"gate_{teacher.name}_{k}")(shared[k])
      features[f"gated_{teacher.name}"] = x
    else:
      x, k = shared[start], start
    out, branch_features = teacher.tail(k, bn_axis_name, param_dtype, dtype=dtype,
                                        name=f"branch_{teacher.name}")(x, indices, train)
    outputs.update(out)
    features.update({f"{teacher.name}/{n}": v for n, v in branch_features.items()})
  return outputs, features


class StudentTrunk(nn.Module):
  """Block-wise amalgamation student: encoder, trunk up5..up2, a gate per (teacher, k).

  ``apply(variables, x, train)`` returns ``(gated, indices)``: ``gated[g][k]`` is teacher g's
  gated f_k for k = 0..4 (teachers in ``spec.teachers`` order), ``indices`` the PoolIndices
  of down1..down5.

  ``dtype`` is the compute dtype (None: that of the inputs and variables; parameters stay
  ``param_dtype``); ``remat`` recomputes the encoder blocks' activations in the backward pass.
  """
  spec: StudentSpec
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32
  dtype: Any = None
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[tuple[tuple[jax.Array, ...], ...], tuple[PoolIndices, ...]]:
    f, indices, _ = _run_encoder(self.spec, x, train, self.bn_axis_name, self.param_dtype,
                                 self.dtype, self.remat)
    shared = [f]
    for name in TRUNK_BLOCKS:
      f = trunk_block(self.spec, name, self.bn_axis_name, self.param_dtype, self.dtype)(
          f, indices[block_level(name)], train)
      shared.append(f)
    gated = tuple(
        tuple(ChannelGate(self.spec.gate_form, self.param_dtype,
                          name=f"gate_{teacher.name}_{k}")(f) for k, f in enumerate(shared))
        for teacher in self.spec.teachers)
    return gated, indices


class TaskBranch(nn.Module):
  """A SegNet teacher's tail: decoder blocks ``DECODER_BLOCKS[start:]``, named up{j}.

  Returns ``({task: raw output}, block outputs)``.
  """
  task: str
  start: int
  arch: str
  num_outputs: int
  width_multiplier: float
  head: str
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32
  dtype: Any = None

  @nn.compact
  def __call__(self, f: jax.Array, indices: Sequence[PoolIndices], train: bool
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    features = {}
    for name in DECODER_BLOCKS[self.start:]:
      f = decoder_block(name, self.arch, self.num_outputs, self.width_multiplier, self.head,
                        self.bn_axis_name, self.param_dtype, self.dtype)(
                            f, indices[block_level(name)], train)
      features[name] = f
    return {self.task: f}, features


class StudentTail(nn.Module):
  """An exported student's computation after shared feature f_start (its option-B tail).

  Parameter names are the :class:`Student`'s without the encoder (and without the blocks,
  gates and branch blocks that come before ``start``).
  """
  spec: StudentSpec
  branch_points: tuple[int, ...]
  start: int
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32
  dtype: Any = None

  @nn.compact
  def __call__(self, f: jax.Array, indices: Sequence[PoolIndices], train: bool
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    ks = check_branch_points(self.spec, self.branch_points)
    return _run_tail(self.spec, ks, self.start, f, indices, train, self.bn_axis_name,
                     self.param_dtype, self.dtype)


class Student(nn.Module):
  """Fixed-branch student: the trained, prunable multi-task network.

  ``apply(variables, x, train)`` returns ``(outputs, features)``: ``outputs[task]`` is the
  task's raw NHWC output (as its teacher's); ``features`` holds ``down1..down5``, the trunk
  blocks ``up5..`` that exist, ``gated_{teacher}`` (the gated f_{k_g}) and
  ``{teacher}/...`` (branch block outputs). Only trunk blocks
  ``DECODER_BLOCKS[:max(branch_points)]`` are created. ``dtype`` and ``remat`` as in
  :class:`StudentTrunk`.
  """
  spec: StudentSpec
  branch_points: tuple[int, ...]
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32
  dtype: Any = None
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    ks = check_branch_points(self.spec, self.branch_points)
    f0, indices, features = _run_encoder(self.spec, x, train, self.bn_axis_name,
                                         self.param_dtype, self.dtype, self.remat)
    outputs, tail_features = _run_tail(self.spec, ks, 0, f0, indices, train,
                                       self.bn_axis_name, self.param_dtype, self.dtype)
    return outputs, {**features, **tail_features}


def switch_tail(teacher_index: int, k: jax.Array | int, gated, indices, teacher: Any,
                teacher_variables: Any, dtype: Any = None) -> dict[str, jax.Array]:
  """Teacher ``teacher_index``'s projection of its gated f_k at a (traced) branch point k.

  All five projections are traced into one ``lax.switch``, so a jitted train step compiles
  once and selects the path at run time (docs/method.md §1, step 2).

  Args:
    teacher_index: static position of the teacher in ``spec.teachers``.
    k: int32 scalar 0..4 (out-of-range values are clamped by ``lax.switch``).
    gated: the ``gated`` output of :class:`StudentTrunk`.
    indices: the ``indices`` output of :class:`StudentTrunk`.
    teacher: the teacher model (``kajax.teacher_model``); teacher_variables: its variables.
    dtype: the projections' compute dtype (None: the variables').

  Returns:
    ``{task: teacher-domain output}`` for the teacher's tasks.
  """
  if not 0 <= teacher_index < len(gated):
    raise ValueError(f"teacher_index={teacher_index} is out of range for {len(gated)} "
                     "teachers.")
  features = tuple(gated[teacher_index])
  if len(features) != NUM_BRANCH_POINTS:
    raise ValueError(f"Expected {NUM_BRANCH_POINTS} gated features (k=0..4) for teacher "
                     f"{teacher_index}, got {len(features)}.")

  def branch(k):
    return lambda ops: teacher.project(ops[2], ops[0][k], ops[1], k, dtype)

  return jax.lax.switch(k, [branch(k) for k in range(NUM_BRANCH_POINTS)],
                        (features, tuple(indices), teacher_variables))
