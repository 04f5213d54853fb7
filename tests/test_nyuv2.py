"""Tests for the ``nyuv2`` TFDS builder (kajax.datasets.nyuv2, nyuv2_mat, nyuv2_mtan).

Both configs are built from small fake inputs with the real on-disk structure: an HDF5 file
laid out like MATLAB v7.3 ``nyu_depth_v2_labeled.mat`` (512-byte MATLAB header, column-major
axes reversed as h5py sees them), a MATLAB v5 ``splits.mat`` written by scipy, and MTAN
``.npy`` folders. Expected values are computed here from the source arrays and hand-picked
class ids (nyuv2_facts.md section 2.4), not by the code under test.
"""

import json
import os

import h5py
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from kajax.datasets import nyuv2  # noqa: F401  (registers the builder)
from kajax.datasets import nyuv2_mat, nyuv2_mtan

H, W = 480, 640
MH, MW = 288, 384
# Raw id -> expected 13-class training id, by hand from the class names (facts section 2.4,
# 13-class order bed, books, ceiling, chair, floor, furniture, objects, picture, sofa, table,
# tv, wall, window).
HAND_PICKED = {0: 255, 21: 11, 11: 4, 4: 2, 157: 0, 5: 3, 19: 9, 28: 11, 59: 12, 64: 7,
               83: 8, 85: 1, 1: 6, 172: 10, 3: 5}


def _mat_header() -> bytes:
  text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 " \
         b"HDF5 schema 1.00 ."
  return text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM" + b"\x00" * 384


def write_labeled_mat(path, images, depths, labels, names=("book", "bottle"), skip=()):
  """Writes a MATLAB v7.3-style HDF5 file; arrays are given in (N, H, W[, 3]) order."""
  with h5py.File(path, "w", userblock_size=512) as f:
    def put(key, array, matlab_class):
      if key in skip:
        return
      ds = f.create_dataset(key, data=array, chunks=(1,) + array.shape[1:], compression="gzip")
      ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    # MATLAB H x W x 3 x N (column-major) appears to h5py as (N, 3, W, H).
    put("images", np.asarray(images).transpose(0, 3, 2, 1), "uint8")
    put("depths", np.asarray(depths, np.float32).transpose(0, 2, 1), "single")
    put("labels", np.asarray(labels, np.uint16).transpose(0, 2, 1), "uint16")
    refs = f.create_group("#refs#")
    ref_list = []
    for k, name in enumerate(names):
      d = refs.create_dataset(f"n{k}", data=np.array([[ord(c)] for c in name], np.uint16))
      d.attrs["MATLAB_class"] = np.bytes_("char")
      d.attrs["MATLAB_int_decode"] = np.int32(2)
      ref_list.append(d.ref)
    cell = f.create_dataset("names", (1, len(ref_list)), dtype=h5py.ref_dtype)
    cell[0, :] = ref_list
    cell.attrs["MATLAB_class"] = np.bytes_("cell")
  with open(path, "r+b") as f:
    f.write(_mat_header())


def write_splits(path, train, test, train_key="trainNdxs"):
  scipy.io.savemat(path, {train_key: np.asarray(train, np.uint16).reshape(-1, 1),
                          "testNdxs": np.asarray(test, np.uint16).reshape(-1, 1)})


def build(config, manual_dir, data_dir):
  builder = tfds.builder(f"nyuv2/{config}", data_dir=os.fspath(data_dir))
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return {s: tfds.data_source(f"nyuv2/{config}", data_dir=os.fspath(data_dir), split=s)
          for s in ("train", "test")}


# ------------------------------------------------------------------------------------------
# Pure functions.

def test_packaged_mapping_is_the_composition_of_894_to_40_to_13():
  mapping = nyuv2_mat.load_class_mapping()
  m40, m13 = np.array(mapping["map_894_to_40"]), np.array(mapping["map_40_to_13"])
  assert mapping["names_13"] == list(nyuv2.NAMES_13)
  np.testing.assert_array_equal(np.array(mapping["map_894_to_13"]), m13[m40])
  assert "sources" in mapping and "description" in mapping


def test_map_raw_labels_hand_picked_and_composed():
  raw = np.array(sorted(HAND_PICKED), np.uint16)
  np.testing.assert_array_equal(nyuv2_mat.map_raw_labels(raw),
                                [HAND_PICKED[r] for r in sorted(HAND_PICKED)])
  mapping = nyuv2_mat.load_class_mapping()
  composed = np.array(mapping["map_40_to_13"])[np.array(mapping["map_894_to_40"])]
  all_ids = np.arange(895)
  expected = np.where(composed == 0, 255, composed - 1)
  np.testing.assert_array_equal(nyuv2_mat.map_raw_labels(all_ids), expected)
  with pytest.raises(ValueError, match="0..894"):
    nyuv2_mat.map_raw_labels(np.array([895]))


def test_mat_slabs_to_image_orientation():
  slab = np.zeros((3, W, H), np.uint8)   # h5py order of one frame: (channel, column, row)
  slab[0, 600, 10] = 255                 # red at row 10, column 600
  slab[2, 5, 470] = 7                    # blue at row 470, column 5
  image = nyuv2_mat.mat_image_to_hwc(slab)
  assert image.shape == (H, W, 3)
  assert image[10, 600, 0] == 255 and image[470, 5, 2] == 7 and image.sum() == 262
  plane = np.zeros((W, H), np.float32)
  plane[600, 10] = 3.5
  assert nyuv2_mat.mat_plane_to_hw(plane)[10, 600] == 3.5


def test_mtan_conversions():
  image = np.full((MH, MW, 3), 141 / 255.0)
  image[0, 0] = [0.0, 1.0, 0.5]
  out = nyuv2_mtan.image_to_uint8(image)
  assert out.dtype == np.uint8 and out[1, 1, 0] == 141 and list(out[0, 0]) == [0, 255, 128]
  label = np.full((MH, MW), 12.0)
  label[3, 4] = -1
  out = nyuv2_mtan.label_to_uint8(label)
  assert out.dtype == np.uint8 and out[3, 4] == 255 and out[0, 0] == 12
  depth = np.zeros((MH, MW, 1))
  depth[5, 6, 0] = 2.25
  out = nyuv2_mtan.depth_to_hw(depth)
  assert out.shape == (MH, MW) and out.dtype == np.float32 and out[5, 6] == 2.25
  with pytest.raises(ValueError, match=r"-1 = ignore"):
    nyuv2_mtan.label_to_uint8(np.full((MH, MW), 13))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    nyuv2_mtan.image_to_uint8(np.full((MH, MW, 3), 200.0))
  with pytest.raises(ValueError, match=r"x.npy: array of shape \(10, 10, 3\)"):
    nyuv2_mtan.normal_to_hw3(np.zeros((10, 10, 3)), "x.npy")


# ------------------------------------------------------------------------------------------
# Config labeled_mat, end to end.

@pytest.fixture(scope="module")
def fake_mat(tmp_path_factory):
  rng = np.random.default_rng(0)
  n = 6
  images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
  images[:, :240, :, :] //= 2           # top half darker: an asymmetric pattern
  images[:, 10, 600] = [255, 0, 0]      # marker at row 10, column 600
  depths = rng.uniform(0.7, 10.0, (n, H, W)).astype(np.float32)
  depths[:, :, :320] = 1.5              # left half constant
  hand = np.array(sorted(HAND_PICKED))
  labels = rng.integers(0, 895, (n, H, W)).astype(np.uint16)
  labels[:, :100, :] = 21               # wall on top
  labels[:, -100:, :] = 11              # floor at the bottom
  labels[:, 200:216, :len(hand) * 8] = np.repeat(hand, 8)[None, None, :]
  labels[:, 300, 500] = 0
  manual = tmp_path_factory.mktemp("nyu_manual")
  write_labeled_mat(manual / "nyu_depth_v2_labeled.mat", images, depths, labels)
  train, test = [2, 3, 5, 6], [4, 1]     # 1-based, test deliberately out of order
  write_splits(manual / "splits.mat", train, test)
  return dict(manual=manual, images=images, depths=depths, labels=labels, train=train,
              test=test)


def _expected_labels(raw):
  mapping = json.load(open(os.path.join(os.path.dirname(nyuv2_mat.__file__), "..", "data",
                                        "nyuv2_class_mapping.json")))
  composed = np.array(mapping["map_40_to_13"])[np.array(mapping["map_894_to_40"])]
  return np.where(composed == 0, 255, composed - 1).astype(np.uint8)[raw]


def test_labeled_mat_build(fake_mat, tmp_path):
  assert h5py.File(fake_mat["manual"] / "nyu_depth_v2_labeled.mat", "r").userblock_size == 512
  with pytest.raises(NotImplementedError):  # scipy refuses it like the real v7.3 file
    scipy.io.loadmat(fake_mat["manual"] / "nyu_depth_v2_labeled.mat")
  sources = build("labeled_mat", fake_mat["manual"], tmp_path)
  assert len(sources["train"]) == 4 and len(sources["test"]) == 2
  for split in ("train", "test"):
    for position, frame in enumerate(fake_mat[split]):
      ex = sources[split][position]
      i = frame - 1  # splits.mat is 1-based
      assert ex["image"].shape == (H, W, 3) and ex["image"].dtype == np.uint8
      np.testing.assert_array_equal(ex["image"], fake_mat["images"][i])
      assert list(ex["image"][10, 600]) == [255, 0, 0]
      assert ex["depth"].dtype == np.float32 and ex["depth"].shape == (H, W)
      np.testing.assert_array_equal(ex["depth"], fake_mat["depths"][i])
      assert np.all(ex["depth"][:, :320] == 1.5)
      label = ex["label"]
      assert label.dtype == np.uint8 and label.shape == (H, W)
      np.testing.assert_array_equal(label, _expected_labels(fake_mat["labels"][i]))
      assert np.all(label[:100] == 11) and np.all(label[-100:] == 4) and label[300, 500] == 255
      for j, raw in enumerate(sorted(HAND_PICKED)):
        assert np.all(label[200:216, j * 8:(j + 1) * 8] == HAND_PICKED[raw]), raw
      assert set(ex) == {"image", "label", "depth", "normals"}
      # Normals derived from depth: the constant 1.5 m left half is a wall facing the camera.
      normals = ex["normals"]
      assert normals.shape == (H, W, 3) and normals.dtype == np.float32
      np.testing.assert_allclose(normals[2:-2, 2:318],
                                 np.broadcast_to([0.0, 0.0, -1.0], (H - 4, 316, 3)), atol=1e-6)
      assert np.all(normals[:2] == 0) and np.all(normals[:, :2] == 0)  # no neighbours


def test_labeled_mat_missing_file_through_builder(fake_mat, tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  write_splits(manual / "splits.mat", [1], [2])
  with pytest.raises(FileNotFoundError, match="nyu_depth_v2_labeled.mat"):
    build("labeled_mat", manual, tmp_path / "data")


def _small(n=2, h=6, w=8):
  return (np.zeros((n, h, w, 3), np.uint8), np.ones((n, h, w), np.float32),
          np.zeros((n, h, w), np.uint16))


def test_labeled_mat_errors(tmp_path):
  path = tmp_path / "nyu_depth_v2_labeled.mat"
  with pytest.raises(FileNotFoundError, match="nyu_depth_v2_labeled.mat"):
    nyuv2_mat.open_labeled_mat(str(path))
  scipy.io.savemat(path, {"images": np.zeros((2, 2))})
  with pytest.raises(ValueError, match="not an HDF5.*MATLAB v5"):
    nyuv2_mat.open_labeled_mat(str(path))
  write_labeled_mat(path, *_small(), skip=("depths",))
  with pytest.raises(ValueError, match=r"nyu_depth_v2_labeled.mat lacks the key\(s\) \['depths'\]"):
    nyuv2_mat.open_labeled_mat(str(path))
  images, depths, labels = _small()
  write_labeled_mat(path, images, depths, labels[:1])
  with pytest.raises(ValueError, match="frame counts differ.*'labels': 1"):
    nyuv2_mat.open_labeled_mat(str(path))
  write_labeled_mat(path, images, depths[:, :, :7], labels)
  with pytest.raises(ValueError, match="W x H differ"):
    nyuv2_mat.open_labeled_mat(str(path))
  write_labeled_mat(path, *_small())
  with pytest.raises(ValueError, match="frames are 6x8.*480x640"):
    nyuv2_mat.open_labeled_mat(str(path))


def test_splits_errors(tmp_path):
  path = tmp_path / "splits.mat"
  with pytest.raises(FileNotFoundError, match="splits.mat"):
    nyuv2_mat.read_splits(str(path), 6)
  write_splits(path, [3, 1], [2, 6])
  got = nyuv2_mat.read_splits(str(path), 6)
  np.testing.assert_array_equal(got["train"], [2, 0])
  np.testing.assert_array_equal(got["test"], [1, 5])
  write_splits(path, [1, 7], [2])
  with pytest.raises(ValueError, match=r"'trainNdxs' has frame numbers out of range 1..6.*\[7\]"):
    nyuv2_mat.read_splits(str(path), 6)
  write_splits(path, [1, 2], [2, 3])
  with pytest.raises(ValueError, match=r"overlap in frame numbers \[2\]"):
    nyuv2_mat.read_splits(str(path), 6)
  write_splits(path, [1, 2], [3], train_key="trainIdx")
  with pytest.raises(ValueError, match="splits.mat lacks the key 'trainNdxs'"):
    nyuv2_mat.read_splits(str(path), 6)
  with h5py.File(path, "w", userblock_size=512) as f:
    f["trainNdxs"] = np.ones((1, 1))
  with open(path, "r+b") as f:
    f.write(_mat_header())
  with pytest.raises(ValueError, match="splits.mat is a MATLAB v7.3 file"):
    nyuv2_mat.read_splits(str(path), 6)


# ------------------------------------------------------------------------------------------
# Config mtan_npy, end to end.

def write_mtan_split(split_dir, n, rng):
  frames = []
  for i in range(n):
    image = rng.integers(0, 256, (MH, MW, 3)) / 255.0          # float64 k/255 like MTAN
    label = rng.integers(-1, 13, (MH, MW)).astype(np.float32)  # -1 = ignore
    label[0, :5] = [-1, 0, 5, 12, -1]
    depth = rng.uniform(0.7, 10, (MH, MW, 1)).astype(np.float32)
    depth[:20] = 0                                             # invalid band
    normal = rng.normal(size=(MH, MW, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[:20] = 0
    for folder, array in zip(nyuv2_mtan.FOLDERS, (image, label, depth, normal)):
      os.makedirs(split_dir / folder, exist_ok=True)
      np.save(split_dir / folder / f"{i}.npy", array)
    frames.append((image, label, depth, normal))
  return frames


def test_mtan_build_with_nyuv2_parent(tmp_path):
  rng = np.random.default_rng(1)
  manual = tmp_path / "manual"
  frames = {"train": write_mtan_split(manual / "nyuv2" / "train", 3, rng),
            "test": write_mtan_split(manual / "nyuv2" / "val", 2, rng)}
  sources = build("mtan_npy", manual, tmp_path / "data")
  assert len(sources["train"]) == 3 and len(sources["test"]) == 2
  for split, split_frames in frames.items():
    for i, (image, label, depth, normal) in enumerate(split_frames):
      ex = sources[split][i]
      assert set(ex) == {"image", "label", "depth", "normals"}
      np.testing.assert_array_equal(ex["image"], np.round(image * 255).astype(np.uint8))
      assert ex["label"].dtype == np.uint8
      np.testing.assert_array_equal(ex["label"][0, :5], [255, 0, 5, 12, 255])
      np.testing.assert_array_equal(ex["label"], np.where(label < 0, 255, label))
      assert ex["depth"].shape == (MH, MW) and np.all(ex["depth"][:20] == 0)
      np.testing.assert_array_equal(ex["depth"], depth[..., 0])
      assert ex["normals"].shape == (MH, MW, 3) and ex["normals"].dtype == np.float32
      np.testing.assert_array_equal(ex["normals"], normal)


def test_mtan_errors(tmp_path):
  rng = np.random.default_rng(2)
  with pytest.raises(FileNotFoundError, match="expected .*/train/ and .*/val/"):
    nyuv2_mtan.find_root(str(tmp_path))
  split = tmp_path / "train"
  write_mtan_split(split, 3, rng)
  assert nyuv2_mtan.count_frames(str(split)) == 3
  os.remove(split / "label" / "2.npy")
  with pytest.raises(ValueError, match=r"different numbers of frames.*'label': 2"):
    nyuv2_mtan.count_frames(str(split))
  os.remove(split / "image" / "1.npy")
  with pytest.raises(ValueError, match=r"train/image: .*missing \[1\]"):
    nyuv2_mtan.count_frames(str(split))
  np.save(split / "image" / "1.npy", np.zeros((MH, MW, 3)))
  os.rename(split / "depth", split / "depths")
  with pytest.raises(FileNotFoundError, match="Missing folder .*train/depth"):
    nyuv2_mtan.count_frames(str(split))
  os.rename(split / "depths", split / "depth")
  np.save(split / "label" / "0.npy", np.zeros((MH, MW, 2)))
  with pytest.raises(ValueError, match=r"label/0.npy: array of shape \(288, 384, 2\)"):
    nyuv2_mtan.load_frame(str(split), 0)
  with pytest.raises(FileNotFoundError, match="train/image/7.npy"):
    nyuv2_mtan.load_frame(str(split), 7)
