"""FLOPs of a network for one image, from XLA's own cost analysis.

Used to report the deployable student next to its teachers (docs/method.md §1, step 4).
The count is what XLA's compiled HLO performs: a multiply-add counts as 2 FLOPs, taps that fall
on a convolution's zero padding are not counted (measured on CPU: a 3x3 conv on HxW costs
2*Cin*Cout*(3H-2)*(3W-2)), and elementwise work (BatchNorm, ReLU, pooling, the gates) is
included; for SegNet-VGG16-BN at 240x320 that is 3-4% above the convolutions alone
(92.6 GFLOPs per image).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def gflops_per_image(module: nn.Module, variables: Any, input_hw: tuple[int, int],
                     channels: int = 3, dtype: Any = jnp.float32) -> float:
  """GFLOPs of one inference-mode forward pass ``module.apply(variables, x, False)``.

  Args:
    module: a SegNet, Student or StudentTrunk (anything called as ``module(x, train)``).
    variables: its variables, real arrays or ShapeDtypeStructs from ``jax.eval_shape`` (so
      full-width models need not be initialised).
    input_hw: (height, width) of the image.
    channels: image channels.
    dtype: image dtype.

  Returns:
    Floating-point operations for a batch of one image, in units of 1e9.
  """
  height, width = input_hw
  image = jax.ShapeDtypeStruct((1, height, width, channels), dtype)
  compiled = jax.jit(lambda v, x: module.apply(v, x, False)).lower(variables, image).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
    cost = cost[0]
  if not cost or "flops" not in cost:
    raise RuntimeError(f"XLA's cost analysis on {jax.default_backend()} reported no 'flops' "
                       f"for {type(module).__name__}; it gave keys {sorted(cost or {})}.")
  return float(cost["flops"]) / 1e9
