"""Several amalgamation runs that share teachers, reported task by task (``mode='compare'``).

``configs/demo3.py`` uses it to put the two ways of amalgamating three teachers side by side:
option A (all teachers at once) and option B (a two-task student, then one more teacher
added to it). Each run is an ordinary amalgamation (``kajax.amalgamate``) in its own
sub-directory; nothing here trains anything itself.

Config (besides the usual ``data_dir``):

* ``runs``: {run name: amalgamation config}; a teacher ``dir`` written ``{workdir}/...`` in
  them is taken inside the *comparison's* workdir, so runs share teachers
  (``{workdir}/teachers/seg``, trained once by the first run that needs it) and a run can use
  another run's exported student as a teacher (``{workdir}/two_task/student``: option B);
  other paths mean what they mean in a shell, as in any run;
* ``run_order``: the order to run them in (a run must come after the runs it builds on);
* ``labels``: {run name: how the report calls it}.

Writes ``WORKDIR/comparison.json`` and ``comparison.md``: for every task, the table metrics
(``kajax.tasks``) of its single-task teacher and of every run's student that has the task,
with each model's parameters and GFLOPs per image (a student's are for all its tasks), and
each run's label and branch points. ``python -m kajax.benchmarks.seeds`` reads the JSON to
report a comparison config as mean ± std over seeds.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from kajax import amalgamate, multihost, storage, tasks, teacher_setup


def _run_config(config: ml_collections.ConfigDict, name: str, workdir: str
                ) -> ml_collections.ConfigDict:
  run = ml_collections.ConfigDict(config.runs[name].to_dict())
  with run.unlocked():
    if not run.get("data_dir"):
      run.data_dir = config.get("data_dir", "")
    for teacher in run.teachers.values():
      if teacher.dir.startswith(teacher_setup.WORKDIR_PREFIX):
        teacher.dir = teacher_setup.resolve_dir(teacher.dir, workdir)
  return run


def check_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for a comparison config before anything runs."""
  order = tuple(config.run_order)
  missing = [n for n in order if n not in config.runs]
  unlisted = [n for n in config.runs if n not in order]
  if missing or unlisted or len(set(order)) != len(order):
    raise ValueError(f"--config.run_order={order} must list every run of --config.runs "
                     f"({sorted(config.runs)}) once; missing {missing}, not listed {unlisted}.")
  for name in order:
    if config.runs[name].get("mode") != "amalgamate":
      raise ValueError(f"--config.runs.{name} must be an amalgamation config (mode="
                       f"'amalgamate'), got mode={config.runs[name].get('mode')!r}.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) every run in order, then writes the comparison report."""
  check_config(config)
  results = {}
  for name in config.run_order:
    multihost.log("=== run %r (%s) ===", name, config.labels.get(name, name))
    results[name] = amalgamate.train_and_evaluate(_run_config(config, name, workdir),
                                                  storage.join(workdir, name))
  report = compare(results, config.run_order, dict(config.labels))
  table = format_report(report)
  if multihost.is_main_process():
    storage.write_json(storage.join(workdir, "comparison.json"), report)
    storage.write_text(storage.join(workdir, "comparison.md"), table + "\n")
  multihost.log("Comparison:\n%s", table)
  return report


def compare(results: Mapping[str, Mapping[str, Any]], order, labels: Mapping[str, str]
            ) -> dict[str, Any]:
  """{"tasks": {task: [rows]}, "teachers_total": {params, gflops}, "runs": [...]}.

  Per task: its teacher's row, then one row per run whose student has the task. A row is
  {model, metrics ({metric: value} for the task's table metrics), params, gflops}. "runs"
  lists, in run order, {name, label, branch_points ({teacher: k})}.
  """
  report: dict[str, list[dict[str, Any]]] = {}
  for run in order:
    models = results[run]["models"]
    for task in results[run]["tasks"]:
      rows = report.setdefault(task, [])
      teacher = models.get(f"teacher/{task}")
      if teacher is not None and not any(r["model"] == "teacher" for r in rows):
        rows.insert(0, _row("teacher", task, teacher))
      rows.append(_row(labels.get(run, run), task, models["student"]))
  teachers = [r for rows in report.values() for r in rows if r["model"] == "teacher"]
  return {"tasks": report,
          "teachers_total": {k: sum(r[k] for r in teachers) for k in ("params", "gflops")},
          "runs": [{"name": run, "label": labels.get(run, run),
                    "branch_points": dict(results[run].get("branch_points", {}))}
                   for run in order]}


def _row(model: str, task: str, metrics: Mapping[str, float]) -> dict[str, Any]:
  return {"model": model,
          "metrics": {m: metrics.get(f"{task}/{m}") for m in tasks.get(task).table_metrics},
          "params": metrics["params"], "gflops": metrics["gflops"]}


def format_report(report: Mapping[str, Any]) -> str:
  """Markdown: one block of rows per task; the first metric's change against the teacher."""
  lines = []
  for task, rows in report["tasks"].items():
    names = tasks.get(task).table_metrics
    lines += [f"| {task} | " + " | ".join(names) +
              f" | {names[0]} vs teacher | params (M) | GFLOPs/img |",
              "|---" * (len(names) + 4) + "|"]
    base = next((r["metrics"][names[0]] for r in rows if r["model"] == "teacher"), None)
    for r in rows:
      cells = [f"{r['metrics'][m]:.4f}" if r["metrics"][m] is not None else ""
               for m in names]
      value = r["metrics"][names[0]]
      delta = (f"{value - base:+.4f}" if r["model"] != "teacher" and base is not None
               and value is not None else "")
      lines.append(f"| {r['model']} | " + " | ".join(cells) +
                   f" | {delta} | {r['params'] / 1e6:.3f} | {r['gflops']:.3f} |")
    lines.append("")
  total = report["teachers_total"]
  lines.append(f"Teachers together: {total['params'] / 1e6:.3f} M parameters, "
               f"{total['gflops']:.3f} GFLOPs/img.")
  return "\n".join(lines)
