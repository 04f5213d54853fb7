"""Tests for kajax.datasets.depth_normals against planes whose normals are known by hand."""

import numpy as np
import pytest

from kajax.datasets.depth_normals import NYU_INTRINSICS, normals_from_depth

H, W = 48, 64
K = (60.0, 55.0, 31.5, 23.5)  # fx, fy, cx, cy of a small test camera


def plane_depth(normal, offset, intrinsics=K):
  """z-depth of the plane n . P = offset seen through a pinhole camera (by hand: P = z * ray,
  so z = offset / (n . ray))."""
  fx, fy, cx, cy = intrinsics
  v, u = np.mgrid[0:H, 0:W].astype(np.float64)
  rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)
  return offset / (rays @ np.asarray(normal, np.float64))


@pytest.mark.parametrize("normal", [(0, 0, -1), (0.6, 0, -0.8), (0, -0.8, -0.6),
                                    (0.36, 0.48, -0.8)])
def test_plane_normals_are_recovered_facing_the_camera(normal):
  # n . P = -2 with n pointing toward the camera (n . P < 0 for points in front of it).
  depth = plane_depth(normal, -2.0)
  assert np.all((depth > 0.1) & (depth < 10))
  got = normals_from_depth(depth.astype(np.float32), K, step=2)
  np.testing.assert_allclose(got[2:-2, 2:-2], np.broadcast_to(normal, (H - 4, W - 4, 3)),
                             atol=2e-5)
  assert np.all(got[:2] == 0) and np.all(got[:, -2:] == 0)  # borders: no neighbours


def test_invalid_depth_gives_no_normal_and_units_are_unit():
  depth = plane_depth((0.6, 0, -0.8), -2.0).astype(np.float32)
  depth[20, 30] = 0.0  # missing measurement
  got = normals_from_depth(depth, K, step=1)
  # The pixel itself and its 4 neighbours one step away lose their normal.
  for r, c in ((20, 30), (19, 30), (21, 30), (20, 29), (20, 31)):
    assert np.all(got[r, c] == 0), (r, c)
  assert np.any(got[18, 30] != 0)
  lengths = np.linalg.norm(got, axis=-1)
  np.testing.assert_allclose(lengths[lengths > 0], 1.0, atol=1e-6)


def test_nyu_intrinsics_and_errors():
  assert NYU_INTRINSICS == (518.8579, 519.4696, 325.5824, 253.7362)
  with pytest.raises(ValueError, match=r"\(H, W\) depth"):
    normals_from_depth(np.ones((2, 4, 4)))
  with pytest.raises(ValueError, match="step=0"):
    normals_from_depth(np.ones((4, 4)), step=0)
