"""Training losses: supervised (teachers from labels) and projection (student vs teacher).

Which loss a config's ``loss.kinds`` names is looked up through the task registry
(``kajax.tasks``); this module holds the functions themselves.

Every loss is a pure JAX function that returns a scalar averaged over *every* valid pixel of
*every* image in the batch -- one pooled mean, never a mean of per-image means and never the
first image only (KamalEngine's losses used one image per batch; docs/method.md §1).

Supervised losses take labels with invalid pixels (seg id outside [0, C) or == ignore_label,
depth outside (1e-3, 10] metres, normals == (0,0,0)) and ignore them; a batch with no valid
pixel gives 0, not NaN. Projection losses (docs/method.md §1, "Projection loss") compare the
student's output Y_hat with the frozen teacher's output Y on the same unlabelled image over all
pixels; the teacher side is wrapped in ``stop_gradient``.

Losses compute in the dtype of the prediction (float64 under ``jax_enable_x64`` works) and are
safe to differentiate: invalid pixels, zero normals and zero depths give finite (zero)
gradients, because inputs are sanitised with ``jnp.where`` *before* any log/division/norm.

The depth head outputs metres directly (no activation); logs clamp it to >= 1e-3 first, so a
prediction below 1e-3 gets no gradient from the log-space losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kajax.metrics import DEPTH_MAX, DEPTH_MIN, depth_valid_mask

_sg = jax.lax.stop_gradient


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(w*v)/sum(w); 0 when all weights are 0. ``values`` must be finite everywhere."""
  total = jnp.sum(weights)
  return jnp.sum(values * weights) / jnp.where(total > 0, total, jnp.ones_like(total))


def _unit(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / |x| on the last axis; a zero vector maps to zero with a finite gradient."""
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  # max(sq, eps) keeps rsqrt finite at 0; there the gradient is x * const, also finite.
  return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(eps, x.dtype)))


def _depth_pair(pred: jax.Array, gt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Brings depth maps (N,H,W,1)/(N,H,W) to (N,H,W) in the prediction's dtype."""
  def squeeze(x, name):
    if x.ndim == 4 and x.shape[-1] == 1:
      return x[..., 0]
    if x.ndim != 3:
      raise ValueError(f"{name} must be (N,H,W,1) or (N,H,W), got shape {x.shape}.")
    return x
  pred, gt = squeeze(pred, "depth prediction"), squeeze(gt, "depth target")
  if pred.shape != gt.shape:
    raise ValueError(f"Depth prediction {pred.shape} and target {gt.shape} differ in shape.")
  return pred, gt.astype(pred.dtype)


def _log_depth(x: jax.Array) -> jax.Array:
  return jnp.log(jnp.maximum(x, jnp.asarray(DEPTH_MIN, x.dtype)))


def _check_logits(logits: jax.Array, labels_shape: tuple[int, ...], name: str) -> None:
  if logits.ndim != 4 or logits.shape[:-1] != tuple(labels_shape):
    raise ValueError(f"{name}: logits must be (N,H,W,C) over (N,H,W) labels; got logits "
                     f"{logits.shape} and labels {tuple(labels_shape)}.")


# ----------------------------------------------------------------------------- supervised

def seg_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = 255,
                      class_weights=None) -> jax.Array:
  """Pixel-wise cross-entropy, mean over non-ignored pixels of the batch.

  Matches ``torch.nn.functional.cross_entropy(ignore_index=ignore_label, weight=w)``: with
  class weights it is the weighted mean sum(w_y * nll) / sum(w_y).

  Args:
    logits: (N,H,W,C).
    labels: (N,H,W) ints; ``ignore_label`` and any id outside [0, C) are ignored.
    ignore_label: id to ignore (255 in kajax; MTAN's -1 is out of range, so ignored too).
    class_weights: optional (C,) weights.
  """
  _check_logits(logits, labels.shape, "seg_cross_entropy")
  num_classes = logits.shape[-1]
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  weights = valid.astype(logits.dtype)
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights, logits.dtype)
    if class_weights.shape != (num_classes,):
      raise ValueError(f"class_weights must have shape ({num_classes},) for {num_classes} "
                       f"classes, got {class_weights.shape}.")
    weights = weights * class_weights[safe]
  return _weighted_mean(nll, weights)


def depth_l1(pred: jax.Array, gt: jax.Array) -> jax.Array:
  """Mean |pred - gt| in metres over valid ground truth (1e-3 < gt <= 10) of the batch."""
  pred, gt = _depth_pair(pred, gt)
  valid = depth_valid_mask(gt)
  err = jnp.abs(pred - jnp.where(valid, gt, pred))
  return _weighted_mean(err, valid.astype(pred.dtype))


def depth_berhu(pred: jax.Array, gt: jax.Array) -> jax.Array:
  """Reverse Huber (see :func:`berhu_projection`) against ground truth, over valid pixels.

  c = 0.2 * the largest valid |pred - gt| of the batch (a constant, stop_gradient). L1 for
  small errors and quadratic for large ones, so it weighs the errors RMSE counts most while
  keeping L1's steady gradient near the answer (Laina et al. 2016 report it beating L1 and L2).
  """
  pred, gt = _depth_pair(pred, gt)
  valid = depth_valid_mask(gt)
  diff = jnp.abs(pred - jnp.where(valid, gt, pred))  # 0 where invalid: never sets c
  return _weighted_mean(_berhu_terms(diff), valid.astype(pred.dtype))


def depth_silog(pred: jax.Array, gt: jax.Array, lam: float = 0.85) -> jax.Array:
  """Scale-invariant log loss (Eigen et al., NIPS 2014), variance-focal square-root form.

  With d = log(max(pred, 1e-3)) - log(gt) over the n valid pixels of the whole batch,
  loss = sqrt(mean(d^2) - lam * mean(d)^2). lam = 0.85 as in BTS (Lee et al. 2019), which
  also multiplies by 10 (not done here); Eigen's original is the squared form with lam = 0.5.
  """
  pred, gt = _depth_pair(pred, gt)
  valid = depth_valid_mask(gt)
  d = jnp.where(valid, _log_depth(pred) - jnp.log(jnp.where(valid, gt, 1.0)), 0.0)
  n = jnp.maximum(jnp.sum(valid.astype(pred.dtype)), 1.0)
  mean_d = jnp.sum(d) / n
  var = jnp.sum(d * d) / n - lam * mean_d**2
  # var >= (1 - lam) * mean(d^2) >= 0; the floor only guards sqrt's gradient at exactly 0.
  return jnp.sqrt(jnp.maximum(var, jnp.finfo(pred.dtype).tiny))


def depth_bin_centers(num_bins: int = 50, min_depth: float = 0.25, max_depth: float = DEPTH_MAX,
                      dtype=jnp.float32) -> jax.Array:
  """(num_bins,) log-spaced bin centres in metres from min_depth to max_depth (inclusive)."""
  if num_bins < 2 or not 0 < min_depth < max_depth:
    raise ValueError(f"Depth bins need num_bins >= 2 and 0 < min_depth < max_depth; got "
                     f"num_bins={num_bins}, min_depth={min_depth}, max_depth={max_depth}.")
  return jnp.exp(jnp.linspace(np.log(min_depth), np.log(max_depth), num_bins)).astype(dtype)


def depth_to_bin(depth: jax.Array, num_bins: int, min_depth: float = 0.25,
                 max_depth: float = DEPTH_MAX) -> jax.Array:
  """Index of the nearest centre in log space (int32); depths outside the range clip."""
  step = (np.log(max_depth) - np.log(min_depth)) / (num_bins - 1)
  pos = (_log_depth(depth) - np.log(min_depth)) / step
  return jnp.clip(jnp.round(pos), 0, num_bins - 1).astype(jnp.int32)


def depth_bins_ce(logits: jax.Array, gt: jax.Array, min_depth: float = 0.25,
                  max_depth: float = DEPTH_MAX) -> jax.Array:
  """Depth as classification: cross-entropy against the bin of gt, over valid pixels.

  Args:
    logits: (N,H,W,B) scores over B log-spaced bins (see :func:`depth_bin_centers`).
    gt: (N,H,W,1) or (N,H,W) depth in metres; invalid outside (1e-3, 10].
  """
  gt = gt[..., 0] if gt.ndim == 4 and gt.shape[-1] == 1 else gt
  _check_logits(logits, gt.shape, "depth_bins_ce")
  num_bins = logits.shape[-1]
  gt = gt.astype(logits.dtype)
  valid = depth_valid_mask(gt)
  labels = jnp.where(valid, depth_to_bin(jnp.where(valid, gt, 1.0), num_bins, min_depth,
                                         max_depth), -1)
  return seg_cross_entropy(logits, labels, ignore_label=-1)


def depth_from_bins(logits: jax.Array, centers: jax.Array) -> jax.Array:
  """Soft read-out: (N,H,W,B) logits -> (N,H,W,1) depth = softmax(logits) . centers."""
  if logits.shape[-1] != centers.shape[-1]:
    raise ValueError(f"{logits.shape[-1]} depth logits but {centers.shape[-1]} bin centres.")
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.sum(probs * centers.astype(logits.dtype), axis=-1, keepdims=True)


def normals_cosine(pred: jax.Array, gt: jax.Array) -> jax.Array:
  """Mean over valid pixels (gt != (0,0,0)) of 1 - cos(pred, gt), both normalised."""
  if pred.shape != gt.shape or pred.shape[-1] != 3:
    raise ValueError(f"Normals must both be (N,H,W,3); got {pred.shape} and {gt.shape}.")
  gt = gt.astype(pred.dtype)
  valid = jnp.any(gt != 0, axis=-1)
  cos = jnp.sum(_unit(pred) * _unit(gt), axis=-1)
  return _weighted_mean(1.0 - cos, valid.astype(pred.dtype))


# ----------------------------------------------------------------------------- projection

def kl_projection(student_logits: jax.Array, teacher_logits: jax.Array,
                  temperature: float = 1.0, class_weights: jax.Array | None = None
                  ) -> jax.Array:
  """Mean over all pixels of KL(softmax(Y/T) || softmax(Y_hat/T)) * T^2 (Hinton et al. 2015).

  Equals ``torch.nn.functional.kl_div(log_softmax(Y_hat/T), softmax(Y/T), reduction='sum')``
  * T^2 / (N*H*W). With ``class_weights`` (C,), each pixel's KL is weighted by the weight of
  the teacher's predicted class and the mean is the weighted mean (no labels involved).
  """
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"Student logits {student_logits.shape} and teacher logits "
                     f"{teacher_logits.shape} differ in shape.")
  dtype = student_logits.dtype
  log_p = jax.nn.log_softmax(_sg(teacher_logits).astype(dtype) / temperature, axis=-1)
  log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  if class_weights is None:
    return jnp.mean(kl) * temperature**2
  weights = jnp.asarray(class_weights, dtype)[jnp.argmax(_sg(teacher_logits), axis=-1)]
  return _weighted_mean(kl, weights) * temperature**2


def hard_ce_projection(student_logits: jax.Array, teacher_logits: jax.Array,
                       class_weights: jax.Array | None = None) -> jax.Array:
  """Cross-entropy of the student against the teacher's argmax class, mean over all pixels.

  With ``class_weights`` (C,), each pixel counts with the weight of the teacher's class and
  the mean is the weighted mean sum(w_y * nll) / sum(w_y), as in :func:`seg_cross_entropy`.
  """
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"Student logits {student_logits.shape} and teacher logits "
                     f"{teacher_logits.shape} differ in shape.")
  labels = jnp.argmax(_sg(teacher_logits), axis=-1)
  logp = jax.nn.log_softmax(student_logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  if class_weights is None:
    return jnp.mean(nll)
  class_weights = jnp.asarray(class_weights, student_logits.dtype)
  if class_weights.shape != (student_logits.shape[-1],):
    raise ValueError(f"class_weights must have shape ({student_logits.shape[-1]},), got "
                     f"{class_weights.shape}.")
  return _weighted_mean(nll, class_weights[labels])


def _same_shape(pred, target, name):
  if pred.shape != target.shape:
    raise ValueError(f"{name}: student {pred.shape} and teacher {target.shape} differ.")
  return _sg(target).astype(pred.dtype)


def l1_projection(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean |Y_hat - Y| over all pixels (metres for depth)."""
  target = _same_shape(pred, target, "l1_projection")
  return jnp.mean(jnp.abs(pred - target))


def log_l1_projection(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean |log Y_hat - log Y| over all pixels, both clamped to >= 1e-3 m inside the log."""
  target = _same_shape(pred, target, "log_l1_projection")
  return jnp.mean(jnp.abs(_log_depth(pred) - _log_depth(target)))


def berhu_projection(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Reverse Huber (berHu) of Laina et al. 2016 ("Deeper depth prediction with FCRNs").

  B(x) = |x| if |x| <= c else (x^2 + c^2) / (2c), with c = 0.2 * max|Y_hat - Y| over the whole
  batch, treated as a constant (stop_gradient). Mean over all pixels.
  """
  target = _same_shape(pred, target, "berhu_projection")
  return jnp.mean(_berhu_terms(jnp.abs(pred - target)))


def _berhu_terms(diff: jax.Array) -> jax.Array:
  """Per-pixel berHu of absolute errors ``diff``, c = 0.2 * max(diff) held constant."""
  c = _sg(0.2 * jnp.max(diff))
  c_safe = jnp.where(c > 0, c, jnp.ones_like(c))  # c == 0 only if every diff is 0.
  quad = (diff * diff + c * c) / (2.0 * c_safe)
  return jnp.where(diff <= c, diff, quad)


def cosine_projection(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean over all pixels of 1 - cos(Y_hat, Y) for (N,H,W,3) normals."""
  target = _same_shape(pred, target, "cosine_projection")
  return jnp.mean(1.0 - jnp.sum(_unit(pred) * _unit(target), axis=-1))
