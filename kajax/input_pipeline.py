"""grain input pipelines over random-access sources (``tfds.data_source``), one per process.

Train: the whole source -> seeded shuffle (reshuffled every epoch) -> repeat forever ->
per-example augmentation (``kajax.augment``, seeded by grain's ``random_map`` from the seed and
the element's position in the stream) -> this process's rows of each global batch -> threads
-> batches (last partial batch of an epoch never exists: the stream is infinite and batches
may straddle epochs). The global batches do not depend on the number of processes.
Eval: one pass over this process's shard, resized/normalised only; every process yields the
same number of batches (collectives need that) and the padding examples are marked by
``mask`` False.

Batches are per-process numpy dicts: ``image`` float32 (B,H,W,3), plus ``label`` int32 (B,H,W),
``depth`` float32 (B,H,W), ``normals`` float32 (B,H,W,3) when the source has them and
``images_only`` is False, plus ``mask`` bool (B,) in eval. ``to_global`` turns one into global
arrays on the mesh. B = global batch size / process count.

Config (the ``input`` block of a kajax config; see ``default_config``):
  image_size: (H, W) the source is resized to: the evaluation resolution and the base of the
    training zoom; None = the source resolution.
  crop_size: (H, W) of training crops; None = image_size.
  scale_range, flip, color_jitter, depth_scale_mode: see ``kajax.augment.AugmentConfig``.
  mean, std: RGB normalisation statistics in [0, 1] (default ImageNet).
  num_threads: worker threads that read and augment examples (per process).
  prefetch_buffer_size: examples prepared ahead by those threads; 0 = 2 batches' worth.
  prefetch_batches: assembled batches kept ready by one more background thread.

Iterator state: the iterators are grain ``DatasetIterator``s; ``iterator_state`` /
``restore_iterator`` give a small JSON-able dict for the checkpoint's metadata (a restarted run
continues with the same next batch). All processes consume the same number of elements, so the
state is identical on every process. Orbax can also save the iterator itself with
``grain.checkpoint.CheckpointSave(iterator)`` / ``CheckpointRestore(iterator)`` (one JSON file
per process) inside an ``ocp.args.Composite``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Mapping

import grain
import jax
import ml_collections
import numpy as np

from kajax import augment, parallel

_PIPELINE_KEYS = ("image_size", "mean", "std", "num_threads", "prefetch_buffer_size",
                  "prefetch_batches")
KNOWN_KEYS = _PIPELINE_KEYS + tuple(f.name for f in dataclasses.fields(augment.AugmentConfig))


def default_config() -> ml_collections.ConfigDict:
  """The ``input`` config block with its defaults (fields documented in the module docstring)."""
  cfg = ml_collections.ConfigDict()
  cfg.image_size = ml_collections.config_dict.placeholder(tuple)
  cfg.crop_size = ml_collections.config_dict.placeholder(tuple)
  cfg.scale_range = (1.0, 1.5)
  cfg.flip = True
  cfg.color_jitter = (0.2, 0.2, 0.2)
  cfg.depth_scale_mode = "keep"
  cfg.mean = augment.IMAGENET_MEAN
  cfg.std = augment.IMAGENET_STD
  cfg.num_threads = 2
  cfg.prefetch_buffer_size = 0
  cfg.prefetch_batches = 2
  return cfg


def _get(config: Any, key: str) -> Any:
  """``config[key]`` falling back to the default; None config = all defaults."""
  if config is not None and key in config and config[key] is not None:
    return config[key]
  return default_config()[key]


def image_size_and_normalization(config: Any, source: Any) -> dict[str, list]:
  """The resolution images enter the network at (``image_size``, else the source's) and the
  RGB ``mean``/``std`` they are normalised with: what inference must repeat."""
  size = _get(config, "image_size") or np.asarray(source[0]["image"]).shape[:2]
  return {"image_size": [int(v) for v in size],
          "mean": [float(v) for v in _get(config, "mean")],
          "std": [float(v) for v in _get(config, "std")]}


def _check_keys(config: Any) -> None:
  if config is None:
    return
  unknown = sorted(set(config.keys()) - set(KNOWN_KEYS))
  if unknown:
    raise ValueError(f"Unknown input config key(s) {unknown}; known keys: {sorted(KNOWN_KEYS)}.")


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} must be in [0, process_count={count}).")
  return index, count


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Per-process batch size; raises if ``global_batch_size`` does not split evenly."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"batch size {global_batch_size} must be a positive multiple of the "
                     f"number of processes ({process_count}).")
  return global_batch_size // process_count


class _PaddedShard:
  """Random-access view of one process's eval shard padded to ``length`` with a ``mask``."""

  def __init__(self, source: Any, indices: np.ndarray, length: int):
    self._source, self._indices, self._length = source, indices, length
    # Padding repeats a real example (shapes must match) and is masked out.
    self._pad_index = int(indices[0]) if len(indices) else 0

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i: int) -> dict[str, Any]:
    real = i < len(self._indices)
    example = dict(self._source[int(self._indices[i]) if real else self._pad_index])
    example["mask"] = np.bool_(real)
    return example


class _ProcessRows(grain.MapDataset):
  """This process's rows of every global batch of an (infinite) global stream.

  Global batch b holds stream elements [b * G, (b + 1) * G) with G = count * L; process p
  takes [b * G + p * L, b * G + (p + 1) * L), the rows ``make_array_from_process_local_data``
  places on its devices (the mesh orders devices by process).
  """

  def __init__(self, parent: grain.MapDataset, index: int, count: int, local_batch: int):
    super().__init__(parent)
    self._index, self._count, self._local = index, count, local_batch

  def __len__(self) -> int:
    return len(self._parent) // self._count

  def __str__(self) -> str:
    return f"ProcessRows(process={self._index}/{self._count}, rows={self._local})"

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.slice(i)
    batch, row = divmod(int(i), self._local)
    return self._parent[(batch * self._count + self._index) * self._local + row]


def _eval_element(example: Mapping[str, Any], *, image_size, images_only, mean, std):
  out = augment.eval_transform(example, image_size=image_size, images_only=images_only,
                               mean=mean, std=std)
  out["mask"] = example["mask"]
  return out


def make_dataset(source: Any, *, global_batch_size: int, train: bool, seed: int = 0,
                 config: Any = None, images_only: bool = False,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """The grain dataset of this process's batches (see the module docstring).

  Args:
    source: random-access source (``len`` and ``[i]`` -> dict of numpy arrays), e.g.
      ``tfds.data_source(...)`` or any in-memory sequence of dicts.
    global_batch_size: examples per step over all processes.
    train: True = shuffled, augmented, infinite; False = one padded pass with ``mask``.
    seed: shuffle and augmentation seed (train only).
    config: the ``input`` config block (ConfigDict/dict, fields in ``default_config``) or
      None for the defaults.
    images_only: yield only ``image`` (and ``mask`` in eval): amalgamation uses no labels.
    process_index, process_count: this process's shard; default ``jax.process_index()`` and
      ``jax.process_count()`` (pass them explicitly to test sharding in one process).

  Returns:
    A ``grain.IterDataset``; ``iter()`` gives a checkpointable ``grain.DatasetIterator``.
  """
  _check_keys(config)
  index, count = _process(process_index, process_count)
  batch = local_batch_size(global_batch_size, count)
  image_size = augment.as_size(_get(config, "image_size"), "image_size")
  mean, std = tuple(_get(config, "mean")), tuple(_get(config, "std"))
  num_examples = len(source)
  if num_examples < count:
    raise ValueError(f"The data source has {num_examples} examples, fewer than the "
                     f"{count} processes reading it.")
  if train:
    aug = augment.AugmentConfig.from_config(config)
    # Fail here rather than inside a worker thread at the first batch.
    augment.check_crop(image_size or augment.check_example(source[0]), aug)
    # One global stream, the same for any number of processes: shuffled, repeated and
    # augmented (each element's randomness from the seed and its global position); each
    # process then reads only its own rows of every global batch. A run on 2 hosts thus
    # trains on exactly the batches of a run on 1 host with the same global batch size.
    ds = grain.MapDataset.source(source).shuffle(seed=int(seed)).repeat()
    aug_seed = int(np.random.SeedSequence([int(seed), 0]).generate_state(1)[0])
    ds = ds.random_map(functools.partial(
        _random_train_element, image_size=image_size, config=aug, images_only=images_only,
        mean=mean, std=std), seed=aug_seed)
    if count > 1:
      ds = _ProcessRows(ds, index, count, batch)
  else:
    indices = np.arange(index, num_examples, count)
    num_batches = math.ceil(math.ceil(num_examples / count) / batch)
    ds = grain.MapDataset.source(_PaddedShard(source, indices, num_batches * batch))
    ds = ds.map(functools.partial(_eval_element, image_size=image_size,
                                  images_only=images_only, mean=mean, std=std))
  threads = int(_get(config, "num_threads"))
  buffer = int(_get(config, "prefetch_buffer_size")) or max(2 * batch, threads)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer))
  ds = ds.batch(batch, drop_remainder=train)
  prefetch_batches = int(_get(config, "prefetch_batches"))
  if prefetch_batches:
    # Stacking a batch is not free either: do it in the background too.
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch_batches)
  return ds


def _random_train_element(example, rng, **kwargs):
  # Argument order of grain's random_map: (element, rng).
  return augment.train_transform(example, rng, **kwargs)


def make_train_iterator(source: Any, config: Any, *, global_batch_size: int, seed: int,
                        images_only: bool = False, process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """Infinite iterator of augmented training batches (``make_dataset(train=True)``)."""
  return iter(make_dataset(source, global_batch_size=global_batch_size, train=True, seed=seed,
                           config=config, images_only=images_only,
                           process_index=process_index, process_count=process_count))


def make_eval_iterator(source: Any, config: Any, *, global_batch_size: int,
                       images_only: bool = False, process_index: int | None = None,
                       process_count: int | None = None) -> grain.DatasetIterator:
  """One pass of unaugmented batches with ``mask`` (``make_dataset(train=False)``)."""
  return iter(make_dataset(source, global_batch_size=global_batch_size, train=False,
                           config=config, images_only=images_only,
                           process_index=process_index, process_count=process_count))


def num_eval_batches(num_examples: int, global_batch_size: int, process_count: int = 1) -> int:
  """Batches per process in one eval pass (equal on every process)."""
  batch = local_batch_size(global_batch_size, process_count)
  return math.ceil(math.ceil(num_examples / process_count) / batch)


def iterator_state(iterator: grain.DatasetIterator) -> dict[str, Any]:
  """JSON-able state of a pipeline iterator, for the checkpoint metadata."""
  state = iterator.get_state()
  json.dumps(state)  # Fail now, not inside an async checkpoint save.
  return state


def restore_iterator(iterator: grain.DatasetIterator,
                     state: Mapping[str, Any] | str | bytes) -> grain.DatasetIterator:
  """Sets ``iterator`` (a fresh one from the same pipeline) to a saved state; returns it.

  Args:
    iterator: from ``make_train_iterator``/``make_dataset`` with the same source, seed,
      batch size and config as the run that saved the state.
    state: from ``iterator_state`` (a dict, or its JSON text/bytes).
  """
  if isinstance(state, (str, bytes)):
    state = json.loads(state)
  try:
    iterator.set_state(dict(state))
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"Cannot restore the data iterator from the checkpoint state {state!r}: "
                     "it was saved by a different input pipeline (source, batch size or "
                     "config changed?).") from e
  return iterator


def to_global(batch: Mapping[str, np.ndarray], mesh: Any) -> dict[str, jax.Array]:
  """This process's batch -> global arrays sharded over the mesh's ``data`` axis."""
  return parallel.global_batch(dict(batch), mesh)
