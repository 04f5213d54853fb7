"""Tests for kajax.segnet against the paper's parameter counts and PyTorch's pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import segnet

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")
torch.set_num_threads(1)
from tests import torch_segnet  # noqa: E402  (after the torch import check)


def _flax_params(num_outputs, arch="segnet_vgg16_bn", width=1.0, head="conv"):
  module = segnet.SegNet(num_outputs, arch, width, head)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  return shapes


@pytest.mark.parametrize("num_outputs,expected", [(13, 29_450_381), (1, 29_443_457)])
def test_vgg16_param_counts_match_design_and_torch(num_outputs, expected):
  # docs/method.md §1: 29,450,381 / 29,443,457 trainable parameters for C = 13 / 1.
  shapes = _flax_params(num_outputs)
  assert segnet.count_params(shapes["params"]) == expected
  torch_model = torch_segnet.TorchSegNet(num_outputs, layout="kamalengine")
  assert torch_segnet.trainable_params(torch_model) == expected


@pytest.mark.parametrize("arch", sorted(torch_segnet.TORCH_ARCH_CONVS))
@pytest.mark.parametrize("layout,head", [("kamalengine", "conv"), ("semseg", "conv_bn_relu")])
def test_param_counts_match_torch_for_every_preset_and_head(arch, layout, head):
  shapes = _flax_params(5, arch, 0.25, head)
  torch_model = torch_segnet.TorchSegNet(5, arch, 0.25, layout)
  assert segnet.count_params(shapes["params"]) == torch_segnet.trainable_params(torch_model)
  # Running statistics: BN buffers of the torch model (mean + var per BN channel).
  buffers = sum(b.numel() for n, b in torch_model.named_buffers()
                if n.endswith(("running_mean", "running_var")))
  assert segnet.count_params(shapes["batch_stats"]) == buffers


# Convolutions per block of VGG configurations A, B, D, E (Simonyan & Zisserman 2015, Table 1).
@pytest.mark.parametrize("arch,convs", [
    ("segnet_vgg11_bn", (1, 1, 2, 2, 2)), ("segnet_vgg13_bn", (2, 2, 2, 2, 2)),
    ("segnet_vgg16_bn", (2, 2, 3, 3, 3)), ("segnet_vgg19_bn", (2, 2, 4, 4, 4))])
def test_presets_conv_counts(arch, convs):
  assert segnet.convs_per_block(arch) == convs
  params = _flax_params(3, arch, 0.125)["params"]
  for level in range(5):
    assert len(params[f"down{level + 1}"]) == convs[level]
    assert len(params[f"up{level + 1}"]) == convs[level]


def test_unknown_arch_is_rejected_with_its_name():
  with pytest.raises(ValueError, match="segnet_vgg17_bn"):
    segnet.convs_per_block("segnet_vgg17_bn")


def _tie_heavy(shape, seed):
  """Integer values in {0,1,2} (NHWC): most 2x2 windows contain a tied maximum."""
  return np.random.RandomState(seed).randint(0, 3, size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 8, 6, 2), (3, 5, 5, 4), (1, 2, 3, 1)])
def test_pooling_matches_torch_with_ties_and_odd_sizes(shape):
  x = _tie_heavy(shape, seed=sum(shape))
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2))
  pooled_t, idx_t = torch.nn.functional.max_pool2d(x_t, 2, 2, return_indices=True)
  windows = x[:, :shape[1] // 2 * 2, :shape[2] // 2 * 2].reshape(
      shape[0], shape[1] // 2, 2, shape[2] // 2, 2, shape[3])
  window_max = windows.max(axis=(2, 4), keepdims=True)
  assert ((windows == window_max).sum(axis=(2, 4)) > 1).any(), "no ties exercised"

  pooled, indices = segnet.max_pool_with_indices(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(pooled), pooled_t.numpy().transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(np.asarray(indices.flat()), idx_t.numpy().transpose(0, 2, 3, 1))

  # Unpool arbitrary values (not the pooled ones) so a wrong position cannot hide.
  values = np.random.RandomState(1).randn(*pooled.shape).astype(np.float32)
  unpooled_t = torch.nn.functional.max_unpool2d(
      torch.from_numpy(values.transpose(0, 3, 1, 2)), idx_t, 2, 2, output_size=shape[1:3])
  unpooled = segnet.max_unpool(jnp.asarray(values), indices)
  assert unpooled.shape == shape
  np.testing.assert_array_equal(np.asarray(unpooled), unpooled_t.numpy().transpose(0, 2, 3, 1))


def test_pooling_after_relu_ties_at_zero():
  # After ReLU whole windows are zero: torch picks the first position, so must we.
  x = np.maximum(np.random.RandomState(3).randn(2, 11, 13, 4), 0).astype(np.float32)
  x[:, :4, :4] = 0.0
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2))
  _, idx_t = torch.nn.functional.max_pool2d(x_t, 2, 2, return_indices=True)
  _, indices = segnet.max_pool_with_indices(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(indices.flat()), idx_t.numpy().transpose(0, 2, 3, 1))
  assert (np.asarray(indices.argmax)[:, :2, :2] == 0).all()


def test_pooling_too_small_input_is_a_clear_error():
  with pytest.raises(ValueError, match="too small"):
    segnet.max_pool_with_indices(jnp.zeros((1, 1, 4, 1)))


@pytest.mark.parametrize("head_init, outputs, expected_std", [
    # He from the fan-out: sqrt(2 / (3 * 3 * outputs)).
    ("he_fan_out", 1, np.sqrt(2 / 9)),
    ("he_fan_out", 13, np.sqrt(2 / 117)),
    # Variance 1 / fan-in: the head's input has 64 / 8 = 8 channels -> sqrt(1 / 72).
    ("fan_in", 1, np.sqrt(1 / 72)),
])
def test_head_init_sets_the_last_convs_scale_only(head_init, outputs, expected_std):
  model = segnet.SegNet(outputs, width_multiplier=1 / 8, head_init=head_init)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  head = np.asarray(params["up1"]["layer1"]["conv"]["kernel"])
  assert head.shape == (3, 3, 8, outputs)
  assert np.std(head) == pytest.approx(expected_std, rel=0.25)
  # Every other layer keeps He (fan-out), whatever the head's init: same seed, same weights.
  other = segnet.SegNet(outputs, width_multiplier=1 / 8).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  np.testing.assert_array_equal(params["up1"]["layer0"]["conv"]["kernel"],
                                other["up1"]["layer0"]["conv"]["kernel"])
  np.testing.assert_array_equal(params["down1"]["layer0"]["conv"]["kernel"],
                                other["down1"]["layer0"]["conv"]["kernel"])


def test_unknown_head_init_names_the_flag():
  with pytest.raises(ValueError, match=r"--config.model.head_init='zeros'"):
    segnet.SegNet(1, width_multiplier=1 / 8, head_init="zeros").init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_the_teacher_configs_head_init_reaches_the_network():
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
  import teacher_rooms_depth  # configs/ is not a package
  import teacher_rooms_seg
  from kajax import train_teacher
  assert train_teacher.build_model(teacher_rooms_seg.get_config("tiny")).head_init == "he_fan_out"
  config = teacher_rooms_depth.get_config("tiny")
  # The rooms depth teacher's default (config_blocks.rooms_teacher); others keep He fan-out.
  assert train_teacher.build_model(config).head_init == "fan_in"
  config.model.head_init = "he_fan_out"
  assert train_teacher.build_model(config).head_init == "he_fan_out"
