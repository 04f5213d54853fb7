"""Tests of the synthetic_rooms TFDS builder and the kajax.build_data CLI (no TensorFlow).

Builds synthetic_rooms/tiny (5 splits x 8 examples of 64x80) twice -- once in-process, once
with a 2-process pool -- reads it back with tfds.data_source and compares.
"""

import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import app

from kajax import build_data
from kajax import data_sources
from kajax.datasets import rooms_render
from kajax.datasets import synthetic_rooms

SPLITS = ("teacher_seg", "teacher_depth", "unlabeled", "validation", "test")


def _build(data_dir, **kwargs):
  builder = synthetic_rooms.SyntheticRooms(config="tiny", data_dir=str(data_dir), **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  first = tmp_path_factory.mktemp("rooms_a")
  second = tmp_path_factory.mktemp("rooms_b")
  _build(first)  # in-process (tiny)
  _build(second, num_workers=2)  # the worker pool must give the same data
  return first, second


def _source(data_dir, split, name="synthetic_rooms/tiny"):
  return tfds.data_source(name, data_dir=str(data_dir), split=split, download=False)


def test_splits_counts_and_features(built):
  data_dir, _ = built
  for split in SPLITS:
    ds = _source(data_dir, split)
    assert len(ds) == 8
    ex = ds[5]
    assert set(ex) == {"image", "label", "depth", "normals"}
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (64, 80, 3)
    assert ex["label"].dtype == np.uint8 and ex["label"].shape == (64, 80)
    assert ex["depth"].dtype == np.float32 and ex["depth"].shape == (64, 80)
    assert ex["normals"].dtype == np.float32 and ex["normals"].shape == (64, 80, 3)
    assert ex["label"].max() <= 12
    assert ex["depth"].min() > 0
    np.testing.assert_allclose(np.linalg.norm(ex["normals"], axis=-1), 1.0, atol=1e-5)


def test_example_i_is_scene_seed_i(built):
  data_dir, _ = built
  ds = _source(data_dir, "validation")
  for i in (0, 7):
    expected = rooms_render.render_scene(synthetic_rooms.example_seed(0, "validation", i), 64, 80)
    for key in ("image", "label", "depth", "normals"):  # PNG/zlib are lossless
      np.testing.assert_array_equal(ds[i][key], expected[key])


def test_splits_are_disjoint(built):
  data_dir, _ = built
  digests = [hashlib.sha1(ex["image"].tobytes()).hexdigest()
             for split in SPLITS for ex in _source(data_dir, split)]
  assert len(set(digests)) == len(digests) == 40
  seeds = {synthetic_rooms.example_seed(0, s, i) for s in SPLITS for i in range(1000)}
  assert len(seeds) == 5000


def test_two_builds_are_identical(built):
  first, second = built
  for split in SPLITS:
    a, b = _source(first, split), _source(second, split)
    for i in range(len(a)):
      for key in ("image", "label", "depth", "normals"):
        np.testing.assert_array_equal(a[i][key], b[i][key])
  files = sorted(p.relative_to(first) for p in first.rglob("*.array_record*"))
  assert len(files) == 5
  for f in files:
    assert (first / f).read_bytes() == (second / f).read_bytes(), f


def test_custom_split_sizes_via_cli_helpers(tmp_path):
  builder = build_data.make_builder("synthetic_rooms/tiny", str(tmp_path),
                                    build_data.parse_split_sizes("test=3,unlabeled=2"), None)
  build_data.build(builder)
  name = "synthetic_rooms/" + builder.builder_config.name
  assert name == "synthetic_rooms/tiny_n8_8_2_8_3"
  # Read back by name: TFDS finds the unregistered config from the files.
  assert len(_source(tmp_path, "test", name)) == 3
  assert len(_source(tmp_path, "unlabeled", name)) == 2


def test_make_config_scale_and_errors():
  cfg = synthetic_rooms.make_config("small", scale=0.1)
  assert cfg.split_sizes == dict(zip(SPLITS, (100, 100, 100, 10, 20)))
  assert (cfg.height, cfg.width) == (96, 128)
  with pytest.raises(ValueError, match="unknown split 'train'"):
    synthetic_rooms.make_config("tiny", split_sizes={"train": 3})
  with pytest.raises(ValueError, match="unknown base config"):
    synthetic_rooms.make_config("huge")


@pytest.mark.parametrize("dataset,message", [
    ("imagenet2012/x", "unknown dataset 'imagenet2012'.*synthetic_rooms/"),
    ("synthetic_rooms", "name a config"),
    ("synthetic_rooms/huge", "no config 'huge'"),
])
def test_cli_rejects_unknown_names(tmp_path, dataset, message):
  with pytest.raises(app.UsageError, match=message):
    build_data.make_builder(dataset, str(tmp_path))


def test_cli_rejects_bad_split_sizes():
  with pytest.raises(app.UsageError, match="--split_sizes"):
    build_data.parse_split_sizes("test=many")


def test_open_split_reads_unions_and_names_a_missing_part(built):
  data_dir, _ = built
  union = data_sources.open_split("synthetic_rooms/tiny", str(data_dir),
                                  "unlabeled+validation[:2]")
  unlabeled, validation = (_source(data_dir, s) for s in ("unlabeled", "validation"))
  assert len(union) == 10
  np.testing.assert_array_equal(union[3]["image"], unlabeled[3]["image"])
  np.testing.assert_array_equal(union[9]["image"], validation[1]["image"])
  with pytest.raises(ValueError, match=r"'unlabelled' \(of 'validation\+unlabelled'\) does not "
                     r"exist.*'unlabeled'"):
    data_sources.open_split("synthetic_rooms/tiny", str(data_dir), "validation+unlabelled")
