"""FLOPs of kajax's steps from the layer shapes, and the numbers that size a TPU/GPU run.

Counted by hand from the architecture (docs/method.md §1), independently of XLA, so the
benchmark can cross-check them against XLA's cost analysis of the compiled step. Only the
convolutions and the gates' 1x1 convolutions are counted (BatchNorm, ReLU, pooling and the
losses add ~3-4% elementwise work); a multiply-add is 2 FLOPs and every 3x3 tap counts,
padding included (XLA skips taps on the zero padding: ~0.5% fewer at 240x320).

Training FLOPs follow the usual rule: a trainable convolution costs its forward pass, the
input gradient (same FLOPs, except for the first layer, whose input is the image) and the
weight gradient (same FLOPs); a frozen one (the teachers' tails in the block-wise step) its
forward pass and input gradient; a teacher's target forward pass, the forward pass only.
"""

from __future__ import annotations

import dataclasses

CONVS = (2, 2, 3, 3, 3)  # VGG16-BN, per encoder block; the decoder mirrors them
WIDTHS = (64, 128, 256, 512, 512)


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Image size and SegNet width of a benchmark run."""
  height: int
  width: int
  width_multiplier: float = 1.0

  def channels(self) -> list[int]:
    return [max(1, int(round(w * self.width_multiplier))) for w in WIDTHS]

  def size(self, level: int) -> tuple[int, int]:
    """Spatial size of encoder level ``level`` (0 = full resolution), floor-halved."""
    h, w = self.height, self.width
    for _ in range(level):
      h, w = h // 2, w // 2
    return h, w


def _conv(h: int, w: int, cin: int, cout: int) -> int:
  return 2 * 9 * cin * cout * h * w


def encoder_block(g: Geometry, level: int) -> int:
  """Forward FLOPs of down{level+1} for one image."""
  c = g.channels()
  cin = 3 if level == 0 else c[level - 1]
  h, w = g.size(level)
  return sum(_conv(h, w, cin if i == 0 else c[level], c[level]) for i in range(CONVS[level]))


def decoder_block(g: Geometry, level: int, num_outputs: int) -> int:
  """Forward FLOPs of up{level+1} (level 0 = the head, ending in ``num_outputs``)."""
  c = g.channels()
  cout = num_outputs if level == 0 else c[level - 1]
  h, w = g.size(level)
  n = CONVS[level]
  return sum(_conv(h, w, c[level], cout if i == n - 1 else c[level]) for i in range(n))


def first_layer(g: Geometry) -> int:
  """The image-input conv: its input gradient is never computed."""
  return _conv(g.height, g.width, 3, g.channels()[0])


def gate(g: Geometry, k: int) -> int:
  """One channel gate on f_k (two 1x1 convs on the pooled vector; the rescale not counted)."""
  ch = g.channels()[4 - k]
  return 2 * 2 * ch * max(16, ch // 4)


def teacher_forward(g: Geometry, num_outputs: int) -> int:
  return (sum(encoder_block(g, i) for i in range(5))
          + sum(decoder_block(g, i, num_outputs) for i in range(5)))


def tail(g: Geometry, k: int, num_outputs: int) -> int:
  """Decoder blocks after branch point k: up{5-k}..up1."""
  return sum(decoder_block(g, level, num_outputs) for level in range(4 - k, -1, -1))


def trunk(g: Geometry, depth: int, trunk_outputs: int = 13) -> int:
  """Encoder plus the first ``depth`` shared decoder blocks (up5, up4, ...)."""
  return (sum(encoder_block(g, i) for i in range(5))
          + sum(decoder_block(g, 4 - j, trunk_outputs) for j in range(depth)))


def student_forward(g: Geometry, branch_points, num_outputs) -> int:
  """Fixed-branch student: trunk to max k, one gate and one tail per task."""
  return (trunk(g, max(branch_points))
          + sum(gate(g, k) + tail(g, k, c) for k, c in zip(branch_points, num_outputs)))


def finetune_step(g: Geometry, branch_points, num_outputs) -> int:
  """Per image: teachers' targets + student forward, input and weight gradients."""
  student = student_forward(g, branch_points, num_outputs)
  return (sum(teacher_forward(g, c) for c in num_outputs) + 3 * student - first_layer(g))


def block_step(g: Geometry, branch_points, num_outputs) -> int:
  """Per image, at drawn branch points: only the trunk blocks and gates they need."""
  shared = trunk(g, max(branch_points)) + sum(gate(g, k) for k in branch_points)
  frozen = sum(tail(g, k, c) for k, c in zip(branch_points, num_outputs))
  return (sum(teacher_forward(g, c) for c in num_outputs) + 3 * shared - first_layer(g)
          + 2 * frozen)


def teacher_train_step(g: Geometry, num_outputs: int) -> int:
  return 3 * teacher_forward(g, num_outputs) - first_layer(g)
