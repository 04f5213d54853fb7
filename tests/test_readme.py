"""The README's commands work as written, from a scratch directory, with relative paths.

* Every ``python -m kajax...`` command the README and ``docs/*.md`` show (code blocks and
  inline) is parsed by the flags of the module it names, from an empty current directory:
  flag names, values, config files, ``:args`` and ``--config.FIELD`` overrides must all be
  valid.
* The quickstart's demo command runs as a subprocess (``configs/demo.py:tiny``, a relative
  workdir) with PyTorch made unimportable: the demo needs no torch.
* The NYUv2 walkthrough runs command by command as subprocesses, on fake files written here
  (real torch checkpoints of tiny SegNets, MATLAB-layout ``.mat`` files, photos), with
  ``configs/nyu.py:tiny``.
"""

import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "README.md")) as _f:
  README = _f.read()
DOCS = {}
for _name in sorted(os.listdir(os.path.join(REPO, "docs"))):
  if _name.endswith(".md"):
    with open(os.path.join(REPO, "docs", _name)) as _f:
      DOCS[_name] = _f.read()


def _commands(text):
  """Shell commands of a bash block: continuations joined, '&&' split, comments dropped."""
  joined = re.sub(r"\\\n\s*", " ", text)
  commands = []
  for line in joined.splitlines():
    line = re.sub(r"(^|\s)#.*$", "", line).strip()
    commands += [c.strip() for c in line.split("&&") if c.strip()]
  return commands


def _section(title):
  start = README.index(f"## {title}")
  end = README.find("\n## ", start + 1)
  return README[start:end if end > 0 else None]


def _bash_blocks(text):
  return re.findall(r"```bash\n(.*?)```", text, re.S)


def _brace_expand(command):
  """'a{x,y}b' -> ['axb', 'ayb'] (one level, as the shell does)."""
  match = re.search(r"\{([^{}]*,[^{}]*)\}", command)
  if not match:
    return [command]
  return [e for option in match.group(1).split(",")
          for e in _brace_expand(command[:match.start()] + option + command[match.end():])]


def readme_commands():
  """Every command of every bash block and every inline ``python -m``/``pip`` span of the
  README and of the pages under docs/."""
  found = []
  for text in [README, *DOCS.values()]:
    found += [c for block in _bash_blocks(text) for c in _commands(block)]
    found += re.findall(r"`((?:python -m |pip install )[^`]*)`", text)
  return [e for c in found for e in _brace_expand(c)]


def _walkthrough():
  blocks = _bash_blocks(_section("NYUv2 walkthrough"))
  assert len(blocks) == 1
  return _commands(blocks[0])


def _env(tmp_path, **extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TFDS_DATA_DIR": str(tmp_path / "tfds"),
         **extra}
  return env


def _run(command, cwd, env, timeout=2400):
  """Runs a README command (``python`` = this interpreter) and checks it succeeded."""
  argv = shlex.split(command)
  assert argv[0] == "python"
  proc = subprocess.run([sys.executable] + argv[1:], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
  return proc


# --- Every command parses ---------------------------------------------------------------------

def test_quickstart_is_the_two_documented_commands_and_ci_runs_the_second():
  blocks = _bash_blocks(_section("Quickstart"))
  assert [b.strip() for b in blocks] == [
      "pip install -e . && python -m kajax.main --config=configs/demo.py "
      "--workdir=/tmp/kajax_demo",
      "pip install -e '.[torch,test]' && python -m pytest -n 2 tests"]
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci_lines = [line for line in f.read().splitlines() if line and not line.startswith("#")]
  assert ci_lines[-1] == blocks[1].strip()


def _parse(module_name, argv):
  module = importlib.import_module(module_name)
  fv = flags.FlagValues()
  if module_name == "kajax.main":
    module.define_flags(fv, argv)
  else:
    module.define_flags(fv)
  try:
    fv(argv)
  except flags.Error as e:
    raise flags.Error(f"{' '.join(argv)}: {e}") from e
  return fv


def test_every_readme_command_parses_from_a_scratch_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  commands = readme_commands()
  kajax_commands = [c for c in commands if c.startswith("python -m kajax")]
  assert len(kajax_commands) >= 15
  with open(os.path.join(REPO, "setup.cfg")) as f:
    extras = set(re.findall(r"^(\w+) =$", f.read().split("[options.extras_require]")[1],
                            re.M))
  parsed = set()
  for command in commands:
    argv = shlex.split(command)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value prefixes
      argv = argv[1:]
    if argv[0].startswith(("launch/", "srun")):
      # Launch scripts pass what follows '--' to kajax.main (their own flags: test_launch).
      assert "--" in argv, command
      _parse("kajax.main", ["kajax.main"] + argv[argv.index("--") + 1:])
      continue
    if argv[:2] == ["pip", "install"]:
      spec = argv[-1]
      assert spec.startswith("."), command
      assert set(re.findall(r"\w+", spec.partition("[")[2])) <= extras, command
      continue
    assert argv[:2] == ["python", "-m"], command
    module_name = argv[2]
    if module_name == "pytest":
      continue
    assert importlib.util.find_spec(module_name) is not None, command
    if len(argv) == 3 or "..." in argv:  # a program named in prose, or an elided command
      continue
    if hasattr(importlib.import_module(module_name), "define_flags"):
      _parse(module_name, [module_name] + argv[3:])
      parsed.add(module_name)
  assert parsed >= {"kajax.main", "kajax.convert_torch", "kajax.build_data", "kajax.predict"}


def test_a_wrong_readme_command_would_be_caught(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for argv in (["kajax.main", "--config=configs/demo.py:tyni", "--workdir=w"],
               ["kajax.predict", "--student_dir=s", "--input_dir=i", "--output=o"]):
    with pytest.raises(flags.Error):
      _parse(argv[0], argv)


# --- The quickstart demo, without torch ------------------------------------------------------

@pytest.mark.slow
def test_quickstart_demo_runs_without_torch(tmp_path):
  command = _commands(_bash_blocks(_section("Quickstart"))[0])[1]
  assert " --config=configs/demo.py " in f" {command} "
  command = command.replace("configs/demo.py", "configs/demo.py:tiny")
  command = re.sub(r"--workdir=\S+", "--workdir=demo_run", command)
  blocker = tmp_path / "no_torch" / "torch"
  blocker.mkdir(parents=True)
  (blocker / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  path = os.pathsep.join(p for p in (str(blocker.parent), os.environ.get("PYTHONPATH")) if p)
  proc = _run(command, scratch, _env(tmp_path, PYTHONPATH=path))
  workdir = scratch / "demo_run"
  with open(workdir / "results.json") as f:
    results = json.load(f)
  assert {"teacher/seg", "teacher/depth", "student"} <= set(results["models"])
  assert "| student |" in proc.stdout + proc.stderr  # the results table (a status line)
  for task in ("seg", "depth"):  # the demo's teachers, trained inside the workdir
    assert (workdir / "teachers" / task / "teacher.json").is_file()
  with open(workdir / "student" / "student.json") as f:
    student = json.load(f)
  assert len(student["input"]["image_size"]) == 2 and student["input"]["mean"][0] == 0.485


# --- The NYUv2 walkthrough, on fake files ---------------------------------------------------

def _write_walkthrough_inputs(cwd):
  """The files the walkthrough expects the user to have, small and fake."""
  torch = pytest.importorskip("torch", reason="the walkthrough converts .pth files")
  from tests import test_nyuv2, torch_segnet  # pylint: disable=import-outside-toplevel
  for name, outputs in (("seg_segnet.pth", 13), ("depth_segnet.pth", 1)):
    torch.manual_seed(outputs)
    model = torch_segnet.TorchSegNet(outputs, "segnet_vgg16_bn", 1 / 16, "kamalengine")
    torch.save({"state_dict": model.state_dict()}, cwd / name)
  rng = np.random.default_rng(0)
  n, h, w = 10, test_nyuv2.H, test_nyuv2.W
  manual = cwd / "nyuv2_downloads"
  manual.mkdir()
  test_nyuv2.write_labeled_mat(
      manual / "nyu_depth_v2_labeled.mat", rng.integers(0, 256, (n, h, w, 3), np.uint8),
      rng.uniform(0.5, 9.0, (n, h, w)).astype(np.float32),
      rng.integers(0, 895, (n, h, w)).astype(np.uint16))
  test_nyuv2.write_splits(manual / "splits.mat", list(range(1, 7)), list(range(7, 11)))
  photos = cwd / "my_photos"
  photos.mkdir()
  Image.fromarray(rng.integers(0, 256, (480, 640, 3), np.uint8)).save(photos / "room.jpg")
  Image.fromarray(rng.integers(0, 256, (300, 200, 3), np.uint8)).save(photos / "tall.png")


@pytest.mark.slow
def test_nyuv2_walkthrough_runs_as_written(tmp_path):
  commands = _walkthrough()
  modules = [shlex.split(c)[2] for c in commands]
  assert modules == ["kajax.convert_torch", "kajax.convert_torch", "kajax.build_data",
                     "kajax.main", "kajax.predict"]
  cwd = tmp_path / "scratch"
  cwd.mkdir()
  _write_walkthrough_inputs(cwd)
  env = _env(tmp_path)
  for command in commands:
    # The only change: the seconds-long variant of the NYUv2 recipe.
    _run(command.replace("configs/nyu.py", "configs/nyu.py:tiny"), cwd, env)
  for task, outputs in (("seg", 13), ("depth", 1)):
    with open(cwd / "teachers" / task / "teacher.json") as f:
      assert json.load(f)["num_outputs"] == outputs  # read from each checkpoint's head
  assert (tmp_path / "tfds" / "nyuv2" / "labeled_mat").is_dir()  # where training read it
  with open(cwd / "nyu_student" / "results.json") as f:
    assert "student" in json.load(f)["models"]
  with open(cwd / "nyu_student" / "student" / "student.json") as f:
    assert json.load(f)["input"]["image_size"] == [64, 96]  # nyu.py:tiny's resolution
  for stem, size in (("room", (480, 640)), ("tall", (300, 200))):  # back at the photo's size
    for kind in ("seg_labels", "depth"):
      assert np.asarray(Image.open(cwd / "predictions" / f"{stem}_{kind}.png")).shape == size
