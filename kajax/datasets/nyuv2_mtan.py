"""Readers for the MTAN preprocessed NYUv2 (``.npy`` folders used by MTAN, Auto-Lambda, LibMTL).

Layout: ``nyuv2/{train,val}/{image,label,depth,normal}/{i}.npy`` with i = 0..n-1, frames at
288x384; train has 795 frames, val the 654 frames of the official test split. Per frame:
image (288, 384, 3) float in [0, 1]; label (288, 384) with 0..12 in the bed..window order and
-1 = ignore; depth (288, 384, 1) metres with 0 = invalid; normal (288, 384, 3) unit vectors
with (0, 0, 0) = invalid (``shared/data/nyuv2_facts.md`` section 6; lorenmt/mtan
``im2im_pred/create_dataset.py``). The functions below convert each array to kajax's common
features: image uint8, label uint8 with 255 = ignore, depth (H, W) float32, normals float32.
"""

from __future__ import annotations

import os
import re

import numpy as np

HEIGHT, WIDTH = 288, 384
NUM_CLASSES = 13
IGNORE_LABEL = 255
FOLDERS = ("image", "label", "depth", "normal")
# kajax split -> MTAN folder; MTAN's 'val' is the official NYUv2 test split.
SPLIT_FOLDERS = {"train": "train", "test": "val"}
_NPY_NAME = re.compile(r"^(\d+)\.npy$")


def find_root(manual_dir: str) -> str:
  """The folder holding ``train/`` and ``val/``: ``manual_dir`` itself or ``manual_dir/nyuv2``.

  Raises:
    FileNotFoundError: neither location holds both folders.
  """
  for root in (manual_dir, os.path.join(manual_dir, "nyuv2")):
    if all(os.path.isdir(os.path.join(root, s)) for s in SPLIT_FOLDERS.values()):
      return root
  raise FileNotFoundError(
      f"No MTAN NYUv2 folders in {manual_dir}: expected {manual_dir}/train/ and "
      f"{manual_dir}/val/ (or the same under {manual_dir}/nyuv2/), each with "
      f"{'/, '.join(FOLDERS)}/ subfolders of 0.npy, 1.npy, ... Unpack the MTAN download there "
      "(see Nyuv2.MANUAL_DOWNLOAD_INSTRUCTIONS).")


def count_frames(split_dir: str) -> int:
  """Checks ``split_dir/{image,label,depth,normal}`` hold the same ``0..n-1.npy`` and returns n.

  Raises:
    FileNotFoundError: a folder is missing or empty.
    ValueError: the numbering has gaps, or the folders hold different frame numbers.
  """
  numbers = {}
  for folder in FOLDERS:
    path = os.path.join(split_dir, folder)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Missing folder {path}; an MTAN NYUv2 split needs "
                              f"{', '.join(FOLDERS)} subfolders.")
    found = sorted(int(m.group(1)) for m in map(_NPY_NAME.match, os.listdir(path)) if m)
    if not found:
      raise FileNotFoundError(f"{path} holds no 0.npy, 1.npy, ... files.")
    if found != list(range(len(found))):
      gaps = sorted(set(range(found[-1] + 1)) - set(found))
      raise ValueError(f"{path}: frame numbers must run 0..n-1 without gaps; missing "
                       f"{gaps[:10]} (of {len(gaps)}). Re-copy the folder.")
    numbers[folder] = len(found)
  if len(set(numbers.values())) != 1:
    raise ValueError(f"{split_dir}: the subfolders hold different numbers of frames "
                     f"{numbers}; every frame needs an image, label, depth and normal file.")
  return numbers["image"]


def _check_shape(array: np.ndarray, shapes: tuple[tuple[int, ...], ...], path: str):
  if array.shape not in shapes:
    expected = " or ".join(str(s) for s in shapes)
    raise ValueError(f"{path}: array of shape {array.shape}; expected {expected} (MTAN "
                     "NYUv2 frames are 288x384).")


def image_to_uint8(image: np.ndarray, path: str = "image") -> np.ndarray:
  """(H, W, 3) float image in [0, 1] -> uint8 (x * 255, rounded); uint8 input is kept."""
  image = np.asarray(image)
  _check_shape(image, ((HEIGHT, WIDTH, 3),), path)
  if image.dtype == np.uint8:
    return image
  # Small tolerance: the floats are k/255 stored in float32/64.
  if not np.all(np.isfinite(image)) or image.min() < -1e-3 or image.max() > 1 + 1e-3:
    raise ValueError(f"{path}: image values span [{np.nanmin(image)}, {np.nanmax(image)}]; "
                     "MTAN images are floats in [0, 1].")
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def label_to_uint8(label: np.ndarray, path: str = "label") -> np.ndarray:
  """(H, W) MTAN label with 0..12 and -1 = ignore -> uint8 with 255 = ignore."""
  label = np.asarray(label)
  _check_shape(label, ((HEIGHT, WIDTH), (HEIGHT, WIDTH, 1)), path)
  label = label.reshape(HEIGHT, WIDTH)
  if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
    raise ValueError(f"{path}: labels must be whole numbers in -1..{NUM_CLASSES - 1}.")
  label = label.astype(np.int64)
  if label.min() < -1 or label.max() >= NUM_CLASSES:
    raise ValueError(f"{path}: labels span [{label.min()}, {label.max()}]; MTAN labels are "
                     f"0..{NUM_CLASSES - 1} with -1 = ignore.")
  return np.where(label < 0, IGNORE_LABEL, label).astype(np.uint8)


def depth_to_hw(depth: np.ndarray, path: str = "depth") -> np.ndarray:
  """(H, W, 1) or (H, W) depth in metres -> (H, W) float32; 0 (and non-finite) = invalid."""
  depth = np.asarray(depth)
  _check_shape(depth, ((HEIGHT, WIDTH, 1), (HEIGHT, WIDTH)), path)
  depth = depth.reshape(HEIGHT, WIDTH).astype(np.float32)
  return np.where(np.isfinite(depth), depth, np.float32(0))


def normal_to_hw3(normal: np.ndarray, path: str = "normal") -> np.ndarray:
  """(H, W, 3) unit normals -> float32; (0, 0, 0) (and non-finite) = invalid."""
  normal = np.asarray(normal)
  _check_shape(normal, ((HEIGHT, WIDTH, 3),), path)
  normal = normal.astype(np.float32)
  finite = np.all(np.isfinite(normal), axis=-1, keepdims=True)
  return np.where(finite, normal, np.float32(0))


def load_frame(split_dir: str, index: int) -> dict[str, np.ndarray]:
  """Loads frame ``index`` of an MTAN split folder as kajax features.

  Returns:
    {'image': (288, 384, 3) uint8, 'label': (288, 384) uint8 0..12/255,
    'depth': (288, 384) float32 metres, 'normals': (288, 384, 3) float32}.
  """
  def load(folder):
    path = os.path.join(split_dir, folder, f"{index}.npy")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"Missing {path}; every frame needs image, label, depth and "
                              "normal files.")
    try:
      return np.load(path, allow_pickle=False), path
    except (OSError, ValueError) as e:
      raise ValueError(f"{path} is not a readable .npy array ({e}).") from e

  # Check for all four files before decoding any, so a missing one is reported as such.
  arrays = {folder: load(folder) for folder in FOLDERS}
  return {
      "image": image_to_uint8(*arrays["image"]),
      "label": label_to_uint8(*arrays["label"]),
      "depth": depth_to_hw(*arrays["depth"]),
      "normals": normal_to_hw3(*arrays["normal"]),
  }
