"""Room layout for the synthetic rooms dataset: furniture placement, camera and light.

A room of random size gets a type (bedroom, living room, office, dining room) that shifts the
mix of its main furniture (every type may hold every class, so each class is seen often); wall
pieces go against walls, tables stand free with chairs around them, windows/pictures/doors hang
on walls without overlapping each other, pictures often above a bed/sofa/cabinet. The camera is
a hand-held Kinect, outside every object: mostly framing one piece of furniture from 1.6-3 m
(rarer classes weighted up), so furniture rather than bare wall fills the view; otherwise an
about-level view across the room (which also shows the ceiling).
Composites and materials come from :mod:`kajax.datasets.rooms_scene`.
"""

from __future__ import annotations

import math

import numpy as np

from kajax.datasets import rooms_scene as rs

# Wall w: 0 is z=0, 1 is x=Lx, 2 is z=Lz, 3 is x=0. Yaw that turns a composite's local +z
# (its front) to face into the room, given rooms_scene._ry.
_WALL_YAW = (0.0, -math.pi / 2, math.pi, math.pi / 2)


class _Layout:
  """Occupied floor rectangles and wall rectangles, for rejection sampling."""

  def __init__(self, size):
    self.lx, self.hr, self.lz = size
    self.floor = []  # (xmin, xmax, zmin, zmax)
    self.wall = {w: [] for w in range(4)}  # (s0, s1, y0, y1) along each wall
    self.boxes = []
    # Placed composites the camera may frame: (centre (3,), front (dx, dz) or None, width,
    # weight); rarer/smaller classes (tables, TVs) get more weight.
    self.items = []

  def wall_len(self, w):
    return self.lx if w % 2 == 0 else self.lz

  def wall_frame(self, w, s, off):
    """World (x, z) of the point s along wall w, off metres into the room."""
    return [(s, off), (self.lx - off, s), (self.lx - s, self.lz - off), (off, self.lz - s)][w]

  def floor_free(self, rect, margin=0.05):
    x0, x1, z0, z1 = rect
    if x0 < 0.01 or z0 < 0.01 or x1 > self.lx - 0.01 or z1 > self.lz - 0.01:
      return False
    return all(x0 > b[1] + margin or x1 < b[0] - margin or z0 > b[3] + margin
               or z1 < b[2] - margin for b in self.floor)

  def wall_free(self, w, span):
    s0, s1, y0, y1 = span
    return all(s0 > o[1] or s1 < o[0] or y0 > o[3] or y1 < o[2] for o in self.wall[w])


def _front(wi):
  """Unit (dx, dz) pointing from wall wi into the room."""
  return [(0.0, 1.0), (-1.0, 0.0), (0.0, -1.0), (1.0, 0.0)][wi]


def _footprint(x, z, w, d, yaw):
  """Axis-aligned bounds of a w x d rectangle centred at (x, z) and turned by yaw."""
  c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
  ex, ez = (c * w + s * d) / 2, (s * w + c * d) / 2
  return (x - ex, x + ex, z - ez, z + ez)


def _against_wall(rng, lay, parts, w, d, h, tries=20, wall=None, weight=1.0):
  """Puts a composite with its back to a wall; returns (wall, s) or None if it did not fit."""
  for _ in range(tries):
    wi = int(rng.integers(4)) if wall is None else wall
    length = lay.wall_len(wi)
    if w + 0.1 > length:
      continue
    s = rng.uniform(w / 2 + 0.05, length - w / 2 - 0.05)
    x, z = lay.wall_frame(wi, s, d / 2 + 0.01)
    rect = _footprint(x, z, w, d, _WALL_YAW[wi])
    span = (s - w / 2, s + w / 2, 0.0, h)
    if lay.floor_free(rect) and lay.wall_free(wi, span):
      lay.floor.append(rect)
      lay.wall[wi].append(span)
      lay.boxes += rs.place(parts, x, z, _WALL_YAW[wi])
      lay.items.append((np.array([x, min(h, 1.6) / 2, z]), _front(wi), w, weight))
      return wi, s
  return None


def _on_wall(rng, lay, parts, w, y0, y1, tries=20, frame=0.0):
  """Hangs a thin composite (window, picture, door) on a free part of a wall."""
  for _ in range(tries):
    wi = int(rng.integers(4))
    length = lay.wall_len(wi)
    if w + 0.2 > length:
      continue
    s = rng.uniform(w / 2 + 0.1, length - w / 2 - 0.1)
    span = (s - w / 2 - 0.05, s + w / 2 + 0.05, y0, y1)
    if lay.wall_free(wi, span):
      lay.wall[wi].append(span)
      x, z = lay.wall_frame(wi, s, 0.0)
      lay.boxes += rs.place(parts, x, z, _WALL_YAW[wi])
      if frame:
        lay.items.append((np.array([x, (y0 + y1) / 2, z]), _front(wi), w, frame))
      return True
  return False


def _table_group(rng, lay, tries=20):
  """A free-standing table with up to four chairs around it facing it."""
  parts, w, d = rs.table(rng)
  for _ in range(tries):
    yaw = rng.uniform(0, 2 * math.pi) if rng.uniform() < 0.4 else rng.integers(4) * math.pi / 2
    x, z = rng.uniform(0.5, lay.lx - 0.5), rng.uniform(0.5, lay.lz - 0.5)
    rect = _footprint(x, z, w + 1.2, d + 1.2, yaw)  # room for the chairs
    if not lay.floor_free(rect):
      continue
    lay.floor.append(_footprint(x, z, w + 1.1, d + 1.1, yaw))
    lay.boxes += rs.place(parts, x, z, yaw)
    lay.items.append((np.array([x, 0.55, z]), None, w + 0.6, 2.5))
    rot = rs._ry(yaw)  # pylint: disable=protected-access
    sides = [(0, d / 2 + 0.3, math.pi), (0, -d / 2 - 0.3, 0.0),
             (w / 2 + 0.3, 0, -math.pi / 2), (-w / 2 - 0.3, 0, math.pi / 2)]
    for sx, sz, turn in sides:
      if rng.uniform() < 0.6:
        cparts, _, _ = rs.chair(rng)
        pos = rot @ np.array([sx, 0.0, sz])
        # The chair's back is at its local -z; turn so its front faces the table.
        lay.boxes += rs.place(cparts, x + pos[0], z + pos[2],
                              yaw + turn + rng.uniform(-0.3, 0.3))
    return True
  return False


def _door(rng, lay, tries=20):
  """A door on a wall, keeping the floor in front of it free."""
  parts, w, _, h = rs.door(rng)
  for _ in range(tries):
    wi = int(rng.integers(4))
    length = lay.wall_len(wi)
    if w + 0.2 > length:
      continue
    s = rng.uniform(w / 2 + 0.1, length - w / 2 - 0.1)
    x, z = lay.wall_frame(wi, s, 0.4)
    rect = _footprint(x, z, w, 0.8, _WALL_YAW[wi])
    span = (s - w / 2 - 0.05, s + w / 2 + 0.05, 0.0, h)
    if lay.floor_free(rect) and lay.wall_free(wi, span):
      lay.floor.append(rect)
      lay.wall[wi].append(span)
      x, z = lay.wall_frame(wi, s, 0.0)
      lay.boxes += rs.place(parts, x, z, _WALL_YAW[wi])
      return


def _free_standing(rng, lay, parts, w, d, tries=20):
  for _ in range(tries):
    yaw = rng.uniform(0, 2 * math.pi)
    x, z = rng.uniform(0.4, lay.lx - 0.4), rng.uniform(0.4, lay.lz - 0.4)
    rect = _footprint(x, z, w, d, yaw)
    if lay.floor_free(rect):
      lay.floor.append(rect)
      lay.boxes += rs.place(parts, x, z, yaw)
      return True
  return False


def _picture_above(rng, lay, placed, top):
  """Maybe hangs a picture on the wall above a piece placed at `placed` = (wall, s)."""
  if placed is None or rng.uniform() > 0.7:
    return
  wi, s = placed
  parts, w, y0, y1 = rs.picture(rng, bottom=top + rng.uniform(0.15, 0.35))
  span = (s - w / 2 - 0.05, s + w / 2 + 0.05, y0, y1)
  if y1 < lay.hr - 0.1 and s - w / 2 > 0.1 and s + w / 2 < lay.wall_len(wi) - 0.1 \
      and lay.wall_free(wi, span):
    lay.wall[wi].append(span)
    x, z = lay.wall_frame(wi, s, 0.0)
    lay.boxes += rs.place(parts, x, z, _WALL_YAW[wi])


def _bed_group(rng, lay):
  parts, w, d = rs.bed(rng)
  placed = _against_wall(rng, lay, parts, w, d, 1.1)
  _picture_above(rng, lay, placed, 1.1)
  if placed and rng.uniform() < 0.7:  # nightstand next to the bed
    wi, s = placed
    nparts, nw, nd, _ = rs.cabinet(rng, low=True, max_width=0.55)
    for side in (-1, 1):
      ns = s + side * (w / 2 + nw / 2 + 0.05)
      if nw / 2 < ns < lay.wall_len(wi) - nw / 2:
        x, z = lay.wall_frame(wi, ns, nd / 2 + 0.01)
        rect = _footprint(x, z, nw, nd, _WALL_YAW[wi])
        if lay.floor_free(rect, margin=0.0):
          lay.floor.append(rect)
          lay.boxes += rs.place(nparts, x, z, _WALL_YAW[wi])
          break


def _tv(rng, lay):
  sparts, sw, sd, sh = rs.cabinet(rng, low=True)
  if rng.uniform() < 0.6:  # on a TV stand
    tparts, tw, _, th = rs.tv(rng, sh)
    _against_wall(rng, lay, sparts + tparts, max(sw, tw), sd, sh + th, weight=2.0)
  else:  # wall-mounted
    y0 = rng.uniform(0.9, 1.2)
    tparts, tw, _, th = rs.tv(rng, y0)
    _on_wall(rng, lay, tparts, tw, y0, y0 + th, frame=2.0)


# Main pieces per room type: probability of each (every type may hold every class, so each
# class shows up often; the room type only shifts the mix).
_ROOM_MIX = {
    "bedroom": {"bed": .95, "sofa": .3, "tv": .5, "table": .4, "shelf": .5},
    "living": {"bed": .3, "sofa": .95, "tv": .9, "table": .5, "shelf": .5},
    "office": {"bed": .3, "sofa": .4, "tv": .4, "table": .95, "shelf": .9},
    "dining": {"bed": .3, "sofa": .4, "tv": .4, "table": .95, "shelf": .5},
}


def _furnish(rng, lay):
  mix = _ROOM_MIX[str(rng.choice(list(_ROOM_MIX)))]
  # Doors first (they keep the floor in front of them free), then the main pieces.
  if rng.uniform() < 0.2:
    _door(rng, lay)
  if rng.uniform() < mix["bed"]:
    _bed_group(rng, lay)
  if rng.uniform() < mix["sofa"]:
    parts, w, d = rs.sofa(rng)
    _picture_above(rng, lay, _against_wall(rng, lay, parts, w, d, 0.95), 0.95)
  if rng.uniform() < mix["tv"]:
    _tv(rng, lay)
  if rng.uniform() < mix["table"]:
    _table_group(rng, lay)
  if rng.uniform() < mix["shelf"]:
    parts, w, d, h = rs.bookshelf(rng)
    _against_wall(rng, lay, parts, w, d, h)
  for _ in range(rng.integers(1, 3)):
    parts, w, d, h = rs.cabinet(rng)
    placed = _against_wall(rng, lay, parts, w, d, h)
    if h < 1.2:
      _picture_above(rng, lay, placed, h)
  for _ in range(rng.integers(1, 3)):
    parts, w, d = rs.floor_clutter(rng)
    _free_standing(rng, lay, parts, w, d)
  if rng.uniform() < 0.4:  # an extra chair somewhere
    parts, w, d = rs.chair(rng)
    _free_standing(rng, lay, parts, w, d)
  for _ in range(rng.integers(0, 3)):
    parts, w, y0, y1 = rs.window(rng)
    _on_wall(rng, lay, parts, w, y0, y1, frame=0.3)
  for _ in range(rng.integers(1, 4)):
    parts, w, y0, y1 = rs.picture(rng)
    _on_wall(rng, lay, parts, w, y0, y1)


def _wall_distance(lay, x, z, dx, dz):
  """Horizontal distance from (x, z) to the wall along the unit direction (dx, dz)."""
  tx = (lay.lx - x) / dx if dx > 1e-9 else (-x / dx if dx < -1e-9 else np.inf)
  tz = (lay.lz - z) / dz if dz > 1e-9 else (-z / dz if dz < -1e-9 else np.inf)
  return min(tx, tz)


def _wander(rng, lay):
  """Camera position and (room, target, flat distance) of the old free-roaming camera."""
  for _ in range(50):
    if rng.uniform() < 0.5:  # near a wall
      wi = int(rng.integers(4))
      x, z = lay.wall_frame(wi, rng.uniform(0.4, lay.wall_len(wi) - 0.4), rng.uniform(0.4, 1.0))
    else:
      x, z = rng.uniform(0.4, lay.lx - 0.4), rng.uniform(0.4, lay.lz - 0.4)
    if lay.floor_free((x - 0.25, x + 0.25, z - 0.25, z + 0.25), margin=0.0):
      break
  pos = np.array([x, rng.uniform(1.1, 1.7), z])
  best = None
  for _ in range(20):
    if lay.boxes and rng.uniform() < 0.8:
      target = lay.boxes[rng.integers(len(lay.boxes))].center
    else:
      target = np.array([rng.uniform(0, lay.lx), rng.uniform(0.3, 1.5), rng.uniform(0, lay.lz)])
    flat = math.hypot(target[0] - x, target[2] - z)
    if flat < 1.0:
      continue
    room = _wall_distance(lay, x, z, (target[0] - x) / flat, (target[2] - z) / flat)
    if best is None or room > best[0]:
      best = (room, target, flat)
    if room > 2.5:
      break
  if best is None:  # nothing far enough: look at the room's centre
    target = np.array([lay.lx / 2, 1.0, lay.lz / 2 + 1e-3])
    best = (0.0, target, max(math.hypot(target[0] - x, target[2] - z), 1e-3))
  return pos, best


def _framing(rng, lay):
  """(camera x, z, target) that frames one placed composite from its front, or None.

  The camera stands 1.4-3 m away (further for wide pieces), so the piece fills a good part of
  the 63 degree field of view, instead of a far wall filling it.
  """
  if not lay.items:
    return None
  for _ in range(30):
    weights = np.array([item[3] for item in lay.items])
    center, front, width, _ = lay.items[rng.choice(len(weights), p=weights / weights.sum())]
    r = max(1.6, 0.9 * width) + rng.uniform(0.0, 0.8)
    if front is None:
      angle = rng.uniform(0, 2 * math.pi)
    else:
      angle = math.atan2(front[0], front[1]) + rng.uniform(-0.9, 0.9)
    x, z = center[0] + r * math.sin(angle), center[2] + r * math.cos(angle)
    if lay.floor_free((x - 0.25, x + 0.25, z - 0.25, z + 0.25), margin=0.0):
      return x, z, center
  return None


def _camera(rng, lay):
  """Camera centre outside all furniture and a world-from-camera rotation looking into the room.

  Like NYUv2 photos: mostly framing a piece of furniture from a couple of metres; otherwise
  taken from near a wall, looking at furniture across the room rather than at a nearby wall
  (the view direction with the most room in front wins).
  """
  framed = _framing(rng, lay) if rng.uniform() < 0.7 else None
  if framed is not None:
    x, z, target = framed
    pos = np.array([x, rng.uniform(1.0, 1.5), z])
    # Aim low (0.6 x the piece's mid height): the piece and the floor, not bare wall above it.
    target = target * [1.0, 0.6, 1.0]
    best = (0.0, target, math.hypot(target[0] - x, target[2] - z))
  else:
    pos, best = _wander(rng, lay)
  _, target, flat = best
  x, z = pos[0], pos[2]
  yaw = math.atan2(target[0] - x, target[2] - z) + rng.uniform(-0.25, 0.25)
  pitch = math.atan2(target[1] - pos[1], max(flat, 1e-3)) + rng.uniform(-0.15, 0.15)
  if framed is None:  # a view across the room, about level: shows the ceiling too
    pitch = rng.uniform(-0.15, 0.05)
  pitch = float(np.clip(pitch, -0.7, 0.15))
  roll = rng.uniform(-0.05, 0.05)
  fwd = np.array([math.cos(pitch) * math.sin(yaw), math.sin(pitch),
                  math.cos(pitch) * math.cos(yaw)])
  right = np.cross(fwd, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right)
  down = np.cross(fwd, right)  # right x down = forward (x right, y down, z forward)
  c, s = math.cos(roll), math.sin(roll)
  right, down = c * right + s * down, -s * right + c * down
  return pos, np.stack([right, down, fwd], axis=1)


def sample_scene(rng: np.random.Generator) -> rs.Scene:
  """Samples a furnished room, a camera inside it and a light.

  Args:
    rng: the only source of randomness (the scene is a pure function of its state).

  Returns:
    A :class:`rooms_scene.Scene`.
  """
  size = np.array([rng.uniform(3.0, 5.0), rng.uniform(2.4, 3.0), rng.uniform(3.0, 5.5)])
  lay = _Layout(size)
  _furnish(rng, lay)
  wall_mat = rs.material(rng, rs.WALL)
  walls = [wall_mat] * 4
  if rng.uniform() < 0.25:  # an accent wall
    walls[int(rng.integers(4))] = rs.material(rng, rs.WALL)
  floor_family = rs._pick(rng, rs._CLASS_FAMILIES[rs.FLOOR])  # pylint: disable=protected-access
  floor_kind = {"wood": rs.GRAIN, "grey": rs.CHECKER, "beige": rs.CHECKER,
                "black": rs.CHECKER}.get(floor_family, rs.NOISE)
  floor = rs.material(rng, rs.FLOOR, kind=floor_kind, family=floor_family)
  ceiling = rs.material(rng, rs.CEILING, kind=rs.PLAIN)
  cam_pos, cam_rot = _camera(rng, lay)
  light = np.array([rng.uniform(0.5, size[0] - 0.5), size[1] - 0.15,
                    rng.uniform(0.5, size[2] - 0.5)])
  return rs.Scene(size, floor, ceiling, walls, lay.boxes, cam_pos, cam_rot, light,
                  light_power=float(rng.uniform(0.5, 0.9)), ambient=float(rng.uniform(0.3, 0.5)),
                  exposure=float(rng.uniform(0.85, 1.15)))
