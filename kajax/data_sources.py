"""Finding and opening the data splits a config names (``tfds.data_source``, no TensorFlow).

The embedded default data (synthetic rooms) is generated on first use, so the demo needs no
download; any other dataset that is not built yet gets an error saying how to build it.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import tensorflow_datasets as tfds

import kajax.datasets  # noqa: F401  (registers kajax's TFDS builders)

# Datasets kajax can generate itself when they are missing.
_GENERATED = ("synthetic_rooms",)


def resolve_data_dir(data_dir: str | None) -> str:
  """``--config.data_dir``, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (data is shared
  between runs, never inside one run's workdir)."""
  if data_dir:
    return os.path.abspath(os.path.expanduser(data_dir))
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def ensure_built(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The builder of ``name`` ('dataset/config'), generating synthetic data if needed."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown dataset {name!r} (--config.dataset). kajax provides "
                     "synthetic_rooms/{tiny,small,vga240} and nyuv2/{labeled_mat,mtan_npy}."
                     ) from e
  if builder.is_prepared():
    return builder
  if name.split("/")[0] not in _GENERATED:
    raise FileNotFoundError(
        f"Dataset {name} is not built in {data_dir}. Build it once with\n"
        f"  python -m kajax.build_data --dataset={name} --data_dir={data_dir} "
        "--manual_dir=DIR_WITH_THE_DOWNLOADED_FILES\n"
        "(see `python -m kajax.build_data --help` for which files to download).")
  if jax.process_index() == 0:
    print(f"Generating {name} into {data_dir} (first use only)...", flush=True)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"built {name}")
    builder = tfds.builder(name, data_dir=data_dir)
  return builder


def open_split(name: str, data_dir: str, split: str) -> Any:
  """Random-access source of one split (dicts of numpy arrays)."""
  builder = ensure_built(name, data_dir)
  base = split.split("[")[0]  # 'train[:90%]' slices the 'train' split.
  if base not in builder.info.splits:
    raise ValueError(f"Split {split!r} does not exist in {name}; it has "
                     f"{sorted(builder.info.splits)}.")
  return tfds.data_source(name, data_dir=data_dir, split=split,
                          download=False)
