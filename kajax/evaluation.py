"""Evaluating models on a labelled split: every metric of ``kajax.metrics`` per task.

Works for a single teacher and for the multi-task student alike: a model is a function from a
normalised image batch to ``{task: raw output}``; ``kajax.tasks.readout`` turns outputs into
predictions, and metric sums are accumulated over the whole split (padding examples of the
last batch are masked out).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from kajax import input_pipeline, metrics, parallel, tasks

def evaluate(model_fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]], variables: Any,
             task_extras: Mapping[str, Mapping[str, Any]], source: Any, input_config: Any,
             batch_size: int, mesh: Any, num_classes: int | None = None
             ) -> dict[str, dict[str, float]]:
  """Metrics of every task ``model_fn`` predicts, over all of ``source``.

  Args:
    model_fn: (variables, normalised images (N,H,W,3)) -> {task: raw network output}.
    variables: the model's variables (an argument of the compiled step, not a constant
      baked into it: full-width models are ~120 MB).
    task_extras: per task, readout settings (e.g. depth bins) of that output.
    source: random-access labelled split (``tfds.data_source``).
    input_config: the config's ``input`` block (evaluation resolution, normalisation).
    batch_size: global evaluation batch size (a multiple of the device count).
    mesh: device mesh.
    num_classes: number of parsing classes (needed when 'seg' is evaluated).

  Returns:
    {task: {metric name: value}}.
  """
  task_list = tuple(task_extras)
  sums = {t: metrics.init_sums(t, num_classes=num_classes) for t in task_list}

  @jax.jit
  def update(sums, variables, batch):
    outputs = model_fn(variables, batch["image"])
    new = {}
    for t in task_list:
      pred = tasks.readout(t, outputs[t], task_extras[t])
      # mask: padding examples of the last batch count for nothing.
      new[t] = metrics.update_sums(t, sums[t], pred, batch[tasks.TARGET_KEY[t]],
                                   mask=batch["mask"])
    return new

  for local in input_pipeline.make_eval_iterator(source, input_config,
                                                 global_batch_size=batch_size):
    sums = update(sums, variables, parallel.global_batch(local, mesh))
  sums = jax.device_get(sums)
  return {t: {k: float(v) for k, v in metrics.finalize(t, sums[t]).items()}
          for t in task_list}


def evaluate_model(predict: Callable[[Any, jax.Array], jax.Array], variables: Any, task: str,
                   extra: Mapping[str, Any], source: Any, input_config: Any, batch_size: int,
                   mesh: Any, num_classes: int | None = None) -> dict[str, float]:
  """Single-task convenience wrapper around :func:`evaluate`."""
  return evaluate(lambda v, x: {task: predict(v, x)}, variables, {task: extra}, source,
                  input_config, batch_size, mesh, num_classes)[task]

