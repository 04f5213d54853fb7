"""Tests of kajax.cli: every command line answers ``--help`` the absl way, reads
``--flagfile``, and reports bad input in one line instead of a traceback."""

import ast
import os
import re
import subprocess
import sys

import pytest

from kajax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every CLI and the flags its --help must list.
CLIS = {
    "kajax.main": ("config", "workdir", "jax_distributed"),
    "kajax.convert_torch": ("checkpoint", "task", "output_dir", "num_outputs", "overwrite"),
    "kajax.predict": ("student_dir", "input_dir", "output_dir", "image_size", "keep_size",
                      "batch_size", "preview_max_depth"),
    "kajax.build_data": ("dataset", "data_dir", "manual_dir", "split_sizes", "scale",
                         "overwrite"),
    "kajax.scaling_estimate": ("crop", "branch_points", "per_device_batch", "utilization"),
}


def _python_m(module, *args, cwd):
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _docstring(module):
  path = os.path.join(REPO, *module.split(".")) + ".py"
  with open(path) as f:
    return ast.get_docstring(ast.parse(f.read()), clean=False), path


def test_every_cli_answers_help_in_absl_format(tmp_path):
  procs = {m: _python_m(m, "--help", cwd=tmp_path) for m in CLIS}  # in parallel
  for module, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and not err, (module, err)  # absl's --help exits with 1
    doc, path = _docstring(module)
    # absl's layout: the main module's docstring, 'flags:', the defining file, one entry per
    # flag ('  --name: help' or '  --[no]name: help' for booleans), then the --helpfull hint.
    assert out.startswith(doc.strip().splitlines()[0]), module
    assert "\nflags:\n\n" + path + ":\n" in out, module
    for name in CLIS[module]:
      assert re.search(rf"^  --(\[no\])?{name}: \S", out, re.M), (module, name)
    assert out.rstrip().endswith("Try --helpfull to get a list of all flags."), module


def test_flag_errors_are_absl_errors_without_traceback(tmp_path):
  runs = {
      "arg": _python_m("kajax.main", "--config", "configs/demo.py:tyni", "--workdir=w",
                       cwd=tmp_path),
      "field": _python_m("kajax.main", "--config=configs/demo.py:tiny", "--workdir=w",
                         "--config.branch.overide=1,2", cwd=tmp_path),
      "missing": _python_m("kajax.main", "--config=configs/demo.py", cwd=tmp_path),
  }
  expected = {"arg": r"'tyni'.*this config accepts: tiny", "field": r"'overide'.*override",
              "missing": r"--workdir"}
  for name, proc in runs.items():
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    first, *rest = err.strip().splitlines()
    assert first.startswith("FATAL Flags parsing error:") and re.search(expected[name], first)
    assert rest == ["Pass --helpshort or --helpfull to see help on flags."], err


def test_flagfile_and_one_line_runtime_errors(tmp_path):
  # The flagfile sets the config, an override and a bad mode: reaching the mode check proves
  # all three were read; the bad mode is reported on one line.
  (tmp_path / "run.flags").write_text("--config=configs/demo.py:tiny\n--workdir=w\n"
                                      "--config.mode=bogus\n")
  proc = _python_m("kajax.main", "--flagfile=run.flags", cwd=tmp_path)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1
  assert err.strip() == ("error: --config.mode='bogus': choose one of ('teacher', "
                         "'amalgamate', 'evaluate', 'compare').")
  assert not (tmp_path / "w").exists()  # Nothing was started.


def test_report_errors_exits_with_one_line(capsys):
  def bad():
    raise FileNotFoundError("--input_dir photos does not exist")
  with pytest.raises(SystemExit) as e:
    cli.report_errors(bad)
  assert e.value.code == 1
  assert capsys.readouterr().err == "error: --input_dir photos does not exist\n"
  with pytest.raises(KeyError):  # Not a user error: a bug keeps its traceback.
    cli.report_errors(lambda: {}["x"])
