"""Tests for kajax.comparison: ``configs/demo3.py:tiny`` run as documented (a subprocess of
``python -m kajax.main``): option A and option B on three teachers. The teachers are random
ones placed where the demo keeps its own (teacher training is tested elsewhere), which also
shows that existing teachers are reused, not retrained.

What is checked comes from the run's own files, against facts that hold by construction:
option B's student has one branch point toward the old student and one toward normals and
holds the old student's pruned tail; every row of the report is the number its run wrote.
"""

import json
import os
import subprocess
import sys

import pytest

from kajax import comparison, data_sources, export
from kajax.benchmarks import seeds
from tests import fakes

REPO = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow
def test_demo3_tiny_runs_option_a_and_option_b(tmp_path):
  data_dir = str(tmp_path / "data")
  data_sources.ensure_built("synthetic_rooms/tiny", data_dir)
  workdir = tmp_path / "demo3"
  for task, c, seed in (("seg", 13, 0), ("depth", 1, 1), ("normals", 3, 2)):
    fakes.save_random_teacher(str(workdir / "teachers" / task), task, c, seed)
  cmd = [sys.executable, "-m", "kajax.main", "--config=configs/demo3.py:tiny",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}"]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3000)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(workdir / "comparison.json") as f:
    report = json.load(f)
  assert list(report["tasks"]) == ["seg", "depth", "normals"]
  models = {t: [r["model"] for r in rows] for t, rows in report["tasks"].items()}
  assert models["seg"] == models["depth"] == ["teacher", "two-task student", "option A",
                                              "option B"]
  assert models["normals"] == ["teacher", "option A", "option B"]
  for run, label in (("option_a", "option A"), ("option_b", "option B")):
    with open(workdir / run / "results.json") as f:
      student = json.load(f)["models"]["student"]
    row = next(r for r in report["tasks"]["normals"] if r["model"] == label)
    assert row["metrics"]["angle_mean"] == student["normals/angle_mean"]
    assert row["params"] == student["params"]
  # Option B: two teachers (the old student, normals), one branch point each.
  _, variables, info = export.load_student(str(workdir / "option_b" / "student"))
  assert info["teachers"] == ["two_task", "normals"] and len(info["branch_points"]) == 2
  assert info["tasks"] == ["seg", "depth", "normals"]
  old = info["spec"]["teachers"][0]
  assert old["kind"] == "student" and old["student"]["teachers"][0]["name"] == "seg"
  assert "branch_two_task" in variables["params"] and "branch_normals" in variables["params"]
  teachers = report["teachers_total"]["params"]
  assert all(r["params"] < teachers for rows in report["tasks"].values() for r in rows
             if r["model"] != "teacher")
  assert "option B" in (workdir / "comparison.md").read_text()
  # Each run's branch points as its own results.json has them (the seeds benchmark reads
  # them from here), and the seeds benchmark's reading of the report.
  for run in report["runs"]:
    with open(workdir / run["name"] / "results.json") as f:
      assert run["branch_points"] == json.load(f)["branch_points"]
  assert [r["label"] for r in report["runs"]] == ["two-task student", "option A", "option B"]
  flat = seeds.load_results(str(workdir))
  assert set(flat["models"]) == {"teacher/seg", "teacher/depth", "teacher/normals",
                                 "two-task student", "option A", "option B"}
  assert flat["models"]["option B"]["normals/angle_mean"] == next(
      r["metrics"]["angle_mean"] for r in report["tasks"]["normals"] if r["model"] == "option B")
  assert not (workdir / "two_task" / "teacher_runs").exists()  # the teachers were reused


def test_comparison_config_errors_name_the_runs():
  from kajax import config_blocks
  c = config_blocks.compare_config()
  c.runs = {"a": {"mode": "amalgamate"}, "b": {"mode": "teacher"}}
  c.run_order = ("a",)
  with pytest.raises(ValueError, match=r"not listed \['b'\]"):
    comparison.check_config(c)
  c.run_order = ("a", "b")
  with pytest.raises(ValueError, match=r"--config.runs.b must be an amalgamation config"):
    comparison.check_config(c)
