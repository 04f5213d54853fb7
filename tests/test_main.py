"""Tests of kajax.main's flags: ``--config`` in both absl forms, from any directory, with
overrides, and clear errors for a missing file; parsed into a fresh ``FlagValues`` exactly as
``python -m kajax.main`` parses ``sys.argv`` (the end-to-end run is in test_readme.py)."""

import os

import pytest
from absl import flags

from kajax import main


def _parse(*args):
  argv = ["kajax.main", *args]
  fv = flags.FlagValues()
  holders = main.define_flags(fv, argv)
  fv(argv)
  return {name: holder.value for name, holder in holders.items()}


def test_both_absl_forms_work_from_a_scratch_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ here: found in the kajax checkout
  for form in (["--config=configs/demo.py:tiny"], ["--config", "configs/demo.py:tiny"]):
    values = _parse(*form, "--workdir=run", "--config.teachers.seg.dir=teachers/seg",
                    "--config.branch.override=1,2")
    config = values["config"]
    assert config.dataset == "synthetic_rooms/tiny" and config.block.num_steps == 4
    assert config.teachers.seg.dir == "teachers/seg"
    assert config.teachers.depth.dir == "{workdir}/teachers/depth"  # the default
    assert config.branch.override == "1,2" and values["workdir"] == "run"


def test_a_config_in_the_current_directory_comes_first(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.mkdir("configs")
  with open("configs/demo.py", "w") as f:
    f.write("import ml_collections\n\ndef get_config(arg=None):\n"
            "  return ml_collections.ConfigDict({'mode': 'mine', 'arg': arg})\n")
  assert dict(_parse("--config=configs/demo.py:x", "--workdir=w")["config"]) == {
      "mode": "mine", "arg": "x"}
  assert _parse("--config=configs/nyu.py", "--workdir=w")["config"].dataset == (
      "nyuv2/labeled_mat")  # not in the cwd: the checkout's


def test_config_errors_name_what_is_wrong(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(flags.IllegalFlagValueError, match="configs/nope.py not found.*"
                     + str(tmp_path)):
    _parse("--config=configs/nope.py", "--workdir=w")
  with pytest.raises(flags.IllegalFlagValueError, match="'tyni'.*accepts: tiny"):
    _parse("--config", "configs/demo.py:tyni", "--workdir=w")
  with pytest.raises(flags.IllegalFlagValueError, match="workdir"):
    _parse("--config=configs/demo.py")
  with open("no_get_config.py", "w") as f:
    f.write("X = 1\n")
  with pytest.raises(flags.IllegalFlagValueError, match="no get_config"):
    _parse("--config=no_get_config.py", "--workdir=w")
