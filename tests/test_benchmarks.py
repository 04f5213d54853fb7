"""Tests for kajax.benchmarks: the FLOP counts, the PyTorch reference and the CLI.

The FLOP counts are checked against the kernel shapes of the Flax models themselves and
against XLA's cost analysis; the PyTorch reference against kajax's SegNet with the same
weights (so the side-by-side benchmark times the same computation).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import flops, segnet, student_model, student_spec, teacher_model
from kajax.benchmarks import flop_count
from tests import benchmark_cli, fakes


def _conv_flops_from_kernels(params, sizes):
  """2 * kh * kw * Cin * Cout * output pixels for every 3x3 kernel, pixels by block name."""
  total = 0
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    keys = [p.key for p in path]
    if keys[-1] == "kernel" and x.shape[:2] == (3, 3):
      block = next(k for k in keys if k[:2] in ("do", "up"))
      total += 2 * int(np.prod(x.shape)) * sizes[block]
  return total


def test_flop_counts_match_the_models_kernel_shapes():
  g = flop_count.Geometry(64, 96, 1 / 8)
  pixels = {f"down{i + 1}": np.prod(g.size(i)) for i in range(5)}
  pixels.update({f"up{i + 1}": np.prod(g.size(i)) for i in range(5)})
  teacher = segnet.SegNet(13, width_multiplier=1 / 8)
  shapes = jax.eval_shape(lambda: teacher.init(jax.random.key(0), jnp.zeros((1, 64, 96, 3))))
  assert flop_count.teacher_forward(g, 13) == _conv_flops_from_kernels(shapes["params"],
                                                                       pixels)
  spec = student_spec.StudentSpec(teacher_model.segnet_teachers(("seg", "depth"), (13, 1),
                                                                width_multiplier=1 / 8))
  student = student_model.Student(spec, (3, 1))
  shapes = jax.eval_shape(lambda: student.init(jax.random.key(0), jnp.zeros((1, 64, 96, 3))))
  gates = sum(2 * x.size for p, x in jax.tree_util.tree_leaves_with_path(shapes["params"])
              if "gate" in jax.tree_util.keystr(p))
  assert flop_count.student_forward(g, (3, 1), (13, 1)) == (
      _conv_flops_from_kernels(shapes["params"], pixels) + gates)


def test_flop_counts_agree_with_xla_cost_analysis():
  """XLA skips taps on the zero padding and adds elementwise work: within a few percent."""
  g = flop_count.Geometry(128, 160, 1 / 4)
  teacher = segnet.SegNet(13, width_multiplier=1 / 4)
  shapes = jax.eval_shape(lambda: teacher.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  xla = flops.gflops_per_image(teacher, shapes, (128, 160)) * 1e9
  assert abs(xla / flop_count.teacher_forward(g, 13) - 1) < 0.05


def test_training_flops_follow_forward_plus_two_gradients():
  g = flop_count.Geometry(240, 320)
  teachers = flop_count.teacher_forward(g, 13) + flop_count.teacher_forward(g, 1)
  student = flop_count.student_forward(g, (3, 1), (13, 1))
  assert flop_count.finetune_step(g, (3, 1), (13, 1)) == (
      teachers + 3 * student - 2 * 9 * 3 * 64 * 240 * 320)
  # Block-wise at k = (4, 4): the whole trunk trains, the two heads (up1) are frozen.
  blocks = flop_count.block_step(g, (4, 4), (13, 1))
  frozen = flop_count.tail(g, 4, 13) + flop_count.tail(g, 4, 1)
  trainable = flop_count.trunk(g, 4) + 2 * flop_count.gate(g, 4)
  assert blocks == teachers + 3 * trainable - 2 * 9 * 3 * 64 * 240 * 320 + 2 * frozen


def _copy_into_torch(torch, ref, variables):
  """Copies kajax SegNet variables into ``torch_reference.SegNet`` layer by layer (torch's
  modules run in the same order as kajax's layers)."""
  params, stats = variables["params"], variables["batch_stats"]
  layers = [(f"down{i + 1}", ref.down[i]) for i in range(5)]
  layers += [(f"up{i + 1}", ref.up[i]) for i in range(5)]
  for name, seq in layers:
    convs = [m for m in seq if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in seq if isinstance(m, torch.nn.BatchNorm2d)]
    for j, c in enumerate(convs):
      p = params[name][f"layer{j}"]
      c.weight.data = torch.from_numpy(np.asarray(p["conv"]["kernel"]).transpose(3, 2, 0, 1)
                                       .copy())
      c.bias.data = torch.from_numpy(np.asarray(p["conv"]["bias"]).copy())
      if bns:
        bns[j].weight.data = torch.from_numpy(np.asarray(p["bn"]["scale"]).copy())
        bns[j].bias.data = torch.from_numpy(np.asarray(p["bn"]["bias"]).copy())
        bns[j].running_mean.data = torch.from_numpy(
            np.asarray(stats[name][f"layer{j}"]["bn"]["mean"]).copy())
        bns[j].running_var.data = torch.from_numpy(
            np.asarray(stats[name][f"layer{j}"]["bn"]["var"]).copy())


def test_torch_reference_segnet_computes_kajax_segnet():
  torch = pytest.importorskip("torch")
  from kajax.benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  module, variables, _ = fakes.make_teacher("seg", 13, 0, width=1 / 16)
  ref = torch_reference.frozen(torch_reference.SegNet(13, 1 / 16))
  _copy_into_torch(torch, ref, variables)
  x = np.random.default_rng(0).standard_normal((2, 32, 48, 3)).astype(np.float32)
  want = np.asarray(module.apply(variables, x, train=False)[0])
  with torch.no_grad():
    got = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert sum(p.numel() for p in torch_reference.SegNet(13).parameters()) == 29_450_381


def test_split_phases_compute_the_same_input_gradient_without_weight_gradients():
  """'teacher_input_grad' in both frameworks is the gradient of the same training-mode loss
  with respect to the image; XLA's cost analysis of kajax's counts two passes of the
  network's FLOPs (forward and input gradients), not three: no weight gradient is computed."""
  torch = pytest.importorskip("torch")
  from kajax.benchmarks import step_runners, torch_reference  # pylint: disable=g-import-not-at-top
  flops_of = {}
  for phase in step_runners.SPLIT_PHASES:
    # Batch 8: one image per fake device of the test session.
    spec = step_runners.PhaseSpec("kajax", phase, 64, 96, 1 / 8, 8, (3, 1), 1, 0)
    step = step_runners.build_kajax_step(spec)
    cost = step.compiled.cost_analysis()
    # XLA counts one device's share of the data-parallel step.
    flops_of[phase] = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"] * (
        jax.device_count())
  image, variables, label = step.args
  g = flop_count.Geometry(64, 96, 1 / 8)
  forward = 8 * flop_count.teacher_forward(g, 13)  # per step of 8 images
  assert flops_of["teacher_forward"] == pytest.approx(forward, rel=0.08)
  assert flops_of["teacher_input_grad"] == pytest.approx(2 * forward, rel=0.08)
  want = np.asarray(step.compiled(*step.args))
  ref = torch_reference.SegNet(13, 1 / 8).train()
  _copy_into_torch(torch, ref, jax.device_get(variables))
  for p in ref.parameters():
    p.requires_grad_(False)
  got = torch_reference.teacher_pass(
      ref, torch.from_numpy(np.array(image)).permute(0, 3, 1, 2).contiguous(),
      torch.from_numpy(np.asarray(label, np.int64)), input_grad=True)
  got = got.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_pass_split_subtracts_the_cumulative_phases():
  from kajax.benchmarks import train_steps  # pylint: disable=g-import-not-at-top
  times = {"teacher_forward": (2.0, 3.0), "teacher_input_grad": (5.0, 7.0),
           "teacher_train": (10.0, 9.0)}  # (kajax, torch) seconds per step
  phases = {n: {"kajax": {"median_s": k}, "torch": {"median_s": t}}
            for n, (k, t) in times.items()}
  split = train_steps.pass_split(phases)
  assert split["kajax"] == {"forward_s": 2.0, "input_grad_s": 3.0,
                            "weight_grad_and_update_s": 5.0, "train_s": 10.0}
  assert split["torch"]["weight_grad_and_update_s"] == 2.0
  # kajax's forward and input gradients (5 s) plus PyTorch's weight part (2 s): 9 / 7.
  assert split["bound"] == pytest.approx(9 / 7)
  # 1.3x needs 9 / 1.3 - 5 = 1.923 s of weight gradients, 0.96 of PyTorch's 2 s.
  assert split["needed_for_1_3x"] == pytest.approx((9 / 1.3 - 5) / 2)
  del phases["teacher_forward"]["torch"]
  assert train_steps.pass_split(phases) is None


def test_benchmark_cli_tiny_run_writes_json(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "bench.json"
  stdout = benchmark_cli.run("train_steps", [
      "--resolution=32x64", "--width=0.0625", "--batch_size=2", "--steps=1", "--warmup=0",
      "--phases=teacher_inference,finetune", f"--json={out}"], cwd=tmp_path)
  assert "SUMMARY kajax/PyTorch images/s" in stdout
  result = json.loads(out.read_text())
  for phase in ("teacher_inference", "finetune"):
    r = result["phases"][phase]
    assert r["ratio"] == pytest.approx(r["kajax"]["images_per_s"] / r["torch"]["images_per_s"])
    assert r["kajax"]["peak_rss_gib"] > 0 and r["kajax"]["xla_gflops_per_step"] > 0
  sizing = result["sizing"]
  assert sizing["finetune_allreduce_bytes_per_step"] == 4 * sizing["student_params"]
  assert result["machine"]["matmul_gflops"]["peak"] > 0


def test_conv_gradients_benchmark_times_the_same_computations_in_both_frameworks():
  """Each JAX computation of ``conv_gradients`` equals its PyTorch counterpart (forward,
  input gradient, both weight gradients), so the table compares like with like; and the
  weight gradient equals an independent NumPy sum over pixels."""
  torch = pytest.importorskip("torch")
  from kajax.benchmarks import conv_gradients  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 5, 3), np.float32)
  kernel = rng.standard_normal((3, 3, 3, 4), np.float32)
  dy = rng.standard_normal((2, 6, 5, 4), np.float32)
  torch_fns = conv_gradients.torch_layer_functions(torch, x, kernel, dy)
  to_nhwc = {"forward": (0, 2, 3, 1), "input gradient": (0, 2, 3, 1),
             "weight gradient": (2, 3, 1, 0)}
  for name, fn in conv_gradients.jax_layer_functions().items():
    torch_name = "weight gradient" if name.startswith("weight") else name
    want = torch_fns[torch_name]().detach().numpy().transpose(to_nhwc[torch_name])
    np.testing.assert_allclose(np.asarray(fn(x, kernel, dy)), want, rtol=1e-4, atol=1e-4,
                               err_msg=name)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  by_hand = np.einsum("nhwc,nhwo->co", xp[:, 2:8, 0:5], dy)  # tap (i, j) = (2, 0)
  got = conv_gradients.jax_layer_functions()["weight gradient (kajax.conv)"](x, kernel, dy)
  np.testing.assert_allclose(np.asarray(got)[2, 0], by_hand, rtol=1e-4, atol=1e-4)
