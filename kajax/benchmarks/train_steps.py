"""Seconds per step and images/s of kajax's compiled steps on this machine.

  python -m kajax.benchmarks.train_steps --resolution=96x128 --width=0.125 --batch_size=16

Measures, on random data and random teachers (speed does not depend on the values): a
teacher training step, the block-wise amalgamation step (two teachers, ``lax.switch`` paths)
and the fine-tuning step of a two-task student at ``--branch_points``. Compilation is timed
separately; the step time is the mean over ``--steps`` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kajax import amalgamation_steps as steps
from kajax import (losses, optim, parallel, segnet, student_init, student_model, student_spec,
                   tasks, teacher_model, train_teacher)

_ADAM = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-4,
                                   "weight_decay": 1e-4, "schedule": "cosine"})


def _random_variables(module: segnet.SegNet, seed: int) -> dict:
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: (0.05 * rng.standard_normal(s.shape) + (1.0 if s.ndim == 1 else 0.0)
                 ).astype(s.dtype), shapes)


def _time(fn, state, args, steps_to_time):
  t0 = time.perf_counter()
  state, metrics = fn(state, *args)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps_to_time):
    state, metrics = fn(state, *args)
  jax.block_until_ready(metrics)
  return compile_s, (time.perf_counter() - t0) / steps_to_time


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolution", default="96x128")
  parser.add_argument("--width", type=float, default=0.125)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--branch_points", default="1,1")
  args = parser.parse_args(argv)
  h, w = (int(v) for v in args.resolution.split("x"))
  points = tuple(int(k) for k in args.branch_points.split(","))
  mesh = parallel.make_mesh()
  batch = parallel.global_batch({
      "image": np.random.default_rng(0).standard_normal((args.batch_size, h, w, 3)).astype(
          np.float32),
      "label": np.random.default_rng(1).integers(0, 13, (args.batch_size, h, w))}, mesh)
  seg = segnet.SegNet(13, width_multiplier=args.width)
  depth = segnet.SegNet(1, width_multiplier=args.width)
  teachers = parallel.replicate({"seg": _random_variables(seg, 0),
                                 "depth": _random_variables(depth, 1)}, mesh)
  spec = student_spec.StudentSpec(teacher_model.segnet_teachers(
      ("seg", "depth"), (13, 1), width_multiplier=args.width))
  fns = {"seg": tasks.projection_fn("seg", "kl"), "depth": tasks.projection_fn("depth", "l1")}
  lambdas = {"seg": 1.0, "depth": 1.0}
  tx = optim.make_optimizer(_ADAM, 1000)
  rng = jax.random.key(0)
  rows = []

  host_teachers = jax.device_get(teachers)  # Steps donate their state: never the teachers.
  state = parallel.replicate(optim.create_train_state(host_teachers["seg"], tx), mesh)
  fn = jax.jit(functools.partial(
      train_teacher.teacher_train_step, model=seg,
      loss_fn=lambda out, b: losses.seg_cross_entropy(out, b["label"]), tx=tx),
      donate_argnums=(0,))
  rows.append(("teacher step (seg)",) + _time(fn, state, (batch, rng), args.steps))

  trunk_vars = jax.device_get(student_init.init_trunk_from_teachers(spec, host_teachers, rng))
  state = parallel.replicate(optim.create_train_state(trunk_vars, tx), mesh)
  fn = jax.jit(functools.partial(
      steps.block_train_step, trunk=student_model.StudentTrunk(spec),
      teacher_models=spec.teachers, projection_fns=fns, lambdas=lambdas, tx=tx,
      num_steps=1000),
      donate_argnums=(0,))
  rows.append(("block-wise step",) + _time(fn, state, (teachers, batch, rng), args.steps))

  variables = student_init.init_student_from_teachers(spec, points, host_teachers,
                                                 trunk_variables=trunk_vars, rng=rng)
  state = parallel.replicate(optim.create_train_state(variables, tx), mesh)
  fn = jax.jit(functools.partial(
      steps.finetune_train_step, model=student_model.Student(spec, points),
      teacher_models=spec.teachers, projection_fns=fns, lambdas=lambdas, tx=tx),
      donate_argnums=(0,))
  rows.append((f"fine-tuning step k={points}",) + _time(fn, state, (teachers, batch, rng),
                                                        args.steps))

  print(f"{jax.device_count()} {jax.devices()[0].platform} device(s), {h}x{w}, width "
        f"{args.width}, batch {args.batch_size}")
  print("| step | compile (s) | s/step | images/s |\n|---|---|---|---|")
  for name, compile_s, step_s in rows:
    print(f"| {name} | {compile_s:.1f} | {step_s:.3f} | {args.batch_size / step_s:.0f} |")


if __name__ == "__main__":
  main()
