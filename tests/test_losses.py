"""Tests for kajax.losses against NumPy references, hand cases and PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import losses

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- data + refs

def seg_data(n=3, h=4, w=5, c=5, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, h, w, c)) * 2
  labels = rng.integers(0, c, size=(n, h, w))
  labels[rng.random(labels.shape) < 0.25] = 255
  labels[1, :2] = 255  # images with different numbers of valid pixels
  return logits.astype(np.float32), labels


def depth_data(n=3, h=4, w=5, seed=1):
  rng = np.random.default_rng(seed)
  gt = rng.uniform(0.3, 9.0, size=(n, h, w, 1))
  gt[rng.random(gt.shape) < 0.2] = 0.0
  gt[2, 0] = 11.0  # beyond 10 m: invalid
  pred = gt * rng.uniform(0.6, 1.5, gt.shape) + rng.uniform(0.05, 0.5, gt.shape)
  return pred.astype(np.float32), gt.astype(np.float32)


def normals_data(n=3, h=4, w=5, seed=2):
  rng = np.random.default_rng(seed)
  gt = rng.normal(size=(n, h, w, 3))
  gt /= np.linalg.norm(gt, axis=-1, keepdims=True)
  gt[rng.random((n, h, w)) < 0.2] = 0.0
  pred = gt + rng.normal(0, 0.5, gt.shape)
  return pred.astype(np.float32), gt.astype(np.float32)


def np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_ce(logits, labels, weights=None, ignore=255):
  lp = np_log_softmax(logits).reshape(-1, logits.shape[-1])
  num, den = 0.0, 0.0
  for row, y in zip(lp, labels.ravel()):
    if y == ignore:
      continue
    wy = 1.0 if weights is None else weights[y]
    num += -row[y] * wy
    den += wy
  return num / den


def np_valid_depth(gt):
  return (gt > 1e-3) & (gt <= 10)


def np_unit(x):
  x = x.astype(np.float64)
  n = np.linalg.norm(x, axis=-1, keepdims=True)
  return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


# ----------------------------------------------------------------------------- supervised

def test_seg_cross_entropy_numpy_and_torch():
  logits, labels = seg_data()
  w = np.array([0.5, 1.0, 2.0, 0.1, 3.0], np.float32)
  assert float(losses.seg_cross_entropy(logits, labels)) == pytest.approx(
      np_ce(logits, labels), rel=1e-5)
  assert float(losses.seg_cross_entropy(logits, labels, class_weights=w)) == pytest.approx(
      np_ce(logits, labels, w), rel=1e-5)
  torch = pytest.importorskip("torch")
  t_logits = torch.from_numpy(logits).permute(0, 3, 1, 2)
  t_labels = torch.from_numpy(labels).long()
  for weight in (None, w):
    want = torch.nn.functional.cross_entropy(
        t_logits, t_labels, ignore_index=255,
        weight=None if weight is None else torch.from_numpy(weight)).item()
    got = float(losses.seg_cross_entropy(logits, labels, class_weights=weight))
    assert got == pytest.approx(want, rel=1e-5)


def test_depth_l1_and_silog_numpy():
  pred, gt = depth_data()
  v = np_valid_depth(gt)
  p, g = pred[v].astype(np.float64), gt[v].astype(np.float64)
  assert float(losses.depth_l1(pred, gt)) == pytest.approx(np.mean(np.abs(p - g)), rel=1e-5)
  d = np.log(p) - np.log(g)
  want = np.sqrt(np.mean(d**2) - 0.85 * np.mean(d)**2)
  assert float(losses.depth_silog(pred, gt[..., 0])) == pytest.approx(want, rel=1e-4)
  # Hand case: pred = 2 gt gives d = log 2 everywhere: sqrt((1 - lam)) * log 2; lam = 1 is
  # fully scale invariant (0).
  g2 = np.full((2, 3, 3, 1), 1.5, np.float32)
  assert float(losses.depth_silog(2 * g2, g2)) == pytest.approx(np.sqrt(0.15) * np.log(2),
                                                                rel=1e-5)
  assert float(losses.depth_silog(2 * g2, g2, lam=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_depth_bins():
  centers = np.asarray(losses.depth_bin_centers(5, 0.25, 4.0))
  np.testing.assert_allclose(centers, [0.25, 0.5, 1.0, 2.0, 4.0], rtol=1e-6)
  # Bin = nearest centre in log space (reference: argmin over centres).
  d = np.array([0.1, 0.3, 0.7, 0.72, 1.3, 3.0, 9.0], np.float32)
  want = np.argmin(np.abs(np.log(d)[:, None] - np.log(centers)[None]), axis=1)
  np.testing.assert_array_equal(np.asarray(losses.depth_to_bin(d, 5, 0.25, 4.0)), want)
  # CE against those bins over valid pixels only.
  rng = np.random.default_rng(5)
  gt = rng.uniform(0.2, 5.0, (2, 3, 4, 1)).astype(np.float32)
  gt[0, 0] = 0.0
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  bins = np.argmin(np.abs(np.log(np.maximum(gt[..., 0], 1e-3))[..., None] - np.log(centers)),
                   axis=-1)
  bins[~np_valid_depth(gt[..., 0])] = 255
  assert float(losses.depth_bins_ce(logits, gt, 0.25, 4.0)) == pytest.approx(
      np_ce(logits, bins), rel=1e-5)
  # Readout: a confident one-hot gives the centre; uniform logits give the mean centre.
  onehot = np.full((1, 1, 2, 5), -50.0, np.float32)
  onehot[0, 0, 0, 3] = onehot[0, 0, 1, 0] = 50.0
  out = np.asarray(losses.depth_from_bins(onehot, centers))
  np.testing.assert_allclose(out[..., 0], [[[2.0, 0.25]]], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(losses.depth_from_bins(np.zeros((1, 1, 1, 5)), centers)),
                             centers.mean(), rtol=1e-6)


def test_normals_cosine():
  pred, gt = normals_data()
  v = np.any(gt != 0, axis=-1)
  cos = np.sum(np_unit(pred) * np_unit(gt), axis=-1)
  assert float(losses.normals_cosine(pred, gt)) == pytest.approx(np.mean(1 - cos[v]), rel=1e-5)
  # 90 degrees between unequal-length vectors: 1 - cos = 1; the (0,0,0) pixel is skipped.
  p = np.array([[[[3.0, 0, 0], [1, 1, 1]]]], np.float32)
  g = np.array([[[[0.0, 0.5, 0], [0, 0, 0]]]], np.float32)
  assert float(losses.normals_cosine(p, g)) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- projection

def test_kl_and_hard_ce_numpy_and_torch():
  s, _ = seg_data(seed=3)
  t, _ = seg_data(seed=4)
  for temp in (1.0, 2.0):
    lq, lp = np_log_softmax(s / temp), np_log_softmax(t / temp)
    want = np.mean(np.sum(np.exp(lp) * (lp - lq), -1)) * temp**2
    assert float(losses.kl_projection(s, t, temp)) == pytest.approx(want, rel=1e-5)
  torch = pytest.importorskip("torch")
  ts, tt = torch.from_numpy(s).double(), torch.from_numpy(t).double()
  F = torch.nn.functional
  want = F.kl_div(F.log_softmax(ts / 2, -1), F.softmax(tt / 2, -1), reduction="sum").item()
  want *= 4 / np.prod(s.shape[:-1])
  assert float(losses.kl_projection(s, t, 2.0)) == pytest.approx(want, rel=1e-5)
  hard = t.argmax(-1)
  assert float(losses.hard_ce_projection(s, t)) == pytest.approx(np_ce(s, hard), rel=1e-5)
  want = F.cross_entropy(ts.permute(0, 3, 1, 2), torch.from_numpy(hard)).item()
  assert float(losses.hard_ce_projection(s, t)) == pytest.approx(want, rel=1e-5)
  assert float(losses.kl_projection(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_class_weighted_kl_weights_pixels_by_the_teachers_class():
  s, _ = seg_data(seed=5)
  t, _ = seg_data(seed=6)
  weights = np.array([0.5, 1.0, 2.0, 4.0, 0.25], np.float32)
  lq, lp = np_log_softmax(s), np_log_softmax(t)
  kl = np.sum(np.exp(lp) * (lp - lq), -1)
  w = weights[t.argmax(-1)]
  want = np.sum(w * kl) / np.sum(w)
  got = float(losses.kl_projection(s, t, 1.0, class_weights=weights))
  assert got == pytest.approx(want, rel=1e-5)
  # Uniform weights give the plain mean.
  assert float(losses.kl_projection(s, t, 1.0, class_weights=np.ones(5))) == pytest.approx(
      float(losses.kl_projection(s, t, 1.0)), rel=1e-6)


def test_depth_projections_numpy():
  rng = np.random.default_rng(6)
  y = rng.uniform(0.0, 6.0, (2, 4, 5, 1)).astype(np.float32)
  y[0, 0, 0] = 0.0  # teacher says 0 m: log is clamped
  yh = (y + rng.normal(0, 0.7, y.shape)).astype(np.float32)
  a, b = yh.astype(np.float64), y.astype(np.float64)
  assert float(losses.l1_projection(yh, y)) == pytest.approx(np.mean(np.abs(a - b)), rel=1e-5)
  want = np.mean(np.abs(np.log(np.maximum(a, 1e-3)) - np.log(np.maximum(b, 1e-3))))
  assert float(losses.log_l1_projection(yh, y)) == pytest.approx(want, rel=1e-5)
  diff = np.abs(a - b)
  c = 0.2 * diff.max()
  ref = [x if x <= c else (x * x + c * c) / (2 * c) for x in diff.ravel()]
  assert float(losses.berhu_projection(yh, y)) == pytest.approx(np.mean(ref), rel=1e-5)
  # Hand case: diffs (0.1, 1.0): c = 0.2, B = (0.1 + (1 + 0.04) / 0.4) / 2.
  got = losses.berhu_projection(jnp.array([[[[0.1], [1.0]]]]), jnp.zeros((1, 1, 2, 1)))
  assert float(got) == pytest.approx((0.1 + 1.04 / 0.4) / 2)
  assert float(losses.berhu_projection(y, y)) == 0.0


def test_depth_berhu_numpy():
  pred, gt = depth_data()
  v = np_valid_depth(gt)
  diff = np.abs(pred[v].astype(np.float64) - gt[v].astype(np.float64))
  c = 0.2 * diff.max()  # over valid pixels only
  want = np.mean(np.where(diff <= c, diff, (diff**2 + c**2) / (2 * c)))
  assert float(losses.depth_berhu(pred, gt)) == pytest.approx(want, rel=1e-5)
  # Hand case: valid diffs (0.1, 1.0) give c = 0.2 and B = (0.1 + 1.04 / 0.4) / 2; a wildly
  # wrong prediction at an invalid pixel (gt 0 or 11 m) changes neither c nor the mean.
  gt2 = np.array([[[[1.0], [2.0], [0.0], [11.0]]]], np.float32)
  pred2 = np.array([[[[1.1], [3.0], [9.0], [-5.0]]]], np.float32)
  assert float(losses.depth_berhu(pred2, gt2)) == pytest.approx((0.1 + 1.04 / 0.4) / 2)
  assert float(losses.depth_berhu(gt2, gt2)) == 0.0


def test_cosine_projection_numpy():
  pred, target = normals_data(seed=7)
  cos = np.sum(np_unit(pred) * np_unit(target), axis=-1)
  # All pixels count, including target (0,0,0) (cos = 0 there).
  assert float(losses.cosine_projection(pred, target)) == pytest.approx(np.mean(1 - cos),
                                                                        rel=1e-5)


# ----------------------------------------------------------------------------- properties

def all_cases():
  """(name, fn, prediction, target) for every loss, on batches of 3 images."""
  seg_logits, seg_labels = seg_data()
  teacher_logits, _ = seg_data(seed=9)
  d_pred, d_gt = depth_data()
  n_pred, n_gt = normals_data()
  bin_logits = np.random.default_rng(8).normal(size=d_pred.shape[:3] + (6,)).astype(np.float32)
  return [
      ("ce", losses.seg_cross_entropy, seg_logits, seg_labels),
      ("l1", losses.depth_l1, d_pred, d_gt),
      ("depth_berhu", losses.depth_berhu, d_pred, d_gt),
      ("silog", losses.depth_silog, d_pred, d_gt),
      ("bins", losses.depth_bins_ce, bin_logits, d_gt),
      ("normals", losses.normals_cosine, n_pred, n_gt),
      ("kl", losses.kl_projection, seg_logits, teacher_logits),
      ("hard_ce", losses.hard_ce_projection, seg_logits, teacher_logits),
      ("l1_proj", losses.l1_projection, d_pred, d_gt),
      ("log_l1_proj", losses.log_l1_projection, d_pred, d_gt),
      ("berhu", losses.berhu_projection, d_pred, d_gt),
      ("cosine_proj", losses.cosine_projection, n_pred, n_gt),
  ]


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c[0])
def test_every_image_counts(case):
  _, fn, pred, target = case
  base = float(fn(pred, target))
  rng = np.random.default_rng(10)
  for i in range(pred.shape[0]):
    changed = pred.copy()
    changed[i] = changed[i] * 1.3 + rng.uniform(0.05, 0.3, changed[i].shape)
    assert float(fn(changed, target)) != pytest.approx(base, rel=1e-4), f"image {i}"


def test_finite_gradients_at_invalid_and_degenerate_pixels():
  # Depth: GT 0 / 11 m (invalid), predictions 0 and negative; normals: zero vectors.
  d_gt = np.array([[[[0.0], [11.0], [2.0], [3.0]]]], np.float32)
  d_pred = np.array([[[[0.0], [-1.0], [0.0], [3.0]]]], np.float32)
  n_gt = np.array([[[[0.0, 0, 0], [0, 0, 1], [0, 0, 0]]]], np.float32)
  n_pred = np.array([[[[0.0, 0, 0], [0, 0, 0], [1, 0, 0]]]], np.float32)
  seg_logits = np.zeros((1, 1, 3, 4), np.float32)
  seg_labels = np.array([[[255, 1, 255]]])
  cases = [
      (losses.depth_l1, d_pred, d_gt), (losses.depth_silog, d_pred, d_gt),
      (losses.depth_berhu, d_pred, d_gt), (losses.depth_berhu, d_gt, d_gt),
      (losses.depth_bins_ce, np.zeros((1, 1, 4, 6), np.float32), d_gt),
      (losses.normals_cosine, n_pred, n_gt), (losses.seg_cross_entropy, seg_logits, seg_labels),
      (losses.l1_projection, d_pred, d_gt), (losses.log_l1_projection, d_pred, d_gt),
      (losses.berhu_projection, d_pred, d_gt), (losses.berhu_projection, d_gt, d_gt),
      (losses.cosine_projection, n_pred, n_gt), (losses.kl_projection, seg_logits, seg_logits),
  ]
  for fn, pred, target in cases:
    value, grad = jax.value_and_grad(fn)(jnp.asarray(pred), target)
    assert np.isfinite(float(value)), fn.__name__
    assert np.all(np.isfinite(np.asarray(grad))), fn.__name__
  # Supervised losses give invalid pixels exactly zero gradient.
  g = np.asarray(jax.grad(losses.depth_l1)(jnp.asarray(d_pred), d_gt))
  assert g[0, 0, 0, 0] == 0 and g[0, 0, 1, 0] == 0 and g[0, 0, 2, 0] != 0
  g = np.asarray(jax.grad(losses.depth_berhu)(jnp.asarray(d_pred), d_gt))
  assert g[0, 0, 0, 0] == 0 and g[0, 0, 1, 0] == 0 and g[0, 0, 2, 0] != 0
  g = np.asarray(jax.grad(losses.seg_cross_entropy)(jnp.asarray(seg_logits), seg_labels))
  assert np.all(g[0, 0, [0, 2]] == 0) and np.any(g[0, 0, 1] != 0)
  # No valid pixel at all: 0 rather than NaN.
  assert float(losses.depth_l1(d_pred, np.zeros_like(d_gt))) == 0.0


def test_float64_under_x64():
  with jax.enable_x64(True):
    for _, fn, pred, target in all_cases():
      if pred.dtype.kind == "f":
        pred = pred.astype(np.float64)
      out = fn(jnp.asarray(pred), target)
      assert out.dtype == jnp.float64, fn.__name__


def test_hard_ce_projection_uses_class_weights():
  """Weighted hard-label CE = sum_p w[y_p] * nll_p / sum_p w[y_p], y = teacher's argmax
  (written out in NumPy)."""
  s, _ = seg_data(seed=3)
  t, _ = seg_data(seed=4)
  w = np.linspace(0.5, 2.0, s.shape[-1]).astype(np.float32)
  y = np.argmax(t, -1)
  logq = np.asarray(jax.nn.log_softmax(s, -1))
  nll = -np.take_along_axis(logq, y[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(losses.hard_ce_projection(s, t, w)),
                             np.sum(w[y] * nll) / np.sum(w[y]), rtol=1e-5)
  np.testing.assert_allclose(float(losses.hard_ce_projection(s, t)), nll.mean(), rtol=1e-5)
  with pytest.raises(ValueError, match=r"class_weights must have shape"):
    losses.hard_ce_projection(s, t, w[:3])
