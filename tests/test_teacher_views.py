"""Teacher targets averaged over mirrored and shifted views (kajax.teacher_views), checked
against NumPy compositions of the single views, and the errors for bad shifts."""

import json

import ml_collections
import numpy as np
import pytest

from kajax import amalgamation_steps as steps
from kajax import teacher_model, teacher_views
from kajax.teacher_views import TeacherViews
from tests import fakes


def _np_shift_down_right(x, rows, cols):
  h, w = x.shape[1:3]
  return np.pad(x, ((0, 0), (rows, 0), (cols, 0), (0, 0)), mode="edge")[:, :h, :w]


def _np_shift_up_left(y, rows, cols):
  return np.pad(y, ((0, 0), (0, rows), (0, cols), (0, 0)), mode="edge")[:, rows:, cols:]


def test_shifts_by_hand():
  x = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)  # rows 0-3, 4-7, 8-11
  down = np.asarray(teacher_views.shift_down_right(x, 1, 2))[0, :, :, 0]
  np.testing.assert_array_equal(down, [[0, 0, 0, 1], [0, 0, 0, 1], [4, 4, 4, 5]])
  up = np.asarray(teacher_views.shift_up_left(x, 1, 2))[0, :, :, 0]
  np.testing.assert_array_equal(up, [[6, 7, 7, 7], [10, 11, 11, 11], [10, 11, 11, 11]])
  # Away from the filled edge the two undo each other.
  both = np.asarray(teacher_views.shift_up_left(teacher_views.shift_down_right(x, 1, 2), 1, 2))
  np.testing.assert_array_equal(both[0, :2, :2, 0], x[0, :2, :2, 0])


def test_views_order_and_plain():
  views = TeacherViews(flip=True, shifts=((0, 0), (3, 5)))
  assert views.views == [(0, 0, False), (3, 5, False), (0, 0, True), (3, 5, True)]
  assert not views.is_plain
  assert teacher_views.PLAIN.is_plain and TeacherViews(flip=False).is_plain


def test_targets_average_every_view(two_teachers):
  """Y_t over flip x 2 shifts equals the mean of the four single views run one at a time,
  each moved back with NumPy; the normals' x component changes sign in the mirrored ones."""
  models, modules, variables, x = two_teachers
  views = TeacherViews(flip=True, shifts=((0, 0), (3, 5)))
  got = steps.teacher_outputs(variables, x, models, views=views)
  for t, m in zip(("seg", "normals"), modules):
    expected, singles = 0.0, []
    for rows, cols, mirrored in views.views:
      view = x[:, :, ::-1] if mirrored else x
      out = np.asarray(m.apply(variables[t], _np_shift_down_right(view, rows, cols),
                               train=False)[0])
      out = _np_shift_up_left(out, rows, cols)
      if mirrored:
        out = out[:, :, ::-1] * (np.array([-1.0, 1.0, 1.0]) if t == "normals" else 1.0)
      singles.append(out)
      expected = expected + out / 4
    np.testing.assert_allclose(np.asarray(got[t]), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(singles[0], singles[1], atol=1e-3)  # a shift is a different view


def test_shifted_view_of_a_translation_equivariant_teacher_is_the_plain_one():
  """An identity 'teacher' answers a shifted view with the shifted image, so the averaged
  target equals the image away from the filled bottom/right border (an independent check of
  the alignment, without NumPy re-implementing it)."""

  class Identity:
    name, tasks = "depth", ("depth",)

    def outputs(self, variables, images, dtype=None):
      del variables, dtype
      return {"depth": images[..., :1]}

  x = np.random.default_rng(0).standard_normal((2, 16, 20, 3)).astype(np.float32)
  views = TeacherViews(shifts=((0, 0), (2, 3), (4, 1)))
  got = np.asarray(steps.teacher_outputs({"depth": None}, x, (Identity(),), views=views)["depth"])
  np.testing.assert_allclose(got[:, :-4, :-3], x[:, :-4, :-3, :1], rtol=1e-6)


@pytest.mark.parametrize("shifts, words", [
    ((), "empty"),
    (((0, 0), (-1, 2)), "non-negative"),
    (((0, 0), (1, 2, 3)), "pair"),
    (((0, 0), (1.5, 2)), "whole pixels"),
    (((0, 0), (3, 5), (3, 5)), "repeats"),
])
def test_bad_shifts_are_named(shifts, words):
  loss = ml_collections.ConfigDict({"teacher_flip_average": True, "teacher_shifts": shifts})
  with pytest.raises(ValueError, match="teacher_shifts") as raised:
    teacher_views.from_config(loss)
  assert words in str(raised.value)


def test_a_bare_pair_is_not_a_list_of_shifts():
  loss = ml_collections.ConfigDict({"teacher_shifts": (3, 5)})
  with pytest.raises(ValueError, match=r"teacher_shifts=\(3, 5\).*pairs"):
    teacher_views.from_config(loss)


def test_shift_larger_than_the_image():
  x = np.zeros((1, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match=r"teacher_shifts has \(8, 0\).*8x8"):
    teacher_views.shift_down_right(x, 8, 0)


def test_config_round_trip_through_json():
  """A run's config.json stores the shifts as lists; reading it back gives the same views,
  and a config without the key (written before it existed) gives the plain image."""
  loss = ml_collections.ConfigDict({"teacher_flip_average": True,
                                    "teacher_shifts": ((0, 0), (3, 5))})
  loaded = ml_collections.ConfigDict(json.loads(loss.to_json()))
  assert teacher_views.from_config(loaded) == teacher_views.from_config(loss)
  assert teacher_views.from_config(loaded).views[1] == (3, 5, False)
  old = ml_collections.ConfigDict({"teacher_flip_average": False})
  assert teacher_views.from_config(old).is_plain


@pytest.fixture(scope="module")
def two_teachers():
  made = {"seg": fakes.make_teacher("seg", 5, 0), "normals": fakes.make_teacher("normals", 3, 2)}
  models = tuple(teacher_model.from_teacher_info(t, m[2]) for t, m in made.items())
  x = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
  return models, tuple(m[0] for m in made.values()), {t: m[1] for t, m in made.items()}, x
