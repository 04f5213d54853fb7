"""Tests for kajax.conv: the convolution whose weight gradient is computed by matmuls on CPU.

Expected values: the weight and input gradients written out as NumPy sums over pixels, and
JAX's own differentiation of ``lax.conv_general_dilated`` (a different algorithm: XLA's
convolutions).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kajax import conv

_NHWC = ("NHWC", "HWIO", "NHWC")


def _numpy_weight_gradient(x, dy, kh, kw, padding):
  (pt, pb), (pl, pr) = padding
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  _, ho, wo, _ = dy.shape
  out = np.zeros((kh, kw, x.shape[-1], dy.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      # dK[i, j] = sum over n, h, w of x_pad[n, h + i, w + j, :] outer dy[n, h, w, :]
      out[i, j] = np.einsum("nhwc,nhwo->co", xp[:, i:i + ho, j:j + wo], dy)
  return out


@pytest.mark.parametrize("kernel_hw,padding", [
    ((3, 3), ((1, 1), (1, 1))),
    ((3, 3), ((0, 0), (0, 0))),
    ((3, 3), ((2, 0), (1, 2))),
    ((1, 3), ((0, 0), (1, 1))),
    ((3, 2), ((3, 1), (0, 2))),  # padding wider than the kernel on one side
])
def test_weight_gradient_matches_numpy_sum_over_pixels(kernel_hw, padding):
  rng = np.random.default_rng(0)
  kh, kw = kernel_hw
  x = rng.standard_normal((2, 7, 9, 5)).astype(np.float32)
  ho = 7 + sum(padding[0]) - kh + 1
  wo = 9 + sum(padding[1]) - kw + 1
  dy = rng.standard_normal((2, ho, wo, 4)).astype(np.float32)
  got = conv.weight_gradient(jnp.asarray(x), jnp.asarray(dy), kernel_hw, padding)
  np.testing.assert_allclose(np.asarray(got), _numpy_weight_gradient(x, dy, kh, kw, padding),
                             rtol=1e-5, atol=1e-4)


def _numpy_input_gradient(dy, kernel, x_hw, padding):
  (pt, pb), (pl, pr) = padding
  kh, kw = kernel.shape[:2]
  n, ho, wo, _ = dy.shape
  dxp = np.zeros((n, x_hw[0] + pt + pb, x_hw[1] + pl + pr, kernel.shape[2]))
  for i in range(kh):
    for j in range(kw):
      # y[n, h, w] = sum over i, j of x_pad[n, h + i, w + j] @ K[i, j]: scatter dy back.
      dxp[:, i:i + ho, j:j + wo] += np.einsum("nhwo,co->nhwc", dy, kernel[i, j])
  return dxp[:, pt:pt + x_hw[0], pl:pl + x_hw[1]]


@pytest.mark.parametrize("kernel_hw,padding", [
    ((3, 3), ((1, 1), (1, 1))),
    ((3, 3), ((0, 0), (0, 0))),
    ((3, 3), ((2, 0), (1, 2))),
    ((1, 3), ((0, 0), (1, 1))),
    ((3, 3), ((3, 1), (0, 0))),  # padding >= kernel size: a negative (cropping) padding
])
def test_input_gradient_matches_numpy_scatter_of_output_gradient(kernel_hw, padding):
  rng = np.random.default_rng(5)
  kh, kw = kernel_hw
  x = jnp.asarray(rng.standard_normal((2, 7, 9, 5)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kh, kw, 5, 4)), jnp.float32)
  ho, wo = 7 + sum(padding[0]) - kh + 1, 9 + sum(padding[1]) - kw + 1
  dy = rng.standard_normal((2, ho, wo, 4)).astype(np.float32)
  _, vjp = jax.vjp(lambda v: conv.conv_nhwc(v, kernel, padding), x)
  want = _numpy_input_gradient(dy, np.asarray(kernel, np.float64), (7, 9), padding)
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(dy))[0]), want, rtol=1e-5, atol=1e-4)


def test_gradient_inside_lax_switch_equals_the_plain_gradient():
  # Inside a conditional branch XLA's CPU backend leaves JAX's own input-gradient convolution
  # unfused (4x slower, README "Speed"); kajax's must give the same gradient there.
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((2, 8, 10, 4)), jnp.float32)
  kernels = [jnp.asarray(rng.standard_normal((3, 3, 4, 4)), jnp.float32) for _ in range(2)]
  pad = ((1, 1), (1, 1))
  branch = lambda k: lambda x: jnp.sum(jnp.tanh(  # noqa: E731
      conv.conv_nhwc(conv.conv_nhwc(x, k, pad), kernels[1], pad)))
  for index, k in enumerate(kernels):
    plain = jax.grad(branch(k))(x)
    switched = jax.jit(jax.grad(lambda x, i: jax.lax.switch(i, [branch(k) for k in kernels],
                                                              x)))(x, index)
    np.testing.assert_allclose(np.asarray(switched), np.asarray(plain), rtol=1e-5, atol=1e-5)
    want = jax.grad(lambda x: jnp.sum(jnp.tanh(lax.conv_general_dilated(
        lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=_NHWC), kernels[1],
        (1, 1), pad, dimension_numbers=_NHWC))))(x)
    np.testing.assert_allclose(np.asarray(switched), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_gradients_match_xla_differentiation_of_lax_conv():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 10, 12, 6)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 6, 8)), jnp.float32)
  pad = ((1, 1), (1, 1))

  def loss(fn):
    return lambda x, k: jnp.sum(jnp.sin(fn(x, k, (1, 1), pad, dimension_numbers=_NHWC)))

  want = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, k)
  got = jax.jit(jax.grad(loss(conv.conv_general_dilated), (0, 1)))(x, k)
  np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-5, atol=1e-4)
  # The forward pass is XLA's convolution itself: identical, not just close.
  np.testing.assert_array_equal(
      np.asarray(conv.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=_NHWC)),
      np.asarray(lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=_NHWC)))


def test_other_configurations_fall_back_to_lax():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 4, 4)), jnp.float32)
  for kwargs in ({"window_strides": (2, 2), "padding": "SAME"},
                 {"window_strides": (1, 1), "padding": ((1, 1), (1, 1)),
                  "rhs_dilation": (2, 2)}):
    strides, padding = kwargs.pop("window_strides"), kwargs.pop("padding")
    f = lambda fn, x, k: jnp.sum(fn(x, k, strides, padding, dimension_numbers=_NHWC,  # noqa
                                    **kwargs) ** 2)
    want = jax.grad(lambda x, k: f(lax.conv_general_dilated, x, k), 1)(x, k)
    got = jax.grad(lambda x, k: f(conv.conv_general_dilated, x, k), 1)(x, k)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


def test_flax_conv_uses_it_with_unchanged_parameters():
  layer = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)),
                  conv_general_dilated=conv.conv_general_dilated)
  plain = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6, 6, 3)), jnp.float32)
  variables = plain.init(jax.random.key(0), x)
  assert (jax.tree_util.tree_structure(layer.init(jax.random.key(0), x))
          == jax.tree_util.tree_structure(variables))
  grad = lambda m: jax.grad(lambda v: jnp.sum(m.apply(v, x) ** 2))(variables)  # noqa: E731
  for a, b in zip(jax.tree_util.tree_leaves(grad(layer)), jax.tree_util.tree_leaves(grad(plain))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_bfloat16_weight_gradient_accumulates_in_float32():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((4, 16, 16, 8)).astype(np.float32)
  dy = rng.standard_normal((4, 16, 16, 8)).astype(np.float32)
  got = conv.weight_gradient(jnp.asarray(x, jnp.bfloat16), jnp.asarray(dy, jnp.bfloat16),
                             (3, 3), ((1, 1), (1, 1)))
  assert got.dtype == jnp.bfloat16
  want = _numpy_weight_gradient(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32),
                                np.asarray(jnp.asarray(dy, jnp.bfloat16), np.float32),
                                3, 3, ((1, 1), (1, 1)))
  # 1024 products per entry: bfloat16 accumulation would be off by ~1e-1 relative;
  # float32 accumulation leaves only the final rounding to bfloat16 (2^-8).
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=8e-3, atol=0.3)
