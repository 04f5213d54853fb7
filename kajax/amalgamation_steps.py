"""The pure, compiled steps of amalgamation (docs/method.md §1 "Four steps", §3 "Pure functions").

Every step has the signature ``step(state, teachers, batch, rng) -> (state, metrics)`` once
its static parts (modules, teacher models, losses, optimiser) are bound with
``functools.partial``, and is compiled once per phase. ``teachers`` is a frozen pytree
``{teacher name: variables}``: never in the optimiser, never differentiated, run in inference
mode under ``stop_gradient``. What a teacher computes (its outputs, its projection from a
branch point) is its model's business (``kajax.teacher_model``): a SegNet teacher and an
exported student used as a teacher (option B) go through the same steps, for any number of
teachers.

* :func:`block_train_step` (step 2): trains the shared trunk and the channel gates. Each
  teacher's branch point k_g is drawn per step (or follows the sequential schedule) and only
  the drawn path is computed: a trunk block runs (``lax.cond``) only when some k_g needs it,
  and each teacher's drawn gate and projection are selected with ``lax.switch``; one
  compilation. The tails after k_g are the teacher's own frozen computation, BatchNorm in
  inference mode. This is the *projection* of the amalgamated feature onto each teacher's
  domain.
* :func:`branch_losses` (step 3): the training loss of every (teacher, k) on held-out
  unaugmented images, as sums that pool exactly over a split (:func:`branch_table`).
* :func:`finetune_train_step` (step 4): the fixed-branch student, everything trainable.

Targets: the training steps take the teachers' outputs from the batch when it carries them
(``config.loss.teacher_targets='precomputed'``, ``kajax.teacher_targets``: computed once per
unlabelled image) and run the teachers on the batch otherwise (:func:`step_targets`).

Precision: modules compute in their ``dtype`` (``config.compute_dtype``; the teachers in the
student's); parameters, optimiser state and BatchNorm statistics stay float32, and every output
is cast to float32 before the losses (the teachers' KL targets included). Training steps take
``grad_accum_steps`` (``optim.accumulate``) and ``axis_name`` (the device axis under
``jax.pmap``; ``kajax.step_parallelism``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kajax import optim, segnet, student_model, tasks, teacher_targets, teacher_views
from kajax.gates import ChannelGate
from kajax.teacher_views import TeacherViews

# ℓ_t(student raw output, teacher raw output) -> scalar mean over all pixels of the batch
# (built by ``kajax.tasks.projection_fn``; its ``weights`` give the mean's pixel weights).
ProjectionFn = Callable[[jax.Array, jax.Array], jax.Array]
BLOCK_SCHEDULES = ("random", "sequential")
BLOCK_PATHS = ("drawn_path", "all_blocks")


def pixel_weights(fn: ProjectionFn, teacher_out: jax.Array) -> jax.Array:
  """(N, H, W) weights of the pixel mean ``fn`` takes (ones when it declares none)."""
  weights = getattr(fn, "weights", None)
  if weights is None:
    return jnp.ones(teacher_out.shape[:3], jnp.float32)
  return weights(teacher_out).astype(jnp.float32)


def teacher_outputs(teachers: Mapping[str, Any], images: jax.Array,
                    teacher_models: Sequence[Any], dtype: Any = None,
                    views: TeacherViews = teacher_views.PLAIN) -> dict[str, jax.Array]:
  """Y_t: every teacher's full outputs on the batch, {task: output}, frozen (inference mode,
  no gradient), computed in ``dtype`` and returned in float32 (the KL targets stay float32).

  ``views`` (``teacher_views.from_config``: ``config.loss.teacher_flip_average`` and
  ``teacher_shifts``): Y_t is the mean of the teacher's raw outputs over the mirrored and
  shifted views of the image, each moved back onto the image's pixels (``kajax.teacher_views``)
  -- test-time augmentation of the teacher, a better target that needs no label. All views go
  through one teacher forward.
  """
  if views.is_plain:
    return {task: jax.lax.stop_gradient(out).astype(jnp.float32) for model in teacher_models
            for task, out in model.outputs(teachers[model.name], images, dtype).items()}
  stacked = teacher_views.stack_views(images, views)
  targets = {}
  for model in teacher_models:
    for task, out in model.outputs(teachers[model.name], stacked, dtype).items():
      targets[task] = teacher_views.average_views(
          jax.lax.stop_gradient(out).astype(jnp.float32), views, tasks.get(task).mirror_raw)
  return targets


def student_inputs(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """What an amalgamation step reads of a batch: the images and, when precomputed
  (``kajax.teacher_targets``), the teachers' targets and the per-image mirror flags."""
  return {k: v for k, v in batch.items()
          if k in ("image", "flip") or k.startswith(teacher_targets.PREFIX)}


def step_targets(micro: Mapping[str, jax.Array], teachers: Mapping[str, Any],
                 teacher_models: Sequence[Any], dtype: Any, views: TeacherViews
                 ) -> dict[str, jax.Array]:
  """Y_t of a (micro-)batch: its precomputed targets when it carries them, else the
  teachers run now (:func:`teacher_outputs`)."""
  names = [t for model in teacher_models for t in model.tasks]
  cached = teacher_targets.batch_targets(micro, names)
  if cached is not None:
    return cached
  return teacher_outputs(teachers, micro["image"], teacher_models, dtype, views)


def draw_branch_points(rng: jax.Array, step: jax.Array, num_teachers: int, num_steps: int,
                       schedule: str) -> jax.Array:
  """k_g for this step: uniform per teacher ('random') or one k for all advancing from
  0 to 4 in equal stages ('sequential', block by block)."""
  if schedule == "random":
    return jax.random.randint(jax.random.fold_in(rng, step), (num_teachers,), 0,
                              segnet.NUM_BRANCH_POINTS)
  stage = jnp.minimum(step * segnet.NUM_BRANCH_POINTS // max(1, num_steps),
                      segnet.NUM_BRANCH_POINTS - 1)
  return jnp.full((num_teachers,), stage, jnp.int32)


def projection_terms(outputs: Mapping[str, jax.Array], targets: Mapping[str, jax.Array],
                     projection_fns: Mapping[str, ProjectionFn],
                     lambdas: Mapping[str, float], axis_name: str | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L = Σ_t λ_t ℓ_t in float32 over the tasks of ``outputs``, and the per-task ℓ_t.

  Under ``pmap`` (``axis_name`` set) a loss with pixel weights is rescaled by this device's
  share of them, so that the mean over devices (``lax.pmean`` of the gradients) is the loss
  of the whole global batch, exactly as under ``jit``.
  """
  per_task = {}
  for t, out in outputs.items():
    fn = projection_fns[t]
    value = fn(out.astype(jnp.float32), targets[t])
    if axis_name is not None and getattr(fn, "weights", None) is not None:
      weight = jnp.sum(pixel_weights(fn, targets[t]))
      value = value * weight / jax.lax.pmean(weight, axis_name)
    per_task[t] = value
  return sum(lambdas[t] * loss for t, loss in per_task.items()), per_task


def _finish(state: optim.TrainState, grads: Any, batch_stats: Any, metrics: dict,
            tx: optax.GradientTransformation, axis_name: str | None
            ) -> tuple[optim.TrainState, dict[str, jax.Array]]:
  if axis_name is not None:  # pmap: average over devices (BatchNorm already syncs itself)
    grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
  metrics["grad_norm"] = optax.global_norm(grads)
  return optim.apply_update(state, grads, batch_stats, tx), metrics


def drawn_path_outputs(trunk: student_model.StudentTrunk, params: Any, batch_stats: Any,
                       images: jax.Array, ks: jax.Array, teachers: Mapping[str, Any],
                       teacher_models: Sequence[Any]) -> tuple[dict[str, jax.Array], Any]:
  """The block-wise student's projections at branch points ``ks``, computing only their path.

  The same function of the same variables as ``StudentTrunk.apply`` followed by
  :func:`student_model.switch_tail` per teacher, but trunk block j runs only when some
  teacher branches at k > j (``lax.cond``) and only teacher g's drawn gate runs, inside its
  ``lax.switch`` over the five projections -- so neither the forward nor the backward pass
  spends work on blocks and gates the step does not use. A skipped block keeps its BatchNorm
  statistics.

  Returns:
    ({task: teacher-domain output}, new batch statistics).
  """
  spec = trunk.spec
  options = dict(bn_axis_name=trunk.bn_axis_name, param_dtype=trunk.param_dtype,
                 dtype=trunk.dtype)
  new_stats = dict(batch_stats)

  def run_block(block, name, *args):
    out, mutated = block.apply({"params": params[name], "batch_stats": batch_stats[name]},
                               *args, True, mutable=["batch_stats"])
    return out, mutated["batch_stats"]

  x = segnet.with_coordinate_channels(images) if spec.input_coords else images
  indices = []
  for name in segnet.ENCODER_BLOCKS:
    block = segnet.encoder_block(name, spec.arch, spec.width_multiplier, remat=trunk.remat,
                                 **options)
    (x, idx), new_stats[name] = run_block(block, name, x)
    indices.append(idx)
  depth = jnp.max(ks)
  features = [x]
  for j, name in enumerate(student_model.TRUNK_BLOCKS):
    block = student_model.trunk_block(spec, name, **options)
    level = student_model.block_level(name)
    compute = (lambda b, n, lv: lambda f: run_block(b, n, f, indices[lv]))(block, name, level)
    shape = jax.eval_shape(compute, features[-1])[0]
    skip = (lambda n, sh: lambda f: (jnp.zeros(sh.shape, sh.dtype), batch_stats[n]))(name,
                                                                                     shape)
    out, new_stats[name] = jax.lax.cond(depth > j, compute, skip, features[-1])
    features.append(out)

  outputs = {}
  for g, model in enumerate(teacher_models):
    def branch(k, model=model):
      def run(operands):
        feats, gate_params, teacher_vars = operands
        gated = ChannelGate(spec.gate_form, trunk.param_dtype).apply(
            {"params": gate_params[k]}, feats[k])
        return model.project(teacher_vars, gated, indices, k, trunk.dtype)
      return run
    gate_params = tuple(params[f"gate_{model.name}_{k}"]
                        for k in range(segnet.NUM_BRANCH_POINTS))
    outputs.update(jax.lax.switch(ks[g], [branch(k) for k in range(segnet.NUM_BRANCH_POINTS)],
                                  (tuple(features), gate_params, teachers[model.name])))
  return outputs, new_stats


def block_train_step(state: optim.TrainState, teachers: Mapping[str, Any],
                     batch: Mapping[str, jax.Array], rng: jax.Array, *,
                     trunk: nn.Module, teacher_models: Sequence[Any],
                     projection_fns: Mapping[str, ProjectionFn],
                     lambdas: Mapping[str, float], tx: optax.GradientTransformation,
                     num_steps: int, schedule: str = "random", block_path: str = "drawn_path",
                     grad_accum_steps: int = 1, axis_name: str | None = None,
                     target_views: TeacherViews = teacher_views.PLAIN
                     ) -> tuple[optim.TrainState, dict[str, jax.Array]]:
  """Step 2: one update of the trunk and gates through the frozen teacher tails.

  ``teacher_models`` (``kajax.teacher_model``) are in the trunk's branch order; each draws
  its own k_g and projects its gated f_k onto all of its tasks. ``block_path='drawn_path'``
  (``config.block.path``, default) computes only the trunk blocks and gates the drawn branch
  points use (:func:`drawn_path_outputs`); ``'all_blocks'`` computes every trunk block and
  all gates each step (the same loss and gradients; the unused blocks' BatchNorm statistics
  move too). ``grad_accum_steps`` > 1 splits the batch into that many micro-batches
  (``optim.accumulate``); ``axis_name`` is the device axis when run under ``jax.pmap``;
  ``target_views`` are the views the teachers' targets average over (:func:`teacher_outputs`).
  """
  if block_path not in BLOCK_PATHS:
    raise ValueError(f"block_path={block_path!r}: choose one of {BLOCK_PATHS}.")
  ks = draw_branch_points(rng, state.step, len(teacher_models), num_steps, schedule)

  def micro_step(micro):
    images = micro["image"]
    targets = step_targets(micro, teachers, teacher_models, trunk.dtype, target_views)

    def loss_of(params):
      if block_path == "all_blocks":
        (gated, indices), mutated = trunk.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True,
            mutable=["batch_stats"])
        new_stats, outs = mutated["batch_stats"], {}
        for g, model in enumerate(teacher_models):
          outs.update(student_model.switch_tail(g, ks[g], gated, indices, model,
                                                teachers[model.name], trunk.dtype))
      else:
        outs, new_stats = drawn_path_outputs(trunk, params, state.batch_stats, images, ks,
                                             teachers, teacher_models)
      total, per_task = projection_terms(outs, targets, projection_fns, lambdas, axis_name)
      return total, (new_stats, per_task)

    (loss, (stats, per_task)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state.params)
    return grads, stats, {"loss": loss, **{f"loss_{t}": l for t, l in per_task.items()}}

  grads, batch_stats, metrics = optim.accumulate(micro_step, student_inputs(batch),
                                                 grad_accum_steps)
  state, metrics = _finish(state, grads, batch_stats, metrics, tx, axis_name)
  metrics.update({f"k_{m.name}": ks[g] for g, m in enumerate(teacher_models)})
  return state, metrics


def branch_losses(trunk_variables: Any, teachers: Mapping[str, Any],
                  batch: Mapping[str, jax.Array], *, trunk: nn.Module,
                  teacher_models: Sequence[Any], projection_fns: Mapping[str, ProjectionFn],
                  target_views: TeacherViews = teacher_views.PLAIN) -> dict[str, Any]:
  """Step 3: the training loss of every (task, k) on a batch, as sums to pool over a split.

  For each task t and branch point k: the sum over the batch's real images of
  (image i's weighted-mean loss) x (image i's total pixel weight) = the sum of weight x loss
  over its pixels. Summed over every batch of a split and divided once by the summed weights
  (:func:`branch_table`), that is exactly the training loss of the split as one batch
  (class-weighted parsing KL included), not a mean of per-image means. Padding images
  (``mask`` False) count nowhere. ``target_views`` as in :func:`block_train_step` (the
  table measures the loss the student was trained with).

  Returns:
    ``{'sums': {task: (5,)}, 'weights': {task: ()}, 'images': ()}``.
  """
  images = batch["image"]
  mask = batch["mask"].astype(jnp.float32)
  targets = teacher_outputs(teachers, images, teacher_models, trunk.dtype, target_views)
  gated, indices = trunk.apply(trunk_variables, images, train=False)
  sums, weights = {}, {}
  for g, model in enumerate(teacher_models):
    rows = {t: [] for t in model.tasks}
    image_weight = {t: jnp.sum(pixel_weights(projection_fns[t], targets[t]), axis=(1, 2)) * mask
                    for t in model.tasks}
    for k in range(segnet.NUM_BRANCH_POINTS):
      outs = model.project(teachers[model.name], gated[g][k], indices, k, trunk.dtype)
      for t in model.tasks:
        per_image = jax.vmap(lambda s, y, fn=projection_fns[t]: fn(
            s[None].astype(jnp.float32), y[None]))(outs[t], targets[t])
        rows[t].append(jnp.sum(per_image * image_weight[t]))
    for t in model.tasks:
      sums[t], weights[t] = jnp.stack(rows[t]), jnp.sum(image_weight[t])
  return {"sums": sums, "weights": weights, "images": jnp.sum(mask)}


def branch_table(totals: Mapping[str, Any], teacher_models: Sequence[Any],
                 lambdas: Mapping[str, float]) -> np.ndarray:
  """The (teachers, 5) table from :func:`branch_losses` sums pooled over a split.

  Row g is teacher g's training loss Σ_t λ_t ℓ_t over its tasks (one branch point per
  teacher), each ℓ_t its pixel-weighted mean over the whole split.
  """
  rows = []
  for model in teacher_models:
    rows.append(sum(lambdas[t] * np.asarray(totals["sums"][t], np.float64)
                    / float(totals["weights"][t]) for t in model.tasks))
  return np.stack(rows)


def finetune_train_step(state: optim.TrainState, teachers: Mapping[str, Any],
                        batch: Mapping[str, jax.Array], rng: jax.Array, *,
                        model: nn.Module, teacher_models: Sequence[Any],
                        projection_fns: Mapping[str, ProjectionFn],
                        lambdas: Mapping[str, float], tx: optax.GradientTransformation,
                        grad_accum_steps: int = 1, axis_name: str | None = None,
                        target_views: TeacherViews = teacher_views.PLAIN
                        ) -> tuple[optim.TrainState, dict[str, jax.Array]]:
  """Step 4: one end-to-end update of the fixed-branch student (everything trainable).

  ``grad_accum_steps``, ``axis_name`` and ``target_views`` as in :func:`block_train_step`.
  """
  del rng  # No randomness in this phase; kept for the common step signature.

  def micro_step(micro):
    images = micro["image"]
    targets = step_targets(micro, teachers, teacher_models, model.dtype, target_views)

    def loss_of(params):
      (outputs, _), mutated = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          mutable=["batch_stats"])
      total, per_task = projection_terms({t: outputs[t] for t in targets}, targets,
                                         projection_fns, lambdas, axis_name)
      return total, (mutated["batch_stats"], per_task)

    (loss, (stats, per_task)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state.params)
    return grads, stats, {"loss": loss, **{f"loss_{t}": l for t, l in per_task.items()}}

  grads, batch_stats, metrics = optim.accumulate(micro_step, student_inputs(batch),
                                                 grad_accum_steps)
  return _finish(state, grads, batch_stats, metrics, tx, axis_name)
