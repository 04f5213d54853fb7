"""Estimated images/s of the NYUv2 amalgamation on TPU and GPU slices (README "Scaling").

  python -m kajax.scaling_estimate [--crop=240x240] [--branch_points=1,1] [--utilization=0.4]

A data-parallel step on n devices with b images each costs compute plus one all-reduce of the
gradients (nothing else crosses devices: parameters are replicated, BatchNorm statistics are
a few KB):

  t_compute = b * F / (u * P)
  t_allreduce = 2 * (n - 1) / n * G / B
  images/s = n * b / (t_compute + t_allreduce)

F: FLOPs of one fine-tuning step per image (student forward and backward plus both teachers'
forwards), from XLA's cost analysis of the compiled step (``jax.stages.Compiled.
cost_analysis``) of the full-size models (VGG16-BN SegNets, 13 classes + depth) at the
training crop; P: the device's peak bf16 FLOP/s; u: the fraction of peak reached (an
assumption, default 0.4; measure your own); G: gradient bytes (float32 parameters of the
student); B: per-device one-way link bandwidth, taken as half the bidirectional figure the
vendors state. A ring all-reduce moves 2 (n - 1) / n * G per device (Patarasuk & Yuan 2009);
the model assumes no overlap of communication with compute, so it is conservative there.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from absl import app, flags

# Peak dense bf16 FLOP/s per device and bidirectional interconnect bandwidth per device, as
# the vendors state them: Cloud TPU system-architecture pages (v5e, v5p, v6e), NVIDIA A100 and
# H100 SXM datasheets (dense, without sparsity); multi-node H100 over 400 Gb/s InfiniBand
# per GPU (one ConnectX-7 port per GPU, as in DGX H100).
@dataclasses.dataclass(frozen=True)
class Slice:
  name: str
  devices: int
  peak_tflops: float
  bidirectional_gbytes_per_s: float


SLICES = (
    Slice("TPU v5e-8 (1 host)", 8, 197.0, 400.0),
    Slice("TPU v5e-64", 64, 197.0, 400.0),
    Slice("TPU v5p-32 (16 chips)", 16, 459.0, 1200.0),
    Slice("TPU v6e-64", 64, 918.0, 800.0),
    Slice("8x A100 SXM (NVLink)", 8, 312.0, 600.0),
    Slice("8x H100 SXM (NVLink)", 8, 989.0, 900.0),
    Slice("4 nodes x 8 H100 (IB 400 Gb/s)", 32, 989.0, 100.0),
)


def images_per_second(devices: int, per_device_batch: int, flops_per_image: float,
                      peak_flops: float, utilization: float, gradient_bytes: float,
                      bidirectional_bytes_per_s: float) -> tuple[float, float, float]:
  """The module docstring's model. Returns (images/s, t_compute s, t_allreduce s)."""
  t_compute = per_device_batch * flops_per_image / (utilization * peak_flops)
  one_way = bidirectional_bytes_per_s / 2
  t_allreduce = 2 * (devices - 1) / devices * gradient_bytes / one_way if devices > 1 else 0.0
  return devices * per_device_batch / (t_compute + t_allreduce), t_compute, t_allreduce


def finetune_step_cost(crop: tuple[int, int], branch_points: tuple[int, ...],
                       batch: int = 1) -> tuple[float, int]:
  """(FLOPs per image of one compiled fine-tuning step, student parameter count), full size."""
  from kajax import (amalgamation_steps as steps, optim, segnet, student_model,
                     student_spec, tasks as tasks_lib, teacher_model)
  tasks, outputs = ("seg", "depth"), (13, 1)
  spec = student_spec.StudentSpec(teacher_model.segnet_teachers(tasks, outputs))
  model = student_model.Student(spec, branch_points)
  teachers = tuple(t.module() for t in spec.teachers)
  image = jax.ShapeDtypeStruct((batch, *crop, 3), jnp.float32)
  probe = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), probe, train=False))
  teacher_vars = {t: jax.eval_shape(lambda m=m: m.init(jax.random.key(0), probe))
                  for t, m in zip(tasks, teachers)}
  tx = optim.make_optimizer(_adam(), 100)
  state = jax.eval_shape(lambda: optim.create_train_state(
      jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables), tx))
  fns = {t: tasks_lib.projection_fn(t, k) for t, k in zip(tasks, ("kl", "l1"))}
  step = functools.partial(steps.finetune_train_step, model=model,
                           teacher_models=spec.teachers, projection_fns=fns,
                           lambdas={t: 1.0 for t in tasks}, tx=tx)
  compiled = jax.jit(step).lower(state, teacher_vars, {"image": image},
                                 jax.random.key(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / batch, segnet.count_params(variables["params"])


def _adam():
  import ml_collections
  return ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-4,
                                    "weight_decay": 1e-4, "schedule": "cosine"})


def markdown_table(flops_per_image: float, params: int, per_device_batch: int,
                   utilization: float) -> str:
  gradient_bytes = 4.0 * params
  lines = ["| slice | devices | peak bf16 TFLOP/s | link GB/s (bidir.) | compute ms | "
           "all-reduce ms | images/s |", "|---|---|---|---|---|---|---|"]
  for s in SLICES:
    rate, tc, ta = images_per_second(s.devices, per_device_batch, flops_per_image,
                                     s.peak_tflops * 1e12, utilization, gradient_bytes,
                                     s.bidirectional_gbytes_per_s * 1e9)
    lines.append(f"| {s.name} | {s.devices} | {s.peak_tflops:g} | "
                 f"{s.bidirectional_gbytes_per_s:g} | {tc * 1e3:.1f} | {ta * 1e3:.2f} | "
                 f"{rate:,.0f} |")
  return "\n".join(lines)


_CROP = flags.DEFINE_string("crop", "240x240", "Training crop HxW (configs/nyu.py: 240x240).")
_POINTS = flags.DEFINE_string("branch_points", "1,1", "Branch point per task (seg, depth).")
_BATCH = flags.DEFINE_integer("per_device_batch", 8, "Images per device per step.")
_UTIL = flags.DEFINE_float("utilization", 0.4, "Assumed fraction of peak FLOP/s reached.")


def main(argv):
  del argv
  crop = tuple(int(v) for v in _CROP.value.lower().split("x"))
  points = tuple(int(v) for v in _POINTS.value.split(","))
  flops, params = finetune_step_cost(crop, points)
  print(f"Fine-tuning step, {crop[0]}x{crop[1]} crop, branch points {points}: "
        f"{flops / 1e9:.1f} GFLOPs per image (XLA cost analysis on {jax.default_backend()}), "
        f"{params:,} student parameters ({4 * params / 1e6:.1f} MB of float32 gradients).")
  print(f"Per-device batch {_BATCH.value}, utilization {_UTIL.value}:\n")
  print(markdown_table(flops, params, _BATCH.value, _UTIL.value))


if __name__ == "__main__":
  app.run(main)
