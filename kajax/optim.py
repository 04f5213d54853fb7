"""Optimisers, learning-rate schedules and the train state, built from a config.

Config fields (``config.optimizer``): ``name`` ('adam' | 'adamw' | 'sgd'), ``learning_rate``,
``weight_decay``, ``momentum`` (sgd), ``schedule`` ('cosine' | 'constant'), ``warmup_steps``,
``grad_clip_norm`` (0 = off). Weight decay follows the PyTorch ports: L2 added to the gradient
for 'adam' and 'sgd' (torch.optim semantics), decoupled for 'adamw'.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
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
    # Decay the rate: under a constant rate evaluations jump between checkpoints (docs/method.md §4).
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
