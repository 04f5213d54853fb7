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

import argparse
import time

import numpy as np

from kajax import input_pipeline


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
    raise argparse.ArgumentTypeError(f"--resolution={text!r} must look like 96x128.") from e
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


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolution", type=_resolution, default=None,
                      help="HxW; random source resolution, or image_size for --dataset "
                           "(default 96x128 for the random source).")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--num_threads", type=int, default=2)
  parser.add_argument("--num_examples", type=int, default=64,
                      help="size of the random in-memory source")
  parser.add_argument("--images_only", action="store_true")
  parser.add_argument("--dataset", default=None, help="e.g. synthetic_rooms/tiny (built)")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--split", default="train")
  args = parser.parse_args(argv)

  config = dict(num_threads=args.num_threads)
  if args.dataset:
    from kajax import data_sources  # pylint: disable=g-import-not-at-top
    source = data_sources.open_split(args.dataset, data_sources.resolve_data_dir(args.data_dir),
                                     args.split)
    if args.resolution:
      config["image_size"] = args.resolution
    what = f"{args.dataset}:{args.split} ({len(source)} examples)"
  else:
    h, w = args.resolution or (96, 128)
    source = random_source(args.num_examples, h, w)
    what = f"random in-memory {h}x{w} ({args.num_examples} examples)"
  rate = measure(source, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                 config=config, images_only=args.images_only)
  print(f"train pipeline, {what}, batch {args.batch_size}, {args.num_threads} threads"
        f"{', images only' if args.images_only else ''}: {rate:.0f} images/s")


if __name__ == "__main__":
  main()
