"""Scene sampling for the synthetic rooms dataset: a furnished box room and a camera in it.

World frame: metres, y up, the room is the box [0, Lx] x [0, Hr] x [0, Lz] (floor at y = 0).
Every object is a box (centre, half sizes in its own frame, yaw about the world y axis);
furniture is a composite of boxes built in a local frame (x along the wall / across, y up from
the floor, +z = the front) and then placed with one yaw. Labels are the 13 NYUv2 classes
(docs/method.md §2), ids 0..12 in the benchmark order.

Colours come from families (wood, white, beige, ...) shared between classes, so that colour
alone does not give the class: with moderate overlap a small teacher learns shapes and context
(docs/method.md §4). :mod:`kajax.datasets.rooms_render` ray casts the scene.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math

import numpy as np

CLASS_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture",
               "sofa", "table", "tv", "wall", "window")
(BED, BOOKS, CEILING, CHAIR, FLOOR, FURNITURE, OBJECTS, PICTURE, SOFA, TABLE, TV, WALL,
 WINDOW) = range(13)
NUM_CLASSES = len(CLASS_NAMES)

# Texture kinds (see rooms_render.texture).
PLAIN, NOISE, STRIPES, CHECKER, GRAIN, BLOCKS, PANES = range(7)

# Colour families as HSV ranges (hue in degrees; None = any hue).
_FAMILIES = {
    "wood": ((18, 40), (0.35, 0.7), (0.25, 0.7)),
    "white": (None, (0.0, 0.08), (0.72, 0.95)),
    "beige": ((25, 50), (0.12, 0.32), (0.55, 0.9)),
    "grey": (None, (0.0, 0.1), (0.3, 0.7)),
    "black": (None, (0.0, 0.15), (0.06, 0.22)),
    "pastel": (None, (0.1, 0.35), (0.6, 0.9)),
    "vivid": (None, (0.45, 0.9), (0.3, 0.85)),
    "sky": ((190, 215), (0.3, 0.6), (0.7, 0.95)),
}
# Per-class family weights: overlapping on purpose (wood tables, furniture, chairs and floors;
# white walls, ceilings, beds and cabinets; fabric colours on sofas, beds, books and curtains).
_CLASS_FAMILIES = {
    BED: {"white": .35, "pastel": .25, "vivid": .25, "beige": .15},
    BOOKS: {"vivid": .6, "pastel": .15, "white": .15, "black": .1},
    CEILING: {"white": .75, "beige": .15, "pastel": .1},
    CHAIR: {"wood": .3, "black": .25, "vivid": .2, "grey": .15, "white": .1},
    FLOOR: {"wood": .45, "grey": .2, "beige": .2, "vivid": .05, "black": .1},
    FURNITURE: {"wood": .45, "white": .25, "grey": .15, "black": .1, "beige": .05},
    OBJECTS: {f: 1.0 for f in ("wood", "white", "beige", "grey", "black", "pastel", "vivid")},
    PICTURE: {"vivid": .4, "pastel": .3, "wood": .1, "black": .1, "white": .1},
    SOFA: {"vivid": .3, "grey": .25, "beige": .2, "black": .15, "pastel": .1},
    TABLE: {"wood": .5, "white": .2, "black": .15, "grey": .15},
    TV: {"black": .85, "grey": .15},
    WALL: {"white": .3, "beige": .3, "pastel": .3, "grey": .1},
    WINDOW: {"sky": 1.0},
}
# Texture kinds per family (fabric-like colours get noise/stripes, wood gets grain).
_FAMILY_KINDS = {
    "wood": {GRAIN: .7, PLAIN: .3}, "white": {PLAIN: .7, NOISE: .2, STRIPES: .1},
    "beige": {PLAIN: .5, NOISE: .4, STRIPES: .1}, "grey": {PLAIN: .5, NOISE: .35, CHECKER: .15},
    "black": {PLAIN: .8, NOISE: .2}, "pastel": {PLAIN: .5, NOISE: .35, STRIPES: .15},
    "vivid": {PLAIN: .45, NOISE: .35, STRIPES: .15, CHECKER: .05}, "sky": {PANES: 1.0},
}
# Each class also has a signature colour range (HSV, texture kinds of a family), drawn with
# probability SIGNATURE_WEIGHT, else a shared family above; this sets the colour overlap
# (docs/method.md §4). Measured (96x128, 1000 images, a quick width-1/8 SegNet, 750 Adam
# steps): 0.21 mIoU with shared families only, 0.22-0.24 with 0.6 -- the scenes' clutter, not
# colour, limits such a short run. Best colour-only lookup: 0.13 -> 0.21 mIoU. With the framed
# camera (rooms_layout) and 500 steps: 0.25 at 0.85 and 0.22 at 0.95 (lookup 0.37 -> 0.45):
# more colour overlap is not what holds the teacher back (run-to-run spread is ~0.03).
SIGNATURE_WEIGHT = 0.85
_SIGNATURES = {
    BED: (((200, 240), (0.35, 0.6), (0.6, 0.9)), "pastel"),
    BOOKS: ((None, (0.5, 0.9), (0.35, 0.85)), "vivid"),
    CEILING: ((None, (0.0, 0.06), (0.8, 0.97)), "white"),
    CHAIR: (((-20, 12), (0.6, 0.9), (0.45, 0.8)), "vivid"),
    FLOOR: (((15, 40), (0.2, 0.45), (0.25, 0.5)), "wood"),
    FURNITURE: (((38, 52), (0.3, 0.5), (0.5, 0.8)), "wood"),
    OBJECTS: (((280, 340), (0.45, 0.85), (0.45, 0.85)), "vivid"),
    PICTURE: ((None, (0.5, 0.9), (0.4, 0.9)), "vivid"),
    SOFA: (((100, 170), (0.4, 0.7), (0.4, 0.7)), "beige"),
    TABLE: (((22, 36), (0.65, 0.9), (0.4, 0.65)), "wood"),
    TV: ((None, (0.0, 0.1), (0.03, 0.12)), "black"),
    WALL: (((30, 60), (0.05, 0.25), (0.65, 0.9)), "white"),
    WINDOW: (((190, 215), (0.3, 0.6), (0.7, 0.95)), "sky"),
}
for _label, (_hsv, _kinds) in _SIGNATURES.items():  # signature family key = the class id
  _FAMILIES[_label] = _hsv
  _FAMILY_KINDS[_label] = _FAMILY_KINDS[_kinds]
  _shared = _CLASS_FAMILIES[_label]
  _total = sum(_shared.values())
  _CLASS_FAMILIES[_label] = {_label: SIGNATURE_WEIGHT, **{
      f: (1 - SIGNATURE_WEIGHT) * w / _total for f, w in _shared.items()}}


@dataclasses.dataclass
class Material:
  """Surface appearance: a procedural texture mixing two albedos (RGB in [0, 1])."""
  kind: int
  color1: np.ndarray
  color2: np.ndarray
  freq: float  # pattern repeats per metre
  seed: float  # offsets the noise so equal materials do not look identical
  swap_uv: bool = False  # stripe/grain direction
  emission: float = 0.0  # self-lit part (window glass, TV screens)


@dataclasses.dataclass
class Box:
  """An oriented box: world centre, half sizes in its own frame, yaw about +y (radians)."""
  center: np.ndarray
  half: np.ndarray
  yaw: float
  label: int
  material: Material


@dataclasses.dataclass
class Scene:
  """A furnished room, a camera and a point light (all in world coordinates, metres).

  Attributes:
    size: (Lx, Hr, Lz) room extent; floor y=0, ceiling y=Hr.
    floor, ceiling: materials of those planes; walls: materials of walls 0..3 (z=0, x=Lx,
      z=Lz, x=0).
    boxes: every object in the room.
    cam_pos: (3,) camera centre. cam_rot: (3, 3) world-from-camera rotation whose columns
      are the camera's right, down and forward axes.
    light_pos: (3,) point light; light_power, ambient, exposure: shading scalars.
  """
  size: np.ndarray
  floor: Material
  ceiling: Material
  walls: list
  boxes: list
  cam_pos: np.ndarray
  cam_rot: np.ndarray
  light_pos: np.ndarray
  light_power: float
  ambient: float
  exposure: float


def _color(rng, family):
  hue, sat, val = _FAMILIES[family]
  h = rng.uniform(*hue) / 360 % 1 if hue else rng.uniform()
  return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))


def _pick(rng, weights):
  """A key of `weights` drawn with probability proportional to its value (plain Python: fast)."""
  r = rng.uniform() * sum(weights.values())
  for key, w in weights.items():
    r -= w
    if r < 0:
      return key
  return key  # pylint: disable=undefined-loop-variable  (rounding at the top end)


def material(rng, label, kind=None, family=None, emission=0.0):
  """Samples a material for a class: a colour family, then a texture kind and its colours."""
  family = family or _pick(rng, _CLASS_FAMILIES[label])
  kind = _pick(rng, _FAMILY_KINDS[family]) if kind is None else kind
  c1 = _color(rng, family)
  if kind in (STRIPES, CHECKER) and rng.uniform() < 0.5:
    c2 = _color(rng, _pick(rng, _CLASS_FAMILIES[label]))  # two-colour pattern
  elif kind == PANES:
    c2 = _color(rng, _pick(rng, {"white": .6, "wood": .2, "black": .2}))  # window frame
  else:
    c2 = np.clip(c1 * rng.uniform(0.55, 0.85), 0, 1)
  # Low frequencies: at 96x128 a 10/m pattern seen from 3 m is near the pixel pitch (noise).
  freq = {PLAIN: 4.0, NOISE: rng.uniform(1.5, 5), STRIPES: rng.uniform(2, 6),
          CHECKER: rng.uniform(1.5, 4), GRAIN: rng.uniform(2, 5), BLOCKS: rng.uniform(3, 6),
          PANES: rng.uniform(1.5, 3)}[kind]
  return Material(kind, c1, c2, float(freq), float(rng.uniform(0, 100)),
                  bool(rng.uniform() < 0.5), float(emission))


def _part(center, half, label, mat):
  return (np.asarray(center, float), np.asarray(half, float), label, mat)


def _ry(yaw):
  """Rotation about +y mapping a local (x, z) to world (c x + s z, -s x + c z)."""
  c, s = math.cos(yaw), math.sin(yaw)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _items_on(rng, parts, top_y, hx, hz, n_max, books=True):
  """Small objects (and a stack of books) on a horizontal surface of half sizes hx, hz."""
  for _ in range(rng.integers(0, n_max + 1)):
    # Half sizes: big enough to cover a few pixels at 96x128 from ~2-3 m.
    sx, sy, sz = rng.uniform(0.07, 0.18), rng.uniform(0.06, 0.2), rng.uniform(0.07, 0.18)
    if sx > hx or sz > hz:
      continue
    x, z = rng.uniform(-hx + sx, hx - sx), rng.uniform(-hz + sz, hz - sz)
    if books and rng.uniform() < 0.4:  # a stack of lying books
      y = top_y
      for _ in range(rng.integers(2, 6)):
        t = rng.uniform(0.02, 0.04)
        parts.append(_part((x, y + t, z), (sx, t, sz), BOOKS, material(rng, BOOKS)))
        y += 2 * t
    else:
      parts.append(_part((x, top_y + sy, z), (sx, sy, sz), OBJECTS, material(rng, OBJECTS)))


def table(rng):
  """Top + 4 legs (or two side panels, a desk) with objects on top. Returns (parts, w, d)."""
  w, d, h = rng.uniform(1.0, 1.8), rng.uniform(0.7, 1.0), rng.uniform(0.68, 0.78)
  t, leg = rng.uniform(0.05, 0.08), rng.uniform(0.035, 0.055)
  mat = material(rng, TABLE)
  parts = [_part((0, h - t / 2, 0), (w / 2, t / 2, d / 2), TABLE, mat)]
  if rng.uniform() < 0.75:
    for sx in (-1, 1):
      for sz in (-1, 1):
        parts.append(_part((sx * (w / 2 - 2 * leg), (h - t) / 2, sz * (d / 2 - 2 * leg)),
                           (leg, (h - t) / 2, leg), TABLE, mat))
  else:
    for sx in (-1, 1):
      parts.append(_part((sx * (w / 2 - 0.02), (h - t) / 2, 0), (0.02, (h - t) / 2, d / 2 - 0.02),
                         TABLE, mat))
  _items_on(rng, parts, h, w / 2, d / 2, 3)
  return parts, w, d


def chair(rng):
  """Seat + 4 legs + back (at local -z); the front faces +z. Returns (parts, w, d)."""
  w, h = rng.uniform(0.45, 0.55), rng.uniform(0.42, 0.48)
  t, leg, bh = rng.uniform(0.06, 0.1), rng.uniform(0.03, 0.045), rng.uniform(0.4, 0.55)
  mat = material(rng, CHAIR)
  parts = [_part((0, h - t / 2, 0), (w / 2, t / 2, w / 2), CHAIR, mat),
           _part((0, h + bh / 2, -w / 2 + 0.03), (w / 2, bh / 2, 0.03), CHAIR, mat)]
  for sx in (-1, 1):
    for sz in (-1, 1):
      parts.append(_part((sx * (w / 2 - leg), (h - t) / 2, sz * (w / 2 - leg)),
                         (leg, (h - t) / 2, leg), CHAIR, mat))
  return parts, w, w


def sofa(rng):
  """Seat base + back + two arms, cushions (objects) on the seat. Returns (parts, w, d)."""
  w, d, h = rng.uniform(1.4, 2.4), rng.uniform(0.8, 1.0), rng.uniform(0.38, 0.45)
  bh, bt, aw = rng.uniform(0.75, 0.95), rng.uniform(0.15, 0.25), rng.uniform(0.1, 0.2)
  ah = rng.uniform(0.55, 0.65)
  mat = material(rng, SOFA)
  parts = [_part((0, h / 2, 0), (w / 2, h / 2, d / 2), SOFA, mat),
           _part((0, bh / 2, -d / 2 + bt / 2), (w / 2, bh / 2, bt / 2), SOFA, mat)]
  for sx in (-1, 1):
    parts.append(_part((sx * (w / 2 - aw / 2), ah / 2, 0), (aw / 2, ah / 2, d / 2), SOFA, mat))
  for _ in range(rng.integers(0, 3)):  # pillows are 'objects' in NYUv2-13
    x = rng.uniform(-w / 2 + aw + 0.2, w / 2 - aw - 0.2)
    parts.append(_part((x, h + 0.2, -d / 2 + bt + 0.06), (0.2, 0.2, 0.06), OBJECTS,
                       material(rng, OBJECTS)))
  return parts, w, d


def bed(rng):
  """Frame + mattress + headboard (at local -z), pillows and maybe a blanket."""
  w, d = rng.uniform(0.9, 1.8), rng.uniform(1.9, 2.1)
  fh, mh, hh = rng.uniform(0.2, 0.35), rng.uniform(0.18, 0.28), rng.uniform(0.8, 1.1)
  frame = material(rng, BED, family=_pick(rng, {"wood": .6, "white": .2, "black": .2}))
  parts = [_part((0, fh / 2, 0), (w / 2, fh / 2, d / 2), BED, frame),
           _part((0, fh + mh / 2, 0.02), (w / 2 - 0.03, mh / 2, d / 2 - 0.06), BED,
                 material(rng, BED)),
           _part((0, hh / 2, -d / 2 + 0.03), (w / 2, hh / 2, 0.03), BED, frame)]
  top = fh + mh
  if rng.uniform() < 0.6:
    parts.append(_part((0, top + 0.02, 0.25), (w / 2 - 0.02, 0.03, d / 2 - 0.3), BED,
                       material(rng, BED)))
  n = 1 if w < 1.3 else 2
  for i in range(n):
    x = 0 if n == 1 else (i - 0.5) * w / 2
    parts.append(_part((x, top + 0.09, -d / 2 + 0.3), (min(0.32, w / 2 / n - 0.03), 0.09, 0.2),
                       OBJECTS, material(rng, OBJECTS)))
  return parts, w, d


def cabinet(rng, low=False, max_width=1.6):
  """A dresser / wardrobe / nightstand / TV stand: a box with knobs and things on top."""
  w, d = rng.uniform(0.4, max_width), rng.uniform(0.35, 0.6)
  h = rng.uniform(0.45, 0.8) if low or rng.uniform() < 0.6 else rng.uniform(1.7, 2.2)
  mat = material(rng, FURNITURE)
  parts = [_part((0, h / 2, 0), (w / 2, h / 2, d / 2), FURNITURE, mat)]
  knob = material(rng, FURNITURE, family=_pick(rng, {"black": .5, "grey": .5}))
  rows = max(1, int(h / 0.3))
  for r in range(rows):
    parts.append(_part((0, (r + 0.5) * h / rows, d / 2 + 0.01), (0.06, 0.012, 0.01), FURNITURE,
                       knob))
  if h < 1.2:
    _items_on(rng, parts, h, w / 2, d / 2, 3)
  return parts, w, d, h


def bookshelf(rng):
  """Open shelf: back, sides, top, bottom, boards, with rows of standing books."""
  w, d, h = rng.uniform(0.8, 1.4), rng.uniform(0.28, 0.4), rng.uniform(1.4, 2.0)
  t = 0.02
  mat = material(rng, FURNITURE)
  parts = [_part((0, h / 2, -d / 2 + t / 2), (w / 2, h / 2, t / 2), FURNITURE, mat)]
  for sx in (-1, 1):
    parts.append(_part((sx * (w / 2 - t / 2), h / 2, 0), (t / 2, h / 2, d / 2), FURNITURE, mat))
  n = int(rng.integers(3, 5))
  for i in range(n + 1):
    parts.append(_part((0, i * (h - t) / n + t / 2, 0), (w / 2, t / 2, d / 2), FURNITURE, mat))
  for i in range(n):
    y0, gap = i * (h - t) / n + t, (h - t) / n - t
    x = -w / 2 + t
    while x < w / 2 - t - 0.06:
      bw, bh = rng.uniform(0.03, 0.07), rng.uniform(0.65, 0.95) * gap
      if rng.uniform() < 0.05:  # a gap between the books
        x += rng.uniform(0.05, 0.15)
        continue
      bd = rng.uniform(0.75, 0.95) * (d - t)
      parts.append(_part((x + bw / 2, y0 + bh / 2, d / 2 - bd / 2), (bw / 2, bh / 2, bd / 2),
                         BOOKS, material(rng, BOOKS)))
      x += bw + 0.002
  return parts, w, d, h


def tv(rng, y0):
  """A 16:9 screen standing at height y0 (bottom); dark, or on (a colourful image)."""
  w = rng.uniform(0.9, 1.5)
  h, t = w * 9 / 16, rng.uniform(0.04, 0.08)
  screen = (material(rng, TV, kind=BLOCKS, family="vivid", emission=0.4)
            if rng.uniform() < 0.15 else material(rng, TV, kind=PLAIN))
  return [_part((0, y0 + h / 2, 0), (w / 2, h / 2, t / 2), TV, screen)], w, t, h


def window(rng):
  """Glass panes with a frame, maybe with curtains (label window in NYUv2-13)."""
  w, h, y0 = rng.uniform(0.9, 2.0), rng.uniform(1.0, 1.5), rng.uniform(0.7, 1.0)
  parts = [_part((0, y0 + h / 2, 0.01), (w / 2, h / 2, 0.01), WINDOW,
                 material(rng, WINDOW, emission=rng.uniform(0.2, 0.5)))]
  width = w
  if rng.uniform() < 0.4:
    cur = material(rng, SOFA, kind=STRIPES)  # curtain fabric, from the sofa/bed colour pool
    cur.swap_uv, cur.freq = False, rng.uniform(6, 12)
    cw, bottom = rng.uniform(0.25, 0.5), rng.choice([0.02, y0 - 0.15])
    top = min(y0 + h + 0.15, 2.35)
    for sx in (-1, 1):
      parts.append(_part((sx * (w / 2 + cw / 2 - 0.05), (top + bottom) / 2, 0.06),
                         (cw / 2, (top - bottom) / 2, 0.04), WINDOW, cur))
    width = w + 2 * cw
  return parts, width, y0, y0 + h + 0.15


def picture(rng, bottom=None):
  """A frame and a slightly smaller canvas with a colourful pattern (bottom edge: metres)."""
  w, h = rng.uniform(0.5, 1.3), rng.uniform(0.45, 0.95)
  y = rng.uniform(1.35, 1.75) if bottom is None else bottom + h / 2
  frame = material(rng, PICTURE, kind=PLAIN, family=_pick(rng, {"wood": .4, "black": .3,
                                                                 "white": .3}))
  canvas = material(rng, PICTURE, kind=BLOCKS)
  b = rng.uniform(0.02, 0.06)
  parts = [_part((0, y, 0.015), (w / 2, h / 2, 0.015), PICTURE, frame),
           _part((0, y, 0.031), (w / 2 - b, h / 2 - b, 0.002), PICTURE, canvas)]
  return parts, w, y - h / 2, y + h / 2


def door(rng):
  """A door on a wall: labelled wall in NYUv2-13 (door -> wall)."""
  w, h = rng.uniform(0.75, 0.95), rng.uniform(1.95, 2.1)
  mat = material(rng, WALL, family=_pick(rng, {"wood": .5, "white": .3, "grey": .2}))
  return [_part((0, h / 2, 0.02), (w / 2, h / 2, 0.02), WALL, mat)], w, 0.0, h


def floor_clutter(rng):
  """A bin / box / bag, or a floor lamp (pole + shade): 'objects'."""
  if rng.uniform() < 0.15:
    mat = material(rng, OBJECTS)
    return [_part((0, 0.75, 0), (0.015, 0.75, 0.015), OBJECTS, mat),
            _part((0, 1.55, 0), (0.18, 0.13, 0.18), OBJECTS, material(rng, OBJECTS))], 0.36, 0.36
  w, h, d = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.6)
  return [_part((0, h / 2, 0), (w / 2, h / 2, d / 2), OBJECTS, material(rng, OBJECTS))], w, d


def place(parts, x, z, yaw, y0=0.0):
  """Composite local frame -> world boxes: rotate by yaw, move to (x, y0, z)."""
  rot, origin = _ry(yaw), np.array([x, y0, z])
  return [Box(origin + rot @ c, h, yaw, label, mat) for c, h, label, mat in parts]
