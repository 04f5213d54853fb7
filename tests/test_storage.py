"""Tests of kajax.storage: atomic files and directories, local paths and URLs."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from kajax import storage
from tests import tensorboard_events
from tests.fake_gcs import fake_gcs  # noqa: F401  (fixture)


def test_resolve_keeps_urls_and_absolutises_local(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(storage.resolve("gs://bkt/a/b")) == "gs://bkt/a/b"
  assert os.fspath(storage.resolve("run")) == os.path.join(str(tmp_path), "run")
  assert storage.join("gs://bkt/a", "b", "c.json") == "gs://bkt/a/b/c.json"
  assert storage.is_url("gs://x/y") and storage.is_local("/x/y")


def test_write_json_replaces_whole_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "sub" / "r.json"
  storage.write_json(path, {"a": 1})
  storage.write_json(path, {"b": [1, 2]})
  assert json.loads(path.read_text()) == {"b": [1, 2]}
  assert os.listdir(tmp_path / "sub") == ["r.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "r.json"
  storage.write_json(path, {"old": True})

  def fail(src, dst):
    raise OSError("disk full (simulated)")

  monkeypatch.setattr(storage.os, "replace", fail)
  with pytest.raises(OSError, match="simulated"):
    storage.write_json(path, {"new": True})
  monkeypatch.undo()
  assert json.loads(path.read_text()) == {"old": True}
  assert os.listdir(tmp_path) == ["r.json"]
  with pytest.raises(TypeError):  # Not serialisable: nothing written at all.
    storage.write_json(tmp_path / "x.json", {"f": object()})
  assert not (tmp_path / "x.json").exists()


def test_write_png_roundtrip(tmp_path):
  image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  storage.write_png(tmp_path / "p.png", image)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png")), image)


def test_atomic_directory_replaces_or_restores(tmp_path):
  target = tmp_path / "d"
  with storage.atomic_directory(target, "done") as tmp:
    (tmp / "data").write_text("1")
    (tmp / "done").write_text("")
    assert not target.exists()  # Nothing visible before the end.
  assert (target / "data").read_text() == "1"
  with pytest.raises(RuntimeError):
    with storage.atomic_directory(target, "done") as tmp:
      (tmp / "data").write_text("2")
      raise RuntimeError("interrupted")
  assert (target / "data").read_text() == "1"  # The old directory is untouched.
  assert sorted(os.listdir(tmp_path)) == ["d"]  # No temporary left behind.


def _demo_tiny_config():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "demo_config", os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


@pytest.mark.slow
def test_amalgamation_with_its_workdir_in_a_bucket(tmp_path, monkeypatch, fake_gcs):
  """The tiny amalgamation with ``--workdir=gs://...`` on a mocked GCS (tests/fake_gcs.py):
  everything lands in the bucket, nothing on the local disk."""
  from kajax import amalgamate, data_sources, export
  from tests import fakes
  data_dir = str(tmp_path / "data")
  data_sources.ensure_built("synthetic_rooms/tiny", data_dir)
  bucket = fake_gcs
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  workdir = "gs://bkt/runs/tiny"
  for task, outputs, seed in (("seg", 13, 0), ("depth", 1, 1)):
    fakes.save_random_teacher(f"{workdir}/teachers/{task}", task, outputs, seed)
  config = _demo_tiny_config()
  config.data_dir = data_dir
  config.branch.override = ""
  for t in config.tasks:
    config.teachers[t].train_config = None
  results = amalgamate.train_and_evaluate(config, workdir)

  local = bucket / "bkt" / "runs" / "tiny"
  assert os.listdir(cwd) == []  # No stray local 'gs:' directory: every write used epath.
  for name in ("config.json", "branch_search.json", "branch_losses.png", "results.json",
               "results.md", "samples.png", "student/student.json"):
    assert (local / name).is_file(), name
  assert json.loads((local / "results.json").read_text()) == json.loads(json.dumps(results))
  for phase in ("block", "finetune"):
    assert sorted(os.listdir(local / "checkpoints" / phase)) == ["2", "4"]
  _, variables, info = export.load_student(f"{workdir}/student")
  assert info["params"] == sum(np.size(x) for x in jax.tree_util.tree_leaves(
      variables["params"]))

  events = tensorboard_events.read(local / "tensorboard")
  tags = {v.tag for e in events for v in e.summary.value}
  for phase in ("block", "finetune"):
    for name in ("loss", "learning_rate", "steps_per_s", "images_per_s"):
      assert f"{phase}/{name}" in tags, (phase, name)
  assert any(t.startswith("config") for t in tags)
  assert "_hparams_/experiment" in tags and "_hparams_/session_start_info" in tags
  assert "test/student/seg/miou" in tags

