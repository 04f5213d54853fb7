"""SegNet with a VGG-BN encoder, in Flax Linen (NHWC throughout).

The teacher architecture of *Student Becoming the Master* (docs/method.md §1): encoder blocks
``down1..down5`` of 3x3 conv + BN + ReLU layers, each ending in a 2x2/2 max-pool that returns
its argmax; decoder blocks ``up5..up1`` that max-unpool with the matching indices and mirror
the encoder's convolutions. Blocks are separate modules with stable names so that the student
(``kajax.student``) can splice teacher blocks into its branches by name, and a teacher can be
run from any intermediate feature with :meth:`SegNet.decode`.

Pooling follows PyTorch exactly: odd sizes are floored, the first maximum of a window wins a
tie, and unpooling restores the pre-pool size with zeros in the extra row/column. The argmax
is stored as the window position (0..3, row-major) rather than a "equals the max" mask,
because after ReLU many windows tie at zero and a mask would unpool into several positions.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from kajax import conv

# Convolutions per encoder block for each preset; the decoder mirrors them (up5 has as many
# convs as down5, ..., up1 as many as down1).
ARCH_CONVS: dict[str, tuple[int, ...]] = {
    "segnet_vgg11_bn": (1, 1, 2, 2, 2),
    "segnet_vgg13_bn": (2, 2, 2, 2, 2),
    "segnet_vgg16_bn": (2, 2, 3, 3, 3),
    "segnet_vgg19_bn": (2, 2, 4, 4, 4),
}
BASE_WIDTHS = (64, 128, 256, 512, 512)
ENCODER_BLOCKS = ("down1", "down2", "down3", "down4", "down5")
# Decoder blocks in execution order. A branch point k (0..4) shares DECODER_BLOCKS[:k].
DECODER_BLOCKS = ("up5", "up4", "up3", "up2", "up1")
NUM_BRANCH_POINTS = 5
# 'conv': last block without BN and a raw last conv (KamalEngine's current layout).
# 'conv_bn_relu': every layer conv+BN+ReLU, the last one too (pytorch-semseg / 2019 layout).
HEADS = ("conv", "conv_bn_relu")
# Initial weights of the 'conv' head's last conv (the raw outputs; every other conv: He).
# 'he_fan_out': He from the fan-out, like every other layer -- with one output channel (depth)
#   the weights' std is sqrt(2/9) = 0.47: a fresh width-1/8 depth SegNet's predictions on
#   synthetic rooms spread by 1.38 m (std);
# 'fan_in': variance 1/fan_in (std 0.12 there; spread 0.34 m).
HEAD_INITS = ("he_fan_out", "fan_in")
# Coordinate channels (``input_coords``): two channels appended to the image before down1,
# the row and the column of each pixel scaled to -1..1 (top/left -1, bottom/right +1), as in
# CoordConv (Liu et al., NeurIPS 2018). A convolution cannot tell where in the image it is
# except through the zero padding; monocular depth depends on it (a floor pixel's depth is
# mostly its row, for a given camera height and tilt).
COORD_CHANNELS = 2

# PyTorch's BatchNorm defaults (momentum 0.1 there = 0.9 here). Flax's default 0.99 makes
# early evaluations wrong on short runs (docs/method.md §4).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def encoder_widths(width_multiplier: float = 1.0) -> tuple[int, ...]:
  """Output channels of down1..down5 for a width multiplier (1/8 gives 8,16,32,64,64)."""
  if width_multiplier <= 0:
    raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
  return tuple(max(1, int(round(w * width_multiplier))) for w in BASE_WIDTHS)


def convs_per_block(arch: str) -> tuple[int, ...]:
  """Number of convolutions in down1..down5 for a preset name."""
  if arch not in ARCH_CONVS:
    raise ValueError(f"Unknown SegNet arch {arch!r}; choose one of {sorted(ARCH_CONVS)}.")
  return ARCH_CONVS[arch]


def decoder_block_for_encoder(name: str) -> str:
  """'down3' -> 'up3': the decoder block that unpools with this encoder block's indices."""
  return "up" + name[len("down"):]


@struct.dataclass
class PoolIndices:
  """Argmax of a 2x2/2 max-pool plus the pre-pool spatial size (static).

  Attributes:
    argmax: int8 (N, H//2, W//2, C), window position 0..3 in row-major order
      (0 = top-left, 1 = top-right, 2 = bottom-left, 3 = bottom-right).
    size: (H, W) before pooling; unpooling restores it.
  """
  argmax: jax.Array
  size: tuple[int, int] = struct.field(pytree_node=False)

  def flat(self) -> jax.Array:
    """PyTorch's ``return_indices`` form: flat index into the pre-pool H*W plane, (N,h,w,C)."""
    _, h2, w2, _ = self.argmax.shape
    a = self.argmax.astype(jnp.int32)
    rows = 2 * jnp.arange(h2)[None, :, None, None] + a // 2
    cols = 2 * jnp.arange(w2)[None, None, :, None] + a % 2
    return rows * self.size[1] + cols


def _windows(x: jax.Array) -> jax.Array:
  """(N,H,W,C) -> (N,H//2,W//2,4,C): the 2x2 windows, odd trailing row/col dropped."""
  n, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, :2 * h2, :2 * w2, :].reshape(n, h2, 2, w2, 2, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h2, w2, 4, c)


def max_pool_with_indices(x: jax.Array) -> tuple[jax.Array, PoolIndices]:
  """2x2/2 max-pool returning the argmax; ties go to the first position, as in PyTorch."""
  n, h, w, c = x.shape
  if h < 2 or w < 2:
    raise ValueError(
        f"Feature map of size {h}x{w} is too small to pool; the input image is too small "
        "for five pooling stages (use at least 32x32).")
  windows = _windows(x)
  argmax = jnp.argmax(windows, axis=3)  # jnp.argmax returns the first maximum.
  # Select with a one-hot mask (not max) so the gradient goes to the argmax only, as in
  # PyTorch; a dense mask is much faster on CPU than take_along_axis's scatter gradient.
  hit = argmax[:, :, :, None, :] == jnp.arange(4)[None, None, None, :, None]
  pooled = jnp.sum(jnp.where(hit, windows, jnp.zeros((), x.dtype)), axis=3)
  return pooled, PoolIndices(argmax.astype(jnp.int8), (h, w))


def max_unpool(x: jax.Array, indices: PoolIndices) -> jax.Array:
  """Inverse of :func:`max_pool_with_indices`: values back at their argmax, zeros elsewhere."""
  n, h2, w2, c = x.shape
  if indices.argmax.shape[:3] != (n, h2, w2):
    raise ValueError(f"Cannot unpool a {x.shape} map with indices of shape "
                     f"{indices.argmax.shape}.")
  h, w = indices.size
  positions = jnp.arange(4, dtype=indices.argmax.dtype)[None, None, None, :, None]
  hit = indices.argmax[:, :, :, None, :] == positions
  y = jnp.where(hit, x[:, :, :, None, :], jnp.zeros((), x.dtype))
  y = y.reshape(n, h2, w2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h2, 2 * w2, c)
  return jnp.pad(y, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0)))


def with_coordinate_channels(x: jax.Array) -> jax.Array:
  """(N,H,W,C) -> (N,H,W,C+2): the image with its pixels' row and column in -1..1 appended.

  The coordinates are those of the array it is given: an augmented crop or a flipped image
  gets the same channels as any other image of its size (they say where a pixel is in the
  network's input, not in the scene).
  """
  n, h, w, _ = x.shape
  rows = jnp.linspace(-1.0, 1.0, h, dtype=x.dtype)[None, :, None, None]
  cols = jnp.linspace(-1.0, 1.0, w, dtype=x.dtype)[None, None, :, None]
  return jnp.concatenate([x, jnp.broadcast_to(rows, (n, h, w, 1)),
                          jnp.broadcast_to(cols, (n, h, w, 1))], axis=-1)


def widen_first_conv(down1_params: Any, input_channels: int) -> Any:
  """``down1``'s params with zero weights appended to its first conv for the extra inputs
  (coordinate channels a source encoder lacks), so the block computes what it did; a new
  tree, the given one is left as it was. Unchanged when already as wide."""
  kernel = down1_params["layer0"]["conv"]["kernel"]
  extra = input_channels - kernel.shape[2]
  if extra <= 0:
    return down1_params
  zeros = jnp.zeros(kernel.shape[:2] + (extra,) + kernel.shape[3:], kernel.dtype)
  layer0 = {**down1_params["layer0"], "conv": {**down1_params["layer0"]["conv"],
                                               "kernel": jnp.concatenate([kernel, zeros], 2)}}
  return {**down1_params, "layer0": layer0}


def _conv_init(name: str = "he_fan_out"):
  # He initialisation (fan-out), the usual choice for VGG-BN; teachers are normally loaded.
  if name == "fan_in":
    return nn.initializers.variance_scaling(1.0, "fan_in", "normal")
  return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvLayer(nn.Module):
  """3x3 conv (with bias, as in the PyTorch originals), optional BatchNorm, optional ReLU."""
  features: int
  batch_norm: bool = True
  relu: bool = True
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32
  dtype: Any = None
  kernel_init: str = "he_fan_out"  # see HEAD_INITS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    # conv.conv_general_dilated: XLA's own forward pass, a fast weight gradient on CPU.
    x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=True,
                kernel_init=_conv_init(self.kernel_init), param_dtype=self.param_dtype, dtype=self.dtype,
                conv_general_dilated=conv.conv_general_dilated, name="conv")(x)
    if self.batch_norm:
      # Flax reduces the batch statistics in float32 whatever the compute dtype.
      x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                       epsilon=BN_EPSILON, axis_name=self.bn_axis_name,
                       param_dtype=self.param_dtype, dtype=self.dtype, name="bn")(x)
    if self.relu:
      x = nn.relu(x)
    return x


class EncoderBlock(nn.Module):
  """``num_convs`` conv+BN+ReLU layers then a 2x2/2 max-pool returning its indices."""
  features: int
  num_convs: int
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, PoolIndices]:
    for i in range(self.num_convs):
      x = ConvLayer(self.features, bn_axis_name=self.bn_axis_name,
                    param_dtype=self.param_dtype, dtype=self.dtype, name=f"layer{i}")(x, train)
    return max_pool_with_indices(x)


class DecoderBlock(nn.Module):
  """Max-unpool, then ``num_convs`` convs keeping the channels except the last.

  Attributes:
    features: output channels of the last conv.
    num_convs: convolutions in the block.
    batch_norm: whether layers have BatchNorm (False for SegNet's 'conv' head block).
    last_relu: whether the last conv is followed by ReLU (False for raw logits/depth).
    last_init: initial weights of the last conv (``HEAD_INITS``).
  """
  features: int
  num_convs: int
  batch_norm: bool = True
  last_relu: bool = True
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32
  dtype: Any = None
  last_init: str = "he_fan_out"

  @nn.compact
  def __call__(self, x: jax.Array, indices: PoolIndices, train: bool) -> jax.Array:
    x = max_unpool(x, indices)
    in_features = x.shape[-1]
    for i in range(self.num_convs):
      last = i == self.num_convs - 1
      x = ConvLayer(self.features if last else in_features, batch_norm=self.batch_norm,
                    relu=self.last_relu or not last, bn_axis_name=self.bn_axis_name,
                    param_dtype=self.param_dtype, dtype=self.dtype,
                    kernel_init=self.last_init if last else "he_fan_out",
                    name=f"layer{i}")(x, train)
    return x


def decoder_block(name: str, arch: str, num_outputs: int, width_multiplier: float,
                  head: str, bn_axis_name: str | None = None,
                  param_dtype: Any = jnp.float32, dtype: Any = None,
                  head_init: str = "he_fan_out") -> DecoderBlock:
  """The decoder block ``name`` ('up5'..'up1') of a SegNet, unbound (the student reuses it).
  ``head_init`` applies to the 'conv' head's last conv only."""
  if head not in HEADS:
    raise ValueError(f"Unknown SegNet head {head!r}; choose one of {HEADS}.")
  if head_init not in HEAD_INITS:
    raise ValueError(f"--config.model.head_init={head_init!r}: choose one of {HEAD_INITS}.")
  level = int(name[len("up"):]) - 1  # up5 -> 4 ... up1 -> 0
  widths = encoder_widths(width_multiplier)
  is_head = level == 0
  out = num_outputs if is_head else widths[level - 1]
  plain_head = is_head and head == "conv"
  return DecoderBlock(out, convs_per_block(arch)[level], batch_norm=not plain_head,
                      last_relu=not plain_head, bn_axis_name=bn_axis_name,
                      param_dtype=param_dtype, dtype=dtype,
                      last_init=head_init if plain_head else "he_fan_out", name=name)


def encoder_block(name: str, arch: str, width_multiplier: float,
                  bn_axis_name: str | None = None, param_dtype: Any = jnp.float32,
                  dtype: Any = None, remat: bool = False) -> EncoderBlock:
  """The encoder block ``name`` ('down1'..'down5') of a SegNet, unbound.

  ``remat=True`` recomputes the block's activations in the backward pass instead of storing
  them (``jax.checkpoint``): less memory for ~1/3 more encoder FLOPs in a training step.
  """
  level = int(name[len("down"):]) - 1
  # static_argnums counts self: argument 2 is ``train`` (a Python bool).
  cls = nn.remat(EncoderBlock, static_argnums=(2,)) if remat else EncoderBlock
  return cls(encoder_widths(width_multiplier)[level], convs_per_block(arch)[level],
             bn_axis_name=bn_axis_name, param_dtype=param_dtype, dtype=dtype, name=name)


class SegNet(nn.Module):
  """SegNet for one dense task: C logits (parsing), 1 channel (depth) or 3 (normals).

  ``apply(variables, x_nhwc, train=...)`` returns ``(outputs_nhwc, features)`` with features
  named ``down1..down5, up5..up1`` (block outputs; ``down*`` are after pooling). With
  ``dtype=None`` it computes in the dtype of its inputs and variables; ``dtype=bfloat16``
  runs the convolutions and activations in bfloat16 while the variables stay ``param_dtype``
  (BatchNorm statistics are reduced in float32).
  """
  num_outputs: int
  arch: str = "segnet_vgg16_bn"
  width_multiplier: float = 1.0
  head: str = "conv"
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32
  dtype: Any = None
  remat: bool = False  # rematerialise encoder blocks (see encoder_block)
  head_init: str = "he_fan_out"  # the 'conv' head's last conv (HEAD_INITS)
  input_coords: bool = False  # append coordinate channels to the image (COORD_CHANNELS)

  def setup(self):
    convs_per_block(self.arch)  # validates the name early
    for name in ENCODER_BLOCKS:
      setattr(self, name, encoder_block(name, self.arch, self.width_multiplier,
                                        self.bn_axis_name, self.param_dtype, self.dtype,
                                        self.remat))
    for name in DECODER_BLOCKS:
      setattr(self, name, decoder_block(name, self.arch, self.num_outputs,
                                        self.width_multiplier, self.head, self.bn_axis_name,
                                        self.param_dtype, self.dtype, self.head_init))

  def encode(self, x: jax.Array, train: bool = False
             ) -> tuple[jax.Array, tuple[PoolIndices, ...], dict[str, jax.Array]]:
    """Runs down1..down5. Returns (f_0, indices of down1..down5, features)."""
    if x.ndim != 4:
      raise ValueError(f"SegNet expects NHWC images, got shape {x.shape}.")
    if self.input_coords:
      x = with_coordinate_channels(x)
    features, indices = {}, []
    for name in ENCODER_BLOCKS:
      x, idx = getattr(self, name)(x, train)
      features[name] = x
      indices.append(idx)
    return x, tuple(indices), features

  def decode(self, f: jax.Array, indices: Sequence[PoolIndices], start: int = 0,
             train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the decoder blocks after branch point ``start`` on the shared feature f_start.

    Args:
      f: f_0 = down5 output for start=0, else the output of DECODER_BLOCKS[start - 1].
      indices: pooling indices of down1..down5 (from any encoder of this geometry).
      start: number of decoder blocks already applied, 0..4.
      train: BatchNorm in training mode.
    """
    features = {}
    for name in DECODER_BLOCKS[start:]:
      level = int(name[len("up"):]) - 1
      f = getattr(self, name)(f, indices[level], train)
      features[name] = f
    return f, features

  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    f, indices, features = self.encode(x, train)
    out, decoder_features = self.decode(f, indices, 0, train)
    return out, {**features, **decoder_features}


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (pass ``variables['params']`` only)."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
