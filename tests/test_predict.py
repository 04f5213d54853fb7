"""Tests for kajax.predict: the CLI's ``run`` on a folder of images, its flags, and
``predict_images``.

A tiny student (width 1/16) is built from random teachers and exported once, recording a
training resolution of 32x48 and (deliberately non-ImageNet) normalisation statistics.
Expected outputs come from running the ``Student`` module directly on images normalised here
with NumPy, and from resizing written out here (block structure of nearest-neighbour
upsampling, a NumPy bilinear), not from the code under test.
"""

import os
import types

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from kajax import export, predict, teacher_model, visualize
from kajax.student_init import init_student_from_teachers
from kajax.student_spec import StudentSpec
from tests import fakes

BRANCH_POINTS = (1, 2)
# The student's recorded input statistics: not ImageNet's, so using the wrong ones shows.
MEAN = np.array([0.5, 0.4, 0.3])
STD = np.array([0.2, 0.25, 0.3])
TRAIN_SIZE = (32, 48)
# name -> (H, W). a, b: the training size; c: portrait (short side already 32); d: twice the
# training size, so it enters the network at 32x48 and its outputs are upsampled 2x.
IMAGES = {"a.png": (32, 48), "b.bmp": (32, 48), "c.png": (48, 32), "d.png": (64, 96)}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
  teachers = {"seg": fakes.make_teacher("seg", 13, 0), "depth": fakes.make_teacher("depth", 1, 1)}
  spec = StudentSpec(tuple(teacher_model.from_teacher_info(t, info)
                           for t, (_, _, info) in teachers.items()))
  variables = init_student_from_teachers(spec, BRANCH_POINTS,
                                         {t: v for t, (_, v, _) in teachers.items()},
                                         rng=jax.random.key(0))
  variables = jax.tree_util.tree_map(np.array, variables)
  # Shift the depth head's bias by +2 m so most depths are positive: the 16-bit PNG then holds
  # real values rather than mostly the clip at 0.
  up1 = variables["params"]["branch_depth"]["up1"]
  up1[max(up1)]["conv"]["bias"] += 2.0
  return export.save_student(
      str(tmp_path_factory.mktemp("run") / "student"), spec, BRANCH_POINTS, variables,
      {"image_size": list(TRAIN_SIZE), "mean": list(MEAN), "std": list(STD)})


@pytest.fixture(scope="module")
def loaded(student_dir):
  return export.load_student(student_dir)


def _write_images(folder):
  rng = np.random.default_rng(3)
  os.makedirs(folder, exist_ok=True)
  arrays = {}
  for name, (h, w) in IMAGES.items():
    # Smooth gradients plus noise: structured enough that the classes vary over the image.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([255 * yy / h, 255 * xx / w, 128 + 0 * xx], -1)
    image = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(folder, name))
    arrays[name] = image
  with open(os.path.join(folder, "notes.txt"), "w") as f:
    f.write("not an image")
  return arrays


def _forward(loaded, image):
  """Independent forward pass: NumPy normalisation with the recorded statistics, then the
  Student module itself."""
  module, variables, _ = loaded
  x = ((image / 255.0 - MEAN) / STD).astype(np.float32)[None]
  outputs, _ = module.apply(variables, x, train=False)
  return np.asarray(outputs["seg"][0], np.float64), np.asarray(outputs["depth"][0, ..., 0],
                                                              np.float64)


def _read(path):
  with Image.open(path) as image:
    return image.mode, np.asarray(image)


def _check_labels(labels, logits):
  """labels == argmax(logits), exactly wherever the top two logits are not a near tie."""
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-3
  assert clear.mean() > 0.95
  np.testing.assert_array_equal(labels[clear], np.argmax(logits, -1)[clear])
  assert len(np.unique(labels)) > 1  # Not a constant map.


def _check_depth(depth_png, depth_m, tolerance=None):
  """16-bit PNG == round(mm), exact away from .5 rounding ties (float32 noise); within
  ``tolerance`` mm everywhere instead when given (a resampled reference)."""
  mm = depth_m * 1000
  assert depth_png.shape == mm.shape
  if tolerance is None:
    expected = np.clip(np.rint(mm), 0, 65535)
    clear = np.abs(np.abs(mm - np.floor(mm)) - 0.5) > 0.01
    np.testing.assert_array_equal(depth_png[clear], expected[clear])
  assert np.all(np.abs(depth_png.astype(np.float64) - np.clip(mm, 0, 65535))
                <= (tolerance or 0.51))
  assert (depth_png > 0).mean() > 0.5 and len(np.unique(depth_png)) > 10


def _args(student_dir, input_dir, output_dir, **kw):
  """What ``python -m kajax.predict`` passes to ``run`` after parsing its flags."""
  values = dict(image_size=None, keep_size=False, batch_size=2, preview_max_depth=10.0)
  values.update(kw)
  return types.SimpleNamespace(student_dir=str(student_dir), input_dir=str(input_dir),
                               output_dir=str(output_dir), **values)


def _bilinear_2x(x):
  """2x upsampling with half-pixel centres and edge clamping, written out in NumPy."""
  def along(a, axis):
    n = a.shape[axis]
    src = (np.arange(2 * n) + 0.5) / 2 - 0.5  # output pixel centre in input coordinates
    lo = np.clip(np.floor(src).astype(int), 0, n - 1)
    hi = np.clip(lo + 1, 0, n - 1)
    frac = np.clip(src - np.floor(src), 0, 1)
    frac = np.where(src < 0, 0.0, frac)  # left edge: clamp to the first pixel
    shape = [1] * a.ndim
    shape[axis] = -1
    return (np.take(a, lo, axis) * (1 - frac.reshape(shape))
            + np.take(a, hi, axis) * frac.reshape(shape))
  return along(along(x, 0), 1)


def test_cli_writes_predictions_at_the_training_resolution(tmp_path, capsys, student_dir,
                                                          loaded):
  images = _write_images(tmp_path / "in")
  out = tmp_path / "out"
  predict.run(_args(student_dir, tmp_path / "in", out))
  summary = capsys.readouterr().out
  assert "Predicted 4 images" in summary and "32x48 (3)" in summary and "48x32 (1)" in summary
  stems = [os.path.splitext(n)[0] for n in IMAGES]
  expected_files = {f"{s}_{kind}.png" for s in stems
                    for kind in ("seg", "seg_labels", "depth", "depth_preview")}
  assert set(os.listdir(out)) == expected_files  # No normals task, nothing else written.
  for name in ("a.png", "b.bmp", "c.png"):  # Fed at their own size.
    stem = os.path.splitext(name)[0]
    logits, depth_m = _forward(loaded, images[name])
    mode, labels = _read(out / f"{stem}_seg_labels.png")
    assert mode == "L" and labels.shape == IMAGES[name]
    _check_labels(labels, logits)
    mode, colour = _read(out / f"{stem}_seg.png")
    assert mode == "RGB"
    np.testing.assert_array_equal(colour, visualize.PALETTE[labels])
    mode, depth_png = _read(out / f"{stem}_depth.png")
    assert mode == "I;16" and depth_png.dtype == np.uint16
    _check_depth(depth_png, depth_m)
    mode, preview = _read(out / f"{stem}_depth_preview.png")
    assert mode == "RGB" and preview.shape == IMAGES[name] + (3,)
  # d (64x96) entered the network at the training size 32x48 (PIL bilinear, as evaluation
  # resizes) and its outputs are back at 64x96.
  small = np.asarray(Image.fromarray(images["d.png"]).resize((48, 32), Image.BILINEAR))
  logits, depth_m = _forward(loaded, small)
  labels = _read(out / "d_seg_labels.png")[1]
  assert labels.shape == (64, 96)
  for dy in (0, 1):  # nearest-neighbour 2x: every 2x2 block repeats one network pixel
    for dx in (0, 1):
      _check_labels(labels[dy::2, dx::2], logits)
  _check_depth(_read(out / "d_depth.png")[1], _bilinear_2x(depth_m), tolerance=1.01)
  # The inputs are untouched.
  assert sorted(os.listdir(tmp_path / "in")) == sorted(list(IMAGES) + ["notes.txt"])


def test_keep_size_and_image_size(tmp_path, student_dir, loaded):
  images = _write_images(tmp_path / "in")
  predict.run(_args(student_dir, tmp_path / "in", tmp_path / "keep", keep_size=True))
  logits, depth_m = _forward(loaded, images["d.png"])  # its own 64x96
  _check_labels(_read(tmp_path / "keep" / "d_seg_labels.png")[1], logits)
  _check_depth(_read(tmp_path / "keep" / "d_depth.png")[1], depth_m)

  predict.run(_args(student_dir, tmp_path / "in", tmp_path / "fixed", image_size=(32, 32)))
  for name, hw in IMAGES.items():  # network 32x32, outputs back at the original size
    stem = os.path.splitext(name)[0]
    for kind in ("seg_labels", "depth"):
      assert _read(tmp_path / "fixed" / f"{stem}_{kind}.png")[1].shape == hw


def test_exif_rotated_photos_are_predicted_upright(tmp_path, student_dir, loaded):
  # A phone's portrait photo: landscape pixels (32x48) with EXIF orientation 6 ("rotate 90
  # degrees clockwise to view"), i.e. an upright 48x32 picture.
  rng = np.random.default_rng(5)
  stored = rng.integers(0, 256, (32, 48, 3)).astype(np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6
  (tmp_path / "in").mkdir()
  Image.fromarray(stored).save(tmp_path / "in" / "phone.png", exif=exif)
  predict.run(_args(student_dir, tmp_path / "in", tmp_path / "out", keep_size=True))
  upright = np.rot90(stored, k=-1)  # clockwise, by hand
  assert upright.shape == (48, 32, 3)
  logits, _ = _forward(loaded, upright)
  _check_labels(_read(tmp_path / "out" / "phone_seg_labels.png")[1], logits)


def test_network_size_rule():
  info = {"input": {"image_size": [240, 320]}}
  assert predict.network_size((3024, 4032), info) == (240, 320)  # same aspect: the size
  assert predict.network_size((4032, 3024), info) == (320, 240)  # portrait stays portrait
  assert predict.network_size((500, 500), info) == (240, 240)
  assert predict.network_size((500, 500), info, keep_size=True) == (500, 500)
  assert predict.network_size((500, 500), info, image_size=(64, 96)) == (64, 96)
  assert predict.network_size((500, 700), {}) == (500, 700)  # older export: own size


def test_flags_are_checked_when_parsed():
  def parse(*argv):
    fv = flags.FlagValues()
    predict.define_flags(fv)
    fv(["predict", "--student_dir=s", "--input_dir=i", "--output_dir=o", *argv])
    return fv
  assert parse("--image_size=240x320").image_size == (240, 320)
  for bad, match in (("--image_size=240by320", "HxW"), ("--image_size=16x320", "32x32"),
                     ("--batch_size=0", "batch_size"),
                     ("--keep_size", "exclude each other")):
    extra = ("--image_size=64x64",) if bad == "--keep_size" else ()
    with pytest.raises(flags.IllegalFlagValueError, match=match):
      parse(bad, *extra)


def _expect_error(student_dir, input_dir, output_dir, **kw):
  with pytest.raises((OSError, ValueError)) as e:
    predict.run(_args(student_dir, input_dir, output_dir, **kw))
  return str(e.value)


def test_cli_input_errors_name_the_path(tmp_path, student_dir):
  missing = tmp_path / "nowhere"
  err = _expect_error(student_dir, missing, tmp_path / "o1")
  assert str(missing) in err and "does not exist" in err

  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "readme.txt").write_text("no pictures here")
  err = _expect_error(student_dir, empty, tmp_path / "o2")
  assert str(empty) in err and "no image files" in err

  _write_images(tmp_path / "in")
  broken = tmp_path / "in" / "broken.png"
  broken.write_bytes(b"\x89PNG not really a png")
  err = _expect_error(student_dir, tmp_path / "in", tmp_path / "o3")
  assert str(broken) in err
  assert not [n for n in os.listdir(tmp_path / "o3") if n.endswith(".png")]  # Nothing written.

  too_small = tmp_path / "small"
  too_small.mkdir()
  Image.fromarray(np.zeros((16, 40, 3), np.uint8)).save(too_small / "tiny.png")
  err = _expect_error(student_dir, too_small, tmp_path / "o4", keep_size=True)
  assert "tiny.png" in err and "--image_size" in err


def test_cli_output_and_student_errors(tmp_path, student_dir):
  images = tmp_path / "in"
  _write_images(images)
  before = {n: (images / n).read_bytes() for n in os.listdir(images)}
  err = _expect_error(student_dir, images, images)
  assert str(images) in err and "never overwritten" in err
  assert {n: (images / n).read_bytes() for n in os.listdir(images)} == before

  a_file = tmp_path / "not_a_dir"
  a_file.write_text("x")
  err = _expect_error(student_dir, images, a_file)
  assert str(a_file) in err and "not a writable directory" in err

  not_student = tmp_path / "workdir"
  not_student.mkdir()
  err = _expect_error(not_student, images, tmp_path / "out")
  assert str(not_student) in err and "not an exported kajax student" in err


def test_name_collisions_are_refused(tmp_path):
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.jpg")
  with pytest.raises(ValueError, match=r"x\.jpg and x\.png"):
    predict.list_images(str(tmp_path))


def test_predict_images_checks_its_inputs(loaded):
  module, variables, info = loaded
  good = np.zeros((32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match=r"images\[1\] must be a uint8 RGB"):
    predict.predict_images(module, variables, info, [good, good.astype(np.float32)])
  with pytest.raises(ValueError, match=r"images\[0\].*16x32"):
    predict.predict_images(module, variables, info, [good[:16]], keep_size=True)


def test_depth_to_png16_hand_values():
  depth = np.array([-1.0, 0.0004, 0.0006, 1.2344, 1.2346, 65.5349, 70.0, np.nan])
  np.testing.assert_array_equal(predict.depth_to_png16(depth),
                                [0, 0, 1, 1234, 1235, 65535, 65535, 0])
