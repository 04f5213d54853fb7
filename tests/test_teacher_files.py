"""Tests for kajax.teacher_files: the converted-teacher directory format."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kajax import segnet
from kajax import teacher_files


def _info(**overrides):
  fields = dict(task="depth", num_outputs=1, arch="segnet_vgg11_bn", head="conv",
                width_multiplier=0.125, params=0, source="unit test", source_sha256=None,
                extra={"depth_bins": 8})
  fields.update(overrides)
  return teacher_files.TeacherInfo(**fields)


@pytest.fixture(scope="module")
def teacher():
  """A tiny teacher (random values of the right shapes) and its info."""
  info = _info()
  shapes = jax.eval_shape(info.build_module().init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  # Random values (no init: it is slow to compile); positive so BN variances are valid.
  rng = np.random.RandomState(0)
  variables = jax.tree.map(lambda s: rng.rand(*s.shape).astype(np.float32) + 0.1, shapes)
  info = _info(params=segnet.count_params(variables["params"]))
  return variables, info


def _assert_same_tree(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (p, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


def test_round_trip(tmp_path, teacher):
  variables, info = teacher
  out = tmp_path / "t"
  assert not teacher_files.is_teacher_dir(out)
  teacher_files.save_teacher(out, variables, info)
  assert teacher_files.is_teacher_dir(out)
  assert sorted(os.listdir(tmp_path)) == ["t"]  # no temporary siblings left
  module, loaded, loaded_info = teacher_files.load_teacher(out)
  assert loaded_info == info and loaded_info.extra == {"depth_bins": 8}
  assert (module.num_outputs, module.arch, module.width_multiplier, module.head) == (
      1, "segnet_vgg11_bn", 0.125, "conv")
  _assert_same_tree(loaded, variables)
  x = np.random.RandomState(0).rand(1, 32, 32, 3).astype(np.float32)
  apply = jax.jit(module.apply)
  np.testing.assert_array_equal(np.asarray(apply(loaded, x)[0]),
                                np.asarray(apply(variables, x)[0]))
  stored = json.loads((out / "teacher.json").read_text())
  assert stored["task"] == "depth" and stored["params"] == info.params


def test_info_json_round_trip_and_validation():
  info = _info(num_outputs=np.int64(1), source_sha256="ab" * 32)
  assert isinstance(info.num_outputs, int)
  assert teacher_files.TeacherInfo.from_json(info.to_json()) == info
  with pytest.raises(ValueError, match="task='segmentation'"):
    _info(task="segmentation")
  with pytest.raises(ValueError, match="arch='segnet_vgg17_bn'"):
    _info(arch="segnet_vgg17_bn")
  with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
    teacher_files.TeacherInfo.from_json(json.dumps({**json.loads(info.to_json()), "colour": 1}))


def test_failed_save_leaves_nothing(tmp_path, teacher, monkeypatch):
  variables, info = teacher

  def boom(*args, **kwargs):
    raise OSError("disk full (simulated)")

  monkeypatch.setattr(ocp.StandardCheckpointer, "save", boom)
  with pytest.raises(OSError, match="simulated"):
    teacher_files.save_teacher(tmp_path / "t", variables, info)
  assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_old_teacher(tmp_path, teacher, monkeypatch):
  variables, info = teacher
  teacher_files.save_teacher(tmp_path / "t", variables, info)
  monkeypatch.setattr(ocp.StandardCheckpointer, "save",
                      lambda *a, **k: (_ for _ in ()).throw(OSError("simulated")))
  with pytest.raises(OSError):
    teacher_files.save_teacher(tmp_path / "t", variables, _info(task="seg"), overwrite=True)
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["t"]
  assert teacher_files.load_teacher(tmp_path / "t")[2].task == "depth"


def test_overwrite_refused_then_allowed(tmp_path, teacher):
  variables, info = teacher
  out = tmp_path / "t"
  out.mkdir()  # An empty directory is fine to write into.
  teacher_files.save_teacher(out, variables, info)
  with pytest.raises(FileExistsError, match="overwrite"):
    teacher_files.save_teacher(out, variables, _info(task="seg"))
  assert teacher_files.load_teacher(out)[2].task == "depth"
  teacher_files.save_teacher(out, variables, _info(task="seg"), overwrite=True)
  assert teacher_files.load_teacher(out)[2].task == "seg"
  assert sorted(os.listdir(tmp_path)) == ["t"]


def test_save_rejects_variables_that_do_not_fit(tmp_path, teacher):
  variables, _ = teacher
  with pytest.raises(ValueError, match="up1/layer0/conv/kernel"):
    teacher_files.save_teacher(tmp_path / "t", variables, _info(num_outputs=13))
  assert os.listdir(tmp_path) == []


def test_clear_load_errors(tmp_path, teacher):
  variables, info = teacher
  missing = tmp_path / "missing"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    teacher_files.load_teacher(missing)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="has no teacher.json"):
    teacher_files.load_teacher(empty)

  out = tmp_path / "t"
  teacher_files.save_teacher(out, variables, info)
  (out / "teacher.json").write_text('{"task": "depth", ')
  with pytest.raises(ValueError, match="Malformed .*teacher.json"):
    teacher_files.load_teacher(out)

  # A teacher.json that disagrees with the stored arrays: 13 outputs instead of 1.
  (out / "teacher.json").write_text(_info(num_outputs=13).to_json())
  with pytest.raises(ValueError) as e:
    teacher_files.load_teacher(out)
  msg = str(e.value)
  assert str(out) in msg
  assert "params/up1/layer0/conv/kernel: expected (3, 3, 8, 13), found (3, 3, 8, 1)" in msg


def test_failed_final_rename_restores_old_teacher(tmp_path, teacher, monkeypatch):
  variables, info = teacher
  teacher_files.save_teacher(tmp_path / "t", variables, info)
  real_rename = os.rename

  def rename(src, dst):
    if ".tmp-" in os.path.basename(src):  # The new teacher's final move fails.
      raise OSError("rename failed (simulated)")
    real_rename(src, dst)

  monkeypatch.setattr(teacher_files.os, "rename", rename)
  with pytest.raises(OSError, match="simulated"):
    teacher_files.save_teacher(tmp_path / "t", variables, _info(task="seg"), overwrite=True)
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["t"]
  assert teacher_files.load_teacher(tmp_path / "t")[2].task == "depth"


_TWO_PROCESS_SCRIPT = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from jax.experimental import multihost_utils
from kajax import teacher_files
info = teacher_files.TeacherInfo(task="seg", num_outputs=3, arch="segnet_vgg11_bn",
                              head="conv", width_multiplier=0.125)
shapes = teacher_files.expected_shapes(info.build_module())
variables = jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), shapes)
if jax.process_index() == 0:  # As the teacher trainer does: one host writes.
  teacher_files.save_teacher(sys.argv[3], variables, info)
multihost_utils.sync_global_devices("saved")
_, loaded, _ = teacher_files.load_teacher(sys.argv[3])
print("MEAN", float(loaded["params"]["down1"]["layer0"]["conv"]["kernel"].mean()))
"""


@pytest.mark.slow
def test_save_on_one_host_load_on_all(tmp_path):
  """Two JAX processes on 127.0.0.1: process 0 saves, both load, nothing hangs."""
  import socket
  import subprocess
  import sys
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  script = tmp_path / "two.py"
  script.write_text(_TWO_PROCESS_SCRIPT)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, str(script), address, str(i), str(tmp_path / "t")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
           for i in range(2)]
  try:
    results = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:  # Never leave a process behind, e.g. after a timeout.
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (out, err) in zip(procs, results):
    assert p.returncode == 0, err[-2000:]
    assert "MEAN 0.5" in out
