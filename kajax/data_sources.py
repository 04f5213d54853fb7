"""Finding and opening the data splits a config names (``tfds.data_source``, no TensorFlow).

The embedded default data (synthetic rooms) is generated on first use, so the demo needs no
download; any other dataset that is not built yet gets an error saying how to build it.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow_datasets as tfds

import kajax.datasets  # noqa: F401  (registers kajax's TFDS builders)
from kajax import multihost, storage

# Datasets kajax can generate itself when they are missing.
_GENERATED = ("synthetic_rooms",)


def resolve_data_dir(data_dir: str | None) -> str:
  """``--config.data_dir``, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (data is shared
  between runs, never inside one run's workdir). ``gs://`` paths are kept as they are."""
  return os.fspath(storage.resolve(
      data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")))


# (name, data_dir) already checked in this process: every process checks the same ones in
# the same order, so the collectives below stay matched.
_READY: set[tuple[str, str]] = set()


def ensure_built(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The builder of ``name`` ('dataset/config'), generating synthetic data if needed.

  Multi-host: process 0 decides whether to generate and generates; every process waits for
  it, then checks that it sees the same prepared dataset (same examples per split).
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown dataset {name!r} (--config.dataset). kajax provides "
                     "synthetic_rooms/{tiny,small,vga240} and nyuv2/{labeled_mat,mtan_npy}."
                     ) from e
  if (name, data_dir) in _READY:
    return builder
  if not multihost.broadcast_decision(builder.is_prepared()):
    if name.split("/")[0] not in _GENERATED:
      raise FileNotFoundError(
          f"Dataset {name} is not built in {data_dir}. Build it once with\n"
          f"  python -m kajax.build_data --dataset={name} --data_dir={data_dir} "
          "--manual_dir=DIR_WITH_THE_DOWNLOADED_FILES\n"
          "(see `python -m kajax.build_data --help` for which files to download).")
    if multihost.is_main_process():
      multihost.log("Generating %s into %s (first use only)...", name, data_dir)
      builder.download_and_prepare(
          file_format="array_record",
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    multihost.sync(f"built {name}")
    builder = tfds.builder(name, data_dir=data_dir)
  _check_same_data(builder, name, data_dir)
  _READY.add((name, data_dir))
  return builder


def _check_same_data(builder: tfds.core.DatasetBuilder, name: str, data_dir: str) -> None:
  """Raises on every process when some host does not see process 0's prepared dataset."""
  if not multihost.is_multiprocess():
    return
  size = sum(s.num_examples for s in builder.info.splits.values()) \
      if builder.is_prepared() else -1
  sizes = multihost.all_processes(size)
  if (sizes != sizes[0]).any():
    raise FileNotFoundError(
        f"Hosts do not see the same {name} in {data_dir} (--config.data_dir or "
        f"$TFDS_DATA_DIR): examples per process {sizes.tolist()} (-1 = not built). Every "
        "host must read the same data: put it on a gs:// bucket or a shared filesystem at "
        "the same path on every host, or build it on each host.")


def open_split(name: str, data_dir: str, split: str) -> Any:
  """Random-access source of one split (dicts of numpy arrays).

  ``split`` is TFDS's split syntax: a split, a slice of one ('train[:90%]'), or a union of
  those ('unlabeled+teacher_seg', read one after the other).
  """
  builder = ensure_built(name, data_dir)
  for part in (p.strip() for p in split.split("+")):
    base = part.split("[")[0]  # 'train[:90%]' slices the 'train' split.
    if base not in builder.info.splits:
      raise ValueError(f"Split {part!r} (of {split!r}) does not exist in {name}; it has "
                       f"{sorted(builder.info.splits)}.")
  return tfds.data_source(name, data_dir=data_dir, split=split,
                          download=False)
