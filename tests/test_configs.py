"""Every config in configs/ loads (default and ':tiny'), names known tasks, losses and input
keys, and the teacher configs agree with the data their amalgamation configs read."""

import glob
import importlib.util
import os
import sys

import pytest

from kajax import input_pipeline, losses, tasks

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                      if not p.endswith("common.py"))


def _load(path):
  sys.path.insert(0, CONFIG_DIR)
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_expected_configs_exist():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {"demo.py", "nyu.py", "teacher_rooms_seg.py", "teacher_rooms_depth.py",
          "teacher_rooms_normals.py", "teacher_nyu_seg.py", "teacher_nyu_depth.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_config_is_consistent(path, arg):
  c = _load(path).get_config(arg)
  configs = [c]
  if c.mode == "amalgamate":
    for t in c.tasks:
      tasks.check_task(t)
      losses.projection_loss(t, c.loss.kinds[t])
      if c.teachers[t].train_config is not None:
        configs.append(c.teachers[t].train_config)
        assert c.teachers[t].train_config.dataset == c.dataset
        assert c.teachers[t].train_config.task == t
  for cfg in configs:
    input_pipeline._check_keys(cfg.input)  # pylint: disable=protected-access
    if cfg.mode == "teacher":
      losses.supervised_loss(cfg.task, cfg.loss)
    assert cfg.batch_size % 8 == 0 or arg is None  # tiny runs split over 8 test devices
