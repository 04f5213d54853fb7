"""Tests for kajax.convert_torch: numerical parity with a PyTorch SegNet, and the CLI."""

import hashlib
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from kajax import convert_torch
from kajax import segnet
from kajax import teacher_files

torch = pytest.importorskip("torch", reason="converting .pth files needs torch")
torch.set_num_threads(1)
from tests import torch_segnet  # noqa: E402  (after the torch import check)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def x64():
  """float64 on both sides so the comparison tests the mapping, not rounding."""
  with jax.enable_x64(True):
    yield


def _torch_model(num_outputs, layout, width=0.125, arch="segnet_vgg16_bn", dtype=None,
                 seed=0):
  torch.manual_seed(seed)
  model = torch_segnet.TorchSegNet(num_outputs, arch, width, layout)
  if dtype is not None:
    model = model.to(dtype)
  torch_segnet.randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
  return model.eval()


def _torch_run(model, x_nhwc):
  """Outputs (NHWC), pool indices (NHWC) and the pre-pool maps of every encoder block."""
  prepool = []
  hooks = [getattr(model, f"down{i}").pool.register_forward_hook(
      lambda mod, inp, out: prepool.append(inp[0].numpy())) for i in range(1, 6)]
  with torch.no_grad():
    out, indices = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)).contiguous())
  for h in hooks:
    h.remove()
  return (out.numpy().transpose(0, 2, 3, 1),
          [i.numpy().transpose(0, 2, 3, 1) for i in indices], prepool)


def _flax_run(module, variables, x_nhwc):
  def fn(v, x):
    out, _ = module.apply(v, x)
    _, indices, _ = module.apply(v, x, method=module.encode)
    return out, [i.flat() for i in indices]
  out, flat = jax.jit(fn)(variables, x_nhwc)
  return np.asarray(out), [np.asarray(f) for f in flat]


def _rel_err(a, b):
  return np.abs(a - b).max() / np.abs(b).max()


def _count_tied_windows(prepool_nchw):
  h, w = prepool_nchw.shape[2] // 2 * 2, prepool_nchw.shape[3] // 2 * 2
  n, c = prepool_nchw.shape[:2]
  win = prepool_nchw[:, :, :h, :w].reshape(n, c, h // 2, 2, w // 2, 2)
  return int(((win == win.max(axis=(3, 5), keepdims=True)).sum(axis=(3, 5)) > 1).sum())


@pytest.mark.parametrize("layout,head", [("kamalengine", "conv"), ("semseg", "conv_bn_relu")])
@pytest.mark.parametrize("num_outputs", [13, 1])
def test_parity_with_torch_float64(x64, layout, head, num_outputs):
  model = _torch_model(num_outputs, layout, dtype=torch.float64)
  sd = model.state_dict()
  assert convert_torch.detect_layout(sd) == (layout, head, "segnet_vgg16_bn")
  variables = convert_torch.convert_state_dict(sd, num_outputs)
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
  module = segnet.SegNet(num_outputs, "segnet_vgg16_bn", 0.125, head)
  ties = 0
  # 120x160 pools to odd sizes (15x20 -> 7x10 -> 3x5): floors and zero-padded unpooling.
  for hw in [(96, 128), (120, 160)]:
    x = np.random.RandomState(hw[0]).randn(2, *hw, 3)
    want, want_idx, prepool = _torch_run(model, x)
    got, got_idx = _flax_run(module, variables, x)
    assert got.dtype == np.float64 and got.shape == want.shape
    assert _rel_err(got, want) < 1e-4
    for block, (g, w) in enumerate(zip(got_idx, want_idx)):
      np.testing.assert_array_equal(g, w, err_msg=f"pool indices of down{block + 1}")
    ties += sum(_count_tied_windows(p) for p in prepool)
  assert ties > 0, "no tied pooling windows were exercised"


def test_parity_full_width_vgg16(x64):
  model = _torch_model(13, "kamalengine", width=1.0, dtype=torch.float64)
  variables = convert_torch.convert_state_dict(model.state_dict(), 13)
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
  assert segnet.count_params(variables["params"]) == 29_450_381
  x = np.random.RandomState(0).randn(1, 64, 96, 3)
  want, want_idx, _ = _torch_run(model, x)
  got, got_idx = _flax_run(segnet.SegNet(13), variables, x)
  assert _rel_err(got, want) < 1e-4
  for g, w in zip(got_idx, want_idx):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("arch", ["segnet_vgg11_bn", "segnet_vgg19_bn"])
def test_detects_other_presets_and_width(arch):
  sd = _torch_model(3, "semseg", width=0.25, arch=arch).state_dict()
  assert convert_torch.detect_layout(sd) == ("semseg", "conv_bn_relu", arch)
  assert convert_torch.detect_width_multiplier(sd, "semseg") == 0.25


def test_kamalengine_key_count():
  # KamalEngine's vgg16 SegNet with 13 classes has 172 state-dict entries (issue spec).
  assert len(_torch_model(13, "kamalengine", width=1.0).state_dict()) == 172


def test_unknown_layout_and_all_problems_reported_at_once():
  with pytest.raises(convert_torch.ConversionError, match="unknown layout"):
    convert_torch.detect_layout({"encoder.0.weight": np.zeros((8, 3, 3, 3))})
  sd = {k: v.numpy() for k, v in _torch_model(13, "kamalengine").state_dict().items()}
  del sd["up2.layers.1.1.running_var"]
  sd["down3.layers.2.0.weight"] = np.zeros((32, 32, 5, 5), np.float32)
  sd["aux_head.weight"] = np.zeros((4,), np.float32)
  with pytest.raises(convert_torch.ConversionError) as e:
    convert_torch.convert_state_dict(sd, 13)
  assert len(e.value.problems) == 3
  msg = str(e.value)
  assert "missing key up2.layers.1.1.running_var" in msg
  assert "down3.layers.2.0.weight: expected (32, 32, 3, 3), found (32, 32, 5, 5)" in msg
  assert "unexpected key aux_head.weight" in msg


def test_wrong_num_outputs_gets_a_hint():
  sd = _torch_model(13, "kamalengine").state_dict()
  with pytest.raises(convert_torch.ConversionError) as e:
    convert_torch.convert_state_dict(sd, 1)
  assert "has 13 outputs (up1.layers.1.0.bias) but num_outputs=1" in e.value.problems[0]
  assert any("up1.layers.1.0.weight: expected (1, 8, 3, 3), found (13, 8, 3, 3)" in p
             for p in e.value.problems)


def _tree_equal(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (p, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


def _sha256(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _args(checkpoint, output_dir, task="seg", num_outputs=None, overwrite=False):
  """What ``python -m kajax.convert_torch`` passes to ``run`` after parsing its flags."""
  return types.SimpleNamespace(checkpoint=str(checkpoint), output_dir=str(output_dir),
                               task=task, num_outputs=num_outputs, overwrite=overwrite)


@pytest.mark.parametrize("layout,wrap,name", [
    ("kamalengine", "state_dict", "teacher.pth"),
    ("semseg", "model_state", "segnet_best_model.pkl")])
def test_cli_round_trip(tmp_path, capsys, layout, wrap, name):
  model = _torch_model(13, layout, seed=5)
  # DataParallel-style 'module.' prefixes inside a training checkpoint wrapper.
  sd = {"module." + k: v for k, v in model.state_dict().items()}
  ckpt = tmp_path / name
  torch.save({wrap: sd, "epoch": 3}, ckpt)
  out_dir = tmp_path / "teachers" / "seg"
  convert_torch.run(_args(ckpt, out_dir))  # --num_outputs left out: read from the head
  summary = capsys.readouterr().out
  assert layout in summary and "segnet_vgg16_bn" in summary and str(out_dir) in summary
  assert "13 outputs" in summary

  module, variables, info = teacher_files.load_teacher(out_dir)
  assert (info.task, info.num_outputs, info.arch) == ("seg", 13, "segnet_vgg16_bn")
  assert info.head == convert_torch.LAYOUT_HEADS[layout]
  assert info.width_multiplier == 0.125
  assert info.params == torch_segnet.trainable_params(model)
  assert info.source_sha256 == _sha256(ckpt)
  _tree_equal(variables, convert_torch.convert_state_dict(model.state_dict(), 13))

  x = np.random.RandomState(0).randn(1, 64, 96, 3).astype(np.float32)
  want, _, _ = _torch_run(model, x)
  got, _ = _flax_run(module, variables, x)
  assert _rel_err(got, want) < 1e-4
  # Converting again into the same directory needs --overwrite.
  with pytest.raises(FileExistsError, match="--overwrite"):
    convert_torch.run(_args(ckpt, out_dir, num_outputs=13))
  convert_torch.run(_args(ckpt, out_dir, num_outputs=13, overwrite=True))


def _leftovers(parent):
  return sorted(p for p in os.listdir(parent) if not p.endswith((".pth", ".npz")))


@pytest.mark.parametrize("defect", ["truncated", "shape", "missing", "num_outputs"])
def test_cli_failures_name_the_problem_and_leave_nothing(tmp_path, defect):
  sd = _torch_model(13, "kamalengine").state_dict()
  ckpt = tmp_path / "bad.pth"
  if defect == "shape":
    sd["up3.layers.0.0.weight"] = torch.zeros(32, 32, 3, 1)
  if defect == "missing":
    del sd["down4.layers.1.0.bias"]
  torch.save(sd, ckpt)
  if defect == "truncated":
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:len(data) // 2])
  out_dir = tmp_path / "out"
  with pytest.raises(convert_torch.ConversionError) as e:
    convert_torch.run(_args(ckpt, out_dir, num_outputs=1 if defect == "num_outputs" else 13))
  assert str(ckpt) in str(e.value)
  expected = {"truncated": "cannot read", "shape": "up3.layers.0.0.weight",
              "missing": "down4.layers.1.0.bias",
              "num_outputs": "has 13 outputs (up1.layers.1.0.bias) but num_outputs=1"}[defect]
  assert expected in str(e.value)
  assert not out_dir.exists()
  assert _leftovers(tmp_path) == []


def test_num_outputs_is_read_from_the_head():
  for layout, n in (("kamalengine", 13), ("semseg", 1), ("semseg", 3)):
    sd = {k: v.numpy() for k, v in _torch_model(n, layout).state_dict().items()}
    assert convert_torch.detect_num_outputs(sd) == n
  del sd["up1.conv2.cbr_unit.0.bias"]  # semseg vgg16: up1 has two convs
  with pytest.raises(convert_torch.ConversionError, match="pass --num_outputs"):
    convert_torch.detect_num_outputs(sd)


def _run_cli(args, cwd, block_torch=False):
  """``python -m kajax.convert_torch ARGS`` (torch made unimportable if asked)."""
  command = [sys.executable, "-m", "kajax.convert_torch", *args]
  if block_torch:  # As if torch were not installed: importing it raises ImportError.
    command = [sys.executable, "-c", "import sys, runpy; sys.modules['torch'] = None; "
               "runpy.run_module('kajax.convert_torch', run_name='__main__')", *args]
  return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_subprocess_errors_are_one_line(tmp_path):
  sd = {k: v.numpy() for k, v in _torch_model(1, "semseg").state_dict().items()}
  del sd["up1.conv2.cbr_unit.1.running_mean"]
  np.savez(tmp_path / "depth.npz", **sd)
  torch.save(_torch_model(1, "semseg").state_dict(), tmp_path / "depth.pth")
  # Relative paths, from the directory that holds the files.
  missing_key = _run_cli(["--checkpoint=depth.npz", "--task=depth",
                          "--output_dir=depth_teacher"], cwd=tmp_path)
  no_torch = _run_cli(["--checkpoint=depth.pth", "--task=depth", "--output_dir=t"],
                      cwd=tmp_path, block_torch=True)
  for proc in (missing_key, no_torch):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
  assert "missing key up1.conv2.cbr_unit.1.running_mean" in missing_key.stderr
  assert len(no_torch.stderr.strip().splitlines()) == 1
  assert "pip install -e '.[torch]'" in no_torch.stderr and "depth.pth" in no_torch.stderr
  assert _leftovers(tmp_path) == []


def test_npz_input_matches_torch_file(tmp_path):
  model = _torch_model(3, "semseg", seed=2)
  npz = tmp_path / "normals.npz"
  np.savez(npz, **{k: v.numpy() for k, v in model.state_dict().items()})
  module, variables = convert_torch.build_teacher(npz, 3)
  assert (module.arch, module.head, module.width_multiplier) == (
      "segnet_vgg16_bn", "conv_bn_relu", 0.125)
  pth = tmp_path / "normals.pth"
  torch.save(model.state_dict(), pth)
  _, from_pth = convert_torch.build_teacher(pth, 3)
  _tree_equal(variables, from_pth)
  kernel = variables["params"]["down2"]["layer1"]["conv"]["kernel"]
  np.testing.assert_array_equal(
      kernel, model.down2.conv2.cbr_unit[0].weight.detach().numpy().transpose(2, 3, 1, 0))


def test_missing_file_is_named(tmp_path):
  missing = tmp_path / "nope.pth"
  with pytest.raises(convert_torch.ConversionError, match="nope.pth"):
    convert_torch.load_torch_checkpoint(missing)


def _torch_vgg16_bn():
  """torchvision-style vgg16_bn built from torch.nn layers (config D with BatchNorm)."""
  cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"]
  layers, cin = [], 3
  for v in cfg:
    if v == "M":
      layers.append(torch.nn.MaxPool2d(2, 2))
    else:
      layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.BatchNorm2d(v),
                 torch.nn.ReLU()]
      cin = v
  model = torch.nn.Module()
  model.features = torch.nn.Sequential(*layers)
  model.classifier = torch.nn.Linear(8, 2)  # Stands in for the ignored classifier.
  return model


def test_vgg16_bn_imagenet_encoder(x64):
  torch.manual_seed(0)
  vgg = _torch_vgg16_bn().double()
  torch_segnet.randomize_batchnorm(vgg, torch.Generator().manual_seed(1))
  vgg.eval()
  sd = vgg.state_dict()
  conv_indices = [i for i, m in enumerate(vgg.features) if isinstance(m, torch.nn.Conv2d)]
  assert tuple(conv_indices) == convert_torch.VGG16_BN_CONV_INDICES
  encoder = convert_torch.convert_vgg16_bn_imagenet(sd)
  assert sorted(encoder["params"]) == list(segnet.ENCODER_BLOCKS)
  # The converted encoder must compute what torchvision's features do (pool outputs).
  x = np.random.RandomState(0).randn(1, 32, 64, 3)
  with torch.no_grad():
    want = vgg.features(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), encoder)
  module = segnet.SegNet(13)
  got, _, _ = jax.jit(lambda v, x: module.apply(v, x, method=module.encode))(variables, x)
  assert _rel_err(np.asarray(got), want) < 1e-4

  del sd["features.41.running_var"]
  sd["features.99.weight"] = torch.zeros(3)
  with pytest.raises(convert_torch.ConversionError) as e:
    convert_torch.convert_vgg16_bn_imagenet(sd)
  assert any("features.41.running_var" in p for p in e.value.problems)
  assert any("features.99.weight" in p for p in e.value.problems)
  assert not any("classifier" in p for p in e.value.problems)
