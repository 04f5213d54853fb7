"""Tests for kajax.metrics against NumPy references written here and hand-computed cases."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from kajax import metrics


# ----------------------------------------------------------------------------- references

def np_confusion(pred_ids, labels, c):
  cm = np.zeros((c, c), np.int64)
  for g, p in zip(labels.ravel(), pred_ids.ravel()):
    if 0 <= g < c:
      cm[g, p] += 1
  return cm


def np_depth_metrics(pred, gt):
  pred, gt = pred.astype(np.float64).ravel(), gt.astype(np.float64).ravel()
  valid = (gt > 1e-3) & (gt <= 10)
  p, g = np.clip(pred[valid], 1e-3, 10), gt[valid]
  ratio = np.maximum(p / g, g / p)
  return {
      "abs_rel": np.mean(np.abs(p - g) / g),
      "sq_rel": np.mean((p - g)**2 / g),
      "rmse": np.sqrt(np.mean((p - g)**2)),
      "rmse_log": np.sqrt(np.mean((np.log(p) - np.log(g))**2)),
      "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
      "delta1": np.mean(ratio < 1.25),
      "delta2": np.mean(ratio < 1.25**2),
      "delta3": np.mean(ratio < 1.25**3),
  }


def np_angles(pred, gt):
  pred, gt = pred.astype(np.float64).reshape(-1, 3), gt.astype(np.float64).reshape(-1, 3)
  valid = np.any(gt != 0, axis=1)
  out = []
  for a, b in zip(pred[valid], gt[valid]):
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    out.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
  return np.array(out)


def random_seg(rng, n=3, h=5, w=7, c=4):
  logits = rng.normal(size=(n, h, w, c)).astype(np.float32)
  labels = rng.integers(0, c, size=(n, h, w))
  labels[rng.random(labels.shape) < 0.2] = 255
  return logits, labels


def random_depth(rng, n=3, h=6, w=5):
  gt = rng.uniform(0.3, 9.5, size=(n, h, w, 1)).astype(np.float32)
  r = rng.random(gt.shape)
  gt[r < 0.15] = 0.0  # missing
  gt[r > 0.92] = 12.0  # beyond 10 m: invalid
  pred = (gt * rng.uniform(0.7, 1.4, gt.shape) + rng.normal(0, 0.2, gt.shape)).astype(np.float32)
  pred[0, 0, 0, 0] = -1.0  # clamped to 1e-3
  pred[0, 0, 1, 0] = 30.0  # clamped to 10
  gt[0, 0, :2, 0] = 2.0
  return pred, gt


def random_normals(rng, n=3, h=6, w=5):
  gt = rng.normal(size=(n, h, w, 3)).astype(np.float32)
  gt /= np.linalg.norm(gt, axis=-1, keepdims=True)
  gt[rng.random((n, h, w)) < 0.2] = 0.0
  pred = (gt + rng.normal(0, 0.4, gt.shape) * 2).astype(np.float32)
  return pred, gt


# ----------------------------------------------------------------------------- segmentation

def test_confusion_matches_numpy_loop():
  rng = np.random.default_rng(0)
  logits, labels = random_seg(rng)
  labels[0, 0, 0] = -1  # MTAN's ignore value is also ignored.
  cm = metrics.confusion_matrix(jnp.asarray(logits), jnp.asarray(labels), 4)
  np.testing.assert_array_equal(np.asarray(cm), np_confusion(logits.argmax(-1), labels, 4))
  ids = jax.jit(metrics.confusion_matrix, static_argnums=2)(
      jnp.asarray(logits.argmax(-1)), jnp.asarray(labels), 4)
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(cm))


def test_seg_metrics_hand_2x2():
  # gt = [0,0,1,1], pred = [0,1,1,1]: cm = [[1,1],[0,2]].
  # IoU0 = 1/(2+1-1) = 1/2, IoU1 = 2/(2+3-2) = 2/3; acc0 = 1/2, acc1 = 1.
  cm = metrics.confusion_matrix(jnp.array([[[0, 1], [1, 1]]]), jnp.array([[[0, 0], [1, 1]]]), 2)
  np.testing.assert_array_equal(np.asarray(cm), [[1, 1], [0, 2]])
  m = metrics.seg_metrics(cm)
  assert m["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
  assert m["pixel_acc"] == pytest.approx(3 / 4)
  assert m["mean_acc"] == pytest.approx(3 / 4)


def test_seg_metrics_absent_classes_and_empty():
  # Class 2 absent everywhere (excluded); class 3 predicted once but never in GT:
  # IoU 0 counts in mIoU, accuracy undefined so excluded from mean_acc.
  cm = np.zeros((4, 4))
  cm[0, 0], cm[1, 1], cm[1, 3] = 2, 1, 1
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    m = metrics.seg_metrics(cm)
    empty = metrics.seg_metrics(np.zeros((3, 3)))
  assert m["miou"] == pytest.approx((1 + 1 / 2 + 0) / 3)
  assert m["mean_acc"] == pytest.approx((1 + 1 / 2) / 2)
  assert m["pixel_acc"] == pytest.approx(3 / 4)
  assert all(np.isnan(v) for v in empty.values())
  assert np.isnan(metrics.per_class_iou(cm)[2])


# ----------------------------------------------------------------------------- depth

def test_depth_metrics_match_numpy():
  rng = np.random.default_rng(1)
  pred, gt = random_depth(rng)
  got = metrics.finalize("depth", metrics.update_sums(
      "depth", metrics.init_sums("depth"), jnp.asarray(pred), jnp.asarray(gt[..., 0])))
  want = np_depth_metrics(pred, gt)
  assert set(got) == set(metrics.DEPTH_KEYS)
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-5), k


def test_depth_hand_case():
  # gt 2 m, prediction 2.5 m: abs_rel 0.25, sq_rel 0.125, rmse 0.5; ratio exactly 1.25 is
  # not < 1.25, so delta1 = 0 and delta2 = 1. The 0 pixel is missing and ignored.
  gt = jnp.array([[[2.0, 2.0, 0.0]]])
  pred = jnp.array([[[2.5, 2.5, 7.0]]])
  m = metrics.depth_metrics(metrics.depth_sums(pred, gt))
  assert m["abs_rel"] == pytest.approx(0.25)
  assert m["sq_rel"] == pytest.approx(0.125)
  assert m["rmse"] == pytest.approx(0.5)
  assert m["log10"] == pytest.approx(np.log10(1.25), rel=1e-6)
  assert (m["delta1"], m["delta2"], m["delta3"]) == (0.0, 1.0, 1.0)


def test_eigen_crop():
  with pytest.raises(ValueError, match="480x640"):
    metrics.depth_sums(jnp.ones((1, 240, 320, 1)), jnp.ones((1, 240, 320, 1)), eigen_crop=True)
  gt = np.full((1, 480, 640), 3.0, np.float32)
  pred = gt.copy()
  pred[0, 100, 100] = 4.0  # inside the crop
  pred[0, 10, 10] = 9.0  # outside the crop (row 10 < 45): must not count.
  s = jax.jit(functools.partial(metrics.depth_sums, eigen_crop=True))(pred, gt)
  assert int(s["count"]) == 426 * 560
  assert float(s["sq_err"]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- normals

def test_normals_match_numpy_and_right_angle():
  rng = np.random.default_rng(2)
  pred, gt = random_normals(rng)
  got = metrics.finalize("normals", metrics.normals_sums(jnp.asarray(pred), jnp.asarray(gt)))
  ang = np_angles(pred, gt)
  assert set(got) == set(metrics.NORMALS_KEYS)
  assert got["angle_mean"] == pytest.approx(ang.mean(), abs=1e-3)
  assert got["angle_rmse"] == pytest.approx(np.sqrt(np.mean(ang**2)), abs=1e-3)
  assert got["angle_median"] == pytest.approx(np.median(ang), abs=metrics.ANGLE_BIN_DEG)
  for t, k in [(11.25, "within_11_25"), (22.5, "within_22_5"), (30, "within_30")]:
    assert got[k] == pytest.approx(np.mean(ang < t)), k
  # Exactly 90 degrees (lengths differ, so normalisation matters); a zero prediction is 90
  # too, and a (0,0,0) ground truth is skipped.
  p = jnp.array([[[[1.0, 0, 0], [0, 0, 0], [0, 0, 5]]]])
  g = jnp.array([[[[0.0, 2, 0], [0, 0, 1], [0, 0, 0]]]])
  m = metrics.normals_metrics(metrics.normals_sums(p, g))
  assert m["angle_mean"] == pytest.approx(90.0)
  assert m["within_30"] == 0.0
  assert int(metrics.normals_sums(p, g)["count"]) == 2


# ----------------------------------------------------------------------------- accumulation

@pytest.mark.parametrize("task", ["seg", "depth", "normals"])
def test_accumulation_equals_concatenation(task):
  rng = np.random.default_rng(3)
  make = {"seg": random_seg, "depth": random_depth, "normals": random_normals}[task]
  batches = [make(rng) for _ in range(3)]
  step = jax.jit(functools.partial(metrics.update_sums, task))
  sums = metrics.init_sums(task, num_classes=4)
  for pred, target in batches:
    sums = step(sums, pred, target)
  whole = metrics.batch_sums(task, np.concatenate([b[0] for b in batches]),
                             np.concatenate([b[1] for b in batches]), num_classes=4)
  got, want = metrics.finalize(task, sums), metrics.finalize(task, whole)
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-5), k
  if task == "normals":
    ang = np.concatenate([np_angles(p, g) for p, g in batches])
    assert got["angle_median"] == pytest.approx(np.median(ang), abs=metrics.ANGLE_BIN_DEG)
  if task == "seg":
    cm = sum(np_confusion(p.argmax(-1), g, 4) for p, g in batches)
    np.testing.assert_array_equal(np.asarray(sums["confusion"]), cm)


@pytest.mark.parametrize("task", ["seg", "depth", "normals"])
def test_sharded_batch_and_padding_mask(task):
  """Under jit over an 8-device mesh the sums are global; a mask drops padded images."""
  rng = np.random.default_rng(4)
  make = {"seg": random_seg, "depth": random_depth, "normals": random_normals}[task]
  pred, target = make(rng, n=8)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  shard = NamedSharding(mesh, P("data"))
  valid_images = np.arange(8) < 5  # last 3 images are padding
  step = jax.jit(functools.partial(metrics.update_sums, task))
  sums = step(metrics.init_sums(task, 4), jax.device_put(pred, shard),
              jax.device_put(target, shard), mask=jax.device_put(valid_images, shard))
  got = metrics.finalize(task, sums)
  if task == "seg":
    want = metrics.seg_metrics(np_confusion(pred[:5].argmax(-1), target[:5], 4))
  elif task == "depth":
    want = np_depth_metrics(pred[:5], target[:5])
  else:
    ang = np_angles(pred[:5], target[:5])
    want = {"angle_mean": ang.mean(), "angle_rmse": np.sqrt(np.mean(ang**2)),
            "within_22_5": np.mean(ang < 22.5)}
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-5), k


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="metrics task"):
    metrics.init_sums("edges")
  with pytest.raises(ValueError, match="num_classes"):
    metrics.init_sums("seg")
  with pytest.raises(ValueError, match="differ"):
    metrics.depth_sums(jnp.ones((1, 4, 4)), jnp.ones((1, 4, 5)))
