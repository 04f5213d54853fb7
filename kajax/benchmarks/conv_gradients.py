"""Where a SegNet training step's backward pass spends its time: one layer at a time, vs PyTorch.

  python -m kajax.benchmarks.conv_gradients                # batch 2, VGG16's block shapes
  python -m kajax.benchmarks.conv_gradients --batch_size=8

``train_steps`` times whole steps; this benchmark splits a 3x3 convolution layer's work into
its forward pass, its input gradient and its weight gradient, and times each in JAX (kajax's
weight gradient of ``kajax.conv`` and XLA's own) and in PyTorch on the same shapes: the
first, third and fourth VGG16 block (240x320x64, 120x160x128, 60x80x256 at NYUv2 size).
It also times the matrix product at the heart of kajax's weight gradient,
``(N*H*W, 3*C)^T @ (N*H*W, C_out)``, in XLA and in PyTorch, which tells how much of the gap
is the product itself.

Times are process CPU seconds (the best of ``--repeats``), which a shared machine disturbs
less than wall time; GFLOP per CPU-second = FLOPs / CPU time (2 cores: the wall-clock rate is
up to twice that).
"""

from __future__ import annotations

import os
import time
from typing import Callable

from absl import flags
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from kajax import cli, conv, xla_options

# (H, W, C) at the input of VGG16's blocks 1, 3 and 4 for a 240x320 image (C in = C out).
SHAPES = ((240, 320, 64), (120, 160, 128), (60, 80, 256))
_NHWC = ("NHWC", "HWIO", "NHWC")
_PADDING = ((1, 1), (1, 1))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  """Defines this benchmark's flags on ``flag_values`` (``kajax.cli`` style)."""
  fv = {"flag_values": flag_values}
  return {
      "batch_size": flags.DEFINE_integer("batch_size", 2, "Images per batch.", **fv),
      "scale": flags.DEFINE_float("scale", 1.0, "Multiplies H and W of every shape (0.25 "
                                  "for a seconds-long check).", **fv),
      "repeats": flags.DEFINE_integer("repeats", 3, "Timed repeats (best kept).", **fv),
      "threads": flags.DEFINE_integer("threads", 0, "PyTorch threads (0 = CPU count).", **fv),
  }


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Best process CPU time of ``fn()`` over ``repeats`` calls after one warm-up call."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.process_time()
    fn()
    best = min(best, time.process_time() - start)
  return best


def jax_layer_functions() -> dict[str, Callable]:
  """The JAX computations timed per shape: ``name -> f(x, kernel, dy)``."""
  def forward(x, kernel, dy):
    del dy
    return lax.conv_general_dilated(x, kernel, (1, 1), _PADDING, dimension_numbers=_NHWC)

  def input_gradient(x, kernel, dy):
    return jax.vjp(lambda v: forward(v, kernel, None), x)[1](dy)[0]

  def weight_gradient_xla(x, kernel, dy):
    return jax.vjp(lambda k: forward(x, k, None), kernel)[1](dy)[0]

  def weight_gradient_kajax(x, kernel, dy):
    return conv.weight_gradient(x, dy, kernel.shape[:2], _PADDING)

  return {"forward": forward, "input gradient": input_gradient,
          "weight gradient (kajax.conv)": weight_gradient_kajax,
          "weight gradient (XLA's own)": weight_gradient_xla}


def torch_layer_functions(torch, x, kernel, dy) -> dict[str, Callable]:
  """The same computations in PyTorch (NCHW), closed over their tensors."""
  functional = torch.nn.functional
  x_t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  k_t = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
  dy_t = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
  grad = torch.nn.grad
  return {
      "forward": lambda: functional.conv2d(x_t, k_t, padding=1),
      "input gradient": lambda: grad.conv2d_input(x_t.shape, k_t, dy_t, padding=1),
      "weight gradient": lambda: grad.conv2d_weight(x_t, k_t.shape, dy_t, padding=1),
  }


def run(args) -> None:
  """Times every layer computation and prints one table per framework pair."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads or os.cpu_count() or 1)
  rng = np.random.default_rng(0)
  options = xla_options.train_step_options()
  print(f"batch {args.batch_size}, float32, CPU seconds (best of {args.repeats}); "
        f"jax {jax.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
  print("| layer input | computation | JAX s | PyTorch s | JAX/PyTorch | JAX GFLOP/CPU-s |")
  print("|---|---|---|---|---|---|")
  for h, w, c in SHAPES:
    h, w = max(8, int(h * args.scale)), max(8, int(w * args.scale))
    x = rng.standard_normal((args.batch_size, h, w, c), np.float32)
    kernel = (rng.standard_normal((3, 3, c, c)) * 0.05).astype(np.float32)
    dy = rng.standard_normal((args.batch_size, h, w, c), np.float32)
    flops = 2 * args.batch_size * h * w * 9 * c * c  # every computation here: one conv's MACs
    torch_fns = torch_layer_functions(torch, x, kernel, dy)
    jx, jk, jdy = (jnp.asarray(a) for a in (x, kernel, dy))
    for name, fn in jax_layer_functions().items():
      compiled = jax.jit(fn, compiler_options=options)
      jax_s = cpu_seconds(lambda: jax.block_until_ready(compiled(jx, jk, jdy)), args.repeats)
      torch_name = "weight gradient" if name.startswith("weight") else name
      with torch.no_grad():
        torch_s = cpu_seconds(torch_fns[torch_name], args.repeats)
      print(f"| {h}x{w}x{c} | {name} | {jax_s:.3f} | {torch_s:.3f} | {jax_s / torch_s:.2f} | "
            f"{flops / jax_s / 1e9:.0f} |")
    # The product inside kajax.conv's weight gradient, on its own.
    rows = args.batch_size * h * w
    a = rng.standard_normal((rows, 3 * c), np.float32)
    b = rng.standard_normal((rows, c), np.float32)
    product = jax.jit(lambda a, b: lax.dot_general(a, b, (((0,), (0,)), ((), ()))))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    jax_s = cpu_seconds(lambda: jax.block_until_ready(product(ja, jb)), args.repeats)
    torch_s = cpu_seconds(lambda: ta.T @ tb, args.repeats)
    dot_flops = 2 * rows * 3 * c * c
    print(f"| {h}x{w}x{c} | one of its 3 products ({rows}x{3 * c})^T @ ({rows}x{c}) | "
          f"{jax_s:.3f} | {torch_s:.3f} | {jax_s / torch_s:.2f} | "
          f"{dot_flops / jax_s / 1e9:.0f} |")


if __name__ == "__main__":
  cli.run(define_flags, run)
