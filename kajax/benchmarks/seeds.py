"""Runs a config with several seeds and reports every metric as mean ± std over the seeds.

  python -m kajax.benchmarks.seeds --config=configs/demo.py --seeds=3 --workdir=/tmp/kajax_seeds
  python -m kajax.benchmarks.seeds --config=configs/demo3.py --seeds=3 --workdir=/tmp/seeds3

Seed s runs ``python -m kajax.main --config=CONFIG:seed=s --workdir=WORKDIR/seed_s`` in a
subprocess (a fresh JAX runtime per run, so the seeds do not share compiled state; a run that
is killed resumes when the same command is repeated, finished seeds are skipped). Afterwards
``WORKDIR/seeds.json`` and ``WORKDIR/seeds.md`` hold, for every model of ``results.json``
(teachers, student) and every metric, the mean and the sample standard deviation (n - 1)
over the seeds, the paired student − teacher differences, the branch points each seed chose,
and each run's wall time. A comparison config (``configs/demo3.py``: several students that
share teachers, ``kajax.comparison``) is summarised the same way from each seed's
``comparison.json``: every teacher, every student by its label, and each student's paired
differences against the teacher of every task it has.

A run's wall time says little on its own: this kind of machine's speed varies ~1.5x between
days. With ``--step_benchmark`` (default) the step benchmark
(``python -m kajax.benchmarks.train_steps``) runs before the first and after the last seed,
and its tables are printed and saved beside the times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
from absl import flags

from kajax import cli, tasks


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  """Defines this CLI's flags on ``flag_values``."""
  holders = {
      "config": flags.DEFINE_string("config", None, "Config file, optionally FILE:ARG (e.g. "
                                    "configs/demo.py:long); ',seed=N' is appended per run.",
                                    flag_values=flag_values),
      "seeds": flags.DEFINE_integer("seeds", 3, "Number of seeds.", lower_bound=1,
                                    flag_values=flag_values),
      "first_seed": flags.DEFINE_integer("first_seed", 0, "Seeds are first_seed .. "
                                         "first_seed + seeds - 1.", lower_bound=0,
                                         flag_values=flag_values),
      "workdir": flags.DEFINE_string("workdir", None, "One subdirectory seed_N per run, plus "
                                     "the summary seeds.json / seeds.md.",
                                     flag_values=flag_values),
      "override": flags.DEFINE_multi_string("override", [], "Passed to every run as "
                                            "--config.KEY=VALUE, e.g. "
                                            "--override=branch.tau=0.",
                                            flag_values=flag_values),
      "step_benchmark": flags.DEFINE_bool("step_benchmark", True, "Run the step benchmark "
                                          "before and after the seeds and report it with the "
                                          "times.", flag_values=flag_values),
  }
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
  return holders


RESULTS_FILES = ("results.json", "comparison.json")  # an amalgamation / a comparison run
SUMMARY_JSON = "seeds.json"
SUMMARY_MD = "seeds.md"
# Lower is better for these metrics (by the name after "task/"); the paired differences say so.
LOWER_IS_BETTER = ("rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "angle_mean",
                   "angle_median")
# Per-model numbers that do not vary with the seed and are no quality metric.
_SIZES = ("params", "gflops")


def seeded_config(config: str, seed: int) -> str:
  """'configs/demo.py' -> 'configs/demo.py:seed=3'; 'x.py:long' -> 'x.py:long,seed=3'."""
  path, has_arg, arg = config.partition(":")
  if any(part.strip().startswith("seed") for part in arg.split(",")):
    raise ValueError(f"--config={config} already sets the seed; the benchmark sets it per "
                     "run (use --first_seed).")
  return f"{path}:{arg},seed={seed}" if has_arg and arg else f"{path}:seed={seed}"


def run_command(config: str, seed: int, workdir: str, overrides: Sequence[str]) -> list[str]:
  """The command line of one seed's run."""
  return ([sys.executable, "-m", "kajax.main", f"--config={seeded_config(config, seed)}",
           f"--workdir={workdir}"] + [f"--config.{o}" for o in overrides])


def mean_std(values: Sequence[float]) -> dict[str, Any]:
  """Mean and sample standard deviation (n - 1; None for a single value: no spread is
  known from one run) of a list of numbers."""
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
          "n": int(len(v))}


def _pm(stat: Mapping[str, Any], sign: str = "") -> str:
  spread = "(one seed)" if stat["std"] is None else f"± {stat['std']:.4f}"
  return f"{stat['mean']:{sign}.4f} {spread}"


def results_from_comparison(report: Mapping[str, Any]) -> dict[str, Any]:
  """A ``comparison.json`` report in the form of a ``results.json``: models ``teacher/<task>``
  and one per student label, metrics ``<task>/<metric>``, and branch points keyed
  ``"<label> <teacher>"``."""
  models: dict[str, dict[str, float]] = {}
  for task, rows in report["tasks"].items():
    for row in rows:
      name = f"teacher/{task}" if row["model"] == "teacher" else row["model"]
      metrics = models.setdefault(name, {})
      metrics.update({f"{task}/{m}": v for m, v in row["metrics"].items() if v is not None})
      metrics.update(params=row["params"], gflops=row["gflops"])
  points = {f"{run['label']} {teacher}": k for run in report.get("runs", [])
            for teacher, k in run["branch_points"].items()}
  return {"models": models, "tasks": list(report["tasks"]), "branch_points": points}


def load_results(run_dir: str) -> dict[str, Any] | None:
  """A finished run's results (``results.json``, or a comparison's ``comparison.json``
  converted by :func:`results_from_comparison`); None while the run has not finished."""
  for name in RESULTS_FILES:
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
      return results_from_comparison(results) if name == "comparison.json" else results
  return None


def summarize(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """Aggregates the ``results.json`` of each seed.

  Args:
    per_seed: {seed: results dict as written by ``kajax.results``}.

  Returns:
    {"seeds", "tasks", "models": {model: {metric: {mean, std, n}}}, "student_minus_teacher":
    {metric: {mean, std, n}} (paired per seed, every metric a teacher shares with a
    student; named "<student>: <metric>" for a student not called "student", as in a
    comparison), "branch_points": {seed: {teacher: k}}}. Metrics are named as in
    ``results.json`` ("seg/miou", "depth/rmse", ..., "params", "gflops").
  """
  seeds = sorted(per_seed)
  models: dict[str, dict[str, Any]] = {}
  names = list(per_seed[seeds[0]]["models"])
  for name in names:
    metrics = per_seed[seeds[0]]["models"][name]
    models[name] = {m: mean_std([per_seed[s]["models"][name][m] for s in seeds])
                    for m in metrics}
  diffs = {}
  teachers = [n for n in names if n.startswith("teacher/")]
  students = [n for n in names if not n.startswith("teacher")]  # not "teachers/total"
  for student in students:
    for name in teachers:
      for m in per_seed[seeds[0]]["models"][name]:
        if m in per_seed[seeds[0]]["models"][student] and m not in _SIZES:
          key = m if student == "student" else f"{student}: {m}"
          diffs[key] = mean_std([per_seed[s]["models"][student][m] -
                                 per_seed[s]["models"][name][m] for s in seeds])
  return {"seeds": seeds, "tasks": list(per_seed[seeds[0]].get("tasks", [])),
          "models": models, "student_minus_teacher": diffs,
          "branch_points": {str(s): per_seed[s].get("branch_points", {}) for s in seeds}}


def _cell(stat: Mapping[str, float], metric: str) -> str:
  if metric == "params":
    return f"{stat['mean']:,.0f}"
  if metric == "gflops":
    return f"{stat['mean']:.3f}"
  return _pm(stat)


def _table_columns(summary: Mapping[str, Any]) -> list[str]:
  """The main metrics of every task (as in results.md), then sizes."""
  names = {m for metrics in summary["models"].values() for m in metrics}
  columns = []
  for t in summary["tasks"]:
    try:
      main = tasks.get(t).table_metrics
    except ValueError:  # a plug-in task not registered in this process
      main = sorted(m.split("/", 1)[1] for m in names if m.startswith(f"{t}/"))
    columns += [f"{t}/{m}" for m in main if f"{t}/{m}" in names]
  return columns + [m for m in _SIZES if m in names]


def format_summary(summary: Mapping[str, Any], times: Mapping[str, float] | None = None,
                   benchmarks: Sequence[str] = ()) -> str:
  """Markdown: mean ± std per model and metric, paired differences, branch points, times."""
  models = summary["models"]
  columns = _table_columns(summary)
  lines = [f"Mean ± sample std over seeds {summary['seeds']} (n = {len(summary['seeds'])}).",
           "", "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for name, metrics in models.items():
    lines.append(f"| {name} | " + " | ".join(
        _cell(metrics[m], m) if m in metrics else "" for m in columns) + " |")
  if summary["student_minus_teacher"]:
    lines += ["", "Student − its teacher, paired per seed (negative is better for "
              + ", ".join(m for m in summary["student_minus_teacher"]
                          if m.rsplit("/", 1)[-1] in LOWER_IS_BETTER) + "):", ""]
    lines += [f"- {m}: {_pm(s, '+')}"
              for m, s in summary["student_minus_teacher"].items()]
  lines += ["", "Branch points per seed: " + "; ".join(
      f"seed {s}: " + ", ".join(f"{t} k={k}" for t, k in points.items())
      for s, points in summary["branch_points"].items())]
  if times:
    lines += ["", "Wall time per run: " + ", ".join(
        f"seed {s}: {t / 60:.1f} min" for s, t in times.items())]
  for text in benchmarks:
    lines += ["", "```", text.strip(), "```"]
  return "\n".join(lines)


def step_benchmark() -> str:
  """The step benchmark's output, run in a subprocess."""
  # --quick: the ~1-minute form (kajax's steps beside the PyTorch reference); enough to
  # tell how fast the machine is today.
  out = subprocess.run([sys.executable, "-m", "kajax.benchmarks.train_steps", "--quick"],
                       check=True, capture_output=True, text=True)
  table = [line for line in out.stdout.splitlines() if line.strip()]
  return time.strftime("%Y-%m-%d %H:%M ") + "\n".join(table)


def main(args: Any) -> None:
  workdir = os.path.abspath(os.path.expanduser(args.workdir))
  os.makedirs(workdir, exist_ok=True)
  seeds = list(range(args.first_seed, args.first_seed + args.seeds))
  for s in seeds:
    seeded_config(args.config, s)  # refuse a config that sets the seed before any run
  benchmarks = [step_benchmark()] if args.step_benchmark else []
  if benchmarks:
    print("Step benchmark before the runs:\n" + benchmarks[0], flush=True)
  per_seed, times = {}, {}
  for s in seeds:
    run_dir = os.path.join(workdir, f"seed_{s}")
    timing_path = os.path.join(run_dir, "wall_seconds.json")
    if load_results(run_dir) is None:
      command = run_command(args.config, s, run_dir, args.override)
      print(f"\n=== seed {s}: {' '.join(command[1:])}", flush=True)
      t0 = time.time()
      done = subprocess.run(command, check=False)
      if done.returncode:
        raise SystemExit(f"Seed {s} failed (exit code {done.returncode}); its workdir "
                         f"{run_dir} is kept: rerun the same command to resume it.")
      with open(timing_path, "w") as f:
        json.dump({"wall_seconds": time.time() - t0}, f)
    per_seed[s] = load_results(run_dir)
    if per_seed[s] is None:
      raise SystemExit(f"Seed {s}'s run ended without writing any of {RESULTS_FILES} in "
                       f"{run_dir}: is --config an amalgamation or comparison config?")
    if os.path.exists(timing_path):
      with open(timing_path) as f:
        times[str(s)] = json.load(f)["wall_seconds"]
  if args.step_benchmark:
    benchmarks.append(step_benchmark())
  summary = summarize(per_seed)
  summary.update({"config": args.config, "overrides": list(args.override),
                  "wall_seconds": times, "step_benchmarks": benchmarks})
  text = format_summary(summary, times, benchmarks)
  with open(os.path.join(workdir, SUMMARY_JSON), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(workdir, SUMMARY_MD), "w") as f:
    f.write(text + "\n")
  print("\n" + text, flush=True)


if __name__ == "__main__":
  cli.run(define_flags, main)
