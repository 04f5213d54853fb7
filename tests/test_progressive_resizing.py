"""Tests for kajax.progressive_resizing: the downscaled batches (against NumPy), the step
switch (also when a run resumes), the config checks, and a teacher run that uses it.
(``tests/test_amalgamate.py`` kills and resumes the parsing teacher across the switch.)"""

import os
import sys

import jax
import numpy as np
import pytest

from kajax import data_sources, progressive_resizing, train_teacher

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import teacher_rooms_seg  # noqa: E402  (configs/ is not a package)


def _batch(rng, b=2, h=8, w=12):
  return {"image": rng.standard_normal((b, h, w, 3)).astype(np.float32),
          "label": rng.integers(0, 13, (b, h, w)).astype(np.int32),
          "depth": rng.uniform(0, 5, (b, h, w)).astype(np.float32),
          "normals": rng.standard_normal((b, h, w, 3)).astype(np.float32),
          "scalar_per_image": rng.standard_normal((b,)).astype(np.float32)}


def test_downscaled_batch_averages_the_image_and_picks_block_centres_for_targets():
  rng = np.random.default_rng(0)
  batch = _batch(rng)
  out = jax.device_get(jax.jit(lambda b: progressive_resizing.downscale_batch(b, (4, 4)))(
      batch))
  # Image: the mean of each 2x3 block (NumPy loops, independent of the reshape).
  want = np.zeros((2, 4, 4, 3), np.float32)
  for i in range(4):
    for j in range(4):
      want[:, i, j] = batch["image"][:, 2 * i:2 * i + 2, 3 * j:3 * j + 3].mean(axis=(1, 2))
  np.testing.assert_allclose(out["image"], want, rtol=1e-5, atol=1e-6)
  # Targets: the pixel at each block's centre, (1, 1) within a 2x3 block; values unchanged.
  for key in ("label", "depth", "normals"):
    np.testing.assert_array_equal(out[key], batch[key][:, 1::2, 1::3])
    assert out[key].dtype == batch[key].dtype
  np.testing.assert_array_equal(out["scalar_per_image"], batch["scalar_per_image"])


def test_a_size_that_does_not_divide_the_images_is_refused_naming_the_flag():
  batch = _batch(np.random.default_rng(0))
  with pytest.raises(ValueError, match=r"low_res_size=\(5, 6\).*8x12"):
    progressive_resizing.downscale_batch(batch, (5, 6))


def test_switch_after_counts_steps_from_where_the_run_starts():
  calls = []
  fn = progressive_resizing.switch_after(lambda i: calls.append(("low", i)),
                                         lambda i: calls.append(("full", i)), 3, first_step=0)
  for i in range(5):
    fn(i)
  assert calls == [("low", 0), ("low", 1), ("low", 2), ("full", 3), ("full", 4)]
  calls.clear()
  resumed = progressive_resizing.switch_after(lambda i: calls.append(("low", i)),
                                              lambda i: calls.append(("full", i)), 3,
                                              first_step=2)
  for i in (2, 3):
    resumed(i)
  assert calls == [("low", 2), ("full", 3)]


@pytest.mark.parametrize("steps, size, match", [
    (7, (48, 64), r"low_res_steps=7 must lie in 0..num_steps \(6\)"),
    (3, None, r"low_res_size=None"),
    (3, (16, 64), r"each side at least 32"),
])
def test_bad_progressive_resizing_config_is_refused(steps, size, match):
  with pytest.raises(ValueError, match=match):
    progressive_resizing.check_config(steps, size, num_steps=6)
  progressive_resizing.check_config(0, None, num_steps=6)  # off: nothing to check


def test_teacher_trains_its_first_steps_on_downscaled_batches(tmp_path, monkeypatch):
  data_dir = str(tmp_path / "data")
  data_sources.ensure_built("synthetic_rooms/tiny", data_dir)
  config = teacher_rooms_seg.get_config("tiny")
  config.data_dir = data_dir
  assert config.low_res_steps > 0  # the parsing teacher's recipe uses it
  traced = []
  original = progressive_resizing.downscale_batch

  def recording(batch, size):
    out = original(batch, size)
    traced.append((batch["image"].shape[1:3], out["image"].shape[1:3], out["label"].shape))
    return out
  monkeypatch.setattr(progressive_resizing, "downscale_batch", recording)
  results = train_teacher.train_and_evaluate(config, str(tmp_path / "teacher"))
  # Compiled once, for the downscaled step: the tiny rooms are 64x80, the low size 32x40.
  assert traced == [((64, 80), (32, 40), (config.batch_size, 32, 40))]
  assert 0 <= results["miou"] <= 1
