"""Where a compiled kajax step spends its time: a ``jax.profiler`` trace, summarised.

  python -m kajax.benchmarks.profile_step --phase=teacher_train \\
      --resolution=96x128 --width=0.125 --batch_size=32        # the demo's teacher step

Builds one phase's step exactly as ``kajax.benchmarks.train_steps`` times it (random weights
and data, ``step_runners.build_kajax_step``), warms it up, times ``--steps`` steps untraced,
then traces as many under ``jax.profiler.trace`` and reads the trace back
(``jax.profiler.ProfileData``). It prints:

* the operations XLA ran, grouped by name without the numeric suffix (``ynn_fusion.12`` and
  ``ynn_fusion.40`` are both ``ynn_fusion``), with their time per step, share and count;
* how many operations ran at once over the traced window: the time during which none, one,
  two, ... were running. On a CPU with N cores, time at level 0 or 1 is time when cores
  had nothing of this step to do (or each operation ran on one thread).

The operations are the events XLA's CPU runtime records on its own threads (thread names
``tf_XLA...``), innermost only: the thunk executor's and thread pool's bookkeeping events are
left out, and so is a control-flow operation's event (``cond``, ``while``) around the
operations of its branch. How to read the levels: a library kernel that parallelises inside
one operation shows as one event, on the thread that started it (the level counts operations,
not busy threads), and the operations XLA runs on Eigen's thread pool (its own convolutions
and large matrix products: ``conv_general_dilated``, ``dot_general``) appear to be recorded
only while they are launched, so most of their time lands in level 0 (at 8x240x320 the
teacher step's 78 weight-gradient products show 0.2 s per step, an eighth of what their
FLOPs need at the machine's peak). Other backends
record other events; on GPU/TPU open ``--trace_dir`` in TensorBoard's or Perfetto's trace
viewer.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
import re
import statistics
import tempfile
from typing import Any, Iterable, Sequence

from absl import flags

from kajax import cli
from kajax.benchmarks import step_runners

# Bookkeeping events of XLA's CPU runtime, not operations (a YNNPACK operation that uses
# several threads records 'SlinkyThreadPool::Await' inside its own event).
_NOT_OPERATIONS = ("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool", "end: ")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  """Defines this tool's flags on ``flag_values`` (``kajax.cli`` style)."""
  fv = {"flag_values": flag_values}
  return {
      "phase": flags.DEFINE_enum("phase", "teacher_train", list(step_runners.PHASES),
                                 "Step to profile.", **fv),
      "resolution": flags.DEFINE_string("resolution", "96x128", "Image size HxW.", **fv),
      "width": flags.DEFINE_float("width", 0.125, "SegNet width multiplier (1 = VGG16-BN).",
                                  **fv),
      "batch_size": flags.DEFINE_integer("batch_size", 32, "Images per step.", **fv),
      "branch_points": flags.DEFINE_string("branch_points", "3,1",
                                           "Fine-tuning branch points (seg,depth).", **fv),
      "dtype": flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                                 "Compute dtype.", **fv),
      "steps": flags.DEFINE_integer("steps", 5, "Steps timed, then as many traced.", **fv),
      "warmup": flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.", **fv),
      "top": flags.DEFINE_integer("top", 15, "Operation groups listed.", **fv),
      "trace_dir": flags.DEFINE_string("trace_dir", "", "Keep the trace here (default: a "
                                       "temporary directory, deleted).", **fv),
      "json": flags.DEFINE_string("json", "", "Write the summary here.", **fv),
  }


@dataclasses.dataclass(frozen=True)
class OpEvent:
  """One operation's run on one thread, in nanoseconds of the trace's clock."""
  name: str
  start_ns: int
  duration_ns: int

  @property
  def end_ns(self) -> int:
    return self.start_ns + self.duration_ns


def op_group(name: str) -> str:
  """The operation's name without XLA's numeric suffix: 'ynn_fusion.12' -> 'ynn_fusion'."""
  return re.sub(r"\.\d+$", "", name)


def concurrency(events: Iterable[OpEvent], start_ns: int, end_ns: int) -> dict[int, int]:
  """{k: nanoseconds of [start_ns, end_ns) during which exactly k events were running}.

  Events are clipped to the window; the values add up to ``end_ns - start_ns`` and
  sum(k * t) equals the clipped events' total duration.
  """
  edges = []
  for e in events:
    s, t = max(e.start_ns, start_ns), min(e.end_ns, end_ns)
    if t > s:
      edges += [(s, 1), (t, -1)]
  edges.sort()  # at equal times an end (-1) sorts before a start (+1)
  levels: dict[int, int] = collections.Counter()
  level, last = 0, start_ns
  for time_ns, change in edges:
    levels[level] += time_ns - last
    level, last = level + change, time_ns
  levels[level] += end_ns - last
  return {k: v for k, v in sorted(levels.items()) if v}


def innermost(events: Sequence[OpEvent]) -> list[OpEvent]:
  """The events of one thread that contain no other event of it.

  A control-flow operation (``cond``, ``conditional``, ``while``) is recorded around the
  operations of its branch or body on the same thread; counting both would count that time
  twice.
  """
  ordered = sorted(events, key=lambda e: (e.start_ns, -e.duration_ns))
  containers = set()
  open_events: list[int] = []  # indices into ordered, outermost first
  for i, e in enumerate(ordered):
    while open_events and ordered[open_events[-1]].end_ns <= e.start_ns:
      open_events.pop()
    if open_events:
      containers.add(open_events[-1])
    open_events.append(i)
  return [e for i, e in enumerate(ordered) if i not in containers]


def thread_operations(events: Iterable[OpEvent]) -> list[OpEvent]:
  """The operations among one XLA thread's events: no bookkeeping, innermost only."""
  return innermost([e for e in events if not e.name.startswith(_NOT_OPERATIONS)])


def read_operations(trace_dir: str) -> list[OpEvent]:
  """The operations XLA's CPU runtime recorded in the trace under ``trace_dir``."""
  import jax  # pylint: disable=g-import-not-at-top
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not files:
    raise FileNotFoundError(f"No *.xplane.pb under {trace_dir}: the profiler wrote no trace.")
  data = jax.profiler.ProfileData.from_file(max(files, key=os.path.getmtime))
  ops = []
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      ops += thread_operations(OpEvent(ev.name, int(ev.start_ns), int(ev.duration_ns))
                               for ev in line.events)
  if not ops:
    raise ValueError(f"The trace in {trace_dir} holds no operations of XLA's CPU runtime "
                     "(threads 'tf_XLA...'); on GPU/TPU open it in a trace viewer instead.")
  return ops


def summarize(ops: Sequence[OpEvent], num_steps: int, top: int = 15) -> dict[str, Any]:
  """Per-step operation groups and the concurrency of the traced window."""
  totals: dict[str, int] = collections.Counter()
  counts: dict[str, int] = collections.Counter()
  for e in ops:
    totals[op_group(e.name)] += e.duration_ns
    counts[op_group(e.name)] += 1
  op_ns = sum(totals.values())
  start, end = min(e.start_ns for e in ops), max(e.end_ns for e in ops)
  groups = [{"group": g, "ms_per_step": ns / num_steps / 1e6, "share": ns / op_ns,
             "count_per_step": counts[g] / num_steps}
            for g, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]
  return {"op_ms_per_step": op_ns / num_steps / 1e6,
          "window_ms_per_step": (end - start) / num_steps / 1e6,
          "ops_per_step": len(ops) / num_steps,
          "concurrency_ms_per_step": {k: ns / num_steps / 1e6
                                      for k, ns in concurrency(ops, start, end).items()},
          "groups": groups}


def format_summary(summary: dict[str, Any], title: str) -> str:
  lines = [title,
           f"operations: {summary['op_ms_per_step']:.1f} ms per step over all threads, "
           f"{summary['ops_per_step']:.0f} per step; traced window "
           f"{summary['window_ms_per_step']:.1f} ms per step",
           "operations running at once (ms per step): " + ", ".join(
               f"{k}: {v:.1f}" for k, v in summary["concurrency_ms_per_step"].items()),
           "", "| operation group | ms/step | share | count/step |", "|---|---|---|---|"]
  lines += [f"| {g['group']} | {g['ms_per_step']:.1f} | {100 * g['share']:.1f}% | "
            f"{g['count_per_step']:.0f} |" for g in summary["groups"]]
  return "\n".join(lines)


def run(args: Any) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  (height, width), points = step_runners.parse_shape_flags(args.resolution,
                                                           args.branch_points)
  spec = step_runners.PhaseSpec("kajax", args.phase, height, width, args.width,
                                args.batch_size, points, args.steps, args.warmup,
                                dtype=args.dtype)
  step = step_runners.build_kajax_step(spec)
  run_step = step.make_runner()
  step_runners.time_steps(run_step, 0, args.warmup)
  walls, _ = step_runners.time_steps(run_step, args.warmup, args.steps)
  with tempfile.TemporaryDirectory() as scratch:
    trace_dir = args.trace_dir or scratch
    with jax.profiler.trace(trace_dir):
      for i in range(args.steps):
        run_step(i)
    summary = summarize(read_operations(trace_dir), args.steps, args.top)
  summary.update(phase=args.phase, step_s_untraced=statistics.median(walls),
                 compile_s=step.compile_s, spec=dataclasses.asdict(spec))
  print(format_summary(summary, f"{args.phase}, {args.batch_size}x{args.resolution}, width "
                       f"{args.width:g}, {args.dtype}: {summary['step_s_untraced']:.3f} s "
                       f"per step untraced (median of {args.steps})"))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=1)


if __name__ == "__main__":
  cli.run(define_flags, run)
