"""TFDS builder ``synthetic_rooms``: procedural furnished rooms with exact labels, depth, normals.

kajax's embedded default data (docs/method.md §2): no download, deterministic, built without
TensorFlow into ``array_record`` files and read with ``tfds.data_source``::

  python -m kajax.build_data --dataset=synthetic_rooms/small --data_dir=DIR
  ds = tfds.data_source('synthetic_rooms/small', data_dir=DIR, split='teacher_seg')

Splits keep knowledge amalgamation honest: the two teachers train on the disjoint labelled
splits ``teacher_seg`` and ``teacher_depth``; the student sees only the images of
``unlabeled``; ``validation`` picks branch points; ``test`` is for evaluation. Example i of a
split is scene seed SeedSequence([config seed, split number, i]) rendered by
:func:`kajax.datasets.rooms_render.render_scene`, stored in that order (no shuffling).

Other sizes: ``SyntheticRooms(config=make_config('small', split_sizes={...}), data_dir=DIR)``
(or ``build_data --split_sizes=...``), then read it by the printed config name.

Examples are rendered in a pool of worker processes (``spawn``; scripts that build must guard
their entry point with ``if __name__ == '__main__':``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from kajax.datasets import rooms_render
from kajax.datasets import rooms_scene

SPLITS = ("teacher_seg", "teacher_depth", "unlabeled", "validation", "test")
CLASS_NAMES = rooms_scene.CLASS_NAMES
# Below this many examples in total, rendering in-process beats starting workers.
_MIN_EXAMPLES_FOR_POOL = 64


@dataclasses.dataclass(eq=False)
class SyntheticRoomsConfig(tfds.core.BuilderConfig):
  """Resolution, examples per split and base seed of a synthetic_rooms variant."""
  height: int = 96
  width: int = 128
  split_sizes: dict = dataclasses.field(default_factory=dict)
  seed: int = 0


_CONFIGS = {
    "small": SyntheticRoomsConfig(
        name="small", description="96x128; demo and teacher configs.", height=96, width=128,
        split_sizes=dict(zip(SPLITS, (1000, 1000, 1000, 100, 200)))),
    "vga240": SyntheticRoomsConfig(
        name="vga240", description="240x320 (NYUv2 at half resolution).", height=240,
        width=320, split_sizes=dict(zip(SPLITS, (2000, 2000, 2000, 200, 400)))),
    "tiny": SyntheticRoomsConfig(
        name="tiny", description="64x80, 8 examples per split; for tests.", height=64, width=80,
        split_sizes=dict.fromkeys(SPLITS, 8)),
}


def make_config(base: str = "small", *, split_sizes: dict | None = None,
                scale: float | None = None, name: str | None = None) -> SyntheticRoomsConfig:
  """A variant of a predefined config with other split sizes.

  Args:
    base: 'small', 'vga240' or 'tiny' (resolution and seed are taken from it).
    split_sizes: {split: number of examples} for some of SPLITS; the others keep their size.
    scale: multiplies every split size (after split_sizes), rounding, at least 1 example.
    name: config name; defaults to base + the sizes, e.g. 'small_n200_200_500_100_200'.

  Returns:
    A config to pass as ``SyntheticRooms(config=..., data_dir=...)``.
  """
  if base not in _CONFIGS:
    raise ValueError(f"synthetic_rooms: unknown base config {base!r}; choose one of "
                     f"{sorted(_CONFIGS)}.")
  src = _CONFIGS[base]
  sizes = dict(src.split_sizes)
  for split, n in (split_sizes or {}).items():
    if split not in SPLITS:
      raise ValueError(f"synthetic_rooms: unknown split {split!r} in split_sizes; the splits "
                       f"are {SPLITS}.")
    if int(n) < 1:
      raise ValueError(f"synthetic_rooms: split {split!r} needs at least 1 example, got {n}.")
    sizes[split] = int(n)
  if scale is not None:
    if scale <= 0:
      raise ValueError(f"synthetic_rooms: scale must be positive, got {scale}.")
    sizes = {s: max(1, int(round(n * scale))) for s, n in sizes.items()}
  name = name or base + "_n" + "_".join(str(sizes[s]) for s in SPLITS)
  return SyntheticRoomsConfig(name=name, description=f"{src.description} Sizes {sizes}.",
                              height=src.height, width=src.width, split_sizes=sizes,
                              seed=src.seed)


def example_seed(config_seed: int, split: str, index: int) -> int:
  """Scene seed of example `index` of `split`: 64 bits, so splits never share a scene."""
  ss = np.random.SeedSequence([config_seed, SPLITS.index(split), index])
  return int(ss.generate_state(1, np.uint64)[0])


def render_example(args: tuple[int, int, int]) -> dict:
  """(seed, height, width) -> a TFDS example; the image is PNG-encoded here (no TF needed)."""
  seed, height, width = args
  out = rooms_render.render_scene(seed, height, width)
  buf = io.BytesIO()
  # Level 1: the sensor noise makes higher levels ~3x slower for ~10% smaller files.
  Image.fromarray(out["image"]).save(buf, format="png", compress_level=1)
  return {"image": buf.getvalue(), "label": out["label"], "depth": out["depth"],
          "normals": out["normals"]}


@contextlib.contextmanager
def _worker_pool(num_workers: int):
  """A spawn pool whose workers start with OPENBLAS_NUM_THREADS=1 (2 cores, several jobs)."""
  if num_workers <= 1:
    yield None
    return
  saved = os.environ.get("OPENBLAS_NUM_THREADS")
  os.environ["OPENBLAS_NUM_THREADS"] = "1"  # read by numpy at import in the children
  try:
    pool = multiprocessing.get_context("spawn").Pool(num_workers)
  finally:
    if saved is None:
      del os.environ["OPENBLAS_NUM_THREADS"]
    else:
      os.environ["OPENBLAS_NUM_THREADS"] = saved
  try:
    yield pool
  finally:
    pool.terminate()
    pool.join()


class SyntheticRooms(tfds.core.GeneratorBasedBuilder):
  """Procedural indoor rooms: RGB, 13-class NYUv2 labels, depth (m), camera-frame normals."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = list(_CONFIGS.values())
  DEFAULT_CONFIG_NAME = "small"

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS finds this file through importlib_resources, which the pinned environment lacks
    # (download_and_prepare then fails with ModuleNotFoundError); it only needs the path.
    return epath.Path(__file__)

  def __init__(self, *, file_format=None, num_workers: int | None = None, **kwargs):
    """Like any TFDS builder; `file_format` defaults to array_record (no TensorFlow needed).

    Args:
      file_format: record format; array_record (default) is random access and TF-free.
      num_workers: rendering processes; default min(8, CPU count), in-process for tiny sizes.
      **kwargs: passed to tfds.core.GeneratorBasedBuilder (config, data_dir, version).
    """
    super().__init__(file_format=file_format or "array_record", **kwargs)
    self._num_workers = num_workers
    self._pool = None

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self.builder_config.height, self.builder_config.width
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(h, w, 3), encoding_format="png"),
            "label": tfds.features.Tensor(
                shape=(h, w), dtype=np.uint8, encoding="zlib",
                doc="class id 0..12: " + ", ".join(CLASS_NAMES) + "; 255 = void"),
            "depth": tfds.features.Tensor(
                shape=(h, w), dtype=np.float32, encoding="zlib",
                doc="z-depth in metres along the optical axis; 0 = invalid"),
            "normals": tfds.features.Tensor(
                shape=(h, w, 3), dtype=np.float32, encoding="zlib",
                doc="unit normals, camera frame (x right, y down, z forward); 0 = invalid"),
        }),
        disable_shuffling=True,  # example i of a split is scene example_seed(seed, split, i)
        homepage="https://github.com/kajax/kajax",
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    sizes = self.builder_config.split_sizes
    workers = self._num_workers
    if workers is None:
      workers = min(8, os.cpu_count() or 1)
      if sum(sizes.values()) < _MIN_EXAMPLES_FOR_POOL:
        workers = 0
    # One pool for all splits (TFDS generates them one after another inside this call).
    with _worker_pool(workers) as pool:
      self._pool = pool
      try:
        return super()._download_and_prepare(dl_manager, download_config)
      finally:
        self._pool = None

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    cfg = self.builder_config
    if split not in cfg.split_sizes:
      raise ValueError(f"synthetic_rooms/{cfg.name}: no size for split {split!r} in "
                       f"split_sizes={cfg.split_sizes}.")
    args = [(example_seed(cfg.seed, split, i), cfg.height, cfg.width)
            for i in range(cfg.split_sizes[split])]
    if self._pool is None:
      examples = map(render_example, args)
    else:
      examples = self._pool.imap(render_example, args, chunksize=4)
    yield from enumerate(examples)
