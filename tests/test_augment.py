"""Tests for kajax.augment: targets stay aligned with the image through every augmentation."""

import numpy as np
import pytest

from kajax import augment

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
GRID = (4, 4)  # cells of the synthetic pattern
H, W = 48, 64  # 12x16-pixel cells


def _cell_colour(cell):
  """A distinct RGB colour per cell (uint8 values)."""
  cell = np.asarray(cell)
  return np.stack([16 * cell + 8, 250 - 15 * cell, (cell * 37 + 11) % 256], -1).astype(np.uint8)


def grid_example():
  """Image, label, depth and normals that all encode the same 4x4 grid of cells."""
  rows = np.arange(H)[:, None] // (H // GRID[0])
  cols = np.arange(W)[None, :] // (W // GRID[1])
  cell = rows * GRID[1] + cols
  nx = np.broadcast_to(np.where(cols < GRID[1] // 2, 0.6, -0.6), (H, W)).astype(np.float32)
  normals = np.stack([nx, np.zeros_like(nx), np.full_like(nx, 0.8)], -1)
  return {"image": _cell_colour(cell), "label": cell.astype(np.uint8),
          "depth": (1.0 + 0.25 * cell).astype(np.float32), "normals": normals,
          "file_name": np.array(b"ignored")}


def _interior(label, radius):
  """Pixels whose (2r+1)^2 neighbourhood has a single label."""
  h, w = label.shape
  ok = np.zeros_like(label, bool)
  for i in range(radius, h - radius):
    for j in range(radius, w - radius):
      win = label[i - radius:i + radius + 1, j - radius:j + radius + 1]
      ok[i, j] = (win == label[i, j]).all()
  return ok


def _run(example, seed, **kw):
  cfg = augment.AugmentConfig(**{"crop_size": (32, 40), "scale_range": (1.0, 2.0),
                                 "color_jitter": 0.0, **kw})
  return augment.train_transform(example, np.random.default_rng(seed), image_size=None,
                                 config=cfg)


def test_train_augmentation_keeps_targets_aligned():
  ex = grid_example()
  flips = []
  for seed in range(25):
    out = _run(ex, seed)
    assert set(out) == {"image", "label", "depth", "normals"}
    label = out["label"]
    assert label.shape == (32, 40) and label.dtype == np.int32
    assert set(np.unique(label)) <= set(range(16))  # nearest: only original ids
    # Depth and normals are read at the same source pixel as the label.
    np.testing.assert_array_equal(out["depth"], 1.0 + 0.25 * label)
    col = label % GRID[1]
    # The crop always spans >= 2 cell columns: their order along a row reveals a flip.
    steps = np.diff(col, axis=1)
    flipped = bool((steps <= 0).all())
    assert flipped or (steps >= 0).all()
    flips.append(flipped)
    left = col < GRID[1] // 2
    expected_nx = np.where(left != flipped, 0.6, -0.6)
    np.testing.assert_allclose(out["normals"][..., 0], expected_nx, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(out["normals"][..., 2], np.float32(0.8))
    # Bilinear image equals the cell colour away from cell borders.
    inside = _interior(label, 3)
    assert inside.mean() > 0.2
    want = (_cell_colour(label) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out["image"][inside], want[inside], atol=1e-4)
  assert 0 < sum(flips) < len(flips)  # both cases were exercised


@pytest.mark.parametrize("image_size", [None, (24, 32)])
def test_subpixel_alignment_on_ramps(image_size):
  """Red/green ramps vs label = source column and depth = source row: within 1 pixel.

  Bilinear (and PIL's triangle antialiasing) reproduce a linear ramp exactly, so the red value
  at an output pixel reveals the source column it was sampled at; nearest picks floor of the
  same coordinate, so |red - (3*label + 20)| <= 1.5 (+0.5 rounding). A one-pixel misalignment
  between image and targets would show as a difference of about 3.
  """
  rows, cols = np.mgrid[:H, :W]
  image = np.stack([3 * cols + 20, 3 * rows + 20, np.full_like(cols, 100)], -1).astype(np.uint8)
  ex = {"image": image, "label": cols.astype(np.uint8), "depth": (rows + 1).astype(np.float32)}
  cfg = augment.AugmentConfig(crop_size=(20, 28), scale_range=(1.0, 2.0), color_jitter=0.0)
  for seed in range(20):
    out = augment.train_transform(ex, np.random.default_rng(seed), image_size=image_size,
                                  config=cfg)
    rgb = (out["image"] * STD + MEAN) * 255.0
    np.testing.assert_array_less(np.abs(rgb[..., 0] - (3 * out["label"] + 20)), 2.01)
    np.testing.assert_array_less(np.abs(rgb[..., 1] - (3 * (out["depth"] - 1) + 20)), 2.01)


def test_deterministic_per_seed_and_seeds_differ():
  ex = grid_example()
  a, b, c = _run(ex, 7, color_jitter=0.3), _run(ex, 7, color_jitter=0.3), _run(ex, 8,
                                                                                color_jitter=0.3)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["image"], c["image"])


def test_color_jitter_changes_only_the_image():
  ex = grid_example()
  for seed in range(5):
    plain, jittered = _run(ex, seed), _run(ex, seed, color_jitter=(0.4, 0.4, 0.4))
    for k in ("label", "depth", "normals"):
      np.testing.assert_array_equal(plain[k], jittered[k])
    assert np.abs(plain["image"] - jittered["image"]).max() > 0.01


def test_color_jitter_factors_by_hand():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
  x = img.astype(np.float64)
  np.testing.assert_allclose(augment.color_jitter(img, (1.5, 1, 1)), np.clip(1.5 * x, 0, 255),
                             atol=1e-3)
  gray = x @ [0.299, 0.587, 0.114]
  # Contrast 0: every pixel becomes the mean gray level.
  np.testing.assert_allclose(augment.color_jitter(img, (1, 0, 1)),
                             np.full(x.shape, gray.mean()), atol=1e-3)
  # Saturation 0: every channel becomes the pixel's gray level.
  np.testing.assert_allclose(augment.color_jitter(img, (1, 1, 0)),
                             np.repeat(gray[..., None], 3, -1), atol=1e-3)
  np.testing.assert_array_equal(augment.color_jitter(img, (1, 1, 1)), x)
  # All three, applied one after the other (clipping once at the end).
  b, c, s = 1.2, 0.7, 1.3
  x1 = b * x
  g1 = x1 @ [0.299, 0.587, 0.114]
  x2 = c * (x1 - g1.mean()) + g1.mean()
  g2 = x2 @ [0.299, 0.587, 0.114]
  x3 = s * x2 + (1 - s) * g2[..., None]
  np.testing.assert_allclose(augment.color_jitter(img, (b, c, s)), np.clip(x3, 0, 255),
                             atol=1e-3)


def mirror(example):
  """NumPy reference of a horizontal flip: columns reversed, normals x negated."""
  out = {k: v[:, ::-1].copy() for k, v in example.items()}
  if "normals" in out:
    out["normals"][..., 0] = -out["normals"][..., 0]
  return out


def test_flip_negates_normals_x():
  ex = {k: v for k, v in grid_example().items() if k != "file_name"}
  out = augment.resample(ex, (0, 0, H, W), (H, W), flip=True)
  np.testing.assert_array_equal(out["image"], ex["image"][:, ::-1])
  np.testing.assert_array_equal(out["label"], ex["label"][:, ::-1])
  np.testing.assert_array_equal(out["normals"][..., 0], -ex["normals"][:, ::-1, 0])
  np.testing.assert_array_equal(out["normals"][..., 1:], ex["normals"][:, ::-1, 1:])
  np.testing.assert_array_equal(ex["normals"], grid_example()["normals"])  # input untouched


def test_unit_scale_full_crop_is_identity_or_mirror():
  ex = grid_example()
  cfg = augment.AugmentConfig(scale_range=(1.0, 1.0), color_jitter=0.0)
  ref = augment.eval_transform(ex, image_size=None)
  seen = set()
  for seed in range(12):
    out = augment.train_transform(ex, np.random.default_rng(seed), image_size=None, config=cfg)
    flipped = not np.array_equal(out["label"], ref["label"])
    seen.add(flipped)
    want = mirror(ref) if flipped else ref
    for k in ref:
      np.testing.assert_allclose(out[k], want[k], atol=1e-6)
  assert seen == {False, True}


def test_depth_scale_mode_divide():
  ex = grid_example()
  ex["depth"][:6] = 0.0  # invalid rows must stay invalid
  for seed in range(6):
    keep = _run(ex, seed, depth_scale_mode="keep")
    div = _run(ex, seed, depth_scale_mode="divide")
    np.testing.assert_array_equal(keep["label"], div["label"])
    valid = keep["depth"] > 0
    np.testing.assert_array_equal(div["depth"] > 0, valid)
    ratio = keep["depth"][valid] / div["depth"][valid]
    assert 1.0 <= ratio.min() and ratio.max() <= 2.0  # divided by the zoom s in [1, 2]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)


def test_labels_stay_original_values_when_shrinking():
  rng = np.random.default_rng(3)
  label = rng.choice(np.array([0, 4, 9, 255], np.uint8), (60, 80))
  ex = {"image": rng.integers(0, 256, (60, 80, 3)).astype(np.uint8), "label": label}
  cfg = augment.AugmentConfig(scale_range=(1.0, 1.3), color_jitter=0.1)
  for seed in range(5):
    out = augment.train_transform(ex, np.random.default_rng(seed), image_size=(30, 40),
                                  config=cfg)
    assert out["label"].shape == (30, 40)
    assert set(np.unique(out["label"])) <= {0, 4, 9, 255}


def test_eval_transform_resize_and_normalise_by_hand():
  rng = np.random.default_rng(0)
  label = rng.integers(0, 13, (8, 12)).astype(np.uint8)
  depth = rng.random((8, 12)).astype(np.float32)
  img = rng.integers(0, 256, (8, 12, 3)).astype(np.uint8)
  ex = {"image": img, "label": label, "depth": depth}
  same = augment.eval_transform(ex, image_size=None)
  np.testing.assert_allclose(same["image"], (img / 255.0 - MEAN) / STD, atol=1e-5)
  np.testing.assert_array_equal(same["label"], label)
  # Halving: output pixel i has centre 2i+1 in the source.
  half = augment.eval_transform(ex, image_size=(4, 6))
  np.testing.assert_array_equal(half["label"], label[1::2, 1::2])
  np.testing.assert_array_equal(half["depth"], depth[1::2, 1::2])
  # Doubling: nearest repeats every pixel twice.
  double = augment.eval_transform(ex, image_size=(16, 24))
  np.testing.assert_array_equal(double["label"], label.repeat(2, 0).repeat(2, 1))
  assert double["image"].shape == (16, 24, 3) and double["image"].dtype == np.float32


def test_missing_keys_and_images_only():
  ex = grid_example()
  only_image = augment.eval_transform({"image": ex["image"]}, image_size=(24, 32))
  assert set(only_image) == {"image"}
  out = _run({"image": ex["image"], "depth": ex["depth"]}, 0)
  assert set(out) == {"image", "depth"}
  cfg = augment.AugmentConfig()
  out = augment.train_transform(ex, np.random.default_rng(0), image_size=None, config=cfg,
                                images_only=True)
  assert set(out) == {"image"}


def test_clear_errors():
  ex = grid_example()
  with pytest.raises(ValueError, match="crop_size"):
    _run(ex, 0, crop_size=(60, 40), scale_range=(1.0, 1.2))
  with pytest.raises(KeyError, match="'image'"):
    augment.eval_transform({"label": ex["label"]}, image_size=None)
  with pytest.raises(ValueError, match="'depth'"):
    augment.eval_transform({"image": ex["image"], "depth": ex["depth"][:5]}, image_size=None)
  with pytest.raises(ValueError, match="depth_scale_mode"):
    augment.AugmentConfig(depth_scale_mode="shrink")
  with pytest.raises(ValueError, match="scale_range"):
    augment.AugmentConfig(scale_range=(1.5, 1.0))
  assert augment.AugmentConfig.from_config({"flip": False, "num_threads": 3}).flip is False
