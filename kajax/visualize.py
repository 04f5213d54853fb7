"""Pictures for people: colourised parsing, depth and normal maps, prediction grids, and a bar
chart of the branch-loss table. PIL and NumPy only (no matplotlib dependency)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from kajax import storage

# One colour per NYUv2-13 class (bed, books, ceiling, chair, floor, furniture, objects,
# picture, sofa, table, tv, wall, window); void is black.
PALETTE = np.array([
    [214, 39, 40], [255, 127, 14], [174, 199, 232], [148, 103, 189], [140, 86, 75],
    [44, 160, 44], [227, 119, 194], [255, 187, 120], [188, 189, 34], [23, 190, 207],
    [31, 119, 180], [199, 199, 199], [152, 223, 138]], np.uint8)
# Anchor colours of a perceptually ordered dark-blue -> yellow map (viridis-like).
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                 np.float64)
# The 16-bit depth PNG stores millimetres (the convention of depth cameras and NYUv2).
DEPTH_PNG_SCALE = 1000.0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def colorize_labels(labels: np.ndarray) -> np.ndarray:
  """(H,W) class ids -> (H,W,3) uint8; ids outside the palette (void) are black."""
  labels = np.asarray(labels)
  out = np.zeros(labels.shape + (3,), np.uint8)
  known = labels < len(PALETTE)
  out[known] = PALETTE[labels[known]]
  return out


def colorize_depth(depth: np.ndarray, max_depth: float = 10.0) -> np.ndarray:
  """(H,W) metres -> (H,W,3) uint8 colour map (near = dark); depth <= 0 is black."""
  depth = np.asarray(depth, np.float64)
  t = np.clip(depth / max_depth, 0.0, 1.0) * (len(_RAMP) - 1)
  lo = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
  frac = (t - lo)[..., None]
  rgb = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
  rgb[depth <= 0] = 0
  return rgb.round().astype(np.uint8)


def colorize_normals(normals: np.ndarray) -> np.ndarray:
  """(H,W,3) unit vectors -> (H,W,3) uint8 with the usual (n + 1) / 2 mapping."""
  return ((np.asarray(normals) + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8)


def depth_to_png16(depth_m: np.ndarray) -> np.ndarray:
  """Metres -> uint16 millimetres (the usual depth-camera PNG), rounded and clipped to
  0..65535, i.e. up to 65.535 m (NaN -> 0)."""
  mm = np.rint(np.nan_to_num(np.asarray(depth_m, np.float64), nan=0.0) * DEPTH_PNG_SCALE)
  return np.clip(mm, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def resize_map(array: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
  """(h, w) or (h, w, C) float/int map -> (H, W[, C]) with PIL, channel by channel (nearest
  for ids, bilinear otherwise)."""
  if array.shape[:2] == tuple(hw):
    return array
  method = Image.NEAREST if nearest else Image.BILINEAR
  mode_dtype = np.int32 if nearest else np.float32  # PIL modes 'I' and 'F'
  planes = array[..., None] if array.ndim == 2 else array
  out = np.stack([np.asarray(Image.fromarray(planes[..., c].astype(mode_dtype))
                             .resize((hw[1], hw[0]), method))
                  for c in range(planes.shape[-1])], -1)
  return out[..., 0].astype(array.dtype) if array.ndim == 2 else out.astype(array.dtype)


def denormalize_image(image: np.ndarray) -> np.ndarray:
  """ImageNet-normalised float image -> uint8 RGB."""
  return ((np.asarray(image) * IMAGENET_STD + IMAGENET_MEAN) * 255).clip(0, 255).round(
      ).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None,
         pad: int = 2) -> np.ndarray:
  """Tiles equally sized uint8 images into one picture, with optional column titles."""
  h, w = rows[0][0].shape[:2]
  title_h = 14 if titles else 0
  cols = max(len(r) for r in rows)
  canvas = np.full((title_h + len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255,
                   np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      y, x = title_h + pad + i * (h + pad), pad + j * (w + pad)
      canvas[y:y + h, x:x + w] = img
  picture = Image.fromarray(canvas)
  if titles:
    draw = ImageDraw.Draw(picture)
    for j, title in enumerate(titles):
      draw.text((pad + j * (w + pad) + 2, 1), title, fill=(0, 0, 0))
  return np.asarray(picture)


def bar_chart(task_names: Sequence[str], table: np.ndarray, chosen: Sequence[int],
              tau: float | None = None, units: Sequence[str] | None = None,
              height: int = 160, bar_width: int = 26) -> np.ndarray:
  """The branch-loss table as one bar panel per task, readable on its own.

  Each panel: a y axis from 0 to the task's largest loss with tick values and the loss's name
  and unit (``units[t]``), one bar per branch point k (x axis, "k = shared decoder blocks")
  with its value printed on top, the chosen k in red, and the admissible limit
  (1 + tau) * min as a dashed line (the rule picks the deepest k under it).

  Args:
    task_names: one name per row of ``table``.
    table: (tasks, 5) projection losses.
    chosen: the chosen k per task.
    tau: the rule's tolerance; None draws no limit line (e.g. a manual override).
    units: per task, the axis label (e.g. 'kl (nats/pixel)'); default 'loss'.
  """
  table = np.asarray(table, np.float64)
  units = list(units) if units is not None else ["loss"] * len(task_names)
  black, grey = (0, 0, 0), (150, 150, 150)
  left, top, bottom = 64, 30, 34  # Room for the y ticks, the title and the x labels.
  panel_w = left + table.shape[1] * (bar_width + 8) + 12
  picture = Image.new("RGB", (panel_w * len(task_names), top + height + bottom), "white")
  draw = ImageDraw.Draw(picture)
  for p, (name, row, k_t, unit) in enumerate(zip(task_names, table, chosen, units)):
    x0, y0 = p * panel_w + left, top + height  # Origin of this panel's axes.
    y_max = row.max() * 1.15 if row.max() > 0 else 1.0

    def y_of(value, y_max=y_max, y0=y0):
      return int(round(y0 - height * value / y_max))

    draw.text((p * panel_w + 4, 2), f"{name}: {unit}", fill=black)
    for tick in np.linspace(0.0, y_max, 4):
      y = y_of(tick)
      draw.line([x0 - 3, y, x0, y], fill=black)
      draw.text((x0 - 60, y - 5), f"{tick:8.3g}", fill=black)
    for k, v in enumerate(row):
      x = x0 + 6 + k * (bar_width + 8)
      colour = (214, 39, 40) if k == k_t else (31, 119, 180)
      # At least one pixel high: a loss near 0 (or a rounding-negative KL) still shows.
      draw.rectangle([x, min(y_of(max(v, 0.0)), y0 - 1), x + bar_width, y0 - 1], fill=colour)
      draw.text((x, y_of(v) - 11), f"{v:.3g}", fill=black)
      draw.text((x + bar_width // 2 - 3, y0 + 4), str(k), fill=black)
    draw.line([x0, top, x0, y0], fill=black)  # Axes last: on top of the bars.
    draw.line([x0, y0, x0 + table.shape[1] * (bar_width + 8), y0], fill=black)
    if tau is not None:
      limit = (1.0 + tau) * row.min()
      y = y_of(limit)
      for x in range(x0, x0 + table.shape[1] * (bar_width + 8), 8):  # Dashed.
        draw.line([x, y, x + 4, y], fill=grey)
      draw.text((p * panel_w + 4, 14), f"- - - limit (1+{tau:g}) x min = {limit:.3g}",
                fill=grey)
    draw.text((x0, y0 + 18), "k = shared decoder blocks", fill=black)
  return np.asarray(picture)


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 picture as PNG, atomically, locally or in a bucket (``gs://``)."""
  storage.write_png(path, image)
