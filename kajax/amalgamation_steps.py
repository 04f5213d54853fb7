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
  teacher's branch point k_g is drawn per step (or follows the sequential schedule) and the
  path is selected inside the compiled step with ``lax.switch``; the tails after k_g are the
  teacher's own frozen computation, BatchNorm in inference mode. This is the *projection*
  of the amalgamated feature onto each teacher's domain.
* :func:`branch_losses` (step 3): per-image projection losses of every (teacher, k) on held-out
  unaugmented images.
* :func:`finetune_train_step` (step 4): the fixed-branch student, everything trainable.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kajax import optim, segnet, student_model

# ℓ_t(student raw output, teacher raw output) -> scalar mean over all pixels of the batch
# (built by ``kajax.tasks.projection_fn``).
ProjectionFn = Callable[[jax.Array, jax.Array], jax.Array]
BLOCK_SCHEDULES = ("random", "sequential")


def teacher_outputs(teachers: Mapping[str, Any], images: jax.Array,
                    teacher_models: Sequence[Any]) -> dict[str, jax.Array]:
  """Y_t: every teacher's full outputs on the batch, {task: output}, frozen (inference mode,
  no gradient)."""
  return {task: out for model in teacher_models
          for task, out in model.outputs(teachers[model.name], images).items()}


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


def _apply_update(state: optim.TrainState, grads: Any, batch_stats: Any,
                  tx: optax.GradientTransformation) -> optim.TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)


def _weighted_total(per_task: Mapping[str, jax.Array], lambdas: Mapping[str, float]
                    ) -> jax.Array:
  return sum(lambdas[t] * loss for t, loss in per_task.items())


def block_train_step(state: optim.TrainState, teachers: Mapping[str, Any],
                     batch: Mapping[str, jax.Array], rng: jax.Array, *,
                     trunk: nn.Module, teacher_models: Sequence[Any],
                     projection_fns: Mapping[str, ProjectionFn],
                     lambdas: Mapping[str, float], tx: optax.GradientTransformation,
                     num_steps: int, schedule: str = "random"
                     ) -> tuple[optim.TrainState, dict[str, jax.Array]]:
  """Step 2: one update of the trunk and gates through the frozen teacher tails.

  ``teacher_models`` (``kajax.teacher_model``) are in the trunk's branch order; each draws
  its own k_g and projects its gated f_k onto all of its tasks.
  """
  images = batch["image"]
  targets = teacher_outputs(teachers, images, teacher_models)
  ks = draw_branch_points(rng, state.step, len(teacher_models), num_steps, schedule)

  def loss_of(params):
    (gated, indices), mutated = trunk.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"])
    per_task = {}
    for g, model in enumerate(teacher_models):
      outs = student_model.switch_tail(g, ks[g], gated, indices, model, teachers[model.name])
      per_task.update({t: projection_fns[t](outs[t], targets[t]) for t in model.tasks})
    return _weighted_total(per_task, lambdas), (mutated["batch_stats"], per_task)

  (loss, (batch_stats, per_task)), grads = jax.value_and_grad(loss_of, has_aux=True)(
      state.params)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
  metrics.update({f"loss_{t}": l for t, l in per_task.items()})
  metrics.update({f"k_{m.name}": ks[g] for g, m in enumerate(teacher_models)})
  return _apply_update(state, grads, batch_stats, tx), metrics


def branch_losses(trunk_variables: Any, teachers: Mapping[str, Any],
                  batch: Mapping[str, jax.Array], *, trunk: nn.Module,
                  teacher_models: Sequence[Any], projection_fns: Mapping[str, ProjectionFn],
                  lambdas: Mapping[str, float]) -> tuple[jax.Array, jax.Array]:
  """Step 3: sums over the real images of a batch of per-image projection losses.

  Row g of the table is teacher g's weighted loss sum_t lambda_t l_t over its tasks (one
  branch point per teacher, so one row per teacher).

  Returns:
    ((G, 5) sum of per-image losses, number of real images). Dividing table sums by the
    count over a whole split gives the mean over all pixels (every image has the same size).
  """
  images = batch["image"]
  mask = batch["mask"].astype(images.dtype)
  targets = teacher_outputs(teachers, images, teacher_models)
  gated, indices = trunk.apply(trunk_variables, images, train=False)
  rows = []
  for g, model in enumerate(teacher_models):
    row = []
    for k in range(segnet.NUM_BRANCH_POINTS):
      outs = model.project(teachers[model.name], gated[g][k], indices, k)
      per_image = sum(
          lambdas[t] * jax.vmap(lambda s, y, fn=projection_fns[t]: fn(s[None], y[None]))(
              outs[t], targets[t]) for t in model.tasks)
      row.append(jnp.sum(per_image * mask))
    rows.append(jnp.stack(row))
  return jnp.stack(rows), jnp.sum(mask)


def finetune_train_step(state: optim.TrainState, teachers: Mapping[str, Any],
                        batch: Mapping[str, jax.Array], rng: jax.Array, *,
                        model: nn.Module, teacher_models: Sequence[Any],
                        projection_fns: Mapping[str, ProjectionFn],
                        lambdas: Mapping[str, float], tx: optax.GradientTransformation
                        ) -> tuple[optim.TrainState, dict[str, jax.Array]]:
  """Step 4: one end-to-end update of the fixed-branch student (everything trainable)."""
  del rng  # No randomness in this phase; kept for the common step signature.
  images = batch["image"]
  targets = teacher_outputs(teachers, images, teacher_models)

  def loss_of(params):
    (outputs, _), mutated = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"])
    per_task = {t: projection_fns[t](outputs[t], targets[t]) for t in targets}
    return _weighted_total(per_task, lambdas), (mutated["batch_stats"], per_task)

  (loss, (batch_stats, per_task)), grads = jax.value_and_grad(loss_of, has_aux=True)(
      state.params)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
  metrics.update({f"loss_{t}": l for t, l in per_task.items()})
  return _apply_update(state, grads, batch_stats, tx), metrics
