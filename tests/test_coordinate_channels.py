"""Tests for coordinate channels (``model.input_coords``, ``kajax.segnet.with_coordinate_channels``)
through every component that builds a network from a description: the SegNet, the teacher
directory (``teacher.json``), the teacher models, the student and the ImageNet start.

Expected values come from NumPy (the coordinate grids are built here with ``np.linspace``)
and from running a network *without* the option on an image that already carries the
channels: the option must be exactly that, and nothing else.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import segnet, teacher_files, teacher_model, train_teacher
from kajax.student_init import init_student_from_teachers, init_trunk_from_teachers
from kajax.student_model import Student
from kajax.student_spec import StudentSpec
from tests import fakes

WIDTH = 1 / 8
TOL = dict(rtol=1e-5, atol=1e-5)


def numpy_coordinates(image):
  """The image with row and column in -1..1 appended, by NumPy."""
  n, h, w, _ = image.shape
  rows = np.broadcast_to(np.linspace(-1, 1, h)[None, :, None, None], (n, h, w, 1))
  cols = np.broadcast_to(np.linspace(-1, 1, w)[None, None, :, None], (n, h, w, 1))
  return np.concatenate([image, rows, cols], axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def image():
  return np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype(np.float32)


def test_coordinate_channels_by_hand():
  x = np.random.default_rng(1).standard_normal((2, 3, 5, 3)).astype(np.float32)
  out = np.asarray(segnet.with_coordinate_channels(jnp.asarray(x)))
  assert out.shape == (2, 3, 5, 3 + segnet.COORD_CHANNELS)
  np.testing.assert_array_equal(out[..., :3], x)
  for b in range(2):
    for col in range(5):  # rows: top -1, middle 0, bottom +1, whatever the column
      np.testing.assert_allclose(out[b, :, col, 3], [-1.0, 0.0, 1.0], atol=1e-7)
    for row in range(3):
      np.testing.assert_allclose(out[b, row, :, 4], [-1.0, -0.5, 0.0, 0.5, 1.0], atol=1e-7)


def test_segnet_option_is_a_plain_segnet_on_the_augmented_image(image):
  with_coords = segnet.SegNet(1, width_multiplier=WIDTH, input_coords=True)
  variables = fakes.random_variables(with_coords, 0)
  assert variables["params"]["down1"]["layer0"]["conv"]["kernel"].shape == (3, 3, 5, 8)
  got, _ = with_coords.apply(variables, image, False)
  plain = segnet.SegNet(1, width_multiplier=WIDTH)  # infers 5 input channels
  expected, _ = plain.apply(variables, numpy_coordinates(image), False)
  np.testing.assert_allclose(got, expected, **TOL)
  # The channels matter: the same weights on the image with zeros there differ.
  zeros = np.concatenate([image, np.zeros(image.shape[:3] + (2,), np.float32)], axis=-1)
  assert np.abs(np.asarray(plain.apply(variables, zeros, False)[0]) - np.asarray(got)).max() > 1e-3


def _info(input_coords):
  return teacher_files.TeacherInfo(task="depth", num_outputs=1, arch="segnet_vgg16_bn",
                                   head="conv", width_multiplier=WIDTH,
                                   input_coords=input_coords, source="test")


def test_teacher_info_records_it_and_reads_older_files():
  info = _info(True)
  assert teacher_files.TeacherInfo.from_json(info.to_json()) == info
  older = json.loads(info.to_json())
  del older["input_coords"]  # a teacher.json written before the option
  assert teacher_files.TeacherInfo.from_json(json.dumps(older)).input_coords is False
  with pytest.raises(ValueError, match="input_coords='yes' must be true or false"):
    _info("yes")


def test_saved_teacher_loads_with_its_channels(tmp_path, image):
  module = segnet.SegNet(1, width_multiplier=WIDTH, input_coords=True)
  variables = fakes.random_variables(module, 3)
  teacher_files.save_teacher(tmp_path / "t", variables, _info(True))
  loaded, loaded_variables, info = teacher_files.load_teacher(tmp_path / "t")
  assert loaded.input_coords and info.input_coords
  np.testing.assert_allclose(loaded.apply(loaded_variables, image, False)[0],
                             module.apply(variables, image, False)[0], **TOL)
  model = teacher_model.from_teacher_info("depth", info)
  assert model.input_coords and model.module().input_coords
  assert teacher_model.from_dict(teacher_model.to_dict(model)) == model
  older = teacher_model.to_dict(model)
  del older["input_coords"]
  assert teacher_model.from_dict(older).input_coords is False
  # A description without the channels for variables that have them: refused on saving,
  # nothing written, and on loading a teacher.json edited that way; both errors say why.
  with pytest.raises(ValueError, match=r"input_coords=False.*\s+shape mismatch at "
                     r"params/down1/layer0/conv/kernel"):
    teacher_files.save_teacher(tmp_path / "wrong", variables, _info(False))
  assert not (tmp_path / "wrong").exists()
  info_file = tmp_path / "t" / teacher_files.INFO_FILE
  info_file.write_text(info_file.read_text().replace('"input_coords": true',
                                                     '"input_coords": false'))
  with pytest.raises(ValueError, match=r"input_coords False\):\s+shape mismatch at "
                     r"params/down1/layer0/conv/kernel"):
    teacher_files.load_teacher(tmp_path / "t")


def test_student_follows_its_trunk_teacher(image):
  seg = segnet.SegNet(13, width_multiplier=WIDTH, input_coords=True)
  depth = segnet.SegNet(1, width_multiplier=WIDTH)
  variables = {"seg": fakes.random_variables(seg, 4), "depth": fakes.random_variables(depth, 5)}
  models = (teacher_model.SegNetTeacher("seg", "seg", 13, width_multiplier=WIDTH,
                                        input_coords=True),
            teacher_model.SegNetTeacher("depth", "depth", 1, width_multiplier=WIDTH))
  spec = StudentSpec(models)
  assert spec.input_coords  # the trunk teacher (seg) has them
  assert not StudentSpec(models, trunk_task="depth").input_coords
  ks = (2, 1)
  student_vars = init_student_from_teachers(spec, ks, variables, rng=jax.random.key(0))
  outputs, _ = Student(spec, ks).apply(student_vars, image, False)
  # At the start the student's seg path is its trunk teacher, channels included.
  np.testing.assert_allclose(outputs["seg"], seg.apply(variables["seg"], image, False)[0], **TOL)
  # Its depth branch is the depth teacher's blocks after k on the seg teacher's features.
  f0, indices, _ = seg.apply(variables["seg"], image, False, method=segnet.SegNet.encode)
  _, seg_features = seg.apply(variables["seg"], f0, indices, 0, False,
                              method=segnet.SegNet.decode)
  up5 = seg_features["up5"]  # f_1, the shared feature at the depth branch point k = 1
  expected_depth, _ = depth.apply(variables["depth"], up5, indices, 1, False,
                                  method=segnet.SegNet.decode)
  np.testing.assert_allclose(outputs["depth"], expected_depth, **TOL)
  # An option-B teacher built on this student reports the same.
  old = teacher_model.StudentTeacher("old", spec, ks)
  assert old.input_coords and old.module().spec.input_coords


def test_imagenet_start_gives_the_channels_zero_weights(monkeypatch, image):
  """``init_from`` with coordinate channels: ImageNet's first conv, zeros for the channels,
  so the network starts as it would without them."""
  from kajax import convert_torch
  with_coords = segnet.SegNet(1, width_multiplier=WIDTH, input_coords=True)
  plain = segnet.SegNet(1, width_multiplier=WIDTH)
  # A stand-in for the converted torchvision weights at this width (the converter itself is
  # tested against torchvision's layout in test_convert_torch).
  imagenet = fakes.random_variables(plain, 6)
  encoder = {c: {b: imagenet[c][b] for b in segnet.ENCODER_BLOCKS}
             for c in ("params", "batch_stats")}
  monkeypatch.setattr(convert_torch, "load_torch_checkpoint", lambda path: {})
  monkeypatch.setattr(convert_torch, "convert_vgg16_bn_imagenet", lambda sd: encoder)
  start = train_teacher.load_imagenet_encoder(fakes.random_variables(with_coords, 7), "x.pth")
  kernel = start["params"]["down1"]["layer0"]["conv"]["kernel"]
  imagenet_kernel = imagenet["params"]["down1"]["layer0"]["conv"]["kernel"]
  np.testing.assert_array_equal(kernel[:, :, :3], imagenet_kernel)
  np.testing.assert_array_equal(kernel[:, :, 3:], 0.0)
  # The stand-in's encoder is unchanged (the padding works on a copy).
  assert encoder["params"]["down1"]["layer0"]["conv"]["kernel"].shape[2] == 3
  # Same decoder for both, so the outputs can be compared: equal at the start.
  decoder = {c: {b: v for b, v in imagenet[c].items() if b in segnet.DECODER_BLOCKS}
             for c in imagenet}
  mixed = {c: {**start[c], **decoder[c]} for c in start}
  np.testing.assert_allclose(with_coords.apply(mixed, image, False)[0],
                             plain.apply(imagenet, image, False)[0], **TOL)


def test_student_can_add_channels_its_trunk_teacher_lacks(image):
  """``--config.input_coords=True`` on teachers without them: zero weights for the two
  channels, so the block-wise trunk and the fixed student still start as the teachers."""
  seg = segnet.SegNet(13, width_multiplier=WIDTH)
  depth = segnet.SegNet(1, width_multiplier=WIDTH, input_coords=True)
  variables = {"seg": fakes.random_variables(seg, 8), "depth": fakes.random_variables(depth, 9)}
  models = (teacher_model.SegNetTeacher("seg", "seg", 13, width_multiplier=WIDTH),
            teacher_model.SegNetTeacher("depth", "depth", 1, width_multiplier=WIDTH,
                                        input_coords=True))
  assert not StudentSpec(models).input_coords  # unset: as the trunk teacher (seg)
  spec = StudentSpec(models, input_coords=True)
  ks = (1, 3)
  student_vars = init_student_from_teachers(spec, ks, variables, rng=jax.random.key(0))
  kernel = student_vars["params"]["down1"]["layer0"]["conv"]["kernel"]
  assert kernel.shape == (3, 3, 5, 8)
  np.testing.assert_array_equal(kernel[:, :, :3],
                                variables["seg"]["params"]["down1"]["layer0"]["conv"]["kernel"])
  np.testing.assert_array_equal(kernel[:, :, 3:], 0.0)
  outputs, _ = Student(spec, ks).apply(student_vars, image, False)
  np.testing.assert_allclose(outputs["seg"], seg.apply(variables["seg"], image, False)[0], **TOL)
  trunk_vars = init_trunk_from_teachers(spec, variables, jax.random.key(1))
  np.testing.assert_array_equal(trunk_vars["params"]["down1"]["layer0"]["conv"]["kernel"],
                                kernel)
  # The choice is part of the exported description; older descriptions mean "as the trunk".
  described = teacher_model.spec_to_dict(spec)
  assert teacher_model.spec_from_dict(described) == spec
  del described["input_coords"]
  assert teacher_model.spec_from_dict(described).input_coords is False
  # Dropping the channels of a trunk teacher that reads them is refused, naming the flag.
  with pytest.raises(ValueError, match=r"input_coords=False, but the trunk teacher 'depth'.*"
                     r"--config.input_coords"):
    StudentSpec(models, trunk_task="depth", input_coords=False)


def test_block_step_path_reads_the_channels(image):
  """The block-wise step's drawn-path forward (``amalgamation_steps.drawn_path_outputs``)
  equals the full block-wise trunk with its projections, coordinate weights non-zero."""
  from kajax import amalgamation_steps
  from kajax.student_model import StudentTrunk, switch_tail
  seg = segnet.SegNet(13, width_multiplier=WIDTH)
  depth = segnet.SegNet(1, width_multiplier=WIDTH)
  teacher_vars = {"seg": fakes.random_variables(seg, 10),
                  "depth": fakes.random_variables(depth, 11)}
  models = (teacher_model.SegNetTeacher("seg", "seg", 13, width_multiplier=WIDTH),
            teacher_model.SegNetTeacher("depth", "depth", 1, width_multiplier=WIDTH))
  spec = StudentSpec(models, input_coords=True)
  trunk = StudentTrunk(spec)
  variables = init_trunk_from_teachers(spec, teacher_vars, jax.random.key(2))
  kernel = variables["params"]["down1"]["layer0"]["conv"]["kernel"]
  weights = np.asarray(kernel).copy()
  weights[:, :, 3:] = np.random.default_rng(12).standard_normal(weights[:, :, 3:].shape)
  variables["params"]["down1"]["layer0"]["conv"]["kernel"] = jnp.asarray(weights)
  ks = jnp.asarray((2, 1), jnp.int32)
  drawn, _ = amalgamation_steps.drawn_path_outputs(
      trunk, variables["params"], variables["batch_stats"], image, ks, teacher_vars, models)
  (gated, indices), _ = trunk.apply(variables, image, train=True, mutable=["batch_stats"])
  for g, m in enumerate(models):
    full = switch_tail(g, ks[g], gated, indices, m, teacher_vars[m.name])
    np.testing.assert_allclose(drawn[m.name], full[m.name], rtol=1e-4, atol=1e-5)
