"""Surface normals estimated from a depth map and the camera intrinsics (approximate).

The official NYUv2 labelled file has no normals; ``nyuv2/labeled_mat`` derives them from its
(in-painted) depth so that three-task configs run on it as on MTAN's copy. Each pixel is
back-projected to a 3-D point P(u, v) = z * ((u - cx) / fx, (v - cy) / fy, 1) in camera
coordinates (x right, y down, z forward, as kajax's synthetic rooms); the normal is the cross
product of central differences along the image axes, ``dP/dv x dP/du``, normalised and turned
to face the camera (n . P < 0).

These are *approximate* ground truth: depth noise and quantisation make them noisy, they are
smoothed only by the ``step``-pixel baseline, and depth edges give mixed normals. Published
NYUv2 normals (Ladicky et al., MTAN's files) come from plane fitting on the raw depth;
prefer ``nyuv2/mtan_npy`` when comparing normal metrics with papers.
"""

from __future__ import annotations

import numpy as np

from kajax.metrics import DEPTH_MAX, DEPTH_MIN

# NYUv2 RGB camera at 640x480 (NYU toolbox camera_params.m).
NYU_INTRINSICS = (518.8579, 519.4696, 325.5824, 253.7362)  # fx, fy, cx, cy in pixels


def normals_from_depth(depth: np.ndarray, intrinsics=NYU_INTRINSICS, step: int = 2
                       ) -> np.ndarray:
  """(H, W) depth in metres -> (H, W, 3) float32 unit normals; (0, 0, 0) where unknown.

  Args:
    depth: z-depth in metres; invalid outside (1e-3, 10] (0 = missing).
    intrinsics: (fx, fy, cx, cy) of this depth map's pixel grid.
    step: half-baseline of the central differences in pixels (larger = smoother).

  A pixel gets a normal when it and its four neighbours ``step`` pixels away are valid;
  border pixels closer than ``step`` to the edge get (0, 0, 0).
  """
  depth = np.asarray(depth, np.float64)
  if depth.ndim != 2:
    raise ValueError(f"normals_from_depth expects an (H, W) depth map, got {depth.shape}.")
  if step < 1:
    raise ValueError(f"step={step} must be at least 1 pixel.")
  h, w = depth.shape
  fx, fy, cx, cy = intrinsics
  v, u = np.mgrid[0:h, 0:w].astype(np.float64)
  points = np.stack([depth * (u - cx) / fx, depth * (v - cy) / fy, depth], axis=-1)
  valid = (depth > DEPTH_MIN) & (depth <= DEPTH_MAX)
  normals = np.zeros((h, w, 3), np.float64)
  ok = np.zeros((h, w), bool)
  s = step
  inner = (slice(s, h - s), slice(s, w - s))
  du = points[s:h - s, 2 * s:] - points[s:h - s, :w - 2 * s]
  dv = points[2 * s:, s:w - s] - points[:h - 2 * s, s:w - s]
  normals[inner] = np.cross(dv, du)
  ok[inner] = (valid[inner] & valid[s:h - s, 2 * s:] & valid[s:h - s, :w - 2 * s]
               & valid[2 * s:, s:w - s] & valid[:h - 2 * s, s:w - s])
  length = np.linalg.norm(normals, axis=-1)
  ok &= length > 0
  normals = np.where(ok[..., None], normals / np.where(ok, length, 1.0)[..., None], 0.0)
  # Face the camera: the ray to the point and the normal point in opposite directions.
  flip = np.sum(normals * points, axis=-1) > 0
  normals[flip] *= -1
  return normals.astype(np.float32)
