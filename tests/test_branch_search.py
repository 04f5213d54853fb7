"""Tests for kajax.branch_search: the branch-point rule on constructed tables, the override,
the saved result."""

import json

import numpy as np
import pytest

from kajax import branch_search


@pytest.mark.parametrize("row, tau, expected", [
    # min 0.95 at k=1; 1.1 * 0.95 = 1.045 admits k=0 (1.0) and k=2 (1.02): deepest is 2.
    ([1.0, 0.95, 1.02, 1.5, 1.6], 0.1, 2),
    ([1.0, 0.95, 1.02, 1.5, 1.6], 0.0, 1),  # tau = 0 is the argmin
    ([1.0, 0.95, 1.02, 1.5, 1.6], 0.7, 4),  # 1.7 * 0.95 = 1.615 admits everything
    ([2.0, 2.0, 2.0, 2.0, 2.0], 0.0, 4),  # ties: the deepest (smallest student) wins
    ([0.5, 3.0, 3.0, 3.0, 0.54], 0.1, 4),  # admissible set need not be contiguous
    ([0.5, 3.0, 3.0, 3.0, 0.56], 0.1, 0),
])
def test_rule_picks_deepest_within_tolerance(row, tau, expected):
  assert branch_search.choose_branch_points(np.array([row]), tau) == (expected,)


def test_rule_is_per_task():
  table = np.array([[1.0, 0.95, 1.02, 1.5, 1.6], [3.0, 2.0, 1.0, 1.05, 1.3]])
  assert branch_search.choose_branch_points(table, 0.1) == (2, 3)


def test_rule_rejects_bad_tables():
  with pytest.raises(ValueError, match="tasks, 5"):
    branch_search.choose_branch_points(np.ones((2, 4)), 0.1)
  with pytest.raises(ValueError, match="tau"):
    branch_search.choose_branch_points(np.ones((2, 5)), -0.1)
  with pytest.raises(FloatingPointError):
    branch_search.choose_branch_points(np.array([[1, 2, np.nan, 1, 1.0]]), 0.1)


def test_override_parsing():
  assert branch_search.parse_override("", ("seg", "depth")) is None
  assert branch_search.parse_override("1,3", ("seg", "depth")) == (1, 3)
  assert branch_search.parse_override((0, 4), ("seg", "depth")) == (0, 4)
  # One value is the same k for every teacher, however many there are.
  assert branch_search.parse_override("1", ("seg", "depth")) == (1, 1)
  assert branch_search.parse_override(2, ("seg", "depth", "normals")) == (2, 2, 2)
  with pytest.raises(ValueError, match="override"):
    branch_search.parse_override("1,2", ("seg", "depth", "normals"))
  with pytest.raises(ValueError, match="override"):
    branch_search.parse_override("5", ("seg", "depth"))
  with pytest.raises(ValueError, match="override"):
    branch_search.parse_override("1,5", ("seg", "depth"))
  with pytest.raises(ValueError, match="override"):
    branch_search.parse_override("a,b", ("seg", "depth"))


def test_result_round_trip_and_table(tmp_path):
  table = np.array([[1.0, 0.95, 1.02, 1.5, 1.6], [3.0, 2.0, 1.0, 1.05, 1.3]])
  path = branch_search.save_result(str(tmp_path), ("seg", "depth"), table, 0.1, (2, 3), "rule")
  with open(path) as f:
    saved = json.load(f)
  assert saved["branch_points"] == {"seg": 2, "depth": 3}
  assert saved["losses"]["depth"] == [3.0, 2.0, 1.0, 1.05, 1.3]
  assert branch_search.load_result(str(tmp_path)) == saved
  assert branch_search.load_result(str(tmp_path / "nothing")) is None
  text = branch_search.format_table(("seg", "depth"), table, (2, 3))
  assert "1.02*" in text and "1.05*" in text and text.count("*") == 2
