"""Images/s of the training input pipeline (``kajax.input_pipeline``) on this machine.

  python -m kajax.benchmarks.input_pipeline --resolution=96x128 --batch_size=16 --steps=200
  python -m kajax.benchmarks.input_pipeline --dataset=synthetic_rooms/tiny --data_dir=DIR

Without ``--dataset`` the source is an in-memory set of random examples at ``--resolution``
(image, label, depth, normals), so only augmentation and batching are measured. With a built
dataset, reading and decoding are included and ``--resolution`` (if given) is the image_size
the examples are resized to. The number to compare with is the training step's consumption
(a width-1/8 SegNet teacher step at 96x128 takes ~86 images/s on 2 CPU cores).
"""

from __future__ import annotations

import time

import numpy as np
from absl import flags

from kajax import cli, input_pipeline

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  """Defines this benchmark's flags on ``flag_values`` (``kajax.cli`` style)."""
  fv = {"flag_values": flag_values}
  return {
      "resolution": flags.DEFINE_string(
          "resolution", None, "HxW; random source resolution, or image_size for --dataset "
          "(default 96x128 for the random source).", **fv),
      "batch_size": flags.DEFINE_integer("batch_size", 16, "Images per batch.", **fv),
      "steps": flags.DEFINE_integer("steps", 200, "Timed batches.", **fv),
      "warmup": flags.DEFINE_integer("warmup", 5, "Untimed batches first (threads, buffers).",
                                     **fv),
      "num_threads": flags.DEFINE_integer("num_threads", 2, "Pipeline worker threads.", **fv),
      "num_examples": flags.DEFINE_integer("num_examples", 64,
                                           "Size of the random in-memory source.", **fv),
      "images_only": flags.DEFINE_bool("images_only", False,
                                       "Drop labels (amalgamation's input).", **fv),
      "dataset": flags.DEFINE_string("dataset", None,
                                     "A built dataset, e.g. synthetic_rooms/tiny.", **fv),
      "data_dir": flags.DEFINE_string("data_dir", None, "TFDS data dir of --dataset.", **fv),
      "split": flags.DEFINE_string("split", "train", "Split of --dataset.", **fv),
  }


def random_source(num_examples: int, height: int, width: int, seed: int = 0) -> list[dict]:
  """In-memory examples with kajax's keys and dtypes (random content)."""
  rng = np.random.default_rng(seed)
  normals = rng.normal(size=(height, width, 3)).astype(np.float32)
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  return [{"image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
           "label": rng.integers(0, 13, (height, width), dtype=np.uint8),
           "depth": rng.uniform(0.5, 10, (height, width)).astype(np.float32),
           "normals": normals} for _ in range(num_examples)]


def _resolution(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError as e:
    raise ValueError(f"--resolution={text!r} must look like 96x128.") from e
  return h, w


def measure(source, *, batch_size: int, steps: int, warmup: int, config: dict,
            images_only: bool) -> float:
  """Images/s over ``steps`` batches after ``warmup`` batches (threads started, buffers full)."""
  it = input_pipeline.make_train_iterator(source, config, global_batch_size=batch_size, seed=0,
                                          images_only=images_only, process_index=0,
                                          process_count=1)
  try:
    for _ in range(warmup):
      next(it)
    start = time.perf_counter()
    for _ in range(steps):
      next(it)
    return steps * batch_size / (time.perf_counter() - start)
  finally:
    it.close()


def run(args) -> None:
  """Runs the benchmark with the parsed flags."""
  resolution = _resolution(args.resolution) if args.resolution else None
  config = dict(num_threads=args.num_threads)
  if args.dataset:
    from kajax import data_sources  # pylint: disable=g-import-not-at-top
    source = data_sources.open_split(args.dataset,
                                     data_sources.resolve_data_dir(args.data_dir),
                                     args.split)
    if resolution:
      config["image_size"] = resolution
    what = f"{args.dataset}:{args.split} ({len(source)} examples)"
  else:
    h, w = resolution or (96, 128)
    source = random_source(args.num_examples, h, w)
    what = f"random in-memory {h}x{w} ({args.num_examples} examples)"
  rate = measure(source, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                 config=config, images_only=args.images_only)
  print(f"train pipeline, {what}, batch {args.batch_size}, {args.num_threads} threads"
        f"{', images only' if args.images_only else ''}: {rate:.0f} images/s")


if __name__ == "__main__":
  cli.run(define_flags, run)
