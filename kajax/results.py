"""Evaluation of an amalgamation run and what it writes for people and programs.

``WORKDIR/results.json``::

  {"models": {"teacher/seg": {...}, "teacher/depth": {...}, "teachers/total": {...},
              "student": {...}},
   "tasks": [...], "teachers": {name: [its tasks]},
   "branch_points": {teacher: k}, "branch_losses": {teacher: [5 losses]}}

each model a flat dict ``"{task}/{metric}"`` -> number (``seg/miou``, ``depth/rmse``,
``normals/angle_mean``, ..., every metric of every registered task it predicts) plus
``params`` and ``gflops`` per image. Also ``results.md`` (the main metrics of every task as a
Markdown table, printed at the end), ``samples.png`` (input, then teacher | student | ground
truth per task) and ``branch_losses.png`` (the branch-search table as bars).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from kajax import (branch_search, evaluation, export, flops, input_pipeline, multihost,
                   parallel, storage, tasks, visualize)

RESULTS_FILE = "results.json"
_NUM_SAMPLES = 4
# What each built-in projection loss (``kajax.tasks``) is measured in.
_LOSS_UNITS = {"kl": "nats/pixel", "hard_ce": "nats/pixel", "l1": "m", "berhu": "m",
               "log_l1": "log ratio", "cosine": "1 - cos"}


def flatten(per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """{task: {metric: v}} -> {"task/metric": v}."""
  return {f"{t}/{k}": v for t, metrics in per_task.items() for k, v in metrics.items()}


def evaluate_and_report(run: Any, student_dir: str) -> dict[str, Any]:
  """Evaluates the teachers and the exported student on ``config.test_split``; writes the
  results files and pictures; prints the summary table. Returns the results dict."""
  c = run.config
  source = run.source(c.test_split)
  module, variables, info = export.load_student(student_dir)
  variables = parallel.replicate(variables, run.mesh)
  h, w = _eval_hw(source, c.input)
  models: dict[str, dict[str, float]] = {}
  for name, teacher in run.teachers.items():
    model = teacher.model
    metrics = flatten(evaluation.evaluate(
        model.outputs, run.teacher_vars[name], model.extras, source, c.input,
        c.eval_batch_size, run.mesh, model.num_outputs_by_task))
    metrics["params"] = float(teacher.params)
    metrics["gflops"] = flops.gflops_per_image(model.module(), teacher.variables, (h, w))
    models[f"teacher/{name}"] = metrics
  models["teachers/total"] = {
      "params": sum(models[f"teacher/{n}"]["params"] for n in run.teachers),
      "gflops": sum(models[f"teacher/{n}"]["gflops"] for n in run.teachers)}
  student_metrics = flatten(evaluation.evaluate(
      lambda v, x: module.apply(v, x, train=False)[0], variables, info["extras"], source,
      c.input, c.eval_batch_size, run.mesh, info["num_outputs"]))
  student_metrics["params"] = float(info["params"])
  student_metrics["gflops"] = flops.gflops_per_image(module, jax.device_get(variables),
                                                      (h, w))
  models["student"] = student_metrics
  search = branch_search.load_result(run.workdir) or {}
  results = {"models": models, "tasks": list(info["tasks"]),
             "teachers": {n: list(tc.tasks) for n, tc in run.teachers.items()},
             "branch_points": dict(zip(info["teachers"], info["branch_points"])),
             "branch_losses": search.get("losses", {})}
  table = format_results(results)
  if multihost.is_main_process():
    storage.write_json(storage.join(run.workdir, RESULTS_FILE), results)
    storage.write_text(storage.join(run.workdir, "results.md"), table + "\n")
    _write_pictures(run, module, variables, info, source, search)
    run.writer.text(0, "results", table)
    for name, metrics in models.items():
      run.writer.scalars(0, metrics, f"test/{name}/")
    run.writer.flush()
  multihost.log("Results on %s:\n%s", c.test_split, table)
  return results


def _eval_hw(source: Any, input_config: Any) -> tuple[int, int]:
  size = input_config.get("image_size")
  return tuple(size) if size else tuple(np.asarray(source[0]["image"]).shape[:2])


def format_results(results: Mapping[str, Any]) -> str:
  """Markdown: one row per model, the table metrics of every task, params and GFLOPs."""
  columns = [(t, m) for t in results["tasks"] for m in tasks.get(t).table_metrics]
  header = ("| model | " + " | ".join(f"{t} {m}" for t, m in columns) +
            " | params (M) | GFLOPs/img |")
  lines = [header, "|---" * (len(columns) + 3) + "|"]
  for name, metrics in results["models"].items():
    cells = [f"{metrics[f'{t}/{m}']:.4f}" if f"{t}/{m}" in metrics else ""
             for t, m in columns]
    lines.append(f"| {name} | " + " | ".join(cells) +
                 f" | {metrics['params'] / 1e6:.3f} | {metrics['gflops']:.3f} |")
  points = ", ".join(f"{t}: k={k}" for t, k in results["branch_points"].items())
  return "\n".join(lines) + f"\n\nBranch points: {points}"


def _answers(task: tasks.DenseTask, raw: np.ndarray, extra: Mapping[str, Any]) -> np.ndarray:
  return np.asarray(task.answer(task.readout(raw, extra)))


def _write_pictures(run: Any, module: Any, variables: Any, info: Mapping[str, Any],
                    source: Any, search: Mapping[str, Any]) -> None:
  """samples.png (per image: input, then teacher | student | truth for each task) and
  branch_losses.png."""
  c = run.config
  batch = next(iter(input_pipeline.make_eval_iterator(
      _Subset(source, _NUM_SAMPLES), c.input, global_batch_size=_NUM_SAMPLES,
      process_index=0, process_count=1)))
  images = batch["image"]
  # jit: an eager SegNet forward dispatches hundreds of small ops (seconds on a CPU).
  student = jax.jit(lambda v, x: module.apply(v, x, train=False)[0])
  teacher = jax.jit(lambda m, v, x: m.outputs(v, x), static_argnums=0)
  extras = info["extras"]
  student_out = jax.device_get(student(jax.device_get(variables), images))
  teacher_out = {}
  for tc in run.teachers.values():
    teacher_out.update(jax.device_get(teacher(tc.model, tc.variables, images)))
  titles = ["input"]
  for t in info["tasks"]:
    titles += [f"teacher {t}", f"student {t}", f"truth {t}"]
  answers = {t: (_answers(tasks.get(t), teacher_out[t], extras[t]),
                 _answers(tasks.get(t), student_out[t], extras[t])) for t in info["tasks"]}
  rows = []
  for i in range(len(images)):
    row = [visualize.denormalize_image(images[i])]
    for t in info["tasks"]:
      task = tasks.get(t)
      truth = np.asarray(task.target_of(batch))[i]
      # One colour scale per row from the ground truth (e.g. metres), so the three compare.
      top = float(np.max(truth)) if truth.size and np.max(truth) > 0 else None
      row += [task.colorize(a[i], top) for a in answers[t]] + [task.colorize(truth, top)]
    rows.append(row)
  picture = visualize.grid(rows, titles)
  visualize.save_png(storage.join(run.workdir, "samples.png"), picture)
  run.writer.image(0, "samples", picture)
  if search:
    names = search.get("teachers", search.get("tasks"))
    table = np.array([search["losses"][n] for n in names])
    chosen = [search["branch_points"][n] for n in names]
    visualize.save_png(storage.join(run.workdir, "branch_losses.png"),
                       visualize.bar_chart(names, table, chosen, tau=float(search["tau"]),
                                           units=[_loss_units(c, run.teachers[n].tasks)
                                                  for n in names]))


def _loss_units(config: Any, task_names: tuple[str, ...]) -> str:
  """Axis label of a teacher's branch loss: what its tasks' projection losses measure."""
  def one(task):
    kind = config.loss.kinds[task]
    return f"{kind} ({_LOSS_UNITS[kind]})" if kind in _LOSS_UNITS else kind
  if len(task_names) == 1:
    return one(task_names[0])
  return "weighted sum: " + " + ".join(one(t) for t in task_names)


class _Subset:
  """The first ``n`` examples of a random-access source."""

  def __init__(self, source: Any, n: int):
    self._source, self._n = source, min(n, len(source))

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, i: int) -> Any:
    return self._source[i]
