"""Tests for kajax.predict: the CLI on a folder of images and ``predict_images``.

A tiny student (width 1/16) is built from random teachers and exported once. Expected outputs
come from running the ``Student`` module directly on images normalised here with NumPy
(ImageNet statistics written out below), not from the code under test.
"""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from kajax import export, predict, visualize
from kajax.student_init import init_student_from_teachers
from kajax.student_spec import spec_from_teachers
from tests import fakes

BRANCH_POINTS = (1, 2)
# ImageNet RGB statistics (torchvision's documented values).
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# name -> (H, W): two images of one size, one of another (network sizes are the image sizes).
IMAGES = {"a.png": (32, 48), "b.bmp": (32, 48), "c.png": (48, 32)}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
  teachers = {"seg": fakes.make_teacher("seg", 13, 0), "depth": fakes.make_teacher("depth", 1, 1)}
  spec = spec_from_teachers(("seg", "depth"), {t: m for t, (m, _, _) in teachers.items()})
  variables = init_student_from_teachers(spec, BRANCH_POINTS,
                                         {t: v for t, (_, v, _) in teachers.items()},
                                         rng=jax.random.key(0))
  variables = jax.tree_util.tree_map(np.array, variables)
  # Shift the depth head's bias by +2 m so most depths are positive: the 16-bit PNG then holds
  # real values rather than mostly the clip at 0.
  up1 = variables["params"]["branch_depth"]["up1"]
  up1[max(up1)]["conv"]["bias"] += 2.0
  return export.save_student(str(tmp_path_factory.mktemp("run") / "student"), spec,
                             BRANCH_POINTS, variables, {"seg": {}, "depth": {}})


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
  """Independent forward pass: NumPy normalisation, then the Student module itself."""
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


def _check_depth(depth_png, depth_m):
  """16-bit PNG == round(mm), exact away from .5 rounding ties (float32 noise)."""
  mm = depth_m * 1000
  expected = np.clip(np.rint(mm), 0, 65535)
  clear = np.abs(np.abs(mm - np.floor(mm)) - 0.5) > 0.01
  np.testing.assert_array_equal(depth_png[clear], expected[clear])
  assert np.all(np.abs(depth_png.astype(np.float64) - np.clip(mm, 0, 65535)) <= 0.51)
  assert (depth_png > 0).mean() > 0.5 and len(np.unique(depth_png)) > 10


def test_cli_writes_predictions_of_the_student(tmp_path, capsys, student_dir, loaded):
  images = _write_images(tmp_path / "in")
  out = tmp_path / "out"
  code = predict.main([f"--student_dir={student_dir}", f"--input_dir={tmp_path / 'in'}",
                       f"--output_dir={out}", "--batch_size=2"])
  assert code == 0, capsys.readouterr().err
  assert "Predicted 3 images" in capsys.readouterr().out
  stems = [os.path.splitext(n)[0] for n in IMAGES]
  expected_files = {f"{s}_{kind}.png" for s in stems
                    for kind in ("seg", "seg_labels", "depth", "depth_preview")}
  assert set(os.listdir(out)) == expected_files  # No normals task, nothing else written.
  for name, image in images.items():
    stem = os.path.splitext(name)[0]
    logits, depth_m = _forward(loaded, image)
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
  # The inputs are untouched.
  assert sorted(os.listdir(tmp_path / "in")) == sorted(list(IMAGES) + ["notes.txt"])


def test_cli_resizes_to_image_size(tmp_path, capsys, student_dir, loaded):
  images = _write_images(tmp_path / "in")
  out = tmp_path / "out"
  code = predict.main([f"--student_dir={student_dir}", f"--input_dir={tmp_path / 'in'}",
                       f"--output_dir={out}", "--image_size=40x32", "--batch_size=4"])
  assert code == 0, capsys.readouterr().err
  for stem in ("a", "b", "c"):
    for kind in ("seg_labels", "depth"):
      assert _read(out / f"{stem}_{kind}.png")[1].shape == (40, 32)
  # Expected: PIL bilinear resize of the image, then the independent forward pass.
  resized = np.asarray(Image.fromarray(images["a.png"]).resize((32, 40), Image.BILINEAR))
  logits, depth_m = _forward(loaded, resized)
  _check_labels(_read(out / "a_seg_labels.png")[1], logits)
  _check_depth(_read(out / "a_depth.png")[1], depth_m)


def _run_expecting_error(capsys, student_dir, input_dir, output_dir, *extra):
  code = predict.main([f"--student_dir={student_dir}", f"--input_dir={input_dir}",
                       f"--output_dir={output_dir}", *extra])
  assert code == 1
  return capsys.readouterr().err


def test_cli_input_errors_name_the_path(tmp_path, capsys, student_dir):
  missing = tmp_path / "nowhere"
  err = _run_expecting_error(capsys, student_dir, missing, tmp_path / "o1")
  assert str(missing) in err and "does not exist" in err

  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "readme.txt").write_text("no pictures here")
  err = _run_expecting_error(capsys, student_dir, empty, tmp_path / "o2")
  assert str(empty) in err and "no image files" in err

  _write_images(tmp_path / "in")
  broken = tmp_path / "in" / "broken.png"
  broken.write_bytes(b"\x89PNG not really a png")
  err = _run_expecting_error(capsys, student_dir, tmp_path / "in", tmp_path / "o3")
  assert str(broken) in err
  assert not [n for n in os.listdir(tmp_path / "o3") if n.endswith(".png")]  # Nothing written.

  too_small = tmp_path / "small"
  too_small.mkdir()
  Image.fromarray(np.zeros((16, 40, 3), np.uint8)).save(too_small / "tiny.png")
  err = _run_expecting_error(capsys, student_dir, too_small, tmp_path / "o4")
  assert "tiny.png" in err and "--image_size" in err


def test_cli_output_and_student_errors(tmp_path, capsys, student_dir):
  images = tmp_path / "in"
  _write_images(images)
  before = {n: (images / n).read_bytes() for n in os.listdir(images)}
  err = _run_expecting_error(capsys, student_dir, images, images)
  assert str(images) in err and "never overwritten" in err
  assert {n: (images / n).read_bytes() for n in os.listdir(images)} == before

  a_file = tmp_path / "not_a_dir"
  a_file.write_text("x")
  err = _run_expecting_error(capsys, student_dir, images, a_file)
  assert str(a_file) in err and "not a writable directory" in err

  not_student = tmp_path / "workdir"
  not_student.mkdir()
  err = _run_expecting_error(capsys, not_student, images, tmp_path / "out")
  assert str(not_student) in err and "not an exported kajax student" in err

  with pytest.raises(SystemExit):
    predict.main([f"--student_dir={student_dir}", f"--input_dir={images}",
                  f"--output_dir={tmp_path / 'out'}", "--image_size=240by320"])
  assert "--image_size" in capsys.readouterr().err


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
    predict.predict_images(module, variables, info, [good[:16]])


def test_depth_to_png16_hand_values():
  depth = np.array([-1.0, 0.0004, 0.0006, 1.2344, 1.2346, 65.5349, 70.0, np.nan])
  np.testing.assert_array_equal(predict.depth_to_png16(depth),
                                [0, 0, 1, 1234, 1235, 65535, 65535, 0])
