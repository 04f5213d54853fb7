"""One timed phase of one framework, run in its own process by ``kajax.benchmarks.train_steps``.

A phase is 'teacher_inference', 'teacher_train', 'block' or 'finetune', or one of the two
parts of a teacher training step, 'teacher_forward' and 'teacher_input_grad' (see
``SPLIT_PHASES``); a framework 'kajax', 'torch' or 'kajax_baseline'. Each run builds the
models on random weights and data (speed does not depend on the values), runs ``warmup``
steps (kajax: after compiling, timed separately), then times ``steps`` steps one by one (wall
clock and process CPU time) and reports its peak resident memory. Both frameworks use the
same images and, in the block-wise phase, the same branch points (drawn by kajax's own
``draw_branch_points`` from the same seed).
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import time
from typing import Any, Callable

import numpy as np

PHASES = ("teacher_inference", "teacher_train", "block", "finetune")
# A teacher training step taken apart, cumulatively: its training-mode forward pass and loss
# alone, then that plus the gradient with respect to the image only (every layer's input
# gradient, no weight gradient). 'teacher_train' adds the weight gradients and Adam, so the
# differences of the three time the passes separately (``train_steps.pass_split``).
SPLIT_PHASES = ("teacher_forward", "teacher_input_grad")
ALL_PHASES = PHASES + SPLIT_PHASES
# kajax_baseline: kajax before the speed work (XLA's own convolution weight gradients and
# default CPU scheduler, every trunk block and gate in the block-wise step).
FRAMEWORKS = ("kajax", "torch", "kajax_baseline")
TASKS = ("seg", "depth")
NUM_OUTPUTS = (13, 1)  # parsing and depth teachers, as in the NYUv2 recipe
SCHEDULE_STEPS = 1000  # length of the block phase the branch points are drawn for


@dataclasses.dataclass
class PhaseSpec:
  """What one child process runs."""
  framework: str
  phase: str
  height: int
  width: int
  width_multiplier: float
  batch_size: int
  branch_points: tuple[int, ...]
  steps: int
  warmup: int
  dtype: str = "float32"
  threads: int = 2

  @property
  def baseline(self) -> bool:
    return self.framework == "kajax_baseline"


def parse_shape_flags(resolution: str, branch_points: str) -> tuple[tuple[int, int],
                                                                      tuple[int, ...]]:
  """``--resolution=HxW`` and ``--branch_points=k1,k2`` of the benchmark commands."""
  try:
    h, w = (int(v) for v in resolution.lower().split("x"))
  except ValueError:
    raise ValueError(f"--resolution={resolution!r} must look like 96x128.") from None
  if min(h, w) < 32:
    raise ValueError(f"--resolution={resolution!r}: each side must be at least 32 (SegNet "
                     "pools five times).")
  try:
    points = tuple(int(k) for k in branch_points.split(","))
  except ValueError:
    raise ValueError(f"--branch_points={branch_points!r} must look like 3,1 (one k per "
                     "task).") from None
  if len(points) != len(TASKS) or not all(0 <= k <= 4 for k in points):
    raise ValueError(f"--branch_points={branch_points!r}: give {len(TASKS)} values in 0..4 "
                     f"(one per task of {TASKS}).")
  return (h, w), points


def images(spec: PhaseSpec) -> np.ndarray:
  return np.random.default_rng(0).standard_normal(
      (spec.batch_size, spec.height, spec.width, 3)).astype(np.float32)


def labels(spec: PhaseSpec) -> np.ndarray:
  return np.random.default_rng(1).integers(0, NUM_OUTPUTS[0],
                                           (spec.batch_size, spec.height, spec.width))


def drawn_branch_points(num_steps: int) -> list[tuple[int, ...]]:
  """k_t of block steps 0..num_steps-1 exactly as kajax's block step draws them (seed 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  from kajax import amalgamation_steps  # pylint: disable=g-import-not-at-top
  rng = jax.random.key(0)
  return [tuple(int(k) for k in amalgamation_steps.draw_branch_points(
      rng, np.int32(s), len(NUM_OUTPUTS), SCHEDULE_STEPS, "random")) for s in range(num_steps)]


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def time_steps(run_step: Callable[[int], Any], first: int, count: int
               ) -> tuple[list[float], list[float]]:
  """Runs steps first..first+count-1 one by one; their wall and process CPU seconds."""
  walls, cpus = [], []
  for i in range(first, first + count):
    w, c = time.perf_counter(), time.process_time()
    run_step(i)
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
  return walls, cpus


def run(spec: PhaseSpec) -> dict[str, Any]:
  """Builds and times one phase; returns a JSON-able dict."""
  runner = _run_torch if spec.framework == "torch" else _run_kajax
  result = runner(spec)
  result["peak_rss_bytes"] = _peak_rss_bytes()
  return result


# ------------------------------------------------------------------------------- kajax

@dataclasses.dataclass
class KajaxStep:
  """A phase's compiled kajax step and what it is called with."""
  compiled: Any  # jax.stages.Compiled
  args: tuple
  stateful: bool  # the first argument is a train state the step returns updated
  compile_s: float

  def make_runner(self) -> Callable[[int], Any]:
    """``run(i)``: one step (threading the state through), waiting for its result."""
    import jax  # pylint: disable=g-import-not-at-top
    holder = {"args": self.args}

    def run_step(_):
      out = self.compiled(*holder["args"])
      if self.stateful:
        holder["args"] = (out[0],) + holder["args"][1:]
      jax.block_until_ready(out)
      return out
    return run_step


def _run_kajax(spec: PhaseSpec) -> dict[str, Any]:
  step = build_kajax_step(spec)
  cost = step.compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  run_step = step.make_runner()
  time_steps(run_step, 0, spec.warmup)
  walls, cpus = time_steps(run_step, spec.warmup, spec.steps)
  ks_info = None
  if spec.phase == "block":
    ks_info = drawn_branch_points(spec.warmup + spec.steps)[spec.warmup:]
  return {"compile_s": step.compile_s, "step_s": walls, "cpu_s": cpus,
          "xla_flops": float((cost or {}).get("flops", float("nan"))),
          "branch_points_timed": ks_info}


def build_kajax_step(spec: PhaseSpec) -> KajaxStep:
  """Builds and compiles kajax's step of ``spec.phase`` on random weights and data."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from kajax import amalgamation_steps as steps  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from kajax import (conv, losses, optim, parallel, step_parallelism,
                     student_init, student_model, student_spec, tasks, teacher_model,
                     train_teacher)

  # Baseline: kajax before this benchmark's work (XLA's own weight-gradient convolutions,
  # XLA's default scheduler, every trunk block and gate in the block-wise step).
  conv.MATMUL_WEIGHT_GRADIENT_ON_CPU = not spec.baseline
  options = {} if spec.baseline else None
  dtype = None if spec.dtype == "float32" else jnp.dtype(spec.dtype)

  def compile_step(step, batch_argnum):
    if options is None:
      return step_parallelism.compile_train_step(step, "jit", batch_argnum)
    return jax.jit(step, donate_argnums=(0,))

  mesh = parallel.make_mesh()
  batch = parallel.global_batch({"image": images(spec), "label": labels(spec)}, mesh)
  models = teacher_model.segnet_teachers(TASKS, NUM_OUTPUTS,
                                          width_multiplier=spec.width_multiplier)
  modules = tuple(m.module(dtype) for m in models)
  host_teachers = {m.name: _random_variables(module, seed)
                   for seed, (m, module) in enumerate(zip(models, modules))}
  teachers = parallel.replicate(host_teachers, mesh)
  s_spec = student_spec.StudentSpec(models)
  fns = {"seg": tasks.projection_fn("seg", "kl"), "depth": tasks.projection_fn("depth", "l1")}
  lambdas = {"seg": 1.0, "depth": 1.0}
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      {"name": "adam", "learning_rate": 1e-4, "weight_decay": 1e-4, "schedule": "cosine"}),
      SCHEDULE_STEPS)
  rng = jax.random.key(0)

  if spec.phase == "teacher_inference":
    fn = jax.jit(lambda v, x: modules[0].apply(v, x, train=False)[0],
                 compiler_options={} if spec.baseline else None)
    args, stateful = (teachers["seg"], batch["image"]), False
  elif spec.phase in SPLIT_PHASES:
    seg = modules[0]

    def loss_of(image, v, label):
      (out, _), _ = seg.apply(v, image, train=True, mutable=["batch_stats"])
      return losses.seg_cross_entropy(out.astype(jnp.float32), label)
    # The weights are arguments but not differentiated: XLA computes no weight gradient.
    fn = jax.jit(loss_of if spec.phase == "teacher_forward" else jax.grad(loss_of))
    args, stateful = (batch["image"], teachers["seg"], batch["label"]), False
  elif spec.phase == "teacher_train":
    state = parallel.replicate(optim.create_train_state(host_teachers["seg"], tx), mesh)
    fn = compile_step(functools.partial(
        train_teacher.teacher_train_step, model=modules[0],
        loss_fn=lambda out, b: losses.seg_cross_entropy(out, b["label"]), tx=tx), 1)
    args, stateful = (state, batch, rng), True
  elif spec.phase == "block":
    trunk_vars = jax.device_get(student_init.init_trunk_from_teachers(s_spec, host_teachers,
                                                                      rng))
    state = parallel.replicate(optim.create_train_state(trunk_vars, tx), mesh)
    fn = compile_step(functools.partial(
        steps.block_train_step, trunk=student_model.StudentTrunk(s_spec, dtype=dtype),
        teacher_models=models, projection_fns=fns, lambdas=lambdas,
        tx=tx, num_steps=SCHEDULE_STEPS,
        block_path="all_blocks" if spec.baseline else "drawn_path"), 2)
    args, stateful = (state, teachers, batch, rng), True
  else:
    points = spec.branch_points
    trunk_vars = student_init.init_trunk_from_teachers(s_spec, host_teachers, rng)
    variables = student_init.init_student_from_teachers(s_spec, points, host_teachers,
                                                        trunk_variables=trunk_vars, rng=rng)
    state = parallel.replicate(optim.create_train_state(jax.device_get(variables), tx), mesh)
    fn = compile_step(functools.partial(
        steps.finetune_train_step, model=student_model.Student(s_spec, points, dtype=dtype),
        teacher_models=models, projection_fns=fns, lambdas=lambdas, tx=tx), 2)
    args, stateful = (state, teachers, batch, rng), True

  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return KajaxStep(compiled, args, stateful, time.perf_counter() - t0)


def _random_variables(module, seed: int) -> dict:
  """Variables with the module's structure, filled with NumPy (no compiled ``init``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: (0.05 * rng.standard_normal(s.shape) + (1.0 if s.ndim == 1 else 0.0)
                 ).astype(s.dtype), shapes)


# ------------------------------------------------------------------------------- torch

def _run_torch(spec: PhaseSpec) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  from kajax.benchmarks import torch_reference as ref  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(spec.threads)
  torch.manual_seed(0)
  x = torch.from_numpy(images(spec)).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels(spec))
  w = spec.width_multiplier
  teachers = [ref.frozen(ref.SegNet(c, w)) for c in NUM_OUTPUTS]
  ks_info = None
  if spec.phase == "teacher_inference":
    def run_step(_):
      with torch.no_grad():
        return teachers[0](x)
  elif spec.phase in SPLIT_PHASES:
    model = ref.SegNet(NUM_OUTPUTS[0], w).train()
    for p in model.parameters():
      p.requires_grad_(False)
    input_grad = spec.phase == "teacher_input_grad"
    run_step = lambda _: ref.teacher_pass(model, x, y, input_grad)  # noqa: E731
  elif spec.phase == "teacher_train":
    model = ref.SegNet(NUM_OUTPUTS[0], w).train()
    opt = ref.make_adam(model.parameters())
    run_step = lambda _: ref.teacher_train_step(model, opt, x, y)  # noqa: E731
  elif spec.phase == "block":
    student = ref.Student(NUM_OUTPUTS, w).train()
    opt = ref.make_adam(student.parameters())
    ks_all = drawn_branch_points(spec.warmup + spec.steps)
    ks_info = ks_all[spec.warmup:]
    run_step = lambda i: ref.block_step(student, teachers, opt, x, ks_all[i])  # noqa: E731
  else:
    student = ref.Student(NUM_OUTPUTS, w, spec.branch_points).train()
    opt = ref.make_adam(student.parameters())
    run_step = lambda _: ref.finetune_step(student, teachers, opt, x)  # noqa: E731

  time_steps(run_step, 0, spec.warmup)
  walls, cpus = time_steps(run_step, spec.warmup, spec.steps)
  return {"compile_s": 0.0, "step_s": walls, "cpu_s": cpus, "xla_flops": None,
          "branch_points_timed": ks_info}
