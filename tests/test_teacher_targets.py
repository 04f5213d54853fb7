"""Tests for kajax.teacher_targets (config.loss.teacher_targets='precomputed').

Expected values come from the label path of ``kajax.augment`` (the same window, nearest
neighbour) and from running the teachers per batch (``amalgamation_steps.teacher_outputs``):
with flip-averaged targets a teacher's answer on a mirrored image is exactly its answer on
the image, mirrored by the task's rule, so a precomputed-and-mirrored target must equal the
per-step one.
"""

import functools

import jax
import numpy as np
import pytest

from kajax import amalgamation_steps as steps
from kajax import augment, input_pipeline, parallel, teacher_model, teacher_targets
from kajax.teacher_views import TeacherViews
from tests import fakes


def _example(rng, h=16, w=20):
  small = rng.integers(0, 13, (h // 2, w // 2)).astype(np.uint8)
  label = np.kron(small, np.ones((2, 2), np.uint8))  # constant on 2x2 cells
  image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
  # A half-resolution map with one channel per cell value and a second, different channel.
  tmap = np.stack([small, 100 - small], -1).astype(np.float16)
  return {"image": image, "label": label, teacher_targets.key("seg"): tmap}


@pytest.mark.parametrize("seed", range(6))
def test_target_maps_follow_the_image_window_but_are_not_mirrored(seed):
  rng = np.random.default_rng(seed)
  config = augment.AugmentConfig(crop_size=(12, 12), scale_range=(1.0, 1.6), flip=True,
                                 color_jitter=0.2)
  out = augment.train_transform(_example(rng), np.random.default_rng(100 + seed),
                                image_size=None, config=config)
  got = out[teacher_targets.key("seg")]
  assert got.dtype == np.float32 and got.shape == (12, 12, 2)
  # The label path samples the same window at full resolution, mirrored when flipped.
  label = out["label"][:, ::-1] if out["flip"] else out["label"]
  np.testing.assert_array_equal(got[..., 0], label)
  np.testing.assert_array_equal(got[..., 1], 100 - label)


def test_images_only_pipelines_keep_the_targets_and_the_flip_flag():
  rng = np.random.default_rng(0)
  example = _example(rng)
  out = augment.train_transform(example, rng, image_size=None, config=augment.AugmentConfig(),
                                images_only=True)
  assert set(out) == {"image", "flip", teacher_targets.key("seg")}
  plain = augment.train_transform({"image": example["image"]}, rng, image_size=None,
                                  config=augment.AugmentConfig(), images_only=True)
  assert set(plain) == {"image"}  # no flag without targets: per-step batches are unchanged


@pytest.fixture(scope="module")
def three_teachers():
  made = {t: fakes.make_teacher(t, c, s) for t, c, s in
          (("seg", 13, 0), ("depth", 1, 1), ("normals", 3, 2))}
  models = tuple(teacher_model.from_teacher_info(t, m[2]) for t, m in made.items())
  return models, {t: m[1] for t, m in made.items()}


def test_precomputed_targets_equal_the_per_step_teachers(three_teachers):
  """No zoom, no jitter, random flips: each batch's precomputed targets (mirrored on the
  device) equal the flip-averaged teachers run on that batch's images."""
  models, variables = three_teachers
  rng = np.random.default_rng(1)
  source = [{"image": rng.integers(0, 256, (32, 48, 3)).astype(np.uint8)} for _ in range(24)]
  mesh = parallel.make_mesh()
  outputs_fn = functools.partial(steps.teacher_outputs, teacher_models=models,
                                 views=TeacherViews(flip=True))
  teacher_vars = parallel.replicate(variables, mesh)
  table = teacher_targets.compute(source, outputs_fn, teacher_vars, mesh, input_config={},
                                  batch_size=10)  # rounded up to 16: two batches, one padded
  assert {t: a.shape for t, a in table.items()} == {
      "seg": (24, 32, 48, 13), "depth": (24, 32, 48, 1), "normals": (24, 32, 48, 3)}
  assert all(a.dtype == np.float32 for a in table.values())
  config = {"scale_range": (1.0, 1.0), "color_jitter": (0.0, 0.0, 0.0), "flip": True,
            "num_threads": 1}
  it = input_pipeline.make_train_iterator(teacher_targets.WithTargets(source, table), config,
                                          global_batch_size=8, seed=0, images_only=True)
  flips = []
  for _ in range(3):
    batch = next(it)
    flips += list(batch["flip"])
    got = teacher_targets.batch_targets(batch, ("seg", "depth", "normals"))
    want = jax.device_get(outputs_fn(variables, batch["image"]))
    for t in want:
      np.testing.assert_allclose(np.asarray(got[t]), want[t], rtol=1e-4, atol=1e-5,
                                 err_msg=t)
  assert 0 < sum(flips) < len(flips)  # both mirrored and plain images were checked
  # The step's own entry point picks the precomputed targets when the batch has them.
  picked = steps.step_targets(steps.student_inputs(batch), None, models, None, True)
  np.testing.assert_array_equal(np.asarray(picked["normals"]), np.asarray(got["normals"]))


def test_wrong_sizes_and_modes_are_refused():
  with pytest.raises(ValueError, match="teacher_targets='bogus'"):
    teacher_targets.check_mode("bogus")
  with pytest.raises(ValueError, match="cover .* images; the source has 3"):
    teacher_targets.WithTargets([{}] * 3, {"seg": np.zeros((2, 4, 4, 13))})


@pytest.mark.parametrize("num_examples,local_batch,processes", [(11, 2, 2), (7, 4, 3), (5, 8, 1)])
def test_global_rows_follow_the_evaluation_pipelines_process_shards(num_examples, local_batch,
                                                                    processes):
  """Rows of each process's evaluation batches, read back from the pipeline itself (image i
  is filled with the value i), stacked in process order, are the rows ``global_rows`` names."""
  source = [{"image": np.full((4, 4, 3), i, np.uint8)} for i in range(num_examples)]
  config = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "num_threads": 1}
  per_process = [list(input_pipeline.make_eval_iterator(
      source, config, global_batch_size=local_batch * processes, images_only=True,
      process_index=p, process_count=processes)) for p in range(processes)]
  assert len({len(b) for b in per_process}) == 1  # every process runs as many batches
  seen = []
  for number, batches in enumerate(zip(*per_process)):
    values = np.concatenate([np.rint(b["image"][:, 0, 0, 0] * 255) for b in batches])
    masks = np.concatenate([b["mask"] for b in batches])
    expected = np.where(masks, values, -1).astype(int)
    rows = teacher_targets.global_rows(number, num_examples, local_batch, processes)
    np.testing.assert_array_equal(rows, expected)
    seen.extend(rows[rows >= 0])
  assert sorted(seen) == list(range(num_examples))  # each example exactly once
