"""The views a teacher's targets are averaged over: label-free test-time augmentation.

A teacher's answer on one image is noisy in ways that do not survive a change of viewpoint:
its predictions on the mirror image, or on the image moved by a few pixels against the
network's pooling grid, disagree a little, and their mean is a better target than any one of
them (synthetic rooms' validation split, the demo's seed-0 teachers: parsing 0.464 mIoU
plain, 0.490 over the mirror pair, 0.508 over 8 views; depth, seed 2: 0.571 m, 0.546 m,
0.525 m). The student is trained against that mean and still answers in one forward pass.

``config.loss.teacher_flip_average`` (bool) adds the mirror image; ``config.loss.
teacher_shifts`` lists (rows, columns) translations, ``((0, 0),)`` for none. The views are
every shift of the image and, with the mirror on, every shift of its mirror image: a shifted
view is the image moved down by ``rows`` and right by ``columns`` (the top rows and left
columns repeat the edge), and the teacher's output on it is moved back the same way (the
bottom rows and right columns repeat the edge) before the mean, so every view answers for
the same pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

Shift = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class TeacherViews:
  """Which views a teacher's target averages: ``shifts`` of the image, and of its mirror image
  when ``flip``. The default is the plain image alone (the paper's targets)."""
  flip: bool = False
  shifts: tuple[Shift, ...] = ((0, 0),)

  def __post_init__(self):
    if not self.shifts:
      raise ValueError("--config.loss.teacher_shifts is empty: give at least (0, 0) "
                       "(the unshifted image).")
    for shift in self.shifts:
      if (len(shift) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < 0
                                 for v in shift)):
        raise ValueError(f"--config.loss.teacher_shifts has {shift!r}: each shift is a pair "
                         "(rows, columns) of non-negative whole pixels, e.g. (3, 5).")
    if len(set(self.shifts)) != len(self.shifts):
      raise ValueError(f"--config.loss.teacher_shifts={self.shifts!r} repeats a shift: list "
                       "each once.")

  @property
  def views(self) -> list[tuple[int, int, bool]]:
    """(rows, columns, mirrored) of every view, in the order they are batched."""
    mirrors = (False, True) if self.flip else (False,)
    return [(dy, dx, m) for m in mirrors for dy, dx in self.shifts]

  @property
  def is_plain(self) -> bool:
    return self.views == [(0, 0, False)]


PLAIN = TeacherViews()


def from_config(loss_config: Any) -> TeacherViews:
  """The views of ``config.loss`` (``teacher_flip_average``, ``teacher_shifts``)."""
  shifts = loss_config.get("teacher_shifts", None)
  if shifts is None:  # a config written before the option existed
    shifts = ((0, 0),)
  try:
    shifts = tuple(tuple(s) for s in shifts)
  except TypeError:
    raise ValueError(f"--config.loss.teacher_shifts={shifts!r}: give a tuple of (rows, "
                     "columns) pairs, e.g. '((0, 0), (3, 5))'.") from None
  return TeacherViews(flip=bool(loss_config.get("teacher_flip_average", False)),
                      shifts=shifts)


def shift_down_right(x: jax.Array, rows: int, cols: int) -> jax.Array:
  """(N, H, W, C) moved down by ``rows`` and right by ``cols``; the edge fills the gap."""
  if rows == 0 and cols == 0:
    return x
  _check_fits(x, rows, cols)
  h, w = x.shape[1:3]
  return jnp.pad(x, ((0, 0), (rows, 0), (cols, 0), (0, 0)), mode="edge")[:, :h, :w]


def shift_up_left(y: jax.Array, rows: int, cols: int) -> jax.Array:
  """The inverse alignment of :func:`shift_down_right` for an output map: pixel (i, j) of the
  result is pixel (i + rows, j + cols) of ``y``; the edge fills the bottom and right."""
  if rows == 0 and cols == 0:
    return y
  _check_fits(y, rows, cols)
  return jnp.pad(y, ((0, 0), (0, rows), (0, cols), (0, 0)), mode="edge")[:, rows:, cols:]


def _check_fits(x: jax.Array, rows: int, cols: int) -> None:
  h, w = x.shape[1:3]
  if rows >= h or cols >= w:
    raise ValueError(f"--config.loss.teacher_shifts has ({rows}, {cols}), which does not fit "
                     f"in a {h}x{w} image: keep each shift well inside the image.")


def stack_views(images: jax.Array, views: TeacherViews) -> jax.Array:
  """Every view of a batch, stacked view-major: (V * N, H, W, C), for one teacher forward."""
  out = []
  for rows, cols, mirrored in views.views:
    x = images[:, :, ::-1] if mirrored else images  # NHWC: axis 2 is the width
    out.append(shift_down_right(x, rows, cols))
  return jnp.concatenate(out) if len(out) > 1 else out[0]


def average_views(outputs: jax.Array, views: TeacherViews, mirror_raw: Any) -> jax.Array:
  """The mean over views of a teacher's raw outputs on :func:`stack_views`' batch, each view
  moved back onto the original pixels; ``mirror_raw`` mirrors a raw output of the task
  (``kajax.tasks.DenseTask.mirror_raw``: normals negate x)."""
  parts: Sequence[jax.Array] = jnp.split(outputs, len(views.views))
  total = None
  for part, (rows, cols, mirrored) in zip(parts, views.views):
    part = shift_up_left(part, rows, cols)
    part = mirror_raw(part) if mirrored else part
    total = part if total is None else total + part
  return total / len(views.views)
