"""Evaluation of an amalgamation run and what it writes for people and programs.

``WORKDIR/results.json``::

  {"models": {"teacher/seg": {...}, "teacher/depth": {...}, "teachers/total": {...},
              "student": {...}},
   "branch_points": {task: k}, "branch_losses": {task: [5 losses]}}

each model a flat dict metric name -> number (``miou``, ``pixel_acc``, ``mean_acc``,
``abs_rel``, ``rmse``, ..., ``params``, ``gflops`` per image). Also ``results.md`` (the same
as a Markdown table, printed at the end), ``samples.png`` (input | teacher | student | ground
truth per task) and ``branch_losses.png`` (the branch-search table as bars).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from kajax import (branch_search, evaluation, export, flops, input_pipeline, multihost,
                   parallel, segnet, storage, tasks, visualize)

RESULTS_FILE = "results.json"
# Columns of the summary table, per task, in reading order (all keys of kajax.metrics).
_TABLE_METRICS = {
    "seg": ("miou", "pixel_acc", "mean_acc"),
    "depth": ("rmse", "abs_rel", "delta1"),
    "normals": ("angle_mean", "angle_median", "within_30"),
}
_NUM_SAMPLES = 4
# What each projection loss (``kajax.losses.PROJECTION_LOSSES``) is measured in.
_LOSS_UNITS = {"kl": "nats/pixel", "hard_ce": "nats/pixel", "l1": "m", "berhu": "m",
               "log_l1": "log ratio", "cosine": "1 - cos"}


def _flatten(per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  return {k: v for metrics in per_task.values() for k, v in metrics.items()}


def _num_classes(run: Any) -> int | None:
  seg = run.teachers.get("seg")
  return seg.info.num_outputs if seg is not None else None


def evaluate_and_report(run: Any, student_dir: str) -> dict[str, Any]:
  """Evaluates the teachers and the exported student on ``config.test_split``; writes the
  results files and pictures; prints the summary table. Returns the results dict."""
  c = run.config
  source = run.source(c.test_split)
  module, variables, info = export.load_student(student_dir)
  variables = parallel.replicate(variables, run.mesh)
  h, w = _eval_hw(source, c.input)
  models: dict[str, dict[str, float]] = {}
  for t, teacher in run.teachers.items():
    tv = run.teacher_vars[t]
    metrics = evaluation.evaluate_model(
        lambda v, x, m=teacher.module: m.apply(v, x, train=False)[0], tv, t,
        teacher.info.extra, source, c.input, c.eval_batch_size, run.mesh, _num_classes(run))
    metrics["params"] = float(segnet.count_params(teacher.variables["params"]))
    metrics["gflops"] = flops.gflops_per_image(teacher.module, teacher.variables, (h, w))
    models[f"teacher/{t}"] = metrics
  models["teachers/total"] = {
      "params": sum(models[f"teacher/{t}"]["params"] for t in run.teachers),
      "gflops": sum(models[f"teacher/{t}"]["gflops"] for t in run.teachers)}
  student_metrics = _flatten(evaluation.evaluate(
      lambda v, x: module.apply(v, x, train=False)[0], variables, info["extras"], source,
      c.input,
      c.eval_batch_size, run.mesh, _num_classes(run)))
  student_metrics["params"] = float(info["params"])
  student_metrics["gflops"] = flops.gflops_per_image(module, jax.device_get(variables),
                                                      (h, w))
  models["student"] = student_metrics
  search = branch_search.load_result(run.workdir) or {}
  results = {"models": models,
             "branch_points": dict(zip(info["tasks"], info["branch_points"])),
             "branch_losses": search.get("losses", {})}
  table = format_results(results, tuple(info["tasks"]))
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


def format_results(results: Mapping[str, Any], task_names: tuple[str, ...]) -> str:
  """Markdown: one row per model, the main metrics of every task, params and GFLOPs."""
  columns = [(t, m) for t in task_names for m in _TABLE_METRICS[t]]
  header = ("| model | " + " | ".join(f"{t} {m}" for t, m in columns) +
            " | params (M) | GFLOPs/img |")
  lines = [header, "|---" * (len(columns) + 3) + "|"]
  for name, metrics in results["models"].items():
    cells = [f"{metrics[m]:.4f}" if m in metrics and (name == "student" or
                                                      name == f"teacher/{t}") else ""
             for t, m in columns]
    lines.append(f"| {name} | " + " | ".join(cells) +
                 f" | {metrics['params'] / 1e6:.3f} | {metrics['gflops']:.3f} |")
  points = ", ".join(f"{t}: k={k}" for t, k in results["branch_points"].items())
  return "\n".join(lines) + f"\n\nBranch points: {points}"


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
  forward = jax.jit(lambda m, v, x: m.apply(v, x, train=False)[0], static_argnums=0)
  student_out = jax.device_get(forward(module, jax.device_get(variables), images))
  rows, titles = [], ["input"]
  for t in info["tasks"]:
    titles += [f"teacher {t}", f"student {t}", f"truth {t}"]
  teacher_out = {t: np.asarray(forward(tc.module, tc.variables, images))
                 for t, tc in run.teachers.items()}
  for i in range(len(images)):
    row = [visualize.denormalize_image(images[i])]
    for t in info["tasks"]:
      extra, truth = info["extras"][t], batch[tasks.TARGET_KEY[t]][i]
      # One depth colour scale per row, from the ground truth, so the three are comparable.
      scale = float(np.max(truth)) if t == "depth" and np.max(truth) > 0 else 10.0
      for out in (teacher_out[t], student_out[t]):
        row.append(_picture(t, np.asarray(tasks.readout(t, out[i:i + 1], extra))[0], scale))
      row.append(_picture(t, truth, scale, truth=True))
    rows.append(row)
  visualize.save_png(storage.join(run.workdir, "samples.png"), visualize.grid(rows, titles))
  run.writer.image(0, "samples", visualize.grid(rows, titles))
  if search:
    names = search["tasks"]
    table = np.array([search["losses"][t] for t in names])
    chosen = [search["branch_points"][t] for t in names]
    visualize.save_png(storage.join(run.workdir, "branch_losses.png"),
                       visualize.bar_chart(names, table, chosen, tau=float(search["tau"]),
                                           units=[_loss_units(c, t) for t in names]))


def _loss_units(config: Any, task: str) -> str:
  """Axis label of a task's projection loss (what its number measures)."""
  kind = config.loss.kinds[task]
  return f"{kind} ({_LOSS_UNITS[kind]})" if kind in _LOSS_UNITS else kind


def _picture(task: str, value: np.ndarray, max_depth: float, truth: bool = False
             ) -> np.ndarray:
  if task == "seg":
    return visualize.colorize_labels(value if truth else np.argmax(value, axis=-1))
  if task == "depth":
    return visualize.colorize_depth(value, max_depth)
  return visualize.colorize_normals(value)


class _Subset:
  """The first ``n`` examples of a random-access source."""

  def __init__(self, source: Any, n: int):
    self._source, self._n = source, min(n, len(source))

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, i: int) -> Any:
    return self._source[i]
