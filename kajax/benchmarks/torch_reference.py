"""The PyTorch reference of kajax's steps, for the side-by-side benchmark.

Written from the method's description (docs/method.md §1) the way a PyTorch user would write
it -- eager, float32, NCHW, ``torch.optim.Adam`` -- not from kajax's code:

* teachers: SegNet with a VGG16-BN encoder (conv(bias)+BN+ReLU, ``max_pool2d`` with indices)
  and a mirrored decoder (``max_unpool2d`` to the pre-pool size), in eval mode under
  ``torch.no_grad``;
* fine-tuning step: the fixed-branch student (shared encoder, trunk up to max k_t, per task a
  channel gate and its own copy of the teacher's remaining decoder blocks), KL on parsing
  logits + L1 on depth, averaged over every pixel of the batch, backward, Adam;
* block-wise step: student encoder and trunk, for each task the gate at the drawn k_t and the
  teacher's *frozen* decoder after k_t (``requires_grad=False``, BN in eval mode), same loss.
  Eager PyTorch runs only the blocks the drawn branch points need;
* teacher training step: one SegNet, cross-entropy, backward, Adam.

Imported only by the benchmark (torch is an optional extra of kajax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONVS = (2, 2, 3, 3, 3)  # VGG16-BN convs per encoder block (the decoder mirrors them)
WIDTHS = (64, 128, 256, 512, 512)


def _widths(width: float) -> list[int]:
  return [max(1, int(round(w * width))) for w in WIDTHS]


def _layers(channels: list[int], plain_last: bool = False) -> nn.Sequential:
  """3x3 conv(+bias) [+BN] +ReLU per layer; ``plain_last``: SegNet's head block (no BN, raw
  last conv)."""
  mods = []
  for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
    mods.append(nn.Conv2d(cin, cout, 3, padding=1))
    if not plain_last:
      mods += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    elif i < len(channels) - 2:
      mods.append(nn.ReLU(inplace=True))
  return nn.Sequential(*mods)


class SegNet(nn.Module):
  """VGG16-BN SegNet; ``down[i]`` / ``up[i]`` are level i (0 = full resolution)."""

  def __init__(self, num_outputs: int, width: float = 1.0):
    super().__init__()
    w = _widths(width)
    ins = [3] + w[:-1]
    self.down = nn.ModuleList(_layers([ins[i]] + [w[i]] * CONVS[i]) for i in range(5))
    outs = [num_outputs] + w[:-1]  # up block i ends with the width of level i-1
    self.up = nn.ModuleList(
        _layers([w[i]] * CONVS[i] + [outs[i]], plain_last=i == 0) for i in range(5))

  def encode(self, x):
    return _encode(self.down, x)

  def up_block(self, level: int, x, indices, sizes):
    x = F.max_unpool2d(x, indices[level], 2, 2, output_size=sizes[level])
    return self.up[level](x)

  def decode(self, f, indices, sizes, start: int = 0):
    """Decoder after branch point ``start`` (= number of decoder blocks already applied)."""
    for level in range(4 - start, -1, -1):
      f = self.up_block(level, f, indices, sizes)
    return f

  def forward(self, x):
    f, indices, sizes = self.encode(x)
    return self.decode(f, indices, sizes)


def _encode(down, x):
  """Encoder blocks, each followed by a 2x2 max-pool: (f_0, pooling indices, pre-pool sizes)."""
  indices, sizes = [], []
  for block in down:
    x = block(x)
    sizes.append(x.shape[-2:])
    x, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    indices.append(idx)
  return x, indices, sizes


class Gate(nn.Module):
  """Channel gate: global average pool, 1x1 conv C->max(16,C/4), ReLU, 1x1 conv, 2*sigmoid."""

  def __init__(self, channels: int):
    super().__init__()
    hidden = max(16, channels // 4)
    self.reduce = nn.Conv2d(channels, hidden, 1, bias=False)
    self.expand = nn.Conv2d(hidden, channels, 1, bias=False)
    nn.init.zeros_(self.expand.weight)

  def forward(self, x):
    z = self.expand(F.relu(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
    return x * (2 * torch.sigmoid(z))


def _feature_channels(width: float) -> list[int]:
  """Channels of f_0..f_4 (down5, up5, up4, up3, up2 outputs)."""
  w = _widths(width)
  return [w[4], w[3], w[2], w[1], w[0]]


class Student(nn.Module):
  """Student made of SegNet blocks: an encoder, a trunk up5..up{5-depth+1}, gates and tails.

  ``branch_points=None`` gives the block-wise student (trunk up5..up2, a gate per (task, k));
  otherwise the fixed-branch student with one gate and one tail per task.
  """

  def __init__(self, num_outputs: tuple[int, ...], width: float = 1.0,
               branch_points: tuple[int, ...] | None = None):
    super().__init__()
    trunk_net = SegNet(num_outputs[0], width)
    self.down = trunk_net.down
    depth = 4 if branch_points is None else max(branch_points)
    self.trunk = nn.ModuleList(trunk_net.up[4 - j] for j in range(depth))  # up5, up4, ...
    chans = _feature_channels(width)
    ks = [list(range(5))] * len(num_outputs) if branch_points is None else [
        [k] for k in branch_points]
    self.gates = nn.ModuleList(nn.ModuleDict({str(k): Gate(chans[k]) for k in t_ks})
                               for t_ks in ks)
    self.branch_points = branch_points
    if branch_points is not None:
      self.tails = nn.ModuleList(SegNet(c, width) for c in num_outputs)

  def shared_features(self, x, depth: int):
    """f_0..f_depth, the pooling indices and pre-pool sizes."""
    x, indices, sizes = _encode(self.down, x)
    feats = [x]
    for j in range(depth):
      level = 4 - j
      x = F.max_unpool2d(x, indices[level], 2, 2, output_size=sizes[level])
      x = self.trunk[j](x)
      feats.append(x)
    return feats, indices, sizes

  def forward(self, x):
    """Fixed-branch student: one raw output per task."""
    feats, indices, sizes = self.shared_features(x, max(self.branch_points))
    outs = []
    for t, k in enumerate(self.branch_points):
      g = self.gates[t][str(k)](feats[k])
      outs.append(self.tails[t].decode(g, indices, sizes, start=k))
    return outs


def projection_loss(outputs, targets):
  """KL(softmax(teacher) || softmax(student)) per pixel + |depth - depth_teacher|, pixel means."""
  seg, depth = outputs
  t_seg, t_depth = targets
  n_pix = seg.shape[0] * seg.shape[2] * seg.shape[3]
  kl = F.kl_div(F.log_softmax(seg, 1), F.log_softmax(t_seg, 1), reduction="sum",
                log_target=True) / n_pix
  return kl + (depth - t_depth).abs().mean()


def make_adam(params) -> torch.optim.Optimizer:
  return torch.optim.Adam(params, lr=1e-4, weight_decay=1e-4)


def teacher_targets(teachers, images):
  with torch.no_grad():
    return [t(images) for t in teachers]


def finetune_step(student: Student, teachers, opt, images):
  targets = teacher_targets(teachers, images)
  opt.zero_grad(set_to_none=True)
  loss = projection_loss(student(images), targets)
  loss.backward()
  opt.step()
  return loss.detach()


def block_step(student: Student, teachers, opt, images, ks):
  """Block-wise step at branch points ``ks`` (one per task), teachers' tails frozen."""
  targets = teacher_targets(teachers, images)
  opt.zero_grad(set_to_none=True)
  feats, indices, sizes = student.shared_features(images, max(ks))
  outs = []
  for t, k in enumerate(ks):
    g = student.gates[t][str(k)](feats[k])
    outs.append(teachers[t].decode(g, indices, sizes, start=k))
  loss = projection_loss(outs, targets)
  loss.backward()
  opt.step()
  return loss.detach()


def teacher_train_step(model: SegNet, opt, images, labels):
  opt.zero_grad(set_to_none=True)
  loss = F.cross_entropy(model(images), labels, ignore_index=255)
  loss.backward()
  opt.step()
  return loss.detach()


def teacher_pass(model: SegNet, images, labels, input_grad: bool):
  """A training-mode forward pass and loss, and with ``input_grad`` the gradient with
  respect to the images only (``model``'s parameters must not require gradients)."""
  if not input_grad:
    with torch.no_grad():
      return F.cross_entropy(model(images), labels, ignore_index=255)
  images = images.detach().requires_grad_(True)
  loss = F.cross_entropy(model(images), labels, ignore_index=255)
  (grad,) = torch.autograd.grad(loss, images)
  return grad


def frozen(module: nn.Module) -> nn.Module:
  """Eval mode (BN running statistics) and no parameter gradients: a teacher."""
  module.eval()
  for p in module.parameters():
    p.requires_grad_(False)
  return module
