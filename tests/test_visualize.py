"""Tests of kajax.visualize.bar_chart (branch_losses.png): bar heights, chosen bar, the
(1 + tau) * min line, axis and labels — positions computed by hand from its layout."""

import numpy as np

from kajax import visualize

RED, BLUE, GREY = (214, 39, 40), (31, 119, 180), (150, 150, 150)
TOP, HEIGHT, LEFT, BAR, GAP = 30, 160, 64, 26, 8  # bar_chart's layout (defaults)


def _column(picture, x):
  return [tuple(p) for p in picture[:, x]]


def test_bars_limit_line_and_labels():
  row = np.array([2.0, 1.0, 1.05, 1.5, 3.0])
  picture = visualize.bar_chart(["depth"], row[None], chosen=[2], tau=0.1,
                                units=["l1 (m)"])
  y0, y_max = TOP + HEIGHT, 3.0 * 1.15  # Axis origin row; top of the axis = 1.15 * max.
  for k, value in enumerate(row):
    x = LEFT + 6 + k * (BAR + GAP) + BAR // 2  # Middle of bar k.
    colour = RED if k == 2 else BLUE
    column = _column(picture, x)
    top = column.index(colour)
    assert abs(top - round(y0 - HEIGHT * value / y_max)) <= 1, (k, top)
    assert column[y0 - 1] == colour
  # The admissible limit (1 + 0.1) * 1.0 as a dashed grey line across the panel.
  y_limit = round(y0 - HEIGHT * 1.1 / y_max)
  assert sum(tuple(p) == GREY for p in picture[y_limit]) > 20
  # Black axis line along the bottom of the bars, and text (dark pixels) in the title row,
  # under the bars (k labels) and left of the axis (tick values).
  assert all(tuple(p) == (0, 0, 0) for p in picture[y0, LEFT:LEFT + 5 * (BAR + GAP)])
  dark = picture.sum(-1) < 200
  assert dark[:TOP - 16].any() and dark[y0 + 3:].any() and dark[TOP:y0, :LEFT - 4].any()


def test_no_limit_line_without_tau():
  row = np.array([[2.0, 1.0, 1.05, 1.5, 3.0]])
  picture = visualize.bar_chart(["seg"], row, chosen=[1], tau=None)
  assert not (picture == np.array(GREY, np.uint8)).all(-1).any()


def test_bars_near_zero_are_drawn():
  # Values below half a pixel of the axis (and a rounding-negative KL) once made PIL refuse
  # the rectangle (y1 < y0); they get a one-pixel bar.
  table = np.array([[1.0, 1e-6, 0.0, -1e-9, 0.5]])
  picture = visualize.bar_chart(["seg"], table, [4], tau=0.1)
  assert picture.ndim == 3 and picture.shape[-1] == 3

