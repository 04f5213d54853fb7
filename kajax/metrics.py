"""Evaluation metrics for segmentation, depth and surface normals, accumulated over a test set.

Every metric is a two-stage computation so that it is exact over a whole test set, however the
set is split into batches or devices:

1. :func:`update_sums` (pure, jit-able) adds one batch's *sums* to a running dict of arrays:
   a confusion matrix, sums of per-pixel errors, counts, and a histogram of normal angles.
   Sums from different batches or hosts combine with :func:`merge_sums` (plain addition).
2. :func:`finalize` turns the sums into Python floats on the host (float64 NumPy).

Conventions (NHWC throughout; tasks are named 'seg', 'depth', 'normals'):

* seg: predictions are logits (N,H,W,C) or class ids (N,H,W); labels (N,H,W) with ids in
  [0, C). Any label outside [0, C) -- 255 by kajax's convention, -1 in MTAN's files -- is
  ignored. Confusion rows are ground truth, columns prediction.
* depth: metres, (N,H,W,1) or (N,H,W). Valid ground truth is 1e-3 < d <= 10 (0 = missing);
  predictions are clamped to [1e-3, 10] before every error, as in the BTS evaluation.
  RMSE is the root of the mean squared error over *all valid pixels of the set* (not a mean of
  per-image RMSEs, which BTS reports).
* normals: (N,H,W,3); ground truth (0,0,0) = invalid. Both vectors are normalised before the
  angle. ``within_*`` metrics are fractions in [0, 1] (not percent).

Counts are int32: a confusion cell or pixel count must stay below 2**31 (the 654 NYUv2 test
images at 480x640 hold 2.0e8 pixels).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

TASKS = ("seg", "depth", "normals")
DEPTH_MIN = 1e-3  # metres; valid ground truth is DEPTH_MIN < d <= DEPTH_MAX.
DEPTH_MAX = 10.0
# "Eigen crop" of a 480x640 NYUv2 frame as evaluated by BTS (bts_eval.py --eigen_crop) and
# ZoeDepth (misc.py compute_metrics): eval_mask[45:471, 41:601] (426x560 pixels).
EIGEN_CROP_FRAME = (480, 640)
EIGEN_CROP_ROWS = (45, 471)
EIGEN_CROP_COLS = (41, 601)
# Normal-angle histogram for the median: 0.01 degree bins over [0, 180] degrees.
ANGLE_BIN_DEG = 0.01
ANGLE_BINS = 18000
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")
SEG_KEYS = ("miou", "pixel_acc", "mean_acc")
NORMALS_KEYS = ("angle_mean", "angle_median", "angle_rmse", "within_11_25", "within_22_5",
                "within_30")


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"Unknown metrics task {task!r}; choose one of {TASKS}.")


def _drop_channel(x: jax.Array, name: str) -> jax.Array:
  """(N,H,W,1) -> (N,H,W); (N,H,W) unchanged."""
  if x.ndim == 4 and x.shape[-1] == 1:
    return x[..., 0]
  if x.ndim != 3:
    raise ValueError(f"{name} must have shape (N,H,W,1) or (N,H,W); got {x.shape}.")
  return x


def _mask_or_true(mask, shape) -> jax.Array:
  """Extra validity mask broadcast to (N,H,W); (N,) masks out whole (e.g. padded) images."""
  if mask is None:
    return jnp.ones(shape, bool)
  mask = jnp.asarray(mask, bool)
  if mask.ndim == 1:
    mask = mask[:, None, None]
  return jnp.broadcast_to(mask, shape)


# ----------------------------------------------------------------------------- segmentation

def confusion_matrix(pred: jax.Array, labels: jax.Array, num_classes: int,
                     mask: jax.Array | None = None) -> jax.Array:
  """Confusion matrix of one batch, int32 (num_classes, num_classes), rows = ground truth.

  Args:
    pred: logits (N,H,W,C) or predicted class ids (N,H,W).
    labels: (N,H,W) ground-truth ids; ids outside [0, num_classes) are ignored.
    num_classes: C.
    mask: optional bool, (N,) or broadcastable to (N,H,W); False pixels are ignored.
  """
  if pred.ndim == labels.ndim + 1:
    pred = jnp.argmax(pred, axis=-1)
  if pred.shape != labels.shape:
    raise ValueError(f"Segmentation prediction {pred.shape} and labels {labels.shape} differ "
                     "in shape; expected logits (N,H,W,C) or ids (N,H,W) for (N,H,W) labels.")
  labels = labels.astype(jnp.int32)
  pred = pred.astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_classes) & _mask_or_true(mask, labels.shape)
  # Invalid pixels go to an extra bin that is dropped: bincount needs in-range indices.
  flat = jnp.where(valid, labels * num_classes + pred, num_classes * num_classes)
  counts = jnp.bincount(flat.ravel(), length=num_classes * num_classes + 1)
  return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def per_class_iou(confusion) -> np.ndarray:
  """IoU per class (float64); NaN for classes absent from both ground truth and prediction."""
  cm = np.asarray(confusion, np.float64)
  tp = np.diag(cm)
  union = cm.sum(0) + cm.sum(1) - tp
  return np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)


def seg_metrics(confusion) -> dict[str, float]:
  """mIoU, pixel accuracy and mean class accuracy from a (summed) confusion matrix.

  Convention: mIoU averages over classes present in the ground truth *or* the prediction
  (absent from both: IoU is 0/0 and the class is excluded); mean_acc averages recall over
  classes present in the ground truth (a class only predicted has no defined accuracy).
  With no valid pixel at all every metric is NaN (no warning is raised).
  """
  cm = np.asarray(confusion, np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion must be a square matrix, got shape {cm.shape}.")
  tp = np.diag(cm)
  gt_count = cm.sum(1)
  total = cm.sum()
  iou = per_class_iou(cm)
  acc = np.divide(tp, gt_count, out=np.full_like(tp, np.nan), where=gt_count > 0)
  return {
      "miou": float(iou[~np.isnan(iou)].mean()) if np.any(~np.isnan(iou)) else float("nan"),
      "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
      "mean_acc": float(acc[~np.isnan(acc)].mean()) if np.any(~np.isnan(acc)) else float("nan"),
  }


# ----------------------------------------------------------------------------- depth

def eigen_crop_mask(height: int, width: int) -> np.ndarray:
  """Bool (H,W) mask of the NYUv2 Eigen crop, rows 45:471 and cols 41:601 of a 480x640 frame.

  Raises:
    ValueError: if the maps are not 480x640 (the crop is defined on the full Kinect frame
      only; for resized or pre-cropped data evaluate without ``eigen_crop``).
  """
  if (height, width) != EIGEN_CROP_FRAME:
    raise ValueError(
        f"eigen_crop=True needs 480x640 NYUv2 depth maps, got {height}x{width}. Evaluate at "
        "the full 480x640 resolution or set eigen_crop=False for resized/cropped data.")
  m = np.zeros(EIGEN_CROP_FRAME, bool)
  m[slice(*EIGEN_CROP_ROWS), slice(*EIGEN_CROP_COLS)] = True
  return m


def depth_valid_mask(gt: jax.Array) -> jax.Array:
  """Valid ground truth: 1e-3 < d <= 10 metres (0 marks a missing measurement)."""
  return (gt > DEPTH_MIN) & (gt <= DEPTH_MAX)


def depth_sums(pred: jax.Array, gt: jax.Array, mask: jax.Array | None = None,
               eigen_crop: bool = False) -> dict[str, jax.Array]:
  """Per-batch sums of depth errors over valid pixels (see :func:`depth_metrics`).

  Args:
    pred: predicted depth in metres, (N,H,W,1) or (N,H,W); clamped to [1e-3, 10].
    gt: ground-truth depth in metres, same layout; invalid where not 1e-3 < d <= 10.
    mask: optional extra bool mask, (N,) or broadcastable to (N,H,W).
    eigen_crop: also restrict to the NYUv2 Eigen crop (480x640 maps only; static).
  """
  pred = _drop_channel(jnp.asarray(pred), "depth prediction")
  gt = _drop_channel(jnp.asarray(gt), "depth ground truth")
  if pred.shape != gt.shape:
    raise ValueError(f"Depth prediction {pred.shape} and ground truth {gt.shape} differ.")
  dtype = pred.dtype if jnp.issubdtype(pred.dtype, jnp.floating) else jnp.float32
  pred, gt = pred.astype(dtype), gt.astype(dtype)
  valid = depth_valid_mask(gt) & _mask_or_true(mask, gt.shape)
  if eigen_crop:
    valid = valid & jnp.asarray(eigen_crop_mask(*gt.shape[1:]))[None]
  p = jnp.clip(pred, DEPTH_MIN, DEPTH_MAX)
  g = jnp.where(valid, gt, 1.0)  # any positive value: keeps log/division finite off-mask.
  v = valid.astype(dtype)
  err = p - g
  log_err = jnp.log(p) - jnp.log(g)
  ratio = jnp.maximum(p / g, g / p)
  sums = {
      "count": jnp.sum(valid, dtype=jnp.int32),
      "abs_rel": jnp.sum(v * jnp.abs(err) / g),
      "sq_rel": jnp.sum(v * err**2 / g),
      "sq_err": jnp.sum(v * err**2),
      "sq_log_err": jnp.sum(v * log_err**2),
      "log10": jnp.sum(v * jnp.abs(log_err)) / float(np.log(10.0)),
  }
  for i in (1, 2, 3):
    sums[f"delta{i}"] = jnp.sum(valid & (ratio < 1.25**i), dtype=jnp.int32)
  return sums


def depth_metrics(sums: Mapping[str, jax.Array]) -> dict[str, float]:
  """Standard depth metrics from summed :func:`depth_sums` (NaN if no valid pixel)."""
  n = float(np.asarray(sums["count"]))
  if n == 0:
    return {k: float("nan") for k in DEPTH_KEYS}
  f = lambda k: float(np.asarray(sums[k], np.float64))
  return {
      "abs_rel": f("abs_rel") / n,
      "sq_rel": f("sq_rel") / n,
      "rmse": float(np.sqrt(f("sq_err") / n)),
      "rmse_log": float(np.sqrt(f("sq_log_err") / n)),
      "log10": f("log10") / n,
      "delta1": f("delta1") / n,
      "delta2": f("delta2") / n,
      "delta3": f("delta3") / n,
  }


# ----------------------------------------------------------------------------- normals

def _unit(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / |x| along the last axis; a zero vector stays zero (no NaN)."""
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(eps, x.dtype)))


def normal_angles_deg(pred: jax.Array, gt: jax.Array) -> jax.Array:
  """Angle in degrees (N,H,W) between normalised predicted and ground-truth normals.

  Uses atan2(|a x b|, a.b) instead of arccos(clip(a.b, -1, 1)): the same angle without any
  clipping, and accurate near 0 degrees in float32, where arccos of a cosine close to 1 loses
  ~0.02 degrees (more than the 0.01-degree median histogram bin).
  """
  a, b = _unit(pred), _unit(gt)
  cross = jnp.linalg.norm(jnp.cross(a, b), axis=-1)
  dot = jnp.sum(a * b, axis=-1)
  # A zero vector (e.g. a dead prediction) has cross = dot = 0, where atan2 gives 0 degrees;
  # count it as 90 degrees, like arccos(0). Two unit vectors never have both equal to 0.
  zero = (cross == 0) & (dot == 0)
  return jnp.where(zero, 90.0, jnp.degrees(jnp.arctan2(cross, dot))).astype(a.dtype)


def normals_sums(pred: jax.Array, gt: jax.Array,
                 mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-batch sums of angular errors over valid pixels and a 0.01-degree angle histogram.

  Args:
    pred: (N,H,W,3) predicted normals (any length; normalised here).
    gt: (N,H,W,3) ground-truth normals; (0,0,0) marks an invalid pixel.
    mask: optional extra bool mask, (N,) or broadcastable to (N,H,W).
  """
  if pred.shape != gt.shape or pred.shape[-1] != 3 or pred.ndim != 4:
    raise ValueError(f"Normals must both be (N,H,W,3); got prediction {pred.shape} and "
                     f"ground truth {gt.shape}.")
  dtype = pred.dtype if jnp.issubdtype(pred.dtype, jnp.floating) else jnp.float32
  pred, gt = pred.astype(dtype), gt.astype(dtype)
  valid = jnp.any(gt != 0, axis=-1) & _mask_or_true(mask, gt.shape[:-1])
  angle = normal_angles_deg(pred, gt)
  v = valid.astype(dtype)
  bins = jnp.clip(jnp.floor(angle / ANGLE_BIN_DEG).astype(jnp.int32), 0, ANGLE_BINS - 1)
  bins = jnp.where(valid, bins, ANGLE_BINS)  # invalid -> extra bin, dropped below.
  hist = jnp.bincount(bins.ravel(), length=ANGLE_BINS + 1)[:-1].astype(jnp.int32)
  sums = {
      "count": jnp.sum(valid, dtype=jnp.int32),
      "angle_sum": jnp.sum(v * angle),
      "angle_sq_sum": jnp.sum(v * angle**2),
      "hist": hist,
  }
  for t in ANGLE_THRESHOLDS:
    sums[_within_key(t)] = jnp.sum(valid & (angle < t), dtype=jnp.int32)
  return sums


def _within_key(threshold: float) -> str:
  return "within_" + f"{threshold:g}".replace(".", "_")


def histogram_median(hist, bin_width: float = ANGLE_BIN_DEG) -> float:
  """Median of values binned in ``hist`` (bin i = [i, i+1)*bin_width), linear in the bin.

  Accurate to one bin width; NaN for an empty histogram.
  """
  h = np.asarray(hist, np.float64)
  n = h.sum()
  if n == 0:
    return float("nan")
  cum = np.cumsum(h)
  half = 0.5 * n
  b = int(np.searchsorted(cum, half))  # first bin whose cumulative count reaches n/2.
  before = cum[b - 1] if b > 0 else 0.0
  return float((b + (half - before) / h[b]) * bin_width)


def normals_metrics(sums: Mapping[str, jax.Array]) -> dict[str, float]:
  """Mean/median/RMSE angle (degrees) and fractions within 11.25/22.5/30 degrees."""
  n = float(np.asarray(sums["count"]))
  if n == 0:
    return {k: float("nan") for k in NORMALS_KEYS}
  out = {
      "angle_mean": float(np.asarray(sums["angle_sum"], np.float64)) / n,
      "angle_median": histogram_median(sums["hist"]),
      "angle_rmse": float(np.sqrt(float(np.asarray(sums["angle_sq_sum"], np.float64)) / n)),
  }
  for t in ANGLE_THRESHOLDS:
    out[_within_key(t)] = float(np.asarray(sums[_within_key(t)])) / n
  return out


# ----------------------------------------------------------------------------- accumulator

def init_sums(task: str, num_classes: int | None = None,
              dtype=jnp.float32) -> dict[str, jax.Array]:
  """Zero sums for ``task``; ``num_classes`` is required for 'seg'.

  ``dtype`` is the dtype of the float sums (counts are int32).
  """
  _check_task(task)
  if task == "seg":
    if not num_classes or num_classes < 1:
      raise ValueError(f"init_sums('seg') needs num_classes >= 1, got {num_classes!r}.")
    return {"confusion": jnp.zeros((num_classes, num_classes), jnp.int32)}
  zero_f = jnp.zeros((), dtype)
  zero_i = jnp.zeros((), jnp.int32)
  if task == "depth":
    floats = ("abs_rel", "sq_rel", "sq_err", "sq_log_err", "log10")
    return {"count": zero_i, **{k: zero_f for k in floats},
            **{f"delta{i}": zero_i for i in (1, 2, 3)}}
  return {"count": zero_i, "angle_sum": zero_f, "angle_sq_sum": zero_f,
          "hist": jnp.zeros((ANGLE_BINS,), jnp.int32),
          **{_within_key(t): zero_i for t in ANGLE_THRESHOLDS}}


def batch_sums(task: str, pred: jax.Array, target: jax.Array, *,
               mask: jax.Array | None = None, num_classes: int | None = None,
               eigen_crop: bool = False) -> dict[str, jax.Array]:
  """Sums of one batch (pure, jit-able with ``task``/``num_classes``/``eigen_crop`` static)."""
  _check_task(task)
  if task == "seg":
    if num_classes is None:
      if pred.ndim != target.ndim + 1:
        raise ValueError("batch_sums('seg') with class-id predictions needs num_classes.")
      num_classes = pred.shape[-1]
    return {"confusion": confusion_matrix(pred, target, num_classes, mask)}
  if task == "depth":
    return depth_sums(pred, target, mask, eigen_crop)
  return normals_sums(pred, target, mask)


def merge_sums(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums of two disjoint sets of pixels (batches, devices or hosts); keeps ``a``'s dtypes."""
  if set(a) != set(b):
    raise ValueError(f"Cannot merge metric sums with keys {sorted(a)} and {sorted(b)}.")
  return {k: a[k] + jnp.asarray(b[k]).astype(jnp.asarray(a[k]).dtype) for k in a}


def update_sums(task: str, sums: Mapping[str, jax.Array], pred: jax.Array, target: jax.Array,
                *, mask: jax.Array | None = None, eigen_crop: bool = False
                ) -> dict[str, jax.Array]:
  """Adds one batch to running sums from :func:`init_sums` (pure; jit with task static).

  Args:
    task: 'seg', 'depth' or 'normals'.
    sums: running sums of the same task.
    pred: model output: seg logits (N,H,W,C) or ids, depth (N,H,W,1), normals (N,H,W,3).
    target: ground truth: seg ids (N,H,W), depth (N,H,W[,1]) metres, normals (N,H,W,3).
    mask: optional bool (N,) or (N,H,W); False excludes pixels, e.g. padded images of a
      last batch that was filled up to a multiple of the device count.
    eigen_crop: depth only; restrict to the NYUv2 Eigen crop (480x640 maps).

  Example::

    step = jax.jit(functools.partial(update_sums, 'depth'))
    sums = init_sums('depth')
    for batch in data:
      sums = step(sums, model(batch['image']), batch['depth'])
    print(finalize('depth', sums))
  """
  num_classes = sums["confusion"].shape[0] if task == "seg" else None
  new = batch_sums(task, pred, target, mask=mask, num_classes=num_classes,
                   eigen_crop=eigen_crop)
  return merge_sums(sums, new)


def finalize(task: str, sums: Mapping[str, jax.Array]) -> dict[str, float]:
  """Python-float metrics from accumulated sums; keys listed in SEG/DEPTH/NORMALS_KEYS."""
  _check_task(task)
  sums = jax.device_get(dict(sums))
  if task == "seg":
    return seg_metrics(sums["confusion"])
  if task == "depth":
    return depth_metrics(sums)
  return normals_metrics(sums)
