"""Convolution whose weight gradient XLA's CPU backend computes fast (a drop-in for Flax).

XLA differentiates ``lax.conv_general_dilated`` into two convolutions. The input gradient is an
ordinary convolution and runs as fast as the forward pass. The weight gradient is a
convolution whose "kernel" is the whole output-gradient map (H x W) and whose output is the
tiny 3x3 window; XLA's CPU backend runs it through its generic spatial-convolution kernel,
which extracts enormous patches: measured on this project's 2-core CPU (8x120x160, 128->128
channels) it took 9-10x the forward convolution's CPU time, and it made kajax's training steps
~2x slower than PyTorch's (whose backward pass is dedicated code).

:func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature and forward pass, and
a custom VJP for the common case (NHWC, HWIO, stride 1, no dilation, one group). The input
gradient is written as an ordinary forward convolution of the output gradient with the rotated,
channel-swapped kernel (:func:`input_gradient`): the same computation JAX's own VJP asks for,
but spelled so that XLA's CPU backend also runs it with its fast (YNNPACK) convolution inside a
conditional branch, where it otherwise falls back to a generic kernel that took 4x longer for
a teacher tail's backward pass under ``lax.switch`` (the block-wise step; README "Speed").
The weight gradient is written as ``kh`` matrix products that contract over every output pixel
of the batch::

  dK[i, j, c, o] = sum_{n,h,w} x_pad[n, h + i, w + j, c] * dY[n, h, w, o]

with the ``kw`` horizontal shifts of ``x_pad`` stacked on the channel axis, so each product is
(N*H*W, kw*C)^T @ (N*H*W, Cout) -- the shape BLAS-style kernels are good at (2.5-4x less CPU
time than XLA's weight-gradient convolution at SegNet's layer shapes; see README "Speed").
The result is the same sum in a different order (float round-off only). Other backends
(GPU/TPU have dedicated convolution-gradient kernels) and other configurations use
``lax.conv_general_dilated`` unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
# Read at trace time. False gives XLA's own weight-gradient convolution everywhere (the
# benchmark's "before" column; ``kajax.benchmarks.train_steps --xla_conv_gradient``).
MATMUL_WEIGHT_GRADIENT_ON_CPU = True


def _conv(x, kernel, padding, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...],
              precision: Any = None) -> jax.Array:
  """Stride-1 NHWC x HWIO convolution with explicit ``padding`` ((top, bottom), (left, right)).

  Forward pass = ``lax.conv_general_dilated``; the weight gradient is computed by matrix
  products (module docstring).
  """
  return _conv(x, kernel, padding, precision)


def _fwd(x, kernel, padding, precision):
  return _conv(x, kernel, padding, precision), (x, kernel)


def weight_gradient(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                    padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """dL/dK of a stride-1 NHWC convolution from its input ``x`` and output gradient ``dy``.

  Args:
    x: (N, H, W, C) input of the convolution.
    dy: (N, Ho, Wo, Cout) gradient of its output.
    kernel_hw: (kh, kw).
    padding: ((top, bottom), (left, right)) of the forward convolution.

  Returns:
    (kh, kw, C, Cout) in dy's dtype.
  """
  kh, kw = kernel_hw
  (pt, pb), (pl, pr) = padding
  # Ties the shifted copies of x to dy: without it XLA's scheduler builds them as soon as x
  # exists (in the forward pass) and keeps ~6 copies of every activation alive until the
  # backward pass (measured: 18 GiB instead of 4.9 GiB for a full-size fine-tuning step).
  x, dy = lax.optimization_barrier((x, dy))
  n, ho, wo, cout = dy.shape
  c = x.shape[-1]
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  # (N, Hp, Wo, kw*C): the kw horizontal taps side by side on the channel axis.
  shifted = jnp.concatenate([xp[:, :, j:j + wo] for j in range(kw)], axis=-1)
  dy2 = dy.reshape(n * ho * wo, cout)
  rows = []
  for i in range(kh):
    patch = shifted[:, i:i + ho].reshape(n * ho * wo, kw * c)
    # Contract over every output pixel of the batch: (kw*C, Cout).
    rows.append(lax.dot_general(patch, dy2, (((0,), (0,)), ((), ())),
                                preferred_element_type=jnp.float32).reshape(kw, c, cout))
  return jnp.stack(rows).astype(dy.dtype)


def input_gradient(dy: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...],
                   precision: Any = None) -> jax.Array:
  """dL/dx of a stride-1 NHWC convolution, as a forward convolution of ``dy``.

  The kernel rotated by 180 degrees with its input and output channels swapped, padded so that
  the result has x's size (``(kh - 1 - top, kh - 1 - bottom)``, the same for the width). A
  forward padding wider than ``kh - 1`` makes that negative: ``lax`` then crops ``dy``, which
  drops exactly the output rows that saw only padding.
  """
  kh, kw = kernel.shape[:2]
  (pt, pb), (pl, pr) = padding
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  return _conv(dy, flipped, ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr)),
               precision)


def _bwd(padding, precision, res, dy):
  x, kernel = res
  dx = input_gradient(dy, kernel, padding, precision)
  dk = weight_gradient(x, dy, kernel.shape[:2], padding)
  return dx, dk.astype(kernel.dtype)


conv_nhwc.defvjp(_fwd, _bwd)


def _is_plain(window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, batch_group_count, padding) -> bool:
  ones = lambda v: v is None or all(int(s) == 1 for s in v)  # noqa: E731
  numbers = dimension_numbers
  if isinstance(numbers, lax.ConvDimensionNumbers):
    numbers = None if numbers != lax.conv_dimension_numbers(
        (1, 1, 1, 1), (1, 1, 1, 1), _NHWC) else _NHWC
  return (ones(window_strides) and ones(lhs_dilation) and ones(rhs_dilation)
          and tuple(numbers or ()) == _NHWC and feature_group_count == 1
          and batch_group_count == 1 and not isinstance(padding, str))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """``lax.conv_general_dilated`` with a fast CPU weight gradient where it applies.

  Pass it to Flax as ``nn.Conv(..., conv_general_dilated=conv.conv_general_dilated)``. On CPU,
  2-D stride-1 undilated single-group NHWC/HWIO convolutions with explicit padding use
  :func:`conv_nhwc`; everything else (and every other backend) calls ``lax`` unchanged.
  """
  if (MATMUL_WEIGHT_GRADIENT_ON_CPU and jax.default_backend() == "cpu" and lhs.ndim == 4
      and preferred_element_type is None
      and _is_plain(window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, batch_group_count, padding)):
    pads = tuple((int(a), int(b)) for a, b in padding)
    return conv_nhwc(lhs, rhs, pads, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers, feature_group_count,
                                  batch_group_count, precision, preferred_element_type)
