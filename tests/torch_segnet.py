"""A PyTorch SegNet used only as the reference in tests (never imported by kajax).

Written from the architecture description in docs/method.md §1, independently of
``kajax.segnet``: VGG-BN encoder blocks down1..down5 of 3x3 conv(+bias)+BN+ReLU layers, each
ending in ``MaxPool2d(2, 2, return_indices=True)``; decoder blocks up5..up1 that
``MaxUnpool2d(2, 2)`` to the pre-pool size and mirror the convs, the last conv of each block
changing the channel count. Two state-dict layouts of the same network:

* 'kamalengine': ``block.layers[i]`` = Sequential(conv, bn, relu); up1 has no BN and its last
  conv no ReLU (raw outputs).
* 'semseg': ``block.conv{i+1}.cbr_unit`` = Sequential(conv, bn, relu) everywhere, the last
  conv of up1 included.
"""

import torch
from torch import nn

# Convs per encoder block; the decoder block at the same level has as many (VGG configs).
TORCH_ARCH_CONVS = {
    "segnet_vgg11_bn": (1, 1, 2, 2, 2),
    "segnet_vgg13_bn": (2, 2, 2, 2, 2),
    "segnet_vgg16_bn": (2, 2, 3, 3, 3),
    "segnet_vgg19_bn": (2, 2, 4, 4, 4),
}
LAYOUTS = ("kamalengine", "semseg")


def _widths(width_multiplier):
  return [max(1, int(round(w * width_multiplier))) for w in (64, 128, 256, 512, 512)]


class _CBR(nn.Module):
  """pytorch-semseg style wrapper: the Sequential lives in ``cbr_unit``."""

  def __init__(self, unit):
    super().__init__()
    self.cbr_unit = unit

  def forward(self, x):
    return self.cbr_unit(x)


def _unit(cin, cout, bn, relu):
  mods = [nn.Conv2d(cin, cout, 3, padding=1, bias=True)]
  if bn:
    mods.append(nn.BatchNorm2d(cout))
  if relu:
    mods.append(nn.ReLU())
  return nn.Sequential(*mods)


class _Block(nn.Module):
  """A list of conv units named per layout; encoder blocks pool, decoder blocks unpool."""

  def __init__(self, channels, layout, down, plain_last=False):
    super().__init__()
    units = []
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
      last = i == len(channels) - 2
      units.append(_unit(cin, cout, bn=not plain_last, relu=not (plain_last and last)))
    self.layout = layout
    if layout == "kamalengine":
      self.layers = nn.Sequential(*units)
    else:
      for i, u in enumerate(units):
        setattr(self, f"conv{i + 1}", _CBR(u))
      self.num_units = len(units)
    self.down = down
    if down:
      self.pool = nn.MaxPool2d(2, 2, return_indices=True)
    else:
      self.unpool = nn.MaxUnpool2d(2, 2)

  def convs(self, x):
    if self.layout == "kamalengine":
      return self.layers(x)
    for i in range(self.num_units):
      x = getattr(self, f"conv{i + 1}")(x)
    return x

  def forward(self, x, indices=None, size=None):
    if self.down:
      x = self.convs(x)
      size = x.shape[-2:]
      x, idx = self.pool(x)
      return x, idx, size
    x = self.unpool(x, indices, output_size=size)
    return self.convs(x)


class TorchSegNet(nn.Module):
  """Reference SegNet; ``forward(x_nchw)`` returns (outputs, [pool indices of down1..5])."""

  def __init__(self, num_outputs, arch="segnet_vgg16_bn", width_multiplier=1.0,
               layout="kamalengine"):
    super().__init__()
    if layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}")
    convs = TORCH_ARCH_CONVS[arch]
    widths = _widths(width_multiplier)
    cin = 3
    for level in range(5):
      chans = [cin] + [widths[level]] * convs[level]
      setattr(self, f"down{level + 1}", _Block(chans, layout, down=True))
      cin = widths[level]
    for level in reversed(range(5)):
      out = num_outputs if level == 0 else widths[level - 1]
      chans = [widths[level]] * convs[level] + [out]
      plain = level == 0 and layout == "kamalengine"
      setattr(self, f"up{level + 1}", _Block(chans, layout, down=False, plain_last=plain))

  def forward(self, x):
    indices, sizes = [], []
    for level in range(5):
      x, idx, size = getattr(self, f"down{level + 1}")(x)
      indices.append(idx)
      sizes.append(size)
    for level in reversed(range(5)):
      x = getattr(self, f"up{level + 1}")(x, indices[level], sizes[level])
    return x, indices


def randomize_batchnorm(model, generator):
  """Random gamma/beta/running stats so a conversion that mixes them up is caught."""
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        n = m.num_features
        dtype = m.weight.dtype
        m.weight.copy_(torch.rand(n, generator=generator, dtype=dtype) + 0.5)
        m.bias.copy_(torch.randn(n, generator=generator, dtype=dtype) * 0.2)
        m.running_mean.copy_(torch.randn(n, generator=generator, dtype=dtype) * 0.2)
        m.running_var.copy_(torch.rand(n, generator=generator, dtype=dtype) + 0.5)
        m.num_batches_tracked.fill_(7)
  return model


def trainable_params(model):
  return sum(p.numel() for p in model.parameters() if p.requires_grad)
