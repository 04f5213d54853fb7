"""Builds one of kajax's TFDS datasets into array_record files (no TensorFlow needed).

  python -m kajax.build_data --dataset=synthetic_rooms/small
  python -m kajax.build_data --dataset=synthetic_rooms/small --data_dir=DIR \\
      --split_sizes=teacher_seg=200,teacher_depth=200,unlabeled=500
  python -m kajax.build_data --dataset=nyuv2/labeled_mat --manual_dir=DOWNLOADS

``--data_dir`` defaults to where training looks (a config's ``data_dir=''``): $TFDS_DATA_DIR,
else ~/tensorflow_datasets. Afterwards read a split with
``tfds.data_source(NAME/CONFIG, data_dir=DIR, split=...)``. ``--split_sizes`` / ``--scale``
build a variant of a config with other split sizes (for builders that offer ``make_config``,
e.g. synthetic_rooms) and print its config name.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from absl import app, flags

from kajax import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  """Defines this CLI's flags on ``flag_values``."""
  holders = {
      "dataset": flags.DEFINE_string("dataset", None, "NAME/CONFIG, e.g. "
                                     "synthetic_rooms/small or nyuv2/labeled_mat.",
                                     flag_values=flag_values),
      "data_dir": flags.DEFINE_string("data_dir", None, "TFDS data directory to write into "
                                      "(default: $TFDS_DATA_DIR, else ~/tensorflow_datasets: "
                                      "where training reads).", flag_values=flag_values),
      "manual_dir": flags.DEFINE_string("manual_dir", None, "Folder holding manually "
                                        "downloaded files (datasets that need them say which).",
                                        flag_values=flag_values),
      "split_sizes": flags.DEFINE_string("split_sizes", None, "Comma-separated SPLIT=N "
                                         "overrides, e.g. teacher_seg=200,unlabeled=500.",
                                         flag_values=flag_values),
      "scale": flags.DEFINE_float("scale", None, "Multiply every split size by this factor.",
                                  lower_bound=0.0, flag_values=flag_values),
      "overwrite": flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset exists.",
                                     flag_values=flag_values),
  }
  flags.mark_flag_as_required("dataset", flag_values=flag_values)
  return holders


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


def run(args: Any) -> None:
  """Builds ``args.dataset`` and prints where its splits are."""
  from kajax import data_sources  # TFDS and JAX: imported after the flags are parsed.
  sizes = parse_split_sizes(args.split_sizes) if args.split_sizes else None
  data_dir = data_sources.resolve_data_dir(args.data_dir)
  manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
  builder = make_builder(args.dataset, data_dir, sizes, args.scale)
  build(builder, manual_dir, args.overwrite)
  full_name = f"{builder.name}/{builder.builder_config.name}" if builder.builder_config \
      else builder.name
  print(f"\n{full_name} in {builder.data_dir}")
  for split, info in sorted(builder.info.splits.items()):
    print(f"  {split:15s} {info.num_examples:7d} examples")
  print(f"Read with tfds.data_source({full_name!r}, data_dir={data_dir!r}, split=...)")


def _manual_download_help() -> str:
  """What each kajax dataset that needs downloaded files says about them (for --help)."""
  parts = [f"\nDataset {name} (--dataset={name}/CONFIG):\n\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}"
           for name, cls in sorted(kajax_builders().items())
           if getattr(cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)]
  return "".join(parts)


if __name__ == "__main__":
  os.environ.setdefault("NO_GCE_CHECK", "true")  # no metadata-server probe from TFDS
  if any(a.startswith("--help") or a in ("-h", "-?") for a in sys.argv[1:]):
    __doc__ += _manual_download_help()  # absl's --help prints the main module's docstring.
  cli.run(define_flags, run, cli.USER_ERRORS + (app.UsageError,))
