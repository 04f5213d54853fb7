"""Training one single-task SegNet teacher from labels (for users without teacher checkpoints).

``python -m kajax.main --config=configs/teacher_rooms_seg.py --workdir=DIR`` trains, evaluates
and exports the teacher in exactly the format of a converted PyTorch teacher
(``kajax.teacher_files``), so JAX-trained and torch-converted teachers are interchangeable.
A killed run restarted with the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kajax import (checkpointing, data_sources, evaluation, host_memory, input_pipeline,
                   multihost, optim, parallel, progressive_resizing, segnet, step_parallelism,
                   storage, tasks, teacher_files, training_logs, training_loop)


def build_model(config: ml_collections.ConfigDict) -> segnet.SegNet:
  """The teacher network; compute dtype, BatchNorm axis (pmap) and remat from the config."""
  m = config.model
  return segnet.SegNet(num_outputs=m.num_outputs, arch=m.arch,
                       width_multiplier=m.width_multiplier, head=m.head,
                       bn_axis_name=step_parallelism.bn_axis_name(config),
                       dtype=step_parallelism.compute_dtype(config),
                       remat=config.get("remat", False),
                       head_init=m.get("head_init", "he_fan_out"),
                       input_coords=m.get("input_coords", False))


def teacher_extra(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Readout settings stored with the exported teacher (``DenseTask.teacher_extra``)."""
  task = tasks.get(config.task, "--config.task")
  return dict(task.teacher_extra(config.loss, config)) if task.teacher_extra else {}


def make_loss_fn(config: ml_collections.ConfigDict, class_weights: np.ndarray | None):
  """(outputs, batch) -> scalar loss, averaged over every valid pixel of the global batch."""
  task = tasks.get(config.task, "--config.task")
  options = {}
  if class_weights is not None:
    if not tasks.accepts_option(task.name, config.loss, "class_weights", projection=False):
      raise ValueError(f"--config.loss={config.loss!r} of task {task.name!r} cannot weight "
                       f"classes; set --config.class_weighting=none.")
    options["class_weights"] = jnp.asarray(class_weights)
  loss = tasks.supervised_fn(task.name, config.loss, teacher_extra(config),
                             config_key="--config.loss", **options)
  return lambda out, batch: loss(out, task.target_of(batch))


def teacher_train_step(state: optim.TrainState, batch: dict[str, jax.Array], rng: jax.Array,
                       *, model: segnet.SegNet, loss_fn, tx: optax.GradientTransformation,
                       grad_accum_steps: int = 1, axis_name: str | None = None
                       ) -> tuple[optim.TrainState, dict[str, jax.Array]]:
  """One supervised step. Pure; ``model``, ``loss_fn`` and ``tx`` are bound statically.

  The model computes in its own dtype, the loss in float32. ``grad_accum_steps`` and
  ``axis_name`` (pmap) as in ``kajax.amalgamation_steps``; there the mean over micro-batches
  or devices weights each part's valid pixels by its own count (the parts' losses are means).
  """
  del rng  # SegNet has no dropout; kept for the common step signature.

  def micro_step(micro):
    def loss_of(params):
      (out, _), mutated = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      micro["image"], train=True, mutable=["batch_stats"])
      return loss_fn(out.astype(jnp.float32), micro), mutated["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    return grads, batch_stats, {"loss": loss}

  grads, batch_stats, metrics = optim.accumulate(micro_step, batch, grad_accum_steps)
  if axis_name is not None:
    grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
  metrics["grad_norm"] = optax.global_norm(grads)
  return optim.apply_update(state, grads, batch_stats, tx), metrics


def median_frequency_weights(source: Any, num_classes: int, power: float,
                             max_examples: int = 200, task: str = "seg") -> np.ndarray:
  """Class weights (median frequency / frequency) ** power from the training labels.

  Eigen & Fergus (2015) median-frequency balancing (power 1); a smaller power softens it.
  """
  counts = np.zeros(num_classes, np.int64)
  for i in range(min(len(source), max_examples)):
    label = np.asarray(tasks.get(task).target_of(source[i])).reshape(-1)
    counts += np.bincount(label[label < num_classes], minlength=num_classes)[:num_classes]
  return weights_from_counts(counts, power)


def weights_from_counts(counts: np.ndarray, power: float) -> np.ndarray:
  """(median frequency / frequency) ** power, normalised to mean 1 over the classes seen;
  classes never seen get the largest weight."""
  freq = np.asarray(counts, np.float64) / max(1, int(np.sum(counts)))
  seen = freq > 0
  if not seen.any():
    return np.ones(len(freq), np.float32)
  weights = np.ones(len(freq), np.float64)
  weights[seen] = (np.median(freq[seen]) / freq[seen]) ** power
  weights[~seen] = weights[seen].max()
  return (weights / weights[seen].mean()).astype(np.float32)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the teacher described by ``config``, evaluates it and exports it.

  Returns:
    The final metrics on ``config.eval_split``.
  """
  tasks.check_task(config.task, "--config.task")
  low_res_steps = config.get("low_res_steps", 0)
  progressive_resizing.check_config(low_res_steps, config.get("low_res_size"), config.num_steps)
  workdir = storage.resolve(workdir)
  multihost.check_shared_directory(workdir, "workdir", "--workdir")
  if multihost.is_main_process():
    workdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  multihost.log_runtime(mesh)
  parallel.check_batch_size(config.batch_size, mesh)
  data_dir = data_sources.resolve_data_dir(config.data_dir)
  train_source = data_sources.open_split(config.dataset, data_dir, config.train_split)
  eval_source = data_sources.open_split(config.dataset, data_dir, config.eval_split)

  model = build_model(config)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  # Parameter shapes do not depend on the image size: initialise on a small probe.
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 64, 64, 3)), train=False))(
      init_rng)
  if config.get("init_from"):
    variables = load_imagenet_encoder(variables, config.init_from)
  class_weights = None
  if tasks.get(config.task).class_logits and config.class_weighting != "none":
    if config.class_weighting != "median_freq":
      raise ValueError(f"--config.class_weighting={config.class_weighting!r}: choose "
                       "'median_freq' (with --config.class_weight_power) or 'none'.")
    class_weights = median_frequency_weights(train_source, config.model.num_outputs,
                                             float(config.class_weight_power),
                                             task=config.task)
  tx = optim.make_optimizer(config.optimizer, config.num_steps)
  state = parallel.replicate(optim.create_train_state(variables, tx), mesh)

  train_iter = input_pipeline.make_train_iterator(
      train_source, config.input, global_batch_size=config.batch_size,
      seed=config.seed, images_only=False)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", config.max_checkpoints_to_keep)
  restored = ckpt.restore(state)
  if restored is not None:
    state, meta = restored
    input_pipeline.restore_iterator(train_iter, meta["data_iterator"])
    multihost.log("Resumed teacher_%s at step %d from %s", config.task, int(state.step),
                  ckpt.directory)

  step_parallelism.check_config(config)
  train_step = functools.partial(teacher_train_step, model=model,
                                 loss_fn=make_loss_fn(config, class_weights), tx=tx,
                                 grad_accum_steps=config.get("grad_accum_steps", 1))

  def compiled(step):
    jitted = step_parallelism.compile_train_step(step, config.get("parallelism", "jit"),
                                                 batch_argnum=1)
    return lambda s, b: jitted(s, b, jax.random.fold_in(step_rng, s.step))
  step_fn = compiled(train_step)
  if low_res_steps:
    step_fn = progressive_resizing.switch_after(
        compiled(progressive_resizing.on_downscaled_batches(
            train_step, tuple(config.low_res_size))),
        step_fn, low_res_steps, first_step=int(state.step))
  writer = training_logs.Writer(workdir)
  writer.config(config, (f"teacher_{config.task}/loss",))
  t0 = time.time()
  state = training_loop.run(f"teacher_{config.task}", step_fn, state, train_iter, mesh,
                   training_loop.LoopConfig(config.num_steps, config.log_every,
                                            config.checkpoint_every, config.batch_size),
                   ckpt, writer, learning_rate=optim.learning_rate_schedule(config.optimizer,
                                                                      config.num_steps))
  ckpt.close()
  train_seconds = time.time() - t0
  host_memory.release()  # the training step's buffers, before evaluation compiles its own

  results = evaluation.evaluate_model(
      lambda v, x: model.apply(v, x, train=False)[0].astype(jnp.float32), state.variables,
      config.task,
      teacher_extra(config), eval_source, config.input, config.eval_batch_size, mesh,
      num_outputs=config.model.num_outputs)
  results["train_seconds"] = train_seconds
  writer.scalars(config.num_steps, results, f"{config.eval_split}/")
  writer.close()
  export_teacher(config, state, workdir)
  if multihost.is_main_process():
    storage.write_json(workdir / "results.json", {"task": config.task, "metrics": results})
  multihost.log("teacher/%s metrics on %s: %s", config.task, config.eval_split,
                ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
  return results


def load_imagenet_encoder(variables: dict[str, Any], path: str) -> dict[str, Any]:
  """Replaces the encoder with converted torchvision vgg16_bn ImageNet weights.

  With coordinate channels (``model.input_coords``) the first conv's weights for them start
  at zero, so the encoder starts as ImageNet's and learns to use them.
  """
  from kajax import convert_torch  # torch is an optional extra.
  encoder = convert_torch.convert_vgg16_bn_imagenet(convert_torch.load_torch_checkpoint(path))
  inputs = variables["params"]["down1"]["layer0"]["conv"]["kernel"].shape[2]
  down1 = segnet.widen_first_conv(encoder["params"]["down1"], inputs)
  encoder = {**encoder, "params": {**encoder["params"], "down1": down1}}
  params = dict(variables["params"])
  stats = dict(variables["batch_stats"])
  params.update(encoder["params"])
  stats.update(encoder["batch_stats"])
  return {"params": params, "batch_stats": stats}


def export_teacher(config: ml_collections.ConfigDict, state: optim.TrainState,
                   workdir: str | os.PathLike) -> str:
  """Writes the trained teacher as a teacher directory (same format as converted ones).

  Called by every process: process 0 writes, then all wait until it is written, so every
  process may load it when this returns.
  """
  out_dir = config.get("export_dir") or storage.join(workdir, "teacher")
  variables = jax.device_get(state.variables)
  m = config.model
  info = teacher_files.TeacherInfo(
      task=config.task, num_outputs=m.num_outputs, arch=m.arch, head=m.head,
      width_multiplier=m.width_multiplier, input_coords=bool(m.get("input_coords", False)),
      params=segnet.count_params(variables["params"]),
      source=f"kajax teacher training ({config.dataset}:{config.train_split}, "
             f"{config.num_steps} steps)", source_sha256=None, extra=teacher_extra(config))
  if multihost.is_main_process():
    teacher_files.save_teacher(out_dir, variables, info, overwrite=True)
  multihost.sync("teacher exported")
  return os.fspath(out_dir)
