"""Optimisers, learning-rate schedules and the train state, built from a config.

Config fields (``config.optimizer``): ``name`` ('adam' | 'adamw' | 'sgd'), ``learning_rate``,
``weight_decay``, ``momentum`` (sgd), ``schedule`` ('cosine' | 'constant'), ``warmup_steps``,
``grad_clip_norm`` (0 = off). Weight decay follows the PyTorch ports: L2 added to the gradient
for 'adam' and 'sgd' (torch.optim semantics), decoupled for 'adamw'.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("cosine", "constant")


@flax.struct.dataclass
class TrainState:
  """Everything a training step updates. Teachers are never part of it (docs/method.md §3)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def learning_rate_schedule(opt_config: Any, num_steps: int) -> optax.Schedule:
  """Warmup (linear) then cosine decay to zero, or a constant rate."""
  lr = float(opt_config.learning_rate)
  warmup = int(opt_config.get("warmup_steps", 0))
  schedule = opt_config.get("schedule", "cosine")
  if schedule not in _SCHEDULES:
    raise ValueError(f"--config.optimizer.schedule={schedule!r}: choose one of {_SCHEDULES}.")
  if schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    # Decay the rate: under a constant rate evaluations jump between checkpoints
    # (docs/method.md §4).
    main = optax.cosine_decay_schedule(lr, max(1, num_steps - warmup))
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(opt_config: Any, num_steps: int) -> optax.GradientTransformation:
  """The optax transformation described by ``config.optimizer``."""
  name = opt_config.name
  if name not in _OPTIMIZERS:
    raise ValueError(f"--config.optimizer.name={name!r}: choose one of {_OPTIMIZERS}.")
  schedule = learning_rate_schedule(opt_config, num_steps)
  wd = float(opt_config.get("weight_decay", 0.0))
  parts = []
  clip = float(opt_config.get("grad_clip_norm", 0.0))
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if name == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=wd))
  else:
    if wd > 0:  # torch.optim style L2: added to the gradient before the update rule.
      parts.append(optax.add_decayed_weights(wd))
    if name == "adam":
      parts.append(optax.adam(schedule))
    else:
      parts.append(optax.sgd(schedule, momentum=float(opt_config.get("momentum", 0.9))))
  return optax.chain(*parts)


def create_train_state(variables: dict[str, Any], tx: optax.GradientTransformation
                       ) -> TrainState:
  """A fresh state at step 0 from model variables."""
  params = variables["params"]
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def apply_update(state: TrainState, grads: Any, batch_stats: Any,
                 tx: optax.GradientTransformation) -> TrainState:
  """One optimiser update; the new BatchNorm statistics replace the old ones."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)


def accumulate(micro_step: Callable[[Any], Any], batch: Any, num_micro: int) -> Any:
  """Gradient accumulation: ``micro_step`` on ``num_micro`` slices of ``batch``, averaged.

  ``micro_step(micro_batch)`` returns a pytree of floats -- (gradients, new BatchNorm
  statistics, metrics) in kajax's steps -- and every leaf is averaged over the micro-batches
  (one ``lax.scan``: a single compiled body, one micro-batch of activations in memory).

  Micro-batch i holds images i, i + A, i + 2A, ... (A = ``num_micro``), so each device of a
  data-parallel mesh contributes equally to every micro-batch. BatchNorm: each micro-batch is
  normalised with its own statistics (as on a device that holds only it), and the running
  statistics move once per step, by the mean of the micro-batches' updates. Losses are pixel
  means of equal-size micro-batches, so the mean of their gradients is the gradient of the
  whole batch's loss; with BatchNorm in training mode the result equals one step on the whole
  batch exactly when the micro-batches' statistics equal the batch's (e.g. repeated halves).

  Args:
    micro_step: function of one micro-batch.
    batch: pytree of arrays with a leading batch axis divisible by ``num_micro``.
    num_micro: number of micro-batches (``config.grad_accum_steps``); 1 calls ``micro_step``
      on the whole batch.
  """
  if num_micro == 1:
    return micro_step(batch)
  sizes = {x.shape[0] for x in jax.tree_util.tree_leaves(batch)}
  if len(sizes) != 1 or next(iter(sizes)) % num_micro:
    raise ValueError(f"--config.grad_accum_steps={num_micro} must divide the batch size "
                     f"(got a batch of {sorted(sizes)}).")

  def split(x):  # (B, ...) -> (A, B/A, ...), micro-batch i = images i, i+A, ...
    return jnp.swapaxes(x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]), 0, 1)

  micro = jax.tree_util.tree_map(split, batch)
  shapes = jax.eval_shape(micro_step, jax.tree_util.tree_map(lambda x: x[0], micro))
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(total, one):
    return jax.tree_util.tree_map(jnp.add, total, micro_step(one)), None

  total, _ = jax.lax.scan(body, zeros, micro)
  return jax.tree_util.tree_map(lambda x: x / num_micro, total)
