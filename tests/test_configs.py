"""Every config in configs/ loads (default and ':tiny'), names known tasks, losses and input
keys, and the teacher configs agree with the data their amalgamation configs read."""

import glob
import importlib.util
import os

import pytest

from kajax import input_pipeline, tasks

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_expected_configs_exist():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {"demo.py", "nyu.py", "teacher_rooms_seg.py", "teacher_rooms_depth.py",
          "teacher_rooms_normals.py", "teacher_nyu_seg.py", "teacher_nyu_depth.py",
          "demo3.py", "demo_add_normals.py", "nyu3.py", "teacher_nyu_normals.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_config_is_consistent(path, arg):
  c = _load(path).get_config(arg)
  configs = [c]
  if c.mode == "compare":  # several amalgamation runs (kajax.comparison)
    assert sorted(c.run_order) == sorted(c.runs)
    configs = [c.runs[name] for name in c.run_order]
  for amalgamation in [cfg for cfg in configs if cfg.mode == "amalgamate"]:
    for t in amalgamation.tasks:
      tasks.check_task(t)
      tasks.projection_fn(t, amalgamation.loss.kinds[t])
    for name, block in amalgamation.teachers.items():
      if block.train_config is not None:
        configs.append(block.train_config)
        assert block.train_config.dataset == amalgamation.dataset
        assert block.train_config.task == name  # a single-task teacher is named after it
  for cfg in configs:
    if cfg.mode == "compare":
      continue
    input_pipeline._check_keys(cfg.input)  # pylint: disable=protected-access
    if cfg.mode == "teacher":
      tasks.supervised_fn(cfg.task, cfg.loss)
    assert cfg.batch_size % 8 == 0 or arg is None  # tiny runs split over 8 test devices


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", ["tyni", "bogus=1", "tiny,typo"])
def test_unknown_config_arguments_are_refused_naming_the_choices(path, arg):
  with pytest.raises(ValueError, match="accepts: tiny .*seed") as e:
    _load(path).get_config(arg)
  assert repr(arg.split(",")[-1]) in str(e.value)


@pytest.mark.parametrize("arg", ["tiny,tiny", "seed=x", "tiny=1", "seed"])
def test_malformed_config_arguments_are_refused(arg):
  with pytest.raises(ValueError, match="Config argument"):
    _load(os.path.join(CONFIG_DIR, "demo.py")).get_config(arg)


def test_seed_and_resolution_arguments():
  configs = {os.path.basename(p): _load(p) for p in CONFIG_FILES}
  demo = configs["demo.py"].get_config("tiny,seed=7")
  assert demo.seed == 7 and demo.dataset == "synthetic_rooms/tiny"
  assert all(demo.teachers[t].train_config.seed == 7 for t in demo.tasks)
  nyu = configs["nyu.py"].get_config("res=120x160")
  assert tuple(nyu.input.image_size) == (120, 160) and tuple(nyu.input.crop_size) == (120, 120)
  with pytest.raises(ValueError, match="res"):
    configs["demo.py"].get_config("res=120x160")  # the demo's data has one resolution
  with pytest.raises(ValueError, match="at least 32"):
    configs["nyu.py"].get_config("res=16x160")


def _split_parts(split):
  """'unlabeled+teacher_seg[:50%]' -> {'unlabeled', 'teacher_seg'}."""
  return {part.split("[")[0] for part in split.split("+")}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_no_config_trains_searches_or_selects_on_its_test_split(path, arg):
  """Defaults are chosen on validation, never on test: a run must not read its test split
  before the final evaluation (tests/test_amalgamate.py checks a real run; this checks
  every config's split names, including every run of a comparison)."""
  c = _load(path).get_config(arg)
  runs = [c.runs[name] for name in c.run_order] if c.mode == "compare" else [c]
  for run in runs:
    if run.mode != "amalgamate":  # a teacher config: its final evaluation is its eval_split
      assert not _split_parts(run.train_split) & _split_parts(run.eval_split)
      continue
    test = _split_parts(run.test_split)
    assert not test & _split_parts(run.unlabeled_split)
    assert not test & _split_parts(run.branch_split)
    for name in run.teachers:
      teacher = run.teachers[name].get("train_config")
      if teacher is not None:
        # Teachers trained inside the run neither train nor report on the test split (the
        # run's final evaluation measures them there, beside the student).
        assert not test & _split_parts(teacher.train_split), name
        assert not test & _split_parts(teacher.eval_split), name


def _without(config, paths):
  """A config as a flat dict, without the dotted ``paths``."""
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if hasattr(value, "items"):
        walk(value, name + ".")
      elif name not in paths:
        flat[name] = value
  walk(config.to_dict(), "")
  return flat


LONG_CONFIGS = ["demo.py", "demo3.py", "teacher_rooms_seg.py", "teacher_rooms_depth.py",
                "teacher_rooms_normals.py"]


@pytest.mark.parametrize("name", LONG_CONFIGS)
def test_long_variant_trains_longer_and_changes_nothing_else(name):
  module = _load(os.path.join(CONFIG_DIR, name))
  default, long = module.get_config("seed=3"), module.get_config("long,seed=3")
  pairs = ([(default.runs[r], long.runs[r]) for r in default.run_order]
           if default.mode == "compare" else [(default, long)])
  changed = set()
  for short_run, long_run in pairs:
    teacher_pairs = [(short_run, long_run)] if short_run.mode == "teacher" else [
        (short_run.teachers[t].train_config, long_run.teachers[t].train_config)
        for t in short_run.teachers if short_run.teachers[t].train_config is not None]
    for short_teacher, long_teacher in teacher_pairs:
      # Twice the labelled images (see config_blocks.rooms_teacher).
      assert (long_teacher.num_steps * long_teacher.batch_size
              == 2 * short_teacher.num_steps * short_teacher.batch_size)
      # Progressive resizing keeps its share of the steps.
      assert long_teacher.low_res_steps == 2 * short_teacher.low_res_steps
      assert long_teacher.seed == 3
      steps = {"num_steps", "batch_size", "low_res_steps"}
      assert _without(short_teacher, steps) == _without(long_teacher, steps)
      changed |= {"teacher"}
    if short_run.mode == "amalgamate":
      assert long_run.block.num_steps == 3 * short_run.block.num_steps
      assert long_run.finetune.num_steps == 3 * short_run.finetune.num_steps
      steps = {"block.num_steps", "finetune.num_steps"} | {
          f"teachers.{t}.train_config.{k}" for t in short_run.teachers
          for k in ("num_steps", "batch_size", "low_res_steps")}
      assert _without(short_run, steps) == _without(long_run, steps)
      changed |= {"student"}
  assert changed == ({"teacher"} if name.startswith("teacher") else {"teacher", "student"})


def test_long_and_tiny_together_are_refused():
  with pytest.raises(ValueError, match="'tiny' and 'long'.*contradict"):
    _load(os.path.join(CONFIG_DIR, "demo.py")).get_config("tiny,long")



_PRINT_INPUT_SIZES = """
from absl import app
from ml_collections import config_flags
CONFIG = config_flags.DEFINE_config_file("config")
app.run(lambda argv: print(tuple(CONFIG.value.input.crop_size),
                           tuple(CONFIG.value.input.image_size)))
"""


@pytest.mark.parametrize("name", ["demo.py", "teacher_rooms_seg.py"])
def test_input_sizes_can_be_set_from_the_command_line(name):
  """``--config.input.crop_size='(64,64)'`` works where the config's default is None (the
  rooms configs): ml_collections refuses to override a bare None field."""
  import subprocess
  import sys
  out = subprocess.run(
      [sys.executable, "-c", _PRINT_INPUT_SIZES, f"--config={os.path.join(CONFIG_DIR, name)}",
       "--config.input.crop_size=(64, 64)", "--config.input.image_size=(96, 128)"],
      capture_output=True, text=True, check=True, timeout=120)
  assert out.stdout.split("\n")[-2] == "(64, 64) (96, 128)"
