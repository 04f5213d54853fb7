"""Evaluating models on a labelled split: every metric of every task the model predicts.

Works for a single teacher, an old student used as a teacher and the multi-task student alike:
a model is a function from a normalised image batch to ``{task: raw output}``. Each task's
registered parts (``kajax.tasks``) turn outputs into predictions and accumulate metric sums
over the whole split (padding examples of the last batch are masked out).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from kajax import input_pipeline, parallel, tasks


def evaluate(model_fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]], variables: Any,
             task_extras: Mapping[str, Mapping[str, Any]], source: Any, input_config: Any,
             batch_size: int, mesh: Any, num_outputs: Mapping[str, int] | None = None
             ) -> dict[str, dict[str, float]]:
  """Metrics of every task ``model_fn`` predicts, over all of ``source``.

  Args:
    model_fn: (variables, normalised images (N,H,W,3)) -> {task: raw network output}.
    variables: the model's variables (an argument of the compiled step, not a constant
      baked into it: full-width models are ~120 MB).
    task_extras: per task to evaluate, readout settings (e.g. depth bins) of its output.
    source: random-access labelled split (``tfds.data_source``).
    input_config: the config's ``input`` block (evaluation resolution, normalisation).
    batch_size: global evaluation batch size (a multiple of the device count).
    mesh: device mesh.
    num_outputs: per task, output channels (the number of classes of a parsing task).

  Returns:
    {task: {metric name: value}}.
  """
  num_outputs = dict(num_outputs or {})
  task_list = tuple(task_extras)
  defs = {t: tasks.get(t) for t in task_list}
  sums = {t: defs[t].init_sums(num_outputs.get(t, defs[t].num_outputs)) for t in task_list}

  @jax.jit
  def update(sums, variables, batch):
    outputs = model_fn(variables, batch["image"])
    new = {}
    for t, task in defs.items():
      pred = task.readout(outputs[t], task_extras[t])
      # mask: padding examples of the last batch count for nothing.
      new[t] = task.update_sums(sums[t], pred, task.target_of(batch), batch["mask"])
    return new

  for local in input_pipeline.make_eval_iterator(source, input_config,
                                                 global_batch_size=batch_size):
    sums = update(sums, variables, parallel.global_batch(local, mesh))
  sums = jax.device_get(sums)
  return {t: {k: float(v) for k, v in defs[t].finalize(sums[t]).items()} for t in task_list}


def evaluate_model(predict: Callable[[Any, jax.Array], jax.Array], variables: Any, task: str,
                   extra: Mapping[str, Any], source: Any, input_config: Any, batch_size: int,
                   mesh: Any, num_outputs: int | None = None) -> dict[str, float]:
  """Single-task convenience wrapper around :func:`evaluate`."""
  return evaluate(lambda v, x: {task: predict(v, x)}, variables, {task: extra}, source,
                  input_config, batch_size, mesh, {task: num_outputs} if num_outputs else
                  None)[task]
