"""Tests of kajax.teacher_setup's teacher directories: a typed path is relative to the current
directory, ``{workdir}/...`` is inside the run's workdir, and a mix-up gets a hint."""

import os

import pytest

from kajax import config_blocks, teacher_setup
from tests import fakes


def test_resolve_dir(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  workdir = "/runs/a"
  assert teacher_setup.resolve_dir("{workdir}/teachers/seg", workdir) == "/runs/a/teachers/seg"
  assert teacher_setup.resolve_dir("teachers/seg", workdir) == str(tmp_path / "teachers/seg")
  assert teacher_setup.resolve_dir("../t", workdir) == str(tmp_path.parent / "t")
  assert teacher_setup.resolve_dir("/abs/t", workdir) == "/abs/t"
  assert teacher_setup.resolve_dir("~/t", workdir) == os.path.expanduser("~/t")
  assert teacher_setup.resolve_dir("gs://bucket/t", workdir) == "gs://bucket/t"


def test_missing_teacher_points_at_the_workdir_one(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  fakes.save_random_teacher(str(workdir / "teachers" / "seg"), "seg", 13, 0)
  fakes.save_random_teacher(str(workdir / "teachers" / "depth"), "depth", 1, 1)
  config = config_blocks.amalgamation_config(
      ("seg", "depth"), "synthetic_rooms/tiny", unlabeled_split="unlabeled",
      branch_split="validation", test_split="test", block_steps=1, finetune_steps=1,
      batch_size=8, learning_rate=1e-3, input_cfg=config_blocks.input_config())
  teacher_setup.ensure_teachers(config, str(workdir))  # the defaults find both
  monkeypatch.chdir(tmp_path)  # 'teachers/depth' is not here, but in the workdir
  config.teachers.depth.dir = "teachers/depth"
  with pytest.raises(FileNotFoundError) as e:
    teacher_setup.ensure_teachers(config, str(workdir))
  message = str(e.value)
  assert str(tmp_path / "teachers" / "depth") in message
  assert "--config.teachers.depth.dir={workdir}/teachers/depth" in message
