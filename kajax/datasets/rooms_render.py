"""Ray casting and shading for the synthetic rooms dataset (vectorised NumPy).

A pinhole camera with the NYUv2 RGB intrinsics (scaled to the output size) casts one ray per
pixel. The room is an inside-out box (the ray's exit face is the floor, ceiling or a wall);
every object box is intersected with the slab method, only over the pixels of its on-screen
bounding rectangle, keeping a z-buffer. Surfaces get procedural textures and Lambertian shading
from a point light plus ambient, then mild sensor noise.

Outputs are exact per pixel: label (0..12), z-depth in metres (distance along the optical
axis, like Kinect/NYUv2 depth) and unit normals in camera coordinates (x right, y down,
z forward), pointing toward the camera. Every pixel sees a surface, so all are valid.
"""

from __future__ import annotations

import numpy as np

from kajax.datasets import rooms_layout
from kajax.datasets import rooms_scene as rs

# NYUv2 RGB camera at 640x480 (NYU toolbox camera_params.m; shared/data/nyuv2_facts.md).
NYU_FX, NYU_FY, NYU_CX, NYU_CY = 518.8579, 519.4696, 325.5824, 253.7362
NYU_WIDTH, NYU_HEIGHT = 640, 480


def intrinsics(height: int, width: int) -> tuple[float, float, float, float]:
  """(fx, fy, cx, cy) in pixels: the NYUv2 RGB intrinsics scaled from 640x480.

  Pixel (row v, column u), 0-based, sees the camera ray ((u - cx) / fx, (v - cy) / fy, 1).
  """
  sx, sy = width / NYU_WIDTH, height / NYU_HEIGHT
  return NYU_FX * sx, NYU_FY * sy, NYU_CX * sx, NYU_CY * sy


def _hash(i, j, seed):
  """Integer lattice hash -> [0, 1): exact integer arithmetic, so identical on every CPU."""
  h = ((i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663)
       ^ (np.asarray(seed * 1000).astype(np.int64) * 83492791)) & 0xFFFFFFFF
  h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF  # < 2**59: no int64 overflow
  h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
  return (h ^ (h >> 16)) * (1.0 / 2**32)


def value_noise(u: np.ndarray, v: np.ndarray, seed: float) -> np.ndarray:
  """Smooth value noise in [0, 1] on the integer lattice, interpolated with smoothstep."""
  i, j = np.floor(u), np.floor(v)
  fu, fv = u - i, v - j
  fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
  a, b = _hash(i, j, seed), _hash(i + 1, j, seed)
  c, d = _hash(i, j + 1, seed), _hash(i + 1, j + 1, seed)
  return a + (b - a) * fu + (c - a) * fv + (a - b - c + d) * fu * fv


def _surface_table(scene):
  """Per-surface parameters: room faces 0..5 (floor, ceiling, walls 0..3), then the boxes."""
  mats = [scene.floor, scene.ceiling] + list(scene.walls) + [b.material for b in scene.boxes]
  labels = [rs.FLOOR, rs.CEILING] + [rs.WALL] * 4 + [b.label for b in scene.boxes]
  return {"kind": np.array([m.kind for m in mats]),
          "color1": np.array([m.color1 for m in mats]),
          "color2": np.array([m.color2 for m in mats]),
          "freq": np.array([m.freq for m in mats]),
          "seed": np.array([m.seed for m in mats]),
          "swap": np.array([m.swap_uv for m in mats]),
          "emission": np.array([m.emission for m in mats]),
          "label": np.array(labels, np.uint8)}


def texture(params: dict[str, np.ndarray], u: np.ndarray,
            v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Albedo (n, 3) and emission (n,) at surface coordinates u, v (metres) of n points.

  Args:
    params: per-point material parameters (kind, color1, color2, freq, seed, swap, emission),
      each with leading dimension n.
    u, v: (n,) in-face coordinates in metres.
  """
  swap = params["swap"]
  u, v = np.where(swap, v, u), np.where(swap, u, v)
  f, seed = params["freq"], params["seed"]
  u, v = u + seed, v + 0.37 * seed  # each surface shows a different part of its pattern
  fine = value_noise(u * 2 * f, v * 2 * f, seed)
  c1, c2 = params["color1"], params["color2"]
  emission = params["emission"].copy()
  m = np.zeros(u.shape)  # mix factor between color1 and color2
  kind = params["kind"]
  for k in np.unique(kind):
    i = np.nonzero(kind == k)[0]
    ui, vi, fi, si = u[i], v[i], f[i], seed[i]
    if k == rs.PLAIN:
      m[i] = 0.15 * fine[i]
    elif k == rs.NOISE:
      m[i] = 0.7 * value_noise(ui * fi, vi * fi, si + 1) + 0.3 * fine[i]
    elif k == rs.STRIPES:
      m[i] = np.clip(0.5 + 2 * np.sin(2 * np.pi * fi * ui), 0, 1)
    elif k == rs.CHECKER:
      m[i] = (np.floor(ui * fi) + np.floor(vi * fi)) % 2
    elif k == rs.GRAIN:
      m[i] = 0.5 + 0.5 * np.sin(2 * np.pi * (fi * ui + 0.7 * value_noise(ui * 0.8, vi * 3, si)))
    elif k == rs.PANES:  # glass with a frame grid; only the glass emits
      frame = ((ui * fi) % 1 < 0.08) | ((vi * fi) % 1 < 0.08)
      m[i] = frame
      emission[i] = np.where(frame, 0.0, emission[i] * (0.8 + 0.4 * fine[i]))
    elif k != rs.BLOCKS:
      raise ValueError(f"Unknown texture kind {k!r} (see rooms_scene texture kinds).")
  albedo = c1 + (c2 - c1) * m[:, None]
  b = np.nonzero(kind == rs.BLOCKS)[0]
  if len(b):  # colourful image (painting, TV picture): one noise per channel
    fb, ub, vb = f[b, None], u[b, None], v[b, None]
    offs = np.array([0.0, 17.0, 34.0])
    albedo[b] = 0.35 * c1[b] + 0.65 * value_noise(ub * fb + offs, vb * fb + 1.8 * offs,
                                                  seed[b, None])
  return albedo * (0.94 + 0.12 * fine)[:, None], emission


def _cast_room(scene, d):
  """Exit point of every ray (n, 3) from inside the room box: surface id, t, normal, u, v."""
  o, size = scene.cam_pos, scene.size
  with np.errstate(divide="ignore", invalid="ignore"):
    t_axes = np.where(d > 0, (size - o) / d, np.where(d < 0, -o / d, np.inf))
  axis = np.argmin(t_axes, axis=-1)
  n = np.arange(len(d))
  t = t_axes[n, axis]
  sign = np.sign(d[n, axis])
  normal = np.zeros(d.shape)
  normal[n, axis] = -sign
  p = o + t[:, None] * d
  # Surface ids: 0 floor, 1 ceiling, 2..5 walls z=0, x=Lx, z=Lz, x=0 (rooms_scene.Scene).
  sid = np.select([(axis == 1) & (sign < 0), axis == 1, (axis == 2) & (sign < 0),
                   (axis == 0) & (sign > 0), axis == 2], [0, 1, 2, 3, 4], 5)
  # Floor/ceiling uv = (x, z); walls uv = (along the wall, height).
  u = np.where(axis == 0, p[:, 2], p[:, 0])
  v = np.where(axis == 1, p[:, 2], p[:, 1])
  return sid, t, normal, u, v


_NEAR = 0.02  # metres; boxes are clipped to z >= _NEAR before projecting their corners.
# The 12 edges of a box as pairs of corner indices (corner i has signs from bits of i:
# x=4, y=2, z=1).
_EDGES = np.array([(i, i | bit) for i in range(8) for bit in (1, 2, 4) if not i & bit])


def _screen_rects(scene, k, height, width):
  """On-screen bounding rectangles (B, 4) = (v0, v1, u0, u1) of all boxes; empty if unseen."""
  fx, fy, cx, cy = k
  num = len(scene.boxes)
  if num == 0:
    return np.zeros((0, 4), int)
  signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
  centers = np.array([b.center for b in scene.boxes])
  halves = np.array([b.half for b in scene.boxes])
  rots = np.array([rs._ry(b.yaw) for b in scene.boxes])  # pylint: disable=protected-access
  corners = centers[:, None] + np.einsum("bkj,bij->bki", signs * halves[:, None], rots)
  cam = (corners - scene.cam_pos) @ scene.cam_rot  # camera coordinates (x right, y down, z fwd)
  # Clip each box to the near plane z >= NEAR: its visible part is bounded by the corners in
  # front of the plane and the points where its 12 edges cross the plane.
  a, b = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]
  with np.errstate(divide="ignore", invalid="ignore"):
    frac = (_NEAR - a[..., 2:]) / (b[..., 2:] - a[..., 2:])
  crossing = np.concatenate([a + frac * (b - a), cam], 1)  # (B, 20, 3)
  valid = np.concatenate([(a[..., 2] - _NEAR) * (b[..., 2] - _NEAR) < 0,
                          cam[..., 2] >= _NEAR], 1)
  z = np.maximum(crossing[..., 2], _NEAR)
  u, v = fx * crossing[..., 0] / z + cx, fy * crossing[..., 1] / z + cy
  lo, hi = np.where(valid, u, np.inf), np.where(valid, u, -np.inf)
  vlo, vhi = np.where(valid, v, np.inf), np.where(valid, v, -np.inf)
  rect = np.stack([np.floor(vlo.min(1)), np.ceil(vhi.max(1)) + 1,
                   np.floor(lo.min(1)), np.ceil(hi.max(1)) + 1], 1)
  rect[~valid.any(1)] = 0  # entirely behind the camera
  rect = np.clip(rect, 0, [height, height, width, width]).astype(int)
  return rect


def _cast_boxes(scene, d, width, buf, rect, chunk=1 << 17):
  """Slab-method intersection of every box with the rays of its rectangle, z-buffered.

  (pixel, box) pairs are enumerated in chunks of about `chunk` pairs; each chunk lowers the
  z-buffer with np.minimum.at and overwrites the pixels it wins.
  """
  if not len(rect):
    return
  area = (rect[:, 1] - rect[:, 0]) * (rect[:, 3] - rect[:, 2])
  yaw = np.array([b.yaw for b in scene.boxes])
  cos, sin = np.cos(yaw), np.sin(yaw)
  half = np.array([b.half for b in scene.boxes])
  rel = scene.cam_pos - np.array([b.center for b in scene.boxes])
  # Camera centre in each box frame: rot^T (o - c) with rot = rooms_scene._ry(yaw).
  o_local = np.stack([cos * rel[:, 0] - sin * rel[:, 2], rel[:, 1],
                      sin * rel[:, 0] + cos * rel[:, 2]], 1)
  boxes = np.nonzero(area > 0)[0]
  groups = np.split(boxes, np.nonzero(np.diff(np.cumsum(area[boxes]) // chunk))[0] + 1)
  for bs in groups:
    a = area[bs]
    bid = np.repeat(bs, a)
    off = np.arange(a.sum()) - np.repeat(np.cumsum(a) - a, a)
    w = rect[bid, 3] - rect[bid, 2]
    pix = (rect[bid, 0] + off // w) * width + rect[bid, 2] + off % w
    dw = d[pix]
    c, s = cos[bid], sin[bid]
    dl = np.stack([c * dw[:, 0] - s * dw[:, 2], dw[:, 1], s * dw[:, 0] + c * dw[:, 2]], 1)
    ol, h = o_local[bid], half[bid]
    with np.errstate(divide="ignore", invalid="ignore"):
      inv = 1.0 / dl
      t1, t2 = (-h - ol) * inv, (h - ol) * inv
    t_min = np.minimum(t1, t2)
    t_near, t_far = t_min.max(1), np.maximum(t1, t2).min(1)
    hit = np.nonzero((t_near <= t_far) & (t_near > 1e-3) & (t_near < buf["t"][pix]))[0]
    if not len(hit):
      continue
    pix, t, bid, dl, ol = pix[hit], t_near[hit], bid[hit], dl[hit], ol[hit]
    np.minimum.at(buf["t"], pix, t)
    win = np.nonzero(t <= buf["t"][pix])[0]
    pix, t, bid, dl, ol = pix[win], t[win], bid[win], dl[win], ol[win]
    axis = t_min[hit][win].argmax(1)  # the entry face is the slab entered last
    n = np.arange(len(t))
    nl = np.zeros((len(t), 3))
    nl[n, axis] = -np.sign(dl[n, axis])
    c, s = cos[bid], sin[bid]
    buf["normal"][pix] = np.stack([c * nl[:, 0] + s * nl[:, 2], nl[:, 1],
                                   -s * nl[:, 0] + c * nl[:, 2]], 1)
    p = ol + t[:, None] * dl
    # In-face coordinates: x-faces (z, y), y-faces (x, z), z-faces (x, y).
    buf["u"][pix] = p[n, np.array([2, 0, 0])[axis]]
    buf["v"][pix] = p[n, np.array([1, 2, 1])[axis]]
    buf["sid"][pix] = 6 + bid


def render(scene: rs.Scene, height: int, width: int,
           noise_rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
  """Renders a scene; see :func:`render_scene` for the outputs."""
  k = intrinsics(height, width)
  fx, fy, cx, cy = k
  vv, uu = np.meshgrid(np.arange(height, dtype=float), np.arange(width, dtype=float),
                       indexing="ij")
  vv, uu = vv.ravel(), uu.ravel()
  d_cam = np.stack([(uu - cx) / fx, (vv - cy) / fy, np.ones_like(uu)], -1)
  # Camera-frame z of every direction is 1, so the ray parameter t is the z-depth.
  d = d_cam @ scene.cam_rot.T
  sid, t, normal, u, v = _cast_room(scene, d)
  buf = {"sid": sid, "t": t, "normal": normal, "u": u, "v": v}
  _cast_boxes(scene, d, width, buf, _screen_rects(scene, k, height, width))

  table = _surface_table(scene)
  params = {key: val[buf["sid"]] for key, val in table.items() if key != "label"}
  albedo, emission = texture(params, buf["u"], buf["v"])
  normal = buf["normal"]
  # Lambertian point light with inverse-square-like falloff, ambient brighter on upward faces.
  p = scene.cam_pos + buf["t"][:, None] * d
  to_light = scene.light_pos - p
  dist = np.linalg.norm(to_light, axis=-1)
  n_dot_l = np.maximum(0.0, np.einsum("nc,nc->n", normal, to_light) / dist)
  shade = (scene.ambient * (1 + 0.15 * normal[:, 1])
           + 1.3 * scene.light_power * n_dot_l / (1 + (dist / 4) ** 2))
  r2 = ((uu - width / 2) / width) ** 2 + ((vv - height / 2) / height) ** 2
  gain = scene.exposure * (1 - 0.3 * r2)  # lens vignetting
  color = albedo * ((shade + emission) * gain)[:, None]
  if noise_rng is not None:
    color = color + noise_rng.normal(0.0, 0.012, color.shape)
  image = np.clip(color * 255 + 0.5, 0, 255).astype(np.uint8)
  return {"image": image.reshape(height, width, 3),
          "label": table["label"][buf["sid"]].reshape(height, width),
          "depth": buf["t"].astype(np.float32).reshape(height, width),
          "normals": (normal @ scene.cam_rot).astype(np.float32).reshape(height, width, 3)}


def render_scene(seed: int, height: int, width: int) -> dict[str, np.ndarray]:
  """Samples and renders one synthetic room; a pure function of (seed, height, width).

  The scene depends on the seed only, so one seed gives the same room at any resolution.

  Args:
    seed: non-negative integer.
    height, width: output size in pixels (at least 8 each).

  Returns:
    dict with ``image`` uint8 (H, W, 3); ``label`` uint8 (H, W), class ids 0..12 in the
    order of ``rooms_scene.CLASS_NAMES`` (no void pixels); ``depth`` float32 (H, W), z-depth
    in metres (> 0 everywhere); ``normals`` float32 (H, W, 3), unit surface normals in camera
    coordinates (x right, y down, z forward) facing the camera.
  """
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"render_scene: seed must be a non-negative integer, got {seed!r}.")
  if height < 8 or width < 8:
    raise ValueError(f"render_scene: image size {height}x{width} is too small (min 8x8).")
  scene = rooms_layout.sample_scene(np.random.default_rng(seed))
  return render(scene, int(height), int(width), noise_rng=np.random.default_rng([seed, 1]))
