"""The multi-task student of *Student Becoming the Master* (docs/method.md §1, "Student").

The encoder ``down1..down5`` is shared by every task; the decoder is shared up to a per-task
branch point k_t in 0..4 (the number of shared decoder blocks). Shared feature f_k: f_0 = down5
output, f_k = output of ``DECODER_BLOCKS[k-1]`` (up5, up4, up3, up2). After its branch point,
task t applies its channel gate (``kajax.gates``) and then its own copy of teacher t's
remaining decoder blocks ``DECODER_BLOCKS[k_t:]``, unpooling with the *student's* indices.

Two modules:
  * :class:`StudentTrunk` (block-wise amalgamation, step 2): encoder, all trunk blocks
    up5..up2 and a gate for every (task, k). Each gated f_k is projected through teacher t's
    frozen tail (:func:`teacher_tail` / :func:`switch_tail`).
  * :class:`Student` (fine-tuning, step 4, and the deployable export): fixed branch points;
    only the trunk blocks ``DECODER_BLOCKS[:max k_t]`` exist (the pruning), then per task one
    gate and a ``branch_{task}`` submodule.

Parameter names (stable; ``params`` and ``batch_stats`` use the same paths):
  ``down1..down5``, ``up5..up2``     encoder and trunk blocks, as in ``kajax.segnet.SegNet``
                                     (so a teacher's variables copy in unchanged);
  ``gate_{task}_{k}/reduce|expand``  channel gates (block-wise: every k; fixed: k = k_t);
  ``branch_{task}/up{j}``            fixed mode only: task t's decoder blocks after k_t.

The student's description (:class:`~kajax.student_spec.StudentSpec`) lives in
``kajax.student_spec``; its initialisation from the teachers and its size in
``kajax.student_init``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kajax.gates import ChannelGate
from kajax.segnet import (DECODER_BLOCKS, ENCODER_BLOCKS, NUM_BRANCH_POINTS, PoolIndices,
                          SegNet, decoder_block, encoder_block)
from kajax.student_spec import StudentSpec, check_branch_points

# Trunk blocks that can be shared: up5..up2 (up1 always belongs to a task).
TRUNK_BLOCKS = DECODER_BLOCKS[:NUM_BRANCH_POINTS - 1]


def _level(block: str) -> int:
  """'up3' -> 2: index of the encoder block whose pooling indices this block unpools with."""
  return int(block[len("up"):]) - 1


def _run_encoder(spec: StudentSpec, x: jax.Array, train: bool, bn_axis_name, param_dtype
                 ) -> tuple[jax.Array, tuple[PoolIndices, ...], dict[str, jax.Array]]:
  # Called from a compact method: the blocks become children of the calling module.
  if x.ndim != 4:
    raise ValueError(f"The student expects NHWC images, got shape {x.shape}.")
  features, indices = {}, []
  for name in ENCODER_BLOCKS:
    x, idx = encoder_block(name, spec.arch, spec.width_multiplier, bn_axis_name,
                           param_dtype)(x, train)
    features[name] = x
    indices.append(idx)
  return x, tuple(indices), features


def _run_trunk(spec: StudentSpec, f: jax.Array, indices, depth: int, train: bool,
               bn_axis_name, param_dtype) -> tuple[list[jax.Array], dict[str, jax.Array]]:
  """Applies TRUNK_BLOCKS[:depth]; returns [f_0, ..., f_depth] and the block outputs."""
  trunk_outputs = spec.num_outputs[spec.task_index(spec.trunk_task)]
  shared, features = [f], {}
  for name in TRUNK_BLOCKS[:depth]:
    f = decoder_block(name, spec.arch, trunk_outputs, spec.width_multiplier,
                      spec.heads[spec.task_index(spec.trunk_task)], bn_axis_name,
                      param_dtype)(f, indices[_level(name)], train)
    shared.append(f)
    features[name] = f
  return shared, features


class StudentTrunk(nn.Module):
  """Block-wise amalgamation student: encoder, trunk up5..up2, a gate per (task, k).

  ``apply(variables, x, train)`` returns ``(gated, indices)``: ``gated[t][k]`` is task t's gated
  f_k for k = 0..4 (tasks in ``spec.tasks`` order), ``indices`` the PoolIndices of
  down1..down5.
  """
  spec: StudentSpec
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[tuple[tuple[jax.Array, ...], ...], tuple[PoolIndices, ...]]:
    f0, indices, _ = _run_encoder(self.spec, x, train, self.bn_axis_name, self.param_dtype)
    shared, _ = _run_trunk(self.spec, f0, indices, len(TRUNK_BLOCKS), train,
                           self.bn_axis_name, self.param_dtype)
    gated = tuple(
        tuple(ChannelGate(self.spec.gate_form, self.param_dtype, name=f"gate_{task}_{k}")(f)
              for k, f in enumerate(shared))
        for task in self.spec.tasks)
    return gated, indices


class TaskBranch(nn.Module):
  """Task t's own decoder blocks ``DECODER_BLOCKS[start:]`` with its teacher's geometry."""
  start: int
  arch: str
  num_outputs: int
  width_multiplier: float
  head: str
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, indices: Sequence[PoolIndices], train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    features = {}
    for name in DECODER_BLOCKS[self.start:]:
      f = decoder_block(name, self.arch, self.num_outputs, self.width_multiplier, self.head,
                        self.bn_axis_name, self.param_dtype)(f, indices[_level(name)], train)
      features[name] = f
    return f, features


class Student(nn.Module):
  """Fixed-branch student: the trained, prunable multi-task network.

  ``apply(variables, x, train)`` returns ``(outputs, features)``: ``outputs[task]`` is the
  task's raw NHWC output (as its teacher's); ``features`` holds ``down1..down5``, the trunk
  blocks ``up5..`` that exist, ``gated_{task}`` (the gated f_{k_t}) and ``{task}/up{j}`` (branch
  block outputs). Only trunk blocks ``DECODER_BLOCKS[:max(branch_points)]`` are created.
  """
  spec: StudentSpec
  branch_points: tuple[int, ...]
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    spec = self.spec
    ks = check_branch_points(spec, self.branch_points)
    f0, indices, features = _run_encoder(spec, x, train, self.bn_axis_name, self.param_dtype)
    shared, trunk_features = _run_trunk(spec, f0, indices, max(ks), train, self.bn_axis_name,
                                        self.param_dtype)
    features.update(trunk_features)
    outputs = {}
    for i, (task, k) in enumerate(zip(spec.tasks, ks)):
      g = ChannelGate(spec.gate_form, self.param_dtype, name=f"gate_{task}_{k}")(shared[k])
      features[f"gated_{task}"] = g
      out, branch_features = TaskBranch(
          k, spec.arch, spec.num_outputs[i], spec.width_multiplier, spec.heads[i],
          self.bn_axis_name, self.param_dtype, name=f"branch_{task}")(g, indices, train)
      features.update({f"{task}/{name}": v for name, v in branch_features.items()})
      outputs[task] = out
    return outputs, features


def teacher_tail(teacher_module: SegNet, teacher_variables: Any, f_k: jax.Array,
                 indices: Sequence[PoolIndices], k: int) -> jax.Array:
  """Projects a shared feature onto teacher t's domain: its decoder after branch point k.

  The teacher is frozen: its variables are under ``stop_gradient`` and BatchNorm runs in
  inference mode; gradients flow to ``f_k`` only.

  Args:
    teacher_module: the teacher's SegNet.
    teacher_variables: ``{'params': ..., 'batch_stats': ...}`` of the teacher.
    f_k: the (gated) shared feature f_k.
    indices: the student's PoolIndices of down1..down5.
    k: static branch point 0..4.

  Returns:
    The teacher-domain output, NHWC with the teacher's channels.
  """
  frozen = jax.lax.stop_gradient(teacher_variables)
  out, _ = teacher_module.apply(frozen, f_k, tuple(indices), k, False, method=SegNet.decode)
  return out


def switch_tail(task_index: int, k_t: jax.Array | int, gated, indices,
                teacher_module: SegNet, teacher_variables: Any) -> jax.Array:
  """:func:`teacher_tail` of task ``task_index`` at a (possibly traced) branch point ``k_t``.

  All five tails are traced into one ``lax.switch``, so a jitted train step compiles once and
  selects the path at run time (docs/method.md §1, step 2).

  Args:
    task_index: static position of the task in ``spec.tasks``.
    k_t: int32 scalar 0..4 (out-of-range values are clamped by ``lax.switch``).
    gated: the ``gated`` output of :class:`StudentTrunk`.
    indices: the ``indices`` output of :class:`StudentTrunk`.
    teacher_module, teacher_variables: task ``task_index``'s teacher.
  """
  if not 0 <= task_index < len(gated):
    raise ValueError(f"task_index={task_index} is out of range for {len(gated)} tasks.")
  features = tuple(gated[task_index])
  if len(features) != NUM_BRANCH_POINTS:
    raise ValueError(f"Expected {NUM_BRANCH_POINTS} gated features (k=0..4) for task "
                     f"{task_index}, got {len(features)}.")

  def branch(k):
    return lambda ops: teacher_tail(teacher_module, ops[2], ops[0][k], ops[1], k)

  return jax.lax.switch(k_t, [branch(k) for k in range(NUM_BRANCH_POINTS)],
                        (features, tuple(indices), teacher_variables))


def tail_for_branch_points(branch_points: jax.Array | Sequence[int], gated, indices,
                           teacher_modules: Sequence[SegNet],
                           teacher_variables: Sequence[Any]) -> tuple[jax.Array, ...]:
  """:func:`switch_tail` for every task: ``branch_points[t]`` selects task t's tail.

  Args:
    branch_points: (T,) int32 array (e.g. drawn uniformly per step) or T ints.
    gated, indices: output of :class:`StudentTrunk`.
    teacher_modules, teacher_variables: one per task, in ``spec.tasks`` order.

  Returns:
    One teacher-domain output per task.
  """
  if not len(teacher_modules) == len(teacher_variables) == len(gated):
    raise ValueError(f"Need one teacher module and variables per task: got "
                     f"{len(teacher_modules)} modules, {len(teacher_variables)} variables, "
                     f"{len(gated)} tasks.")
  ks = jnp.asarray(branch_points, jnp.int32)
  if ks.shape != (len(gated),):
    raise ValueError(f"branch_points must have shape ({len(gated)},), got {ks.shape}.")
  return tuple(switch_tail(t, ks[t], gated, indices, teacher_modules[t], teacher_variables[t])
               for t in range(len(gated)))
