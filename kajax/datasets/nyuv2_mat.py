"""Readers for the official NYU Depth V2 labelled files (``nyu_depth_v2_labeled.mat`` and
``splits.mat``).

The labelled file is MATLAB v7.3, i.e. HDF5 behind a 512-byte MATLAB header. MATLAB is
column-major, so h5py shows every variable with its axes reversed: ``images`` is
(N, 3, W=640, H=480), ``depths`` and ``labels`` are (N, W, H). ``splits.mat`` is a MATLAB v5
file whose ``trainNdxs`` (795) / ``testNdxs`` (654) hold 1-based frame numbers as uint16 (n, 1)
arrays. Facts and their sources: ``shared/data/nyuv2_facts.md`` sections 1-4.

Everything here is a small function over NumPy arrays or one open file, so the builder in
``kajax.datasets.nyuv2`` stays thin and tests can check each step on its own.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Iterator

import h5py
import numpy as np
import scipy.io

from kajax.datasets import depth_normals

LABELED_MAT = "nyu_depth_v2_labeled.mat"
SPLITS_MAT = "splits.mat"
# Native resolution of the labelled frames (rows, columns).
HEIGHT, WIDTH = 480, 640
NUM_RAW_CLASSES = 894
IGNORE_LABEL = 255
MAT_KEYS = ("images", "labels", "depths")
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}

_CLASS_MAP_JSON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data",
                               "nyuv2_class_mapping.json")


@functools.lru_cache(maxsize=1)
def load_class_mapping() -> dict:
  """The packaged NYUv2 class-mapping tables (``kajax/data/nyuv2_class_mapping.json``)."""
  with open(_CLASS_MAP_JSON) as f:
    return json.load(f)


def raw_to_13_lookup(map_894_to_13=None) -> np.ndarray:
  """Lookup table from raw label ids (0..894) to kajax's 13-class training ids.

  Args:
    map_894_to_13: the ``map_894_to_13`` list (length 895, values 0..13, 0 = unlabeled);
      defaults to the packaged table.

  Returns:
    uint8 array of length 895: raw 0 (unlabeled) -> 255, a raw id whose 13-class id is
    c in 1..13 -> c - 1 (0 = bed ... 12 = window).
  """
  if map_894_to_13 is None:
    map_894_to_13 = load_class_mapping()["map_894_to_13"]
  table = np.asarray(map_894_to_13, dtype=np.int64)
  if table.shape != (NUM_RAW_CLASSES + 1,) or table.min() < 0 or table.max() > 13:
    raise ValueError(f"map_894_to_13 must have {NUM_RAW_CLASSES + 1} entries in 0..13, got "
                     f"shape {table.shape} with range [{table.min()}, {table.max()}].")
  return np.where(table == 0, IGNORE_LABEL, table - 1).astype(np.uint8)


def map_raw_labels(raw: np.ndarray, lookup: np.ndarray | None = None) -> np.ndarray:
  """Maps a raw NYUv2 label map (0..894) to 13 classes (0..12, 255 = ignore) as uint8."""
  if lookup is None:
    lookup = raw_to_13_lookup()
  raw = np.asarray(raw)
  if raw.size and (raw.min() < 0 or raw.max() > NUM_RAW_CLASSES):
    raise ValueError(f"Raw NYUv2 label ids must lie in 0..{NUM_RAW_CLASSES}, got range "
                     f"[{raw.min()}, {raw.max()}].")
  return lookup[raw.astype(np.int64)]


def mat_image_to_hwc(image: np.ndarray) -> np.ndarray:
  """h5py's (3, W, H) image slab -> (H, W, 3) uint8 RGB (MATLAB column-major order undone)."""
  return np.ascontiguousarray(np.asarray(image).transpose(2, 1, 0))


def mat_plane_to_hw(plane: np.ndarray) -> np.ndarray:
  """h5py's (W, H) slab of ``depths``/``labels`` -> (H, W)."""
  return np.ascontiguousarray(np.asarray(plane).T)


def clean_depth(depth: np.ndarray) -> np.ndarray:
  """Depth in metres as float32; non-finite values become 0 (kajax's "invalid" value)."""
  depth = np.asarray(depth, dtype=np.float32)
  return np.where(np.isfinite(depth), depth, np.float32(0))


def _missing_file_error(path: str, what: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"{path} not found. Put {what} in the manual directory (see "
      "Nyuv2.MANUAL_DOWNLOAD_INSTRUCTIONS) and pass that directory as manual_dir "
      "(tfds --manual_dir or DownloadConfig(manual_dir=...)).")


def open_labeled_mat(path: str) -> tuple[h5py.File, int]:
  """Opens ``nyu_depth_v2_labeled.mat`` and checks its layout without reading the arrays.

  Args:
    path: path of the MATLAB v7.3 file.

  Returns:
    (open h5py file, number of frames). The caller closes the file.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: not an HDF5 (v7.3) file, a key is missing, or the shapes disagree.
  """
  if not os.path.isfile(path):
    raise _missing_file_error(path, f"the official {LABELED_MAT} (2,972,037,809 bytes)")
  if not h5py.is_hdf5(path):
    with open(path, "rb") as f:
      head = f.read(128)
    hint = ("it is a MATLAB v5 file, but the official labelled file is v7.3 (HDF5)"
            if head.startswith(b"MATLAB 5.0") else
            "it may be truncated or an HTML error page; download it again")
    raise ValueError(f"{path} is not an HDF5 (MATLAB v7.3) file: {hint}. Expected the "
                     f"official {LABELED_MAT}, md5 520609c519fba3ba5ac58c8fefcc3530.")
  f = h5py.File(path, "r")
  try:
    missing = [k for k in MAT_KEYS if k not in f]
    if missing:
      raise ValueError(f"{path} lacks the key(s) {missing} (found {sorted(f.keys())}). "
                       f"Expected the official {LABELED_MAT} with {list(MAT_KEYS)}.")
    images, labels, depths = (f[k] for k in MAT_KEYS)
    if images.ndim != 4 or images.shape[1] != 3:
      raise ValueError(f"{path}: 'images' has h5py shape {images.shape}; expected "
                       "(N, 3, W, H) as in the official file (1449, 3, 640, 480).")
    for name, ds in (("labels", labels), ("depths", depths)):
      if ds.ndim != 3:
        raise ValueError(f"{path}: '{name}' has h5py shape {ds.shape}; expected (N, W, H).")
    counts = {k: f[k].shape[0] for k in MAT_KEYS}
    if len(set(counts.values())) != 1:
      raise ValueError(f"{path}: frame counts differ between keys {counts}; the file is "
                       "inconsistent (re-download it).")
    sizes = {"images": images.shape[2:], "labels": labels.shape[1:],
             "depths": depths.shape[1:]}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"{path}: W x H differ between keys {sizes} (h5py order); the file "
                       "is inconsistent (re-download it).")
    width, height = images.shape[2:]
    if (height, width) != (HEIGHT, WIDTH):
      raise ValueError(f"{path}: frames are {height}x{width} (HxW); the official labelled "
                       f"frames are {HEIGHT}x{WIDTH}.")
    if images.dtype != np.uint8:
      raise ValueError(f"{path}: 'images' has dtype {images.dtype}; expected uint8.")
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"{path}: 'labels' has dtype {labels.dtype}; expected integer ids "
                       "(uint16 in the official file).")
  except Exception:
    f.close()
    raise
  return f, counts["images"]


def read_splits(path: str, num_frames: int) -> dict[str, np.ndarray]:
  """Reads the official ``splits.mat`` and returns 0-based frame indices per split.

  Args:
    path: path of the MATLAB v5 file with ``trainNdxs`` and ``testNdxs`` (1-based).
    num_frames: number of frames in the labelled file (1449 for the official one).

  Returns:
    {'train': int64 array, 'test': int64 array} of 0-based indices, in file order.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: not a MATLAB v5 file, a key is missing, or indices are out of range,
      repeated or shared by both splits.
  """
  if not os.path.isfile(path):
    raise _missing_file_error(path, f"the official {SPLITS_MAT} (2,626 bytes)")
  try:
    mat = scipy.io.loadmat(path)
  except NotImplementedError as e:  # scipy refuses v7.3 (HDF5) files this way.
    raise ValueError(f"{path} is a MATLAB v7.3 file; expected the official MATLAB v5 "
                     f"{SPLITS_MAT} (md5 08e3c3aea27130ac7c01ffd739a4535f).") from e
  except Exception as e:  # scipy raises ValueError/TypeError/OSError on garbage.
    raise ValueError(f"{path} is not a readable MATLAB v5 file ({e}); expected the official "
                     f"{SPLITS_MAT} (md5 08e3c3aea27130ac7c01ffd739a4535f).") from e
  splits = {}
  for split, key in SPLIT_KEYS.items():
    if key not in mat:
      found = sorted(k for k in mat if not k.startswith("__"))
      raise ValueError(f"{path} lacks the key '{key}' (found {found}); expected the official "
                       f"{SPLITS_MAT} with {sorted(SPLIT_KEYS.values())}.")
    values = np.asarray(mat[key]).reshape(-1)
    # Stored as uint16 (MATLAB class double): cast before subtracting 1.
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
      raise ValueError(f"{path}: '{key}' must hold whole 1-based frame numbers, got "
                       f"{values[:10]}.")
    values = values.astype(np.int64)
    bad = values[(values < 1) | (values > num_frames)]
    if bad.size:
      raise ValueError(f"{path}: '{key}' has frame numbers out of range 1..{num_frames} "
                       f"(the labelled file's frame count): {bad[:10].tolist()}.")
    if np.unique(values).size != values.size:
      raise ValueError(f"{path}: '{key}' repeats frame numbers.")
    splits[split] = values - 1
  shared = np.intersect1d(splits["train"], splits["test"])
  if shared.size:
    raise ValueError(f"{path}: trainNdxs and testNdxs overlap in frame numbers "
                     f"{(shared[:10] + 1).tolist()}; the official splits are disjoint.")
  return splits


def iter_labeled_frames(path: str, indices: np.ndarray,
                        lookup: np.ndarray | None = None) -> Iterator[tuple[int, dict]]:
  """Yields (frame index, example) for the given 0-based frames, one frame at a time.

  The official file is 2.8 GB, so each frame is sliced from the HDF5 datasets on its own.

  Args:
    path: ``nyu_depth_v2_labeled.mat``.
    indices: 0-based frame indices (e.g. from :func:`read_splits`).
    lookup: raw -> 13-class table (:func:`raw_to_13_lookup`); default: the packaged one.

  Yields:
    (index, {'image': (H, W, 3) uint8, 'label': (H, W) uint8 0..12/255,
    'depth': (H, W) float32 metres, 'normals': (H, W, 3) float32 unit vectors estimated
    from the depth, see ``kajax.datasets.depth_normals``}).
  """
  if lookup is None:
    lookup = raw_to_13_lookup()
  f, _ = open_labeled_mat(path)
  with f:
    for i in indices:
      i = int(i)
      raw = mat_plane_to_hw(f["labels"][i])
      try:
        label = map_raw_labels(raw, lookup)
      except ValueError as e:
        raise ValueError(f"{path}: 'labels' of frame {i} (MATLAB {i + 1}): {e}") from e
      depth = clean_depth(mat_plane_to_hw(f["depths"][i]))
      yield i, {
          "image": mat_image_to_hwc(f["images"][i]),
          "label": label,
          "depth": depth,
          # The file has no normals: approximate ones from the depth (depth_normals).
          "normals": depth_normals.normals_from_depth(depth),
      }
