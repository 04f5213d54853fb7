"""kajax.benchmarks.seeds: per-seed commands, mean ± std by hand, and a real two-seed run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kajax import data_sources
from kajax.benchmarks import seeds
from tests import fakes

REPO = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def rooms_tiny_data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("data"))
  data_sources.ensure_built("synthetic_rooms/tiny", path)
  return path


@pytest.fixture(scope="module")
def tiny_teacher_dirs(tmp_path_factory):
  """Random tiny teachers, so the runs skip teacher training (the tiny demo's geometry)."""
  root = tmp_path_factory.mktemp("teachers")
  dirs = {"seg": str(root / "seg"), "depth": str(root / "depth")}
  fakes.save_random_teacher(dirs["seg"], "seg", 13, seed=0)
  fakes.save_random_teacher(dirs["depth"], "depth", 1, seed=1)
  return dirs


def test_seeded_config_appends_the_seed_to_the_config_argument():
  assert seeds.seeded_config("configs/demo.py", 3) == "configs/demo.py:seed=3"
  assert seeds.seeded_config("configs/demo.py:long", 0) == "configs/demo.py:long,seed=0"
  with pytest.raises(ValueError, match="already sets the seed"):
    seeds.seeded_config("configs/demo.py:tiny,seed=2", 1)


def test_run_command_is_the_readme_command_per_seed():
  cmd = seeds.run_command("configs/demo.py", 2, "/w/seed_2", ["branch.tau=0"])
  assert cmd[1:] == ["-m", "kajax.main", "--config=configs/demo.py:seed=2",
                     "--workdir=/w/seed_2", "--config.branch.tau=0"]


def _results(miou_t, miou_s, rmse_t, rmse_s, k):
  """A results.json as kajax.results writes it (only the metrics the checks use)."""
  return {"models": {"teacher/seg": {"seg/miou": miou_t, "params": 10.0},
                     "teacher/depth": {"depth/rmse": rmse_t, "params": 10.0},
                     "student": {"seg/miou": miou_s, "depth/rmse": rmse_s, "params": 15.0}},
          "tasks": ["seg", "depth"], "branch_points": {"seg": k, "depth": k + 1}}


def test_summary_mean_and_sample_std_by_hand():
  per_seed = {0: _results(0.40, 0.42, 0.50, 0.47, 0), 1: _results(0.50, 0.53, 0.40, 0.39, 1),
              2: _results(0.60, 0.61, 0.60, 0.58, 1)}
  s = seeds.summarize(per_seed)
  # 0.4, 0.5, 0.6: mean 0.5; squared deviations 0.01 + 0 + 0.01 over n - 1 = 2 -> std 0.1.
  assert s["models"]["teacher/seg"]["seg/miou"]["mean"] == pytest.approx(0.5)
  assert s["models"]["teacher/seg"]["seg/miou"]["std"] == pytest.approx(0.1)
  # Student miou 0.42, 0.53, 0.61: mean 1.56 / 3 = 0.52.
  assert s["models"]["student"]["seg/miou"]["mean"] == pytest.approx(0.52)
  # Paired differences: miou +0.02, +0.03, +0.01 -> mean 0.02, std 0.01;
  # rmse -0.03, -0.01, -0.02 -> mean -0.02, std 0.01.
  assert s["student_minus_teacher"]["seg/miou"]["mean"] == pytest.approx(0.02)
  assert s["student_minus_teacher"]["seg/miou"]["std"] == pytest.approx(0.01)
  assert s["student_minus_teacher"]["depth/rmse"]["mean"] == pytest.approx(-0.02)
  assert s["student_minus_teacher"]["depth/rmse"]["std"] == pytest.approx(0.01)
  assert "params" not in s["student_minus_teacher"]
  assert s["branch_points"] == {"0": {"seg": 0, "depth": 1}, "1": {"seg": 1, "depth": 2},
                                "2": {"seg": 1, "depth": 2}}
  text = seeds.format_summary(s, {"0": 60.0}, ["| step | s/step |"])
  assert "| model | seg/miou | depth/rmse | params |" in text
  assert "| teacher/seg | 0.5000 ± 0.1000 |  | 10 |" in text
  assert "negative is better for depth/rmse" in text
  assert "seed 1: seg k=1, depth k=2" in text and "seed 0: 1.0 min" in text
  assert "| step | s/step |" in text


def test_a_single_seed_has_no_std():
  s = seeds.summarize({5: _results(0.4, 0.4, 0.5, 0.5, 0)})
  assert s["models"]["student"]["depth/rmse"] == {"mean": 0.5, "std": None, "n": 1}
  assert "| student | 0.4000 (one seed) | 0.5000 (one seed) |" in seeds.format_summary(s)


def _comparison(miou_t, miou_a, angle_t, angle_a, k):
  """A comparison.json as kajax.comparison writes it: a teacher row and an option-A row per
  task (only the metrics the checks use)."""
  def row(model, metrics, params):
    return {"model": model, "metrics": metrics, "params": params, "gflops": 1.0}
  return {"tasks": {"seg": [row("teacher", {"miou": miou_t}, 10.0),
                            row("option A", {"miou": miou_a}, 18.0)],
                    "normals": [row("teacher", {"angle_mean": angle_t}, 10.0),
                                row("option A", {"angle_mean": angle_a}, 18.0)]},
          "teachers_total": {"params": 20.0, "gflops": 2.0},
          "runs": [{"name": "option_a", "label": "option A",
                    "branch_points": {"seg": k, "normals": 0}}]}


def test_a_comparison_is_summarised_per_student_against_each_teacher(tmp_path):
  for s, args in ((0, (0.40, 0.43, 30.0, 33.0, 1)), (1, (0.50, 0.51, 32.0, 33.0, 2))):
    os.makedirs(tmp_path / f"seed_{s}")
    (tmp_path / f"seed_{s}" / "comparison.json").write_text(json.dumps(_comparison(*args)))
  assert seeds.load_results(str(tmp_path / "seed_9")) is None  # not run yet
  s = seeds.summarize({i: seeds.load_results(str(tmp_path / f"seed_{i}")) for i in (0, 1)})
  assert set(s["models"]) == {"teacher/seg", "teacher/normals", "option A"}
  # Option A's miou 0.43, 0.51: mean 0.47, std |0.43 - 0.51| / sqrt(2).
  assert s["models"]["option A"]["seg/miou"]["mean"] == pytest.approx(0.47)
  assert s["models"]["option A"]["seg/miou"]["std"] == pytest.approx(0.08 / np.sqrt(2))
  assert s["models"]["option A"]["params"]["mean"] == 18.0
  # Paired: miou +0.03, +0.01 -> mean +0.02; angle +3, +1 -> mean +2, std sqrt(2).
  assert s["student_minus_teacher"]["option A: seg/miou"]["mean"] == pytest.approx(0.02)
  assert s["student_minus_teacher"]["option A: normals/angle_mean"]["mean"] == pytest.approx(2)
  assert s["student_minus_teacher"]["option A: normals/angle_mean"]["std"] == pytest.approx(
      np.sqrt(2))
  assert s["branch_points"]["1"] == {"option A seg": 2, "option A normals": 0}
  text = seeds.format_summary(s)
  assert "| option A | 0.4700 ± 0.0566 | 33.0000 ± 0.0000 | 18 |" in text
  assert "negative is better for option A: normals/angle_mean" in text


@pytest.mark.slow
def test_two_seeds_end_to_end(tmp_path, tiny_teacher_dirs, rooms_tiny_data_dir):
  """The CLI as documented, from a scratch directory, on the tiny demo with given teachers."""
  workdir = tmp_path / "seeds"
  env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO), TFDS_DATA_DIR=rooms_tiny_data_dir)
  cmd = [sys.executable, "-m", "kajax.benchmarks.seeds",
         f"--config={os.path.join(os.path.abspath(REPO), 'configs', 'demo.py')}:tiny",
         "--seeds=2", "--first_seed=4", f"--workdir={workdir}", "--nostep_benchmark"]
  cmd += [f"--override=teachers.{t}.dir={d}" for t, d in tiny_teacher_dirs.items()]
  subprocess.run(cmd, check=True, cwd=tmp_path, env=env, capture_output=True, text=True)
  summary = json.loads((workdir / seeds.SUMMARY_JSON).read_text())
  runs = [json.loads((workdir / f"seed_{s}" / "results.json").read_text()) for s in (4, 5)]
  configs = [json.loads((workdir / f"seed_{s}" / "config.json").read_text()) for s in (4, 5)]
  assert [c["seed"] for c in configs] == [4, 5]
  values = [r["models"]["student"]["seg/miou"] for r in runs]
  assert summary["models"]["student"]["seg/miou"]["mean"] == pytest.approx(np.mean(values))
  assert summary["models"]["student"]["seg/miou"]["std"] == pytest.approx(np.std(values, ddof=1))
  assert summary["seeds"] == [4, 5]
  assert (workdir / seeds.SUMMARY_MD).read_text().startswith("Mean ± sample std")
