"""Tests of the synthetic rooms generator (kajax.datasets.rooms_render / rooms_layout).

Geometry is checked independently of the renderer: pixels are back-projected with the NYUv2
intrinsics written out here, and the room's planes (floor, ceiling, walls) must come out
planar, parallel/perpendicular and at plausible heights.
"""

import numpy as np
import pytest

from kajax.datasets import rooms_render

H, W = 60, 80
FLOOR, CEILING, TABLE, WALL = 4, 2, 9, 11  # NYUv2-13 order: bed, books, ceiling, chair, floor, ...


def _rays(height, width):
  # NYUv2 RGB camera (camera_params.m) at 640x480, scaled to the image size.
  fx, fy = 518.8579 * width / 640, 519.4696 * height / 480
  cx, cy = 325.5824 * width / 640, 253.7362 * height / 480
  v, u = np.mgrid[0:height, 0:width].astype(float)
  return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)


@pytest.fixture(scope="module")
def scenes():
  return [rooms_render.render_scene(seed, H, W) for seed in range(24)]


def test_deterministic_and_seed_dependent():
  a, b = rooms_render.render_scene(7, H, W), rooms_render.render_scene(7, H, W)
  for key in ("image", "label", "depth", "normals"):
    np.testing.assert_array_equal(a[key], b[key])
  c = rooms_render.render_scene(8, H, W)
  assert not np.array_equal(a["image"], c["image"])


def test_shapes_dtypes_and_ranges(scenes):
  for out in scenes:
    assert out["image"].shape == (H, W, 3) and out["image"].dtype == np.uint8
    assert out["label"].shape == (H, W) and out["label"].dtype == np.uint8
    assert out["depth"].shape == (H, W) and out["depth"].dtype == np.float32
    assert out["normals"].shape == (H, W, 3) and out["normals"].dtype == np.float32
    assert out["label"].max() <= 12
    # Every pixel sees a surface inside a room of at most 6.5 x 3 x 7 m.
    assert out["depth"].min() > 0.0 and out["depth"].max() < 10.0
    np.testing.assert_allclose(np.linalg.norm(out["normals"], axis=-1), 1.0, atol=1e-5)


def test_normals_face_the_camera(scenes):
  rays = _rays(H, W)
  for out in scenes:
    assert (np.einsum("hwc,hwc->hw", out["normals"], rays) < 0).all()


def _plane_offsets(out, mask):
  """Camera-frame points of `mask` and their signed distance n.P along their normals."""
  points = out["depth"][..., None] * _rays(H, W)
  return np.einsum("nc,nc->n", out["normals"][mask].astype(float), points[mask])


def test_floor_and_ceiling_are_planes_at_plausible_heights(scenes):
  checked = 0
  for out in scenes:
    floor, ceiling = out["label"] == FLOOR, out["label"] == CEILING
    if floor.sum() < 20 or ceiling.sum() < 20:
      continue
    n_floor, n_ceiling = out["normals"][floor], out["normals"][ceiling]
    # One normal per plane, opposite to each other.
    np.testing.assert_allclose(n_floor, n_floor[:1].repeat(len(n_floor), 0), atol=1e-6)
    np.testing.assert_allclose(n_ceiling[0], -n_floor[0], atol=1e-6)
    # The floor normal is the camera's up vector: mostly -y (y points down), pitch < 45 deg.
    assert n_floor[0, 1] < -np.cos(np.pi / 4)
    d_floor, d_ceiling = _plane_offsets(out, floor), _plane_offsets(out, ceiling)
    # All floor pixels on one plane: n.P = -(camera height); same for the ceiling.
    assert d_floor.std() < 1e-4 and d_ceiling.std() < 1e-4
    cam_height, to_ceiling = -d_floor.mean(), -d_ceiling.mean()
    assert 0.8 < cam_height < 2.0  # a hand-held Kinect
    assert 2.2 < cam_height + to_ceiling < 3.2  # room height
    # The floor is seen below the ceiling in the image.
    rows = np.mgrid[0:H, 0:W][0]
    assert rows[floor].mean() > rows[ceiling].mean()
    checked += 1
  assert checked >= 3


def test_walls_are_vertical_planes_at_right_angles(scenes):
  checked = 0
  for out in scenes:
    floor, wall = out["label"] == FLOOR, out["label"] == WALL
    if floor.sum() < 20 or wall.sum() < 20:
      continue
    up = -out["normals"][floor][0].astype(float)
    normals = out["normals"][wall].astype(float)
    # Doors are wall-labelled boxes too: they are vertical, parallel to their wall.
    np.testing.assert_allclose(normals @ up, 0.0, atol=1e-5)
    keys, group = np.unique(np.round(normals, 3), axis=0, return_inverse=True)
    assert len(keys) <= 4
    distinct = np.stack([normals[group == g].mean(0) for g in range(len(keys))])
    cos = np.abs(distinct @ distinct.T)
    assert np.all(np.isclose(cos, 0, atol=1e-4) | np.isclose(cos, 1, atol=1e-4))
    offsets = _plane_offsets(out, wall)
    for g in range(len(keys)):  # each wall is one plane, at most 7 m away (doors 4 cm closer)
      same = group.ravel() == g
      spread = offsets[same].max() - offsets[same].min()
      assert spread < 0.05 + 1e-3
      assert -7.5 < offsets[same].min() < 0
    checked += 1
  assert checked >= 3


def test_table_tops_at_table_height(scenes):
  found = 0
  for out in scenes:
    floor = out["label"] == FLOOR
    if floor.sum() < 20:
      continue
    n_up = out["normals"][floor][0]
    top = (out["label"] == TABLE) & (np.abs(out["normals"] - n_up).sum(-1) < 1e-5)
    if top.sum() < 3:
      continue
    height = _plane_offsets(out, top) - _plane_offsets(out, floor).mean()
    assert (height > 0.6).all() and (height < 0.85).all()  # tables/desks: ~0.7-0.8 m
    found += 1
  assert found >= 1


def test_label_coverage(scenes):
  counts = np.bincount(np.concatenate([o["label"].ravel() for o in scenes]), minlength=13)
  assert counts[[WALL, FLOOR, CEILING]].min() > 0
  assert (counts > 0).sum() >= 11
  assert counts[WALL] == counts.max()  # walls dominate, as in NYUv2


def test_colour_alone_does_not_give_the_class(scenes):
  train, test = scenes[:12], scenes[12:]

  def pixels(outs):
    return (np.concatenate([o["image"].reshape(-1, 3) for o in outs]).astype(float),
            np.concatenate([o["label"].ravel() for o in outs]))

  x, y = pixels(train)
  xt, yt = pixels(test)
  classes = np.unique(y)
  means = np.stack([x[y == c].mean(0) for c in classes])
  pred = classes[np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), 1)]
  assert (pred == yt).mean() < 0.9
  # The Bayes classifier on 8x8x8 colour bins (the best any colour lookup can do here).
  bins = (x // 32).astype(int) @ [64, 8, 1]
  table = np.zeros((13, 512))
  np.add.at(table, (y, bins), 1)
  lookup = table.argmax(0)[(xt // 32).astype(int) @ [64, 8, 1]]
  assert (lookup == yt).mean() < 0.9


def test_intrinsics_scale_nyu():
  np.testing.assert_allclose(rooms_render.intrinsics(480, 640),
                             (518.8579, 519.4696, 325.5824, 253.7362), rtol=1e-6)
  np.testing.assert_allclose(rooms_render.intrinsics(240, 320),
                             (259.42895, 259.7348, 162.7912, 126.8681), rtol=1e-6)


def test_same_scene_at_any_resolution():
  small, big = rooms_render.render_scene(3, 30, 40), rooms_render.render_scene(3, 60, 80)
  # Labels of the bigger image, sampled at the centres of the small one's pixels' rays...
  # pixel centres do not coincide exactly, so compare the class histograms instead.
  hs = np.bincount(small["label"].ravel(), minlength=13) / small["label"].size
  hb = np.bincount(big["label"].ravel(), minlength=13) / big["label"].size
  assert np.abs(hs - hb).sum() < 0.15


@pytest.mark.parametrize("seed,h,w", [(-1, H, W), (1.5, H, W), (0, 4, W)])
def test_bad_arguments(seed, h, w):
  with pytest.raises(ValueError, match="render_scene"):
    rooms_render.render_scene(seed, h, w)
