"""Tests for kajax.input_pipeline: batching, sharding, eval padding, resumable iterators."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kajax import augment, input_pipeline, parallel

H, W = 12, 16
FAST = {"num_threads": 1, "prefetch_batches": 1, "crop_size": (8, 12)}


def make_source(n, keys=("image", "label", "depth", "normals")):
  """In-memory source; example i has label == i everywhere, so batches reveal their ids."""
  rng = np.random.default_rng(0)
  examples = []
  for i in range(n):
    ex = {"image": rng.integers(0, 256, (H, W, 3)).astype(np.uint8),
          "label": np.full((H, W), i, np.uint8),
          "depth": np.full((H, W), 1.0 + i, np.float32),
          "normals": np.tile(np.float32([0.0, 0.6, 0.8]), (H, W, 1))}
    examples.append({k: ex[k] for k in keys})
  return examples


def ids(batch, mask=None):
  """Example id of every batch element (its constant label)."""
  label = batch["label"]
  assert (label == label[:, :1, :1]).all()
  out = label[:, 0, 0]
  return out if mask is None else out[mask]


def take(it, n):
  return [next(it) for _ in range(n)]


def train_iter(source, seed=0, batch=4, **kw):
  return input_pipeline.make_train_iterator(source, FAST, global_batch_size=batch, seed=seed,
                                            **kw)


def assert_batches_equal(a, b):
  for x, y in zip(a, b, strict=True):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_batches_shapes_and_epochs():
  src = make_source(10)
  batches = take(train_iter(src, batch=5), 4)
  b = batches[0]
  assert b["image"].shape == (5, 8, 12, 3) and b["image"].dtype == np.float32
  assert b["label"].shape == (5, 8, 12) and b["label"].dtype == np.int32
  assert b["depth"].dtype == np.float32 and b["normals"].shape == (5, 8, 12, 3)
  np.testing.assert_array_equal(b["depth"], 1.0 + b["label"])  # depth stays with its example
  # Each epoch (2 batches) is a permutation of the data, reshuffled between epochs.
  epochs = [np.concatenate([ids(x) for x in batches[i:i + 2]]) for i in (0, 2)]
  for e in epochs:
    assert sorted(e) == list(range(10))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(10))


def test_determinism_and_seeds():
  src = make_source(10)
  assert_batches_equal(take(train_iter(src, seed=3), 3), take(train_iter(src, seed=3), 3))
  a, b = take(train_iter(src, seed=3), 2), take(train_iter(src, seed=4), 2)
  assert not np.array_equal(a[0]["image"], b[0]["image"])


def test_global_batches_do_not_depend_on_the_process_count():
  """Two processes' halves, stacked in process order, are exactly the one-process batch
  (same examples, same augmentation), across epochs and after a resume."""
  src = make_source(10)
  whole = take(train_iter(src, batch=4, seed=2), 6)  # 6 x 4 > 2 epochs of 10
  halves = [take(train_iter(src, batch=4, seed=2, process_index=p, process_count=2), 6)
            for p in range(2)]
  for step, batch in enumerate(whole):
    assert halves[0][step]["image"].shape[0] == 2  # per-process batch = 4 / 2
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key])
    assert set(ids(halves[0][step])).isdisjoint(ids(halves[1][step]))
  it = train_iter(src, batch=4, seed=2, process_index=1, process_count=2)
  take(it, 3)
  resumed = input_pipeline.restore_iterator(
      train_iter(src, batch=4, seed=2, process_index=1, process_count=2),
      input_pipeline.iterator_state(it))
  assert_batches_equal(take(resumed, 3), halves[1][3:])


def test_eval_padding_mask_and_values():
  src = make_source(10)
  cfg = dict(FAST, image_size=(6, 8))
  batches = list(input_pipeline.make_eval_iterator(src, cfg, global_batch_size=4))
  assert len(batches) == 3 == input_pipeline.num_eval_batches(10, 4)
  np.testing.assert_array_equal(batches[-1]["mask"], [True, True, False, False])
  assert all(b["mask"].all() for b in batches[:2])
  real = np.concatenate([ids(b, b["mask"]) for b in batches])
  np.testing.assert_array_equal(real, np.arange(10))  # in order, no augmentation
  # Values: nearest-resized targets, normalised (unaugmented) image.
  want = augment.eval_transform(src[5], image_size=(6, 8))
  for k in want:
    np.testing.assert_array_equal(batches[1][k][1], want[k])
  assert batches[0]["image"].shape == (4, 6, 8, 3)


def test_eval_process_shards_equal_length_disjoint_cover():
  src = make_source(11)
  seen, lengths = [], []
  for p in range(2):
    batches = list(input_pipeline.make_eval_iterator(
        src, FAST, global_batch_size=4, process_index=p, process_count=2))
    lengths.append(len(batches))
    assert all(b["image"].shape[0] == 2 for b in batches)
    seen.append(np.concatenate([ids(b, b["mask"]) for b in batches]))
  # ceil(11 / 2) = 6 examples per process -> 3 batches of 2 on both processes.
  assert lengths == [3, 3] == [input_pipeline.num_eval_batches(11, 4, 2)] * 2
  assert [len(s) for s in seen] == [6, 5]
  assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(11))


def test_checkpoint_resume_gives_same_next_batches():
  src = make_source(7)  # odd size: batches straddle epochs
  it = train_iter(src, seed=1, batch=3)
  take(it, 3)
  state = json.loads(json.dumps(input_pipeline.iterator_state(it)))  # as in the JSON meta
  expected = take(it, 2)
  fresh = input_pipeline.restore_iterator(train_iter(src, seed=1, batch=3), state)
  assert_batches_equal(take(fresh, 2), expected)
  fresh2 = input_pipeline.restore_iterator(train_iter(src, seed=1, batch=3), json.dumps(state))
  assert_batches_equal(take(fresh2, 2), expected)


def test_orbax_saves_grain_iterator(tmp_path):
  import grain
  import orbax.checkpoint as ocp
  src = make_source(6)
  it = train_iter(src, seed=2)
  take(it, 3)
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  with ocp.CheckpointManager(tmp_path, options=options, item_names=("data",)) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  expected = take(it, 2)
  fresh = train_iter(src, seed=2)
  with ocp.CheckpointManager(tmp_path, options=options, item_names=("data",)) as mngr:
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert_batches_equal(take(fresh, 2), expected)


def test_images_only_and_missing_keys():
  src = make_source(6)
  b = next(train_iter(src, images_only=True))
  assert set(b) == {"image"}
  e = next(input_pipeline.make_eval_iterator(src, FAST, global_batch_size=4, images_only=True))
  assert set(e) == {"image", "mask"}
  b = next(train_iter(make_source(6, keys=("image", "depth"))))
  assert set(b) == {"image", "depth"}


def test_clear_errors():
  src = make_source(4)
  with pytest.raises(ValueError, match="crop_sise"):
    input_pipeline.make_train_iterator(src, {"crop_sise": (8, 8)}, global_batch_size=2, seed=0)
  with pytest.raises(ValueError, match="crop_size"):
    input_pipeline.make_train_iterator(src, {"crop_size": (20, 8)}, global_batch_size=2, seed=0)
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    input_pipeline.make_eval_iterator(src, FAST, global_batch_size=3, process_index=0,
                                      process_count=2)


def test_to_global_shards_over_mesh():
  mesh = parallel.make_mesh()
  n = mesh.devices.size
  b = next(train_iter(make_source(n), batch=n))
  g = input_pipeline.to_global(b, mesh)
  assert isinstance(g["image"], jax.Array) and g["image"].shape == (n, 8, 12, 3)
  assert len(g["label"].sharding.device_set) == n
  np.testing.assert_array_equal(np.asarray(g["label"]), b["label"])


class KajaxTestPipelineRooms(tfds.core.GeneratorBasedBuilder):
  """A tiny TFDS builder with kajax's feature layout (for data_source tests)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    # DatasetInfo directly: dataset_info_from_configs needs a package directory.
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(H, W, 3)),
        "label": tfds.features.Tensor(shape=(H, W), dtype=np.uint8),
        "depth": tfds.features.Tensor(shape=(H, W), dtype=np.float32),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    import PIL.Image
    for ex in make_source(5, keys=("image", "label", "depth")):
      yield int(ex["label"][0, 0]), dict(ex, image=PIL.Image.fromarray(ex["image"]))


def test_tfds_data_source_array_record_and_mock_data(tmp_path):
  os.environ.setdefault("NO_GCE_CHECK", "true")
  name = "kajax_test_pipeline_rooms"
  KajaxTestPipelineRooms(data_dir=str(tmp_path), file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  source = tfds.data_source(name, data_dir=str(tmp_path), split="train", download=False)
  batches = list(input_pipeline.make_eval_iterator(source, FAST, global_batch_size=2))
  real = np.concatenate([ids(b, b["mask"]) for b in batches])
  assert sorted(real) == list(range(5))
  b = next(train_iter(source, batch=2))
  assert set(b) == {"image", "label", "depth"} and b["image"].shape == (2, 8, 12, 3)
  np.testing.assert_array_equal(b["depth"], 1.0 + b["label"])
  # tfds.testing.mock_data works with data_source without TensorFlow: random examples.
  with tfds.testing.mock_data(num_examples=3):
    mock = tfds.data_source(name, split="train")
    b = next(input_pipeline.make_eval_iterator(mock, FAST, global_batch_size=4))
  assert b["image"].shape == (4, H, W, 3) and b["label"].dtype == np.int32
  np.testing.assert_array_equal(b["mask"], [True, True, True, False])
