"""Builds one of kajax's TFDS datasets into array_record files (no TensorFlow needed).

  python -m kajax.build_data --dataset=synthetic_rooms/small --data_dir=~/tensorflow_datasets
  python -m kajax.build_data --dataset=synthetic_rooms/small --data_dir=DIR \\
      --split_sizes=teacher_seg=200,teacher_depth=200,unlabeled=500
  python -m kajax.build_data --dataset=nyuv2/labeled_mat --data_dir=DIR --manual_dir=DOWNLOADS

Afterwards read a split with ``tfds.data_source(NAME/CONFIG, data_dir=DIR, split=...)``.
``--split_sizes`` / ``--scale`` build a variant of a config with other split sizes (for
builders that offer ``make_config``, e.g. synthetic_rooms) and print its config name.
"""

from __future__ import annotations

import importlib
import os

from absl import app, flags

_DATASET = flags.DEFINE_string("dataset", None, "NAME/CONFIG, e.g. synthetic_rooms/small.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write into.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding manually downloaded "
                                  "files (datasets that need them say which).")
_SPLIT_SIZES = flags.DEFINE_string("split_sizes", None, "Comma-separated SPLIT=N overrides, "
                                   "e.g. teacher_seg=200,unlabeled=500.")
_SCALE = flags.DEFINE_float("scale", None, "Multiply every split size by this factor.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset exists.")
flags.mark_flags_as_required(["dataset", "data_dir"])


def kajax_builders() -> dict:
  """{name: builder class} of every TFDS builder defined in kajax (after importing them)."""
  import tensorflow_datasets as tfds
  import kajax.datasets  # noqa: F401  (registers the builders)
  found, todo = {}, [tfds.core.DatasetBuilder]
  while todo:
    cls = todo.pop()
    todo += cls.__subclasses__()
    if cls.__module__.startswith("kajax.") and getattr(cls, "name", None):
      found[cls.name] = cls
  return found


def parse_split_sizes(text: str) -> dict[str, int]:
  """'a=1,b=2' -> {'a': 1, 'b': 2}, with an error naming the flag on bad input."""
  sizes = {}
  for item in filter(None, text.split(",")):
    split, _, n = item.partition("=")
    if not n.strip().isdigit():
      raise app.UsageError(f"--split_sizes: {item!r} must look like SPLIT=N (N an integer).")
    sizes[split.strip()] = int(n)
  return sizes


def make_builder(dataset: str, data_dir: str, split_sizes: dict | None = None,
                 scale: float | None = None):
  """The builder for 'NAME/CONFIG' (a custom config if sizes or scale are given)."""
  builders = kajax_builders()
  name, _, config = dataset.partition("/")
  if name not in builders:
    raise app.UsageError(f"--dataset={dataset!r}: unknown dataset {name!r}; kajax provides "
                         + ", ".join(f"{n}/{{{','.join(c.name for c in b.BUILDER_CONFIGS)}}}"
                                     for n, b in sorted(builders.items())) + ".")
  cls = builders[name]
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if configs and not config:
    raise app.UsageError(f"--dataset={dataset!r}: name a config, one of "
                         f"{[f'{name}/{c}' for c in configs]}.")
  if config and config not in configs:
    raise app.UsageError(f"--dataset={dataset!r}: {name} has no config {config!r}; choose "
                         f"one of {configs}.")
  if split_sizes or scale:
    builder_module = importlib.import_module(cls.__module__)
    if not hasattr(builder_module, "make_config"):
      raise app.UsageError(f"--split_sizes/--scale: {name} has fixed split sizes.")
    try:
      custom = builder_module.make_config(config, split_sizes=split_sizes, scale=scale)
    except ValueError as e:
      raise app.UsageError(f"--split_sizes/--scale: {e}") from e
    return cls(config=custom, data_dir=data_dir)
  return cls(config=config or None, data_dir=data_dir)


def build(builder, manual_dir: str | None = None, overwrite: bool = False) -> None:
  """download_and_prepare into array_record files, without touching the network."""
  import tensorflow_datasets as tfds
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  if manual_dir and not os.path.isdir(manual_dir):
    raise app.UsageError(f"--manual_dir={manual_dir!r} is not a directory.")
  config = tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False, download_mode=mode)
  if overwrite and builder.is_prepared():
    builder.data_path.rmtree()
  builder.download_and_prepare(file_format="array_record", download_config=config)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sizes = parse_split_sizes(_SPLIT_SIZES.value) if _SPLIT_SIZES.value else None
  data_dir = os.path.abspath(os.path.expanduser(_DATA_DIR.value))
  manual_dir = os.path.expanduser(_MANUAL_DIR.value) if _MANUAL_DIR.value else None
  builder = make_builder(_DATASET.value, data_dir, sizes, _SCALE.value)
  build(builder, manual_dir, _OVERWRITE.value)
  full_name = f"{builder.name}/{builder.builder_config.name}" if builder.builder_config \
      else builder.name
  print(f"\n{full_name} in {builder.data_dir}")
  for split, info in sorted(builder.info.splits.items()):
    print(f"  {split:15s} {info.num_examples:7d} examples")
  print(f"Read with tfds.data_source({full_name!r}, data_dir={data_dir!r}, split=...)")


if __name__ == "__main__":
  os.environ.setdefault("NO_GCE_CHECK", "true")  # no metadata-server probe from TFDS
  app.run(main)
