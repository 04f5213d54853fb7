"""TFDS builder ``nyuv2``: the NYU Depth V2 labelled frames, from the official files or MTAN's.

Two configs, both built from a manual directory and without TensorFlow
(``download_and_prepare(file_format='array_record')``, read with ``tfds.data_source``):

- ``labeled_mat``: the official ``nyu_depth_v2_labeled.mat`` + ``splits.mat`` at 480x640;
  894 raw classes -> 13 (``kajax/data/nyuv2_class_mapping.json``); in-painted depth;
  approximate surface normals computed from that depth with the NYUv2 camera intrinsics
  (``kajax.datasets.depth_normals``; the file itself has none).
- ``mtan_npy``: the MTAN/LibMTL/Auto-Lambda preprocessed ``.npy`` folders at 288x384, with
  surface normals.

Features follow kajax's common interface: ``image`` uint8 (H, W, 3); ``label`` uint8 (H, W),
classes 0..12 = bed, books, ceiling, chair, floor, furniture, objects, picture, sofa, table,
tv, wall, window, 255 = ignore; ``depth`` float32 (H, W) metres, 0 = invalid; ``normals``
float32 (H, W, 3) ((0, 0, 0) = invalid; MTAN's own, or derived from depth for
``labeled_mat``). Examples are stored in source order (shuffling
disabled), so example i of ``test`` is the i-th frame of ``testNdxs`` (or MTAN's ``val/i.npy``).
The readers live in ``nyuv2_mat`` and ``nyuv2_mtan``; importing this module registers the
builder.
"""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath

from kajax.datasets import nyuv2_mat, nyuv2_mtan

NAMES_13 = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture",
            "sofa", "table", "tv", "wall", "window")

_INSTRUCTIONS = f"""\
Config `labeled_mat` needs two files placed directly in the manual directory:

  1. `{nyuv2_mat.LABELED_MAT}` (MATLAB v7.3, 2,972,037,809 bytes,
     md5 520609c519fba3ba5ac58c8fefcc3530), the official NYU Depth V2 labelled subset:
       http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat
  2. `{nyuv2_mat.SPLITS_MAT}` (MATLAB v5, 2,626 bytes, md5 08e3c3aea27130ac7c01ffd739a4535f),
     the official 795 train / 654 test split. A byte-identical copy is in
     https://github.com/ankurhanda/nyuv2-meta-data (file `splits.mat`).

Config `mtan_npy` needs the preprocessed NYUv2 of MTAN / Auto-Lambda / LibMTL (288x384,
with normals), from https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=0
(link in the lorenmt/mtan README). Unpack it so that the manual directory holds
`train/{{image,label,depth,normal}}/0.npy ...` and `val/...` (a `nyuv2/` folder around them
is also accepted).

Then build (the `tfds build` command line needs TensorFlow; this does not):

  python -m kajax.build_data --dataset=nyuv2/labeled_mat --manual_dir=MANUAL_DIR

or in Python:

  import tensorflow_datasets as tfds
  import kajax.datasets.nyuv2  # registers the builder
  tfds.builder('nyuv2/labeled_mat', data_dir=DATA_DIR).download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
  train = tfds.data_source('nyuv2/labeled_mat', data_dir=DATA_DIR, split='train')
"""


def _features(height: int, width: int) -> tfds.features.FeaturesDict:
  # Image takes PIL images (PNG-encoded by PIL); the rest are zlib-compressed raw tensors.
  # Both encode and decode without TensorFlow.
  features = {
      "image": tfds.features.Image(shape=(height, width, 3), encoding_format="png"),
      "label": tfds.features.Tensor(shape=(height, width), dtype=np.uint8, encoding="zlib"),
      "depth": tfds.features.Tensor(shape=(height, width), dtype=np.float32, encoding="zlib"),
      "normals": tfds.features.Tensor(shape=(height, width, 3), dtype=np.float32,
                                      encoding="zlib"),
  }
  return tfds.features.FeaturesDict(features)


def _to_tfds_example(example: dict[str, np.ndarray]) -> dict:
  return {**example, "image": PIL.Image.fromarray(example["image"], mode="RGB")}


class Nyuv2(tfds.core.GeneratorBasedBuilder):
  """NYU Depth V2 labelled frames: 13-class segmentation, depth and surface normals."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Configs labeled_mat (official .mat files) and mtan_npy.",
                   "1.1.0": "labeled_mat: surface normals derived from depth."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  # TFDS 4.9.10 locates a builder's source file through `importlib_resources`, a package it
  # only requires on Python < 3.9 (tensorflow/datasets#11212), so building fails with
  # ModuleNotFoundError on 3.11 without it. Naming the file here skips that lookup.
  code_path = epath.Path(__file__)
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name="labeled_mat",
          description=("Official nyu_depth_v2_labeled.mat + splits.mat: 795 train / 654 "
                       "test frames at 480x640, 13 classes, in-painted depth in metres, "
                       "approximate normals from depth.")),
      tfds.core.BuilderConfig(
          name="mtan_npy",
          description=("MTAN preprocessed NYUv2 .npy folders: 795 train / 654 test (MTAN's "
                       "'val') frames at 288x384, 13 classes, depth, surface normals.")),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == "labeled_mat":
      features = _features(nyuv2_mat.HEIGHT, nyuv2_mat.WIDTH)
    else:
      features = _features(nyuv2_mtan.HEIGHT, nyuv2_mtan.WIDTH)
    return self.dataset_info_from_configs(
        description=__doc__,
        features=features,
        homepage="https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html",
        # Keep source order so example i maps back to a known frame (docstring above).
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(class_names=list(NAMES_13), ignore_label=255),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    if self.builder_config.name == "labeled_mat":
      return self._mat_splits(manual_dir)
    return self._mtan_splits(manual_dir)

  def _mat_splits(self, manual_dir: str):
    mat_path = os.path.join(manual_dir, nyuv2_mat.LABELED_MAT)
    # Validate both files before writing anything.
    f, num_frames = nyuv2_mat.open_labeled_mat(mat_path)
    f.close()
    indices = nyuv2_mat.read_splits(os.path.join(manual_dir, nyuv2_mat.SPLITS_MAT),
                                    num_frames)
    return {split: self._generate_examples(mat_path, idx) for split, idx in indices.items()}

  def _mtan_splits(self, manual_dir: str):
    root = nyuv2_mtan.find_root(manual_dir)
    splits = {}
    for split, folder in nyuv2_mtan.SPLIT_FOLDERS.items():
      split_dir = os.path.join(root, folder)
      splits[split] = self._generate_examples(split_dir, nyuv2_mtan.count_frames(split_dir))
    return splits

  def _generate_examples(self, source: str, frames):
    """Yields (key, example) in source order.

    Args:
      source: ``labeled_mat``: path of the .mat file; ``mtan_npy``: a split folder.
      frames: ``labeled_mat``: 0-based frame indices of the split (``splits.mat`` order);
        ``mtan_npy``: number of frames in the folder.
    """
    if self.builder_config.name == "labeled_mat":
      for position, (frame, example) in enumerate(
          nyuv2_mat.iter_labeled_frames(source, frames)):
        # Position in the split first (unique, ordered), then the 1-based MATLAB frame number.
        yield f"{position:04d}_frame{frame + 1:04d}", _to_tfds_example(example)
    else:
      for i in range(frames):
        yield f"{i:04d}", _to_tfds_example(nyuv2_mtan.load_frame(source, i))
