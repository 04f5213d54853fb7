"""The pure, compiled steps of amalgamation (docs/method.md §1 "Four steps", §3 "Pure functions").

Every step has the signature ``step(state, teachers, batch, rng) -> (state, metrics)`` once
its static parts (modules, losses, optimiser) are bound with ``functools.partial``, and is
compiled once per phase. ``teachers`` is a frozen pytree ``{task: variables}``: never in the
optimiser, never differentiated, run in inference mode under ``stop_gradient``.

* :func:`block_train_step` (step 2): trains the shared trunk and the channel gates. Each
  task's branch point k_t is drawn per step (or follows the sequential schedule) and the path
  is selected inside the compiled step with ``lax.switch``; the tails after k_t are the
  teacher's own frozen decoder blocks, BatchNorm in inference mode. This is the *projection*
  of the amalgamated feature onto each teacher's domain.
* :func:`branch_losses` (step 3): per-image projection losses of every (task, k) on held-out
  unaugmented images.
* :func:`finetune_train_step` (step 4): the fixed-branch student, everything trainable.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kajax import losses, optim, segnet, student_model, tasks

# ℓ_t(student raw output, teacher raw output) -> scalar mean over all pixels of the batch.
ProjectionFn = Callable[[jax.Array, jax.Array], jax.Array]
BLOCK_SCHEDULES = ("random", "sequential")


def make_projection_fn(task: str, kind: str, extra: Mapping[str, Any],
                       temperature: float = 1.0, class_weights: Any = None) -> ProjectionFn:
  """ℓ_t on raw network outputs: parsing compares logits (optionally weighting pixels by the
  teacher's predicted class); depth and normals compare the task readout (metres, unit
  vectors), so depth-bin teachers work too."""
  base = losses.projection_loss(task, kind)
  if task == "seg":
    if kind == "kl":
      return lambda s, t: base(s, t, temperature=temperature, class_weights=class_weights)
    return base
  return lambda s, t: base(tasks.readout(task, s, extra), tasks.readout(task, t, extra))


def teacher_outputs(teachers: Mapping[str, Any], images: jax.Array,
                    teacher_modules: Sequence[segnet.SegNet], task_names: Sequence[str]
                    ) -> dict[str, jax.Array]:
  """Y_t: every teacher's full output on the batch, frozen (inference mode, no gradient)."""
  return {t: jax.lax.stop_gradient(m.apply(teachers[t], images, train=False)[0])
          for t, m in zip(task_names, teacher_modules)}


def draw_branch_points(rng: jax.Array, step: jax.Array, num_tasks: int, num_steps: int,
                       schedule: str) -> jax.Array:
  """k_t for this step: uniform per task ('random') or one k for all tasks advancing from
  0 to 4 in equal stages ('sequential', block by block)."""
  if schedule == "random":
    return jax.random.randint(jax.random.fold_in(rng, step), (num_tasks,), 0,
                              segnet.NUM_BRANCH_POINTS)
  stage = jnp.minimum(step * segnet.NUM_BRANCH_POINTS // max(1, num_steps),
                      segnet.NUM_BRANCH_POINTS - 1)
  return jnp.full((num_tasks,), stage, jnp.int32)


def _apply_update(state: optim.TrainState, grads: Any, batch_stats: Any,
                  tx: optax.GradientTransformation) -> optim.TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)


def block_train_step(state: optim.TrainState, teachers: Mapping[str, Any],
                     batch: Mapping[str, jax.Array], rng: jax.Array, *,
                     trunk: nn.Module, teacher_modules: Sequence[segnet.SegNet],
                     task_names: Sequence[str], projection_fns: Sequence[ProjectionFn],
                     lambdas: Sequence[float], tx: optax.GradientTransformation,
                     num_steps: int, schedule: str = "random"
                     ) -> tuple[optim.TrainState, dict[str, jax.Array]]:
  """Step 2: one update of the trunk and gates through the frozen teacher tails."""
  images = batch["image"]
  targets = teacher_outputs(teachers, images, teacher_modules, task_names)
  ks = draw_branch_points(rng, state.step, len(task_names), num_steps, schedule)

  def loss_of(params):
    (gated, indices), mutated = trunk.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"])
    per_task = []
    for i, (t, module, fn) in enumerate(zip(task_names, teacher_modules, projection_fns)):
      out = student_model.switch_tail(i, ks[i], gated, indices, module, teachers[t])
      per_task.append(fn(out, targets[t]))
    total = sum(lam * l for lam, l in zip(lambdas, per_task))
    return total, (mutated["batch_stats"], per_task)

  (loss, (batch_stats, per_task)), grads = jax.value_and_grad(loss_of, has_aux=True)(
      state.params)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
  for i, t in enumerate(task_names):
    metrics[f"loss_{t}"] = per_task[i]
    metrics[f"k_{t}"] = ks[i]
  return _apply_update(state, grads, batch_stats, tx), metrics


def branch_losses(trunk_variables: Any, teachers: Mapping[str, Any],
                  batch: Mapping[str, jax.Array], *, trunk: nn.Module,
                  teacher_modules: Sequence[segnet.SegNet], task_names: Sequence[str],
                  projection_fns: Sequence[ProjectionFn]) -> tuple[jax.Array, jax.Array]:
  """Step 3: sums over the real images of a batch of per-image projection losses.

  Returns:
    ((T, 5) sum of per-image losses, number of real images). Dividing table sums by the
    count over a whole split gives the mean over all pixels (every image has the same size).
  """
  images = batch["image"]
  mask = batch["mask"].astype(images.dtype)
  targets = teacher_outputs(teachers, images, teacher_modules, task_names)
  gated, indices = trunk.apply(trunk_variables, images, train=False)
  rows = []
  for i, (t, module, fn) in enumerate(zip(task_names, teacher_modules, projection_fns)):
    per_image = lambda s, y: fn(s[None], y[None])  # noqa: E731  (mean over one image)
    row = []
    for k in range(segnet.NUM_BRANCH_POINTS):
      out = student_model.teacher_tail(module, teachers[t], gated[i][k], indices, k)
      row.append(jnp.sum(jax.vmap(per_image)(out, targets[t]) * mask))
    rows.append(jnp.stack(row))
  return jnp.stack(rows), jnp.sum(mask)


def finetune_train_step(state: optim.TrainState, teachers: Mapping[str, Any],
                        batch: Mapping[str, jax.Array], rng: jax.Array, *,
                        model: nn.Module, teacher_modules: Sequence[segnet.SegNet],
                        task_names: Sequence[str], projection_fns: Sequence[ProjectionFn],
                        lambdas: Sequence[float], tx: optax.GradientTransformation
                        ) -> tuple[optim.TrainState, dict[str, jax.Array]]:
  """Step 4: one end-to-end update of the fixed-branch student (everything trainable)."""
  del rng  # No randomness in this phase; kept for the common step signature.
  images = batch["image"]
  targets = teacher_outputs(teachers, images, teacher_modules, task_names)

  def loss_of(params):
    (outputs, _), mutated = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"])
    per_task = [fn(outputs[t], targets[t]) for t, fn in zip(task_names, projection_fns)]
    return sum(lam * l for lam, l in zip(lambdas, per_task)), (mutated["batch_stats"],
                                                                per_task)

  (loss, (batch_stats, per_task)), grads = jax.value_and_grad(loss_of, has_aux=True)(
      state.params)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
  metrics.update({f"loss_{t}": l for t, l in zip(task_names, per_task)})
  return _apply_update(state, grads, batch_stats, tx), metrics
