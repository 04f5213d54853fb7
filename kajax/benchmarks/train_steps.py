"""kajax's compiled steps side by side with a PyTorch implementation of the same computation.

  python -m kajax.benchmarks.train_steps                       # NYUv2 size: 8x240x320, (3, 1)
  python -m kajax.benchmarks.train_steps --quick               # ~1 minute check
  python -m kajax.benchmarks.train_steps --dtype=bfloat16 --frameworks=kajax

For each phase (teacher inference, teacher training step, block-wise step, fine-tuning step)
and framework (kajax; the eager PyTorch reference in ``torch_reference.py``) one child process
builds the models on random weights, warms up, times ``--steps`` steps one by one, and reports
the median and spread of the step time, images/s, process CPU seconds per step, compile time
and peak resident memory. Phases alternate kajax/PyTorch so both see the same machine state
(``--rounds`` repeats the alternation); the summary is the kajax/PyTorch ratio of images/s.

FLOPs come from the layer shapes (``flop_count.py``) and are cross-checked against XLA's cost
analysis of the compiled step; the achieved fraction of peak is measured against this
machine's dense float32 matmul rate, which the benchmark measures itself (the best of JAX's and
PyTorch's large square matmul). The JSON (``--json``) also holds the numbers that size a
TPU/GPU run: FLOPs per image and per step, bytes of the parameters and of the gradient
all-reduce.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import flags, logging

from kajax import cli
from kajax.benchmarks import flop_count, step_runners

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  """Defines this benchmark's flags on ``flag_values`` (``kajax.cli`` style)."""
  fv = {"flag_values": flag_values}
  return {
      "resolution": flags.DEFINE_string("resolution", "240x320", "Image size HxW.", **fv),
      "width": flags.DEFINE_float("width", 1.0, "SegNet width multiplier (1 = VGG16-BN).",
                                  **fv),
      "batch_size": flags.DEFINE_integer("batch_size", 8, "Images per step.", **fv),
      "steps": flags.DEFINE_integer("steps", 3, "Timed steps per phase (after warm-up).",
                                    **fv),
      "warmup": flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.", **fv),
      "branch_points": flags.DEFINE_string("branch_points", "3,1",
                                           "Fine-tuning branch points (seg,depth).", **fv),
      "phases": flags.DEFINE_list(
          "phases", list(step_runners.PHASES),
          f"Phases to time, of {', '.join(step_runners.ALL_PHASES)}. teacher_forward, "
          "teacher_input_grad and teacher_train together split a teacher step by pass "
          "(forward, input gradients, weight gradients + Adam) and bound the ratio.", **fv),
      "frameworks": flags.DEFINE_list(
          "frameworks", ["kajax", "torch"],
          "What to time: kajax, torch (the PyTorch reference), kajax_baseline (kajax before "
          "the speed work: XLA's own convolution weight gradients, default scheduler, all "
          "trunk blocks in the block-wise step).", **fv),
      "dtype": flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                                 "kajax compute dtype (parameters, optimiser and losses stay "
                                 "float32). The PyTorch reference always runs float32.", **fv),
      "rounds": flags.DEFINE_integer("rounds", 1, "Alternations of kajax/PyTorch per phase.",
                                     **fv),
      "quick": flags.DEFINE_bool("quick", False, "~1 minute check: 96x128, width 1/4, 2 steps.",
                                 **fv),
      "json": flags.DEFINE_string("json", "", "Write the full results here.", **fv),
      "child": flags.DEFINE_string("child", "", "Internal: run one phase spec (JSON) and exit.",
                                   **fv),
  }


_THREADS = os.cpu_count() or 1


def measure_matmul_peak(size: int = 4096, repeats: int = 4) -> dict[str, float]:
  """Dense float32 matmul GFLOP/s of this machine: best of JAX (XLA) and PyTorch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
  flops = 2.0 * size**3
  mm = jax.jit(lambda x: x @ x)
  x = jnp.asarray(a)
  jax.block_until_ready(mm(x))
  best = {"jax": 0.0, "torch": 0.0}
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(mm(x))
    best["jax"] = max(best["jax"], flops / (time.perf_counter() - t) / 1e9)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(_THREADS)
    xt = torch.from_numpy(a)
    xt @ xt
    for _ in range(repeats):
      t = time.perf_counter()
      xt @ xt
      best["torch"] = max(best["torch"], flops / (time.perf_counter() - t) / 1e9)
  except ImportError:
    pass
  best["peak"] = max(best.values())
  return best


def _run_child(spec: step_runners.PhaseSpec) -> dict:
  """Runs one phase in a fresh process (its own peak RSS, its own thread pools)."""
  cmd = [sys.executable, "-m", "kajax.benchmarks.train_steps",
         f"--child={json.dumps(dataclasses.asdict(spec))}"]
  env = dict(os.environ)
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"Benchmark child {spec.framework}/{spec.phase} failed "
                       f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def _summarise(runs: list[dict], batch: int) -> dict:
  steps = [s for r in runs for s in r["step_s"]]
  cpus = [c for r in runs for c in r["cpu_s"]]
  med = statistics.median(steps)
  return {"median_s": med, "min_s": min(steps), "max_s": max(steps),
          "spread_pct": 100 * (max(steps) - min(steps)) / med, "images_per_s": batch / med,
          "cpu_s_per_step": statistics.median(cpus),
          "compile_s": max(r["compile_s"] for r in runs),
          "peak_rss_gib": max(r["peak_rss_bytes"] for r in runs) / 2**30,
          "xla_gflops_per_step": (runs[0]["xla_flops"] or 0) / 1e9 or None,
          "step_s": steps, "branch_points_timed": runs[0]["branch_points_timed"]}


def _flops_per_image(phase: str, g: flop_count.Geometry, points, drawn) -> float:
  outs = step_runners.NUM_OUTPUTS
  if phase in ("teacher_inference", "teacher_forward"):
    return flop_count.teacher_forward(g, outs[0])
  if phase == "teacher_input_grad":  # every layer's input gradient, the image's included
    return 2 * flop_count.teacher_forward(g, outs[0])
  if phase == "teacher_train":
    return flop_count.teacher_train_step(g, outs[0])
  if phase == "finetune":
    return flop_count.finetune_step(g, points, outs)
  # Block-wise: the mean over the branch points drawn in the timed steps.
  return sum(flop_count.block_step(g, ks, outs) for ks in drawn) / len(drawn)


def pass_split(phases: dict) -> dict | None:
  """A teacher training step's time by pass, per framework, from the three teacher phases.

  The forward pass (with the loss) is 'teacher_forward'; the input gradients are
  'teacher_input_grad' minus that; the weight gradients and the Adam update are
  'teacher_train' minus 'teacher_input_grad' (seconds per step, medians). ``bound`` is the
  kajax/PyTorch images/s ratio of the training step if kajax's weight-gradient part took
  exactly PyTorch's time and its other two parts stayed as measured; ``needed_for_1_3x`` the
  kajax weight-gradient part that would give 1.3x, as a fraction of PyTorch's. None unless
  all three phases ran in both frameworks.
  """
  names = ("teacher_forward", "teacher_input_grad", "teacher_train")
  if not all(n in phases and "kajax" in phases[n] and "torch" in phases[n] for n in names):
    return None
  out = {}
  for fw in ("kajax", "torch"):
    fwd, inp, train = (phases[n][fw]["median_s"] for n in names)
    out[fw] = {"forward_s": fwd, "input_grad_s": inp - fwd,
               "weight_grad_and_update_s": train - inp, "train_s": train}
  k, t = out["kajax"], out["torch"]
  out["bound"] = t["train_s"] / (k["forward_s"] + k["input_grad_s"]
                                 + t["weight_grad_and_update_s"])
  out["needed_for_1_3x"] = ((t["train_s"] / 1.3 - k["forward_s"] - k["input_grad_s"])
                            / t["weight_grad_and_update_s"])
  return out


def _pass_split_text(split: dict) -> str:
  rows = ["| teacher step part | kajax s | PyTorch s | kajax/PyTorch time |", "|---|---|---|---|"]
  for part, label in (("forward_s", "forward + loss"), ("input_grad_s", "input gradients"),
                      ("weight_grad_and_update_s", "weight gradients + Adam"),
                      ("train_s", "whole step")):
    k, t = split["kajax"][part], split["torch"][part]
    rows.append(f"| {label} | {k:.3f} | {t:.3f} | {k / t:.2f} |")
  rows.append(f"PASS SPLIT: with PyTorch's weight-gradient time kajax's step would run at "
              f"{split['bound']:.2f}x PyTorch's images/s; 1.3x needs kajax's weight-gradient "
              f"part at {split['needed_for_1_3x']:.2f} of PyTorch's time")
  return "\n".join(rows)


def sizing(g: flop_count.Geometry, points, batch: int) -> dict:
  """Numbers to size an accelerator run (float32 parameters and gradients)."""
  import jax  # pylint: disable=g-import-not-at-top
  from kajax import (segnet, student_model, student_spec,  # pylint: disable=g-import-not-at-top
                     teacher_model)
  spec = student_spec.StudentSpec(teacher_model.segnet_teachers(
      step_runners.TASKS, step_runners.NUM_OUTPUTS, width_multiplier=g.width_multiplier))

  def count(module):
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                                jax.numpy.zeros((1, 64, 64, 3))))
    return segnet.count_params(shapes["params"])
  trunk_params = count(student_model.StudentTrunk(spec))
  student_params = count(student_model.Student(spec, points))
  teacher_params = sum(count(segnet.SegNet(c, width_multiplier=g.width_multiplier))
                       for c in step_runners.NUM_OUTPUTS)
  outs = step_runners.NUM_OUTPUTS
  expected_block = sum(flop_count.block_step(g, (a, b), outs)
                       for a in range(5) for b in range(5)) / 25
  ft = flop_count.finetune_step(g, points, outs)
  return {
      "finetune_gflops_per_image": ft / 1e9, "finetune_gflops_per_step": ft * batch / 1e9,
      "block_gflops_per_image_expected": expected_block / 1e9,
      "student_forward_gflops_per_image": flop_count.student_forward(g, points, outs) / 1e9,
      "teacher_forward_gflops_per_image": [flop_count.teacher_forward(g, c) / 1e9
                                           for c in outs],
      "student_params": student_params, "block_trunk_params": trunk_params,
      "teacher_params": teacher_params,
      # float32 parameters; data parallelism all-reduces one float32 gradient per parameter.
      "student_param_bytes": 4 * student_params, "teacher_param_bytes": 4 * teacher_params,
      "finetune_allreduce_bytes_per_step": 4 * student_params,
      "block_allreduce_bytes_per_step": 4 * trunk_params,
  }


def _table(results: dict) -> str:
  rows = ["| phase | framework | s/step (median, spread) | images/s | CPU s/step | compile s "
          "| peak RSS GiB | GFLOP/s | % of matmul peak | kajax/PyTorch |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  for phase, by_fw in results["phases"].items():
    for fw in step_runners.FRAMEWORKS:
      if fw not in by_fw:
        continue
      r = by_fw[fw]
      ratio = f"**{by_fw['ratio']:.2f}x**" if fw == "kajax" and "ratio" in by_fw else ""
      if fw == "kajax" and "speedup_vs_baseline" in by_fw:
        ratio += f" ({by_fw['speedup_vs_baseline']:.2f}x baseline)"
      rows.append(f"| {phase} | {fw} | {r['median_s']:.2f} (±{r['spread_pct'] / 2:.0f}%) | "
                  f"{r['images_per_s']:.3g} | {r['cpu_s_per_step']:.1f} | "
                  f"{r['compile_s']:.0f} | {r['peak_rss_gib']:.2f} | {r['gflops_per_s']:.0f} | "
                  f"{r['peak_fraction'] * 100:.0f}% | {ratio} |")
  return "\n".join(rows)


def run(args):
  """Runs the benchmark with the parsed flags."""
  if args.child:
    spec = step_runners.PhaseSpec(**json.loads(args.child))
    spec.branch_points = tuple(spec.branch_points)
    print("RESULT " + json.dumps(step_runners.run(spec)), flush=True)
    return
  res, width, batch, steps = args.resolution, args.width, args.batch_size, args.steps
  if args.quick:
    res, width, steps = "96x128", 0.25, 2
  (h, w), points = step_runners.parse_shape_flags(res, args.branch_points)
  for flag, values, allowed in (("phases", args.phases, step_runners.ALL_PHASES),
                                ("frameworks", args.frameworks, step_runners.FRAMEWORKS)):
    for name in values:
      if name not in allowed:
        raise ValueError(f"--{flag}: {name!r} is not one of {allowed}.")
  g = flop_count.Geometry(h, w, width)
  peak = measure_matmul_peak()
  logging.info("Dense float32 matmul peak: %.0f GFLOP/s", peak["peak"])
  results = {"config": {"resolution": [h, w], "width": width, "batch_size": batch,
                        "steps": steps, "warmup": args.warmup, "branch_points": points,
                        "dtype": args.dtype, "rounds": args.rounds},
             "machine": {"cpu_count": _THREADS, "platform": platform.platform(),
                         "matmul_gflops": peak},
             "phases": {}}
  for phase in args.phases:
    runs = {fw: [] for fw in args.frameworks}
    for _ in range(args.rounds):
      for fw in args.frameworks:
        spec = step_runners.PhaseSpec(fw, phase, h, w, width, batch, points, steps,
                                      args.warmup, args.dtype, _THREADS)
        logging.info("Running %s / %s", fw, phase)
        runs[fw].append(_run_child(spec))
    by_fw = {fw: _summarise(r, batch) for fw, r in runs.items()}
    drawn = next(iter(by_fw.values()))["branch_points_timed"]
    per_image = _flops_per_image(phase, g, points, drawn)
    for r in by_fw.values():
      r["gflops_per_image"] = per_image / 1e9
      r["gflops_per_s"] = per_image * r["images_per_s"] / 1e9
      r["peak_fraction"] = r["gflops_per_s"] / peak["peak"]
    if "kajax" in by_fw and "torch" in by_fw:
      by_fw["ratio"] = by_fw["kajax"]["images_per_s"] / by_fw["torch"]["images_per_s"]
    if "kajax" in by_fw and "kajax_baseline" in by_fw:
      by_fw["speedup_vs_baseline"] = (by_fw["kajax"]["images_per_s"]
                                      / by_fw["kajax_baseline"]["images_per_s"])
    results["phases"][phase] = by_fw
  results["peak_after"] = measure_matmul_peak()
  results["sizing"] = sizing(g, points, batch)
  print(f"{h}x{w}, width {width}, batch {batch}, branch points {points}, {args.dtype}, "
        f"{_THREADS} cores, matmul peak {peak['peak']:.0f} GFLOP/s")
  print(_table(results))
  summary = ", ".join(f"{p} {r['ratio']:.2f}x" for p, r in results["phases"].items()
                      if "ratio" in r)
  if any("speedup_vs_baseline" in r for r in results["phases"].values()):
    summary += "; kajax/baseline: " + ", ".join(
        f"{p} {r['speedup_vs_baseline']:.2f}x" for p, r in results["phases"].items()
        if "speedup_vs_baseline" in r)
  print(f"SUMMARY kajax/PyTorch images/s: {summary or 'n/a (one framework)'}")
  split = pass_split(results["phases"])
  if split:
    results["pass_split"] = split
    print(_pass_split_text(split))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  cli.run(define_flags, run)
