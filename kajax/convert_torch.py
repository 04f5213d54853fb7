"""Converts PyTorch SegNet checkpoints into kajax teacher directories.

Two PyTorch layouts of the same network (docs/method.md §1) are recognised from their keys:

* ``kamalengine`` (zju-vipa/KamalEngine): ``down1.layers.0.0.weight`` is a conv and
  ``down1.layers.0.1.*`` its BatchNorm; ``up1`` has no BatchNorm and a raw last conv
  (kajax head ``'conv'``). 172 keys for vgg16 with 13 classes.
* ``semseg`` (pytorch-semseg): ``down1.conv1.cbr_unit.0.weight`` is a conv and
  ``down1.conv1.cbr_unit.1.*`` its BatchNorm (convs numbered from 1); the last conv of ``up1``
  has BatchNorm and ReLU too (kajax head ``'conv_bn_relu'``).

The SegNet preset (vgg11/13/16/19) comes from the number of convs per encoder block and the
width multiplier from down1's channels. Every problem (missing, unexpected or misshapen keys)
is collected and reported at once in a :class:`ConversionError`.

CLI (``--num_outputs`` is read from the checkpoint's head when left out)::

  python -m kajax.convert_torch --checkpoint=segnet.pth --task=seg --output_dir=teachers/seg
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from absl import flags

from kajax import cli, segnet, teacher_files

LAYOUT_HEADS = {"kamalengine": "conv", "semseg": "conv_bn_relu"}
_WRAPPER_KEYS = ("model_state", "state_dict", "model")
_KAMAL_CONV = re.compile(r"^(down|up)(\d)\.layers\.(\d+)\.0\.weight$")
_SEMSEG_CONV = re.compile(r"^(down|up)(\d)\.conv(\d+)\.cbr_unit\.0\.weight$")
# Flax leaf name -> PyTorch parameter/buffer name.
_CONV_LEAVES = {"kernel": "weight", "bias": "bias"}
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
# torchvision vgg16_bn ``features`` indices of the 13 convs; each BN follows at index + 1.
VGG16_BN_CONV_INDICES = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)


class ConversionError(Exception):
  """A checkpoint cannot be converted; ``problems`` lists every reason found."""

  def __init__(self, problems: list[str], source: str | None = None):
    self.problems = list(problems)
    self.source = source
    where = f" {source}" if source else ""
    super().__init__(f"Cannot convert the checkpoint{where} ({len(self.problems)} "
                     "problem(s)):\n  " + "\n  ".join(self.problems))


def _to_numpy(value: Any) -> np.ndarray:
  """Torch tensor or array-like -> NumPy (bfloat16/float16 widened to float32)."""
  if hasattr(value, "detach"):  # A torch.Tensor; avoids importing torch here.
    value = value.detach().cpu()
    if value.dtype.is_floating_point and value.element_size() < 4:
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _unwrap(obj: Any) -> Any:
  """Digs the state dict out of training checkpoints ({'model_state': sd, 'epoch': ...})."""
  for _ in range(3):  # Nested wrappers are rare; a bound keeps this obviously finite.
    if not isinstance(obj, Mapping):
      return obj
    for key in _WRAPPER_KEYS:
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
    else:
      return obj
  return obj


def _clean_state_dict(obj: Any, source: str) -> dict[str, np.ndarray]:
  obj = _unwrap(obj)
  if not isinstance(obj, Mapping):
    raise ConversionError([f"expected a state dict (a mapping of names to tensors), found "
                           f"{type(obj).__name__}"], source)
  sd, problems = {}, []
  for key, value in obj.items():
    # DataParallel / DistributedDataParallel prefix every key with 'module.'.
    name = key[len("module."):] if key.startswith("module.") else key
    if not (hasattr(value, "detach") or isinstance(value, np.ndarray)):
      problems.append(f"key {key!r} holds a {type(value).__name__}, not a tensor")
      continue
    sd[name] = _to_numpy(value)
  if problems:
    raise ConversionError(problems, source)
  return sd


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint (any torch.save file) or a ``.npz`` of named arrays.

  Torch files are read with ``weights_only=True``, so no pickled code is executed. Training
  checkpoints wrapped as ``{'model_state'|'state_dict'|'model': sd, ...}`` are unwrapped and
  DataParallel ``module.`` prefixes are removed.

  Raises:
    ConversionError: naming the file, if it is missing, unreadable or not a state dict.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConversionError([f"file {path} does not exist"], path)
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        return _clean_state_dict({k: data[k] for k in data.files}, path)
    except ConversionError:
      raise
    except Exception as e:  # zipfile/pickle/OS errors all mean the same thing to a user.
      raise ConversionError([f"cannot read {path} as .npz: {type(e).__name__}: {e}"],
                            path) from e
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"Reading {path} needs PyTorch, which is not installed: run "
                      "pip install -e '.[torch]' (or convert the file to .npz elsewhere)."
                      ) from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ConversionError([
        f"cannot read {path} with torch.load(weights_only=True): {type(e).__name__}: {e}. "
        "If the file is truncated, download it again; if it pickles custom objects, "
        "re-save only its state_dict()."], path) from e
  return _clean_state_dict(obj, path)


def _count_convs(sd: Mapping[str, Any], pattern: re.Pattern, side: str) -> tuple[int, ...]:
  counts = [set() for _ in range(5)]
  for key in sd:
    m = pattern.match(key)
    if m and m.group(1) == side and 1 <= int(m.group(2)) <= 5:
      counts[int(m.group(2)) - 1].add(int(m.group(3)))
  return tuple(len(c) for c in counts)


def detect_layout(sd: Mapping[str, Any]) -> tuple[str, str, str]:
  """Recognises a SegNet state dict.

  Returns:
    (layout, head, arch): layout 'kamalengine' or 'semseg', the kajax head variant, and the
    SegNet preset (a key of ``kajax.segnet.ARCH_CONVS``) from the encoder's conv counts.

  Raises:
    ConversionError: if the layout or the preset cannot be recognised.
  """
  kamal = any(_KAMAL_CONV.match(k) for k in sd)
  semseg = any(_SEMSEG_CONV.match(k) for k in sd)
  if kamal == semseg:
    sample = ", ".join(sorted(sd)[:6]) or "(no keys)"
    what = "both" if kamal else "neither"
    raise ConversionError([
        f"unknown layout: the keys match {what} of the SegNet layouts known to kajax "
        "(KamalEngine 'down1.layers.0.0.weight', pytorch-semseg "
        f"'down1.conv1.cbr_unit.0.weight'); first keys: {sample}"])
  layout = "kamalengine" if kamal else "semseg"
  counts = _count_convs(sd, _KAMAL_CONV if kamal else _SEMSEG_CONV, "down")
  for arch, convs in segnet.ARCH_CONVS.items():
    if convs == counts:
      return layout, LAYOUT_HEADS[layout], arch
  raise ConversionError([f"unknown SegNet preset: down1..down5 have {counts} convs; known "
                         f"presets: {segnet.ARCH_CONVS}"])


def detect_width_multiplier(sd: Mapping[str, Any], layout: str) -> float:
  """down1's first conv has 64 * width_multiplier output channels."""
  key = "down1.layers.0.0.weight" if layout == "kamalengine" else "down1.conv1.cbr_unit.0.weight"
  if key not in sd or np.ndim(sd[key]) != 4:
    raise ConversionError([f"missing key {key} (or it is not a 4-D conv weight)"])
  return np.shape(sd[key])[0] / segnet.BASE_WIDTHS[0]


def _head_bias_key(layout: str, arch: str) -> str:
  """PyTorch name of the bias of the last conv of ``up1``: its length is the output count."""
  return _torch_name(layout, "up1", segnet.convs_per_block(arch)[0] - 1, "conv", "bias")


def detect_num_outputs(sd: Mapping[str, Any]) -> int:
  """Output channels of the checkpoint's head (classes / 1 for depth / 3 for normals)."""
  layout, _, arch = detect_layout(sd)
  key = _head_bias_key(layout, arch)
  if np.ndim(sd.get(key)) != 1:
    raise ConversionError([f"missing key {key} (the head's bias, which gives the number of "
                           "outputs); pass --num_outputs to convert anyway"])
  return int(np.shape(sd[key])[0])


def _torch_name(layout: str, block: str, layer: int, module: str, leaf: str) -> str:
  sub = 0 if module == "conv" else 1  # Sequential(conv, bn, relu)
  torch_leaf = (_CONV_LEAVES if module == "conv" else _BN_LEAVES)[leaf]
  if layout == "kamalengine":
    return f"{block}.layers.{layer}.{sub}.{torch_leaf}"
  return f"{block}.conv{layer + 1}.cbr_unit.{sub}.{torch_leaf}"


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  # Flax conv kernels are HWIO, PyTorch's OIHW.
  if len(flax_shape) == 4:
    return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
  return tuple(flax_shape)


def _fill(expected: Mapping[str, Any], sd: Mapping[str, np.ndarray], name_of,
          used: set[str], problems: list[str], path: tuple[str, ...] = ()) -> dict:
  """Builds the Flax tree shaped like ``expected`` from ``sd``; records problems."""
  out = {}
  for key, value in expected.items():
    if isinstance(value, Mapping):
      out[key] = _fill(value, sd, name_of, used, problems, path + (key,))
      continue
    name = name_of(path + (key,))
    want = _torch_shape(tuple(value.shape))
    used.add(name)
    if name not in sd:
      problems.append(f"missing key {name} (expected shape {want})")
      continue
    array = np.asarray(sd[name])
    if tuple(array.shape) != want:
      problems.append(f"shape mismatch at {name}: expected {want}, found {tuple(array.shape)}")
      continue
    out[key] = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
  return out


def _convert(expected: Mapping[str, Any], sd: Mapping[str, np.ndarray], name_of,
             ignore: re.Pattern | None = None) -> dict[str, Any]:
  problems, used = [], set()
  variables = {col: _fill(expected[col], sd, name_of, used, problems)
               for col in ("params", "batch_stats")}
  for key in sorted(sd):
    if key in used or key.endswith(".num_batches_tracked"):
      continue
    if ignore is None or not ignore.match(key):
      problems.append(f"unexpected key {key} (shape {tuple(np.shape(sd[key]))})")
  if problems:
    raise ConversionError(sorted(problems))  # Grouped: missing, shape mismatch, unexpected.
  return variables


def convert_state_dict(sd: Mapping[str, Any], num_outputs: int, arch: str | None = None,
                       width_multiplier: float | None = None) -> dict[str, Any]:
  """Maps a PyTorch SegNet state dict onto ``SegNet(...).init(...)``'s variables.

  Args:
    sd: names -> arrays (or tensors), already unwrapped (see :func:`load_torch_checkpoint`).
    num_outputs: output channels of the last conv (classes / 1 for depth / 3 for normals).
    arch: SegNet preset; detected from the keys when None.
    width_multiplier: detected from down1's channels when None.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` nested dicts of NumPy arrays (dtype kept).

  Raises:
    ConversionError: listing every missing key, unexpected key and shape mismatch.
  """
  layout, head, detected_arch = detect_layout(sd)
  arch = arch or detected_arch
  if width_multiplier is None:
    width_multiplier = detect_width_multiplier(sd, layout)
  module = segnet.SegNet(num_outputs, arch, width_multiplier, head)
  expected = teacher_files.expected_shapes(module)

  def name_of(path):  # ('down1', 'layer0', 'conv', 'kernel') -> torch key
    block, layer, mod, leaf = path
    return _torch_name(layout, block, int(layer[len("layer"):]), mod, leaf)

  sd = {k: _to_numpy(v) for k, v in sd.items()}
  try:
    return _convert(expected, sd, name_of)
  except ConversionError as e:
    # The most likely user error gets a direct hint before the list of shape mismatches.
    head_key = _head_bias_key(layout, arch)
    found = np.shape(sd[head_key])[0] if np.ndim(sd.get(head_key)) == 1 else None
    hint = ([f"the checkpoint has {found} outputs ({head_key}) but num_outputs={num_outputs}; "
             f"pass --num_outputs={found} (or leave it out: it is read from the head)"]
            if found is not None and found != num_outputs else [])
    raise ConversionError(hint + e.problems) from None


def _build(path: str | os.PathLike, num_outputs: int | None
           ) -> tuple[segnet.SegNet, dict[str, Any], str]:
  sd = load_torch_checkpoint(path)
  try:
    layout, head, arch = detect_layout(sd)
    if num_outputs is None:
      num_outputs = detect_num_outputs(sd)
    width = detect_width_multiplier(sd, layout)
    variables = convert_state_dict(sd, num_outputs, arch, width)
  except ConversionError as e:
    raise ConversionError(e.problems, os.fspath(path)) from None
  # Teachers are float32 SegNets whatever precision the checkpoint was saved in.
  variables = jax.tree.map(lambda a: a.astype(np.float32), variables)
  return segnet.SegNet(num_outputs, arch, width, head), variables, layout


def build_teacher(path: str | os.PathLike, num_outputs: int | None = None
                  ) -> tuple[segnet.SegNet, dict[str, Any]]:
  """Loads and converts a checkpoint file into (SegNet module, float32 variables).

  The module carries the detected ``arch``, ``head`` and ``width_multiplier``, and
  ``num_outputs`` (read from the head when None; checked against it otherwise).

  Raises:
    ConversionError: naming the file and listing every problem.
  """
  module, variables, _ = _build(path, num_outputs)
  return module, variables


def convert_vgg16_bn_imagenet(sd: Mapping[str, Any]) -> dict[str, Any]:
  """torchvision ``vgg16_bn`` weights -> the SegNet encoder (down1..down5) variables.

  ``features.N`` is a conv for N in VGG16_BN_CONV_INDICES and ``features.N+1`` its BN; the
  ``classifier.*`` keys are ignored. Used to start teacher training from ImageNet.

  Returns:
    ``{'params': {'down1': ..., ..., 'down5': ...}, 'batch_stats': {...}}`` (NumPy).
  """
  sd = {(k[len("module."):] if k.startswith("module.") else k): _to_numpy(v)
        for k, v in sd.items()}
  module = segnet.SegNet(1, "segnet_vgg16_bn", 1.0, "conv")
  full = teacher_files.expected_shapes(module)
  expected = {col: {b: full[col][b] for b in segnet.ENCODER_BLOCKS}
              for col in ("params", "batch_stats")}
  first_conv = np.cumsum((0,) + segnet.ARCH_CONVS["segnet_vgg16_bn"])

  def name_of(path):
    block, layer, mod, leaf = path
    conv = first_conv[segnet.ENCODER_BLOCKS.index(block)] + int(layer[len("layer"):])
    index = VGG16_BN_CONV_INDICES[conv] + (0 if mod == "conv" else 1)
    return f"features.{index}.{(_CONV_LEAVES if mod == 'conv' else _BN_LEAVES)[leaf]}"

  try:
    return _convert(expected, sd, name_of, ignore=re.compile(r"^classifier\."))
  except ConversionError as e:
    raise ConversionError(["(torchvision vgg16_bn layout) " + p for p in e.problems]) from None


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  """Defines this CLI's flags on ``flag_values``."""
  holders = {
      "checkpoint": flags.DEFINE_string("checkpoint", None, ".pth/.pt/.pkl written by "
                                        "torch.save (needs torch), or .npz of named arrays.",
                                        flag_values=flag_values),
      "task": flags.DEFINE_enum("task", None, list(teacher_files.TASKS), "What the teacher "
                                "predicts.", flag_values=flag_values),
      "output_dir": flags.DEFINE_string("output_dir", None, "Teacher directory to create "
                                        "(relative to the current directory).",
                                        flag_values=flag_values),
      "num_outputs": flags.DEFINE_integer("num_outputs", None, "Output channels (classes for "
                                          "seg, 1 for depth, 3 for normals); default: read "
                                          "from the checkpoint's head, checked when given.",
                                          lower_bound=1, flag_values=flag_values),
      "overwrite": flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty "
                                     "--output_dir.", flag_values=flag_values),
  }
  flags.mark_flags_as_required(["checkpoint", "task", "output_dir"], flag_values=flag_values)
  return holders


def run(args: Any) -> None:
  """Converts ``args.checkpoint`` into the teacher directory ``args.output_dir``.

  Raises:
    ConversionError: listing every problem of the checkpoint (nothing is written).
    ImportError: a .pth file and no torch installed.
    FileExistsError: ``output_dir`` is not empty and ``overwrite`` is False.
  """
  out = os.path.abspath(os.path.expanduser(args.output_dir))
  if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
    raise FileExistsError(f"--output_dir {out} exists and is not empty; pass --overwrite to "
                          "replace it.")
  module, variables, layout = _build(args.checkpoint, args.num_outputs)
  info = teacher_files.TeacherInfo(
      task=args.task, num_outputs=module.num_outputs, arch=module.arch, head=module.head,
      width_multiplier=float(module.width_multiplier),
      params=segnet.count_params(variables["params"]),
      source=os.path.abspath(args.checkpoint), source_sha256=_sha256(args.checkpoint))
  teacher_files.save_teacher(out, variables, info, overwrite=args.overwrite)
  print(f"Converted {args.checkpoint}\n  layout: {layout}\n  arch: {info.arch}\n"
        f"  head: {info.head}\n  width multiplier: {info.width_multiplier}\n"
        f"  task: {info.task} ({info.num_outputs} outputs)\n  params: {info.params:,}\n"
        f"  output dir: {out}")


if __name__ == "__main__":
  cli.run(define_flags, run, cli.USER_ERRORS + (ConversionError,))
