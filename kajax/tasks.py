"""Dense tasks as plug-ins: everything kajax needs to know about a task, registered in one place.

A task is one :class:`DenseTask`: its ground truth, the readout of a network's raw output, its
supervised losses (teacher training) and projection losses (amalgamation), its metrics and how
to draw it. Teacher training, amalgamation, evaluation, results and ``predict`` look tasks up
here and never name one. kajax registers three:

* ``seg``: C logits per pixel (scene parsing, 13 NYUv2 classes by default);
* ``depth``: 1 channel in metres, or ``num_bins`` logits read out as a soft-weighted sum of
  log-spaced bin centres when the teacher was trained as a classifier (``extra['depth_bins']``);
* ``normals``: 3 channels normalised per pixel to unit length (camera coordinates).

A new task is one ``register(DenseTask(...))`` call (in a config file, a test, or any module
imported before the run); a task's name is then valid in ``--config.tasks``, in teacher
directories and in configs' ``loss.kinds``.

Signatures of the parts (``raw`` = network output (N,H,W,C); ``extra`` = the teacher's readout
settings, a dict stored with the teacher):

* ``target``: a dataset feature name, or ``fn(batch) -> target`` (e.g. derived from labels);
* ``readout(raw, extra) -> prediction``; ``answer(prediction) -> per-pixel answer``;
* ``supervised_losses[kind](raw, target, extra, **options) -> scalar``;
* ``projection_losses[kind](student_raw, teacher_raw, extra, **options) -> scalar``;
* ``init_sums(num_outputs) -> sums``, ``update_sums(sums, prediction, target, mask) -> sums``
  (pure, jit-able; mask (N,) excludes padded images), ``finalize(sums) -> {metric: float}``;
* ``colorize(answer_or_target, value_range) -> uint8 (H,W,3)`` (``value_range``: the upper end
  of the colour scale for tasks that need one, e.g. metres; None = the task's default);
* optional ``files(answer, value_range) -> {suffix: uint8/uint16 image}`` for ``predict``;
  ``resize(answer, (H, W)) -> answer`` back to a photo's size (default: nearest neighbour
  for class ids, bilinear otherwise); ``teacher_extra(kind, teacher_config) -> extra`` for
  readout settings of a loss kind; ``projection_weights[kind](teacher_raw, extra, **options)
  -> (N,H,W)`` for a projection loss that is a *weighted* pixel mean (its weights; kinds not
  listed weigh every pixel the same), so that the branch search and ``pmap`` can pool it
  exactly over a split or over devices; ``mirror(raw) -> raw``: a raw output (N, H, W, C) of
  left-right mirrored images turned into one of the images themselves (default: flip the
  width axis; normals also negate x), used to average teachers over a mirrored view.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kajax import losses, metrics, visualize

_REQUIRED = {
    "target": "a dataset feature name or fn(batch) -> target",
    "readout": "fn(raw, extra) -> prediction",
    "supervised_losses": "a dict kind -> fn(raw, target, extra, **options) -> scalar",
    "projection_losses": "a dict kind -> fn(student_raw, teacher_raw, extra, **options) -> "
                         "scalar",
    "init_sums": "fn(num_outputs) -> dict of zero metric sums",
    "update_sums": "fn(sums, prediction, target, mask) -> sums",
    "finalize": "fn(sums) -> {metric name: float}",
    "table_metrics": "a tuple of metric names shown in results tables",
    "colorize": "fn(answer or target, value_range) -> uint8 (H, W, 3) image",
}


def _identity(x):
  return x


@dataclasses.dataclass(frozen=True)
class DenseTask:
  """One dense prediction task (see the module docstring for each part's signature).

  Attributes:
    name: used in configs, parameter names, metrics and file names (no '/').
    num_outputs: default output channels; None when a config gives them (classes).
    class_logits: outputs are class scores whose argmax is the answer; parsing-style options
      (teacher class weighting, temperature) apply to its losses.
  """
  name: str
  target: Any = None
  readout: Callable | None = None
  supervised_losses: Mapping[str, Callable] | None = None
  projection_losses: Mapping[str, Callable] | None = None
  init_sums: Callable | None = None
  update_sums: Callable | None = None
  finalize: Callable | None = None
  table_metrics: tuple[str, ...] | None = None
  colorize: Callable | None = None
  answer: Callable = _identity
  files: Callable | None = None
  resize: Callable | None = None
  teacher_extra: Callable | None = None
  mirror: Callable | None = None
  projection_weights: Mapping[str, Callable] | None = None
  num_outputs: int | None = None
  class_logits: bool = False

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name.isidentifier():
      raise ValueError(f"DenseTask name {self.name!r} must be a Python identifier (it is "
                       "used in config keys, parameter names and file names).")
    missing = [f"{k} ({what})" for k, what in _REQUIRED.items() if getattr(self, k) is None]
    if missing:
      raise ValueError(f"DenseTask {self.name!r} is missing parts; give " +
                       "; ".join(missing) + ".")
    problems = []
    if not (isinstance(self.target, str) or callable(self.target)):
      problems.append(f"target={self.target!r} must be {_REQUIRED['target']}")
    for part in ("readout", "init_sums", "update_sums", "finalize", "colorize", "answer"):
      if not callable(getattr(self, part)):
        problems.append(f"{part} must be callable ({_REQUIRED.get(part, 'fn')})")
    for part in ("files", "resize", "teacher_extra", "mirror"):
      if getattr(self, part) is not None and not callable(getattr(self, part)):
        problems.append(f"{part} must be callable or None")
    for part in ("supervised_losses", "projection_losses"):
      table = getattr(self, part)
      if not isinstance(table, Mapping) or not table or not all(
          isinstance(k, str) and callable(v) for k, v in table.items()):
        problems.append(f"{part} must be a non-empty {_REQUIRED[part]}")
    weights = self.projection_weights
    if weights is not None and not (isinstance(weights, Mapping) and all(
        k in self.projection_losses and callable(v) for k, v in weights.items())):
      problems.append("projection_weights must be None or a dict from projection loss kinds "
                      "to fn(teacher_raw, extra, **options) -> (N,H,W) weights")
    if (not isinstance(self.table_metrics, (tuple, list)) or not self.table_metrics
        or not all(isinstance(m, str) for m in self.table_metrics)):
      problems.append(f"table_metrics must be {_REQUIRED['table_metrics']}")
    if problems:
      raise ValueError(f"DenseTask {self.name!r}: " + "; ".join(problems) + ".")
    object.__setattr__(self, "table_metrics", tuple(self.table_metrics))

  def mirror_raw(self, raw: jax.Array) -> jax.Array:
    """A raw output (N, H, W, C) of mirrored images, mirrored back (see ``mirror``)."""
    if self.mirror is not None:
      return self.mirror(raw)
    return raw[:, :, ::-1]

  def resize_answer(self, answer: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A per-pixel answer resized to (H, W) (``predict`` restores photo sizes)."""
    if self.resize is not None:
      return self.resize(answer, hw)
    return visualize.resize_map(answer, hw, nearest=self.class_logits)

  def target_of(self, batch: Mapping[str, Any]) -> Any:
    """The ground truth of this task in a (labelled) batch."""
    if callable(self.target):
      return self.target(batch)
    if self.target not in batch:
      raise KeyError(f"Task {self.name!r} is evaluated against the feature {self.target!r}, "
                     f"which this data does not have (features: {sorted(batch)}). Use a "
                     "dataset that provides it.")
    return batch[self.target]


_REGISTRY: dict[str, DenseTask] = {}


def register(task: DenseTask, replace: bool = False) -> DenseTask:
  """Makes ``task`` known to every part of kajax; returns it."""
  if not isinstance(task, DenseTask):
    raise TypeError(f"register() takes a kajax.tasks.DenseTask, got {type(task).__name__}.")
  if task.name in _REGISTRY and not replace:
    raise ValueError(f"A task named {task.name!r} is already registered; choose another name "
                     "or pass replace=True.")
  _REGISTRY[task.name] = task
  return task


def unregister(name: str) -> None:
  """Removes a registered task (tests use it to clean up)."""
  _REGISTRY.pop(name, None)


def registered() -> tuple[str, ...]:
  """Names of the registered tasks, in registration order."""
  return tuple(_REGISTRY)


def get(name: str, where: str = "task") -> DenseTask:
  """The registered task ``name``; a ValueError naming ``where`` and the choices otherwise."""
  if name not in _REGISTRY:
    raise ValueError(f"{where}={name!r} is not a task kajax knows; registered tasks are "
                     f"{registered()} (add one with kajax.tasks.register).")
  return _REGISTRY[name]


def check_task(name: str, where: str = "task") -> str:
  get(name, where)
  return name


def readout(task: str, outputs: jax.Array, extra: Mapping[str, Any] | None = None
            ) -> jax.Array:
  """Network output (N,H,W,C) -> the task's prediction (``DenseTask.readout``)."""
  return get(task).readout(outputs, extra or {})


def _bind(table: Mapping[str, Callable], what: str, task: str, kind: str,
          config_key: str | None, options: Mapping[str, Any]) -> Callable:
  key = config_key or f"{what} loss kind of {task!r}"
  if kind not in table:
    raise ValueError(f"{key}={kind!r} is not a {what} loss for task {task!r}; allowed values: "
                     f"{sorted(table)}.")
  fn = table[kind]
  try:  # Fail now, naming the option, rather than at the first traced step.
    inspect.signature(fn).bind_partial(None, None, None, **options)
  except TypeError as e:
    raise ValueError(f"{key}={kind!r} does not accept options {sorted(options)}: {e}"
                     ) from None
  return fn


@dataclasses.dataclass(frozen=True)
class ProjectionLoss:
  """A bound projection loss ℓ_t: ``loss(student_raw, teacher_raw) -> scalar``, a (weighted)
  mean over the batch's pixels; ``weights(teacher_raw) -> (N,H,W)`` are the mean's pixel
  weights, or None when every pixel counts the same."""
  loss: Callable[[jax.Array, jax.Array], jax.Array]
  weights: Callable[[jax.Array], jax.Array] | None = None

  def __call__(self, student_raw: jax.Array, teacher_raw: jax.Array) -> jax.Array:
    return self.loss(student_raw, teacher_raw)


def projection_fn(task: str, kind: str, extra: Mapping[str, Any] | None = None, *,
                  config_key: str | None = None, **options) -> ProjectionLoss:
  """ℓ_t as ``fn(student_raw, teacher_raw) -> scalar`` (mean over all pixels of the batch).

  Args:
    task: a registered task name.
    kind: a key of the task's ``projection_losses`` (from the config).
    extra: the teacher's readout settings.
    config_key: config entry named in error messages.
    **options: bound to the loss (e.g. ``temperature``); checked against its signature now.
  """
  fn = _bind(get(task).projection_losses, "projection", task, kind, config_key, options)
  extra = dict(extra or {})
  weigh = (get(task).projection_weights or {}).get(kind)
  weights = None
  if weigh is not None:
    weights = lambda teacher: weigh(teacher, extra, **options)  # noqa: E731
  return ProjectionLoss(lambda student, teacher: fn(student, teacher, extra, **options),
                        weights)


def supervised_fn(task: str, kind: str, extra: Mapping[str, Any] | None = None, *,
                  config_key: str | None = None, **options) -> Callable:
  """The supervised loss ``fn(raw, target) -> scalar`` of a task (teacher training)."""
  fn = _bind(get(task).supervised_losses, "supervised", task, kind, config_key, options)
  extra = dict(extra or {})
  return lambda raw, target: fn(raw, target, extra, **options)


def accepts_option(task: str, kind: str, option: str, projection: bool = True) -> bool:
  """Whether loss ``kind`` of ``task`` takes keyword ``option`` (e.g. 'class_weights')."""
  t = get(task)
  fn = (t.projection_losses if projection else t.supervised_losses).get(kind)
  return fn is not None and option in inspect.signature(fn).parameters


# ----------------------------------------------------------------------------- built-ins

def _seg_files(ids: np.ndarray, value_range=None) -> dict[str, np.ndarray]:
  del value_range
  # Mode 'L' (8-bit) whenever the ids fit; 16-bit otherwise.
  dtype = np.uint8 if ids.max(initial=0) <= np.iinfo(np.uint8).max else np.uint16
  return {"seg": visualize.colorize_labels(ids), "seg_labels": ids.astype(dtype)}


def _depth_readout(outputs: jax.Array, extra: Mapping[str, Any]) -> jax.Array:
  bins = extra.get("depth_bins")
  if bins:
    centers = losses.depth_bin_centers(outputs.shape[-1], bins["min_depth"],
                                       bins["max_depth"], outputs.dtype)
    return losses.depth_from_bins(outputs, centers)[..., 0]
  return outputs[..., 0]


def _depth_extra(kind: str, config: Any) -> dict[str, Any]:
  if kind == "bins":
    return {"depth_bins": {"min_depth": config.depth_bins.min_depth,
                           "max_depth": config.depth_bins.max_depth}}
  return {}


def _on_depth(fn: Callable) -> Callable:
  """A depth projection loss compares metres (readout), so depth-bin teachers work too."""
  return lambda s, t, extra: fn(_depth_readout(s, extra), _depth_readout(t, extra))


def _depth_colorize(depth: np.ndarray, value_range: float | None = None) -> np.ndarray:
  return visualize.colorize_depth(depth, value_range or 10.0)


def _normals_readout(outputs: jax.Array, extra: Mapping[str, Any]) -> jax.Array:
  del extra
  norm = jnp.sqrt(jnp.sum(jnp.square(outputs), axis=-1, keepdims=True))
  return outputs / jnp.maximum(norm, 1e-6)


def _metric_parts(name: str) -> dict[str, Callable]:
  return {
      "init_sums": lambda num_outputs: metrics.init_sums(name, num_classes=num_outputs),
      "update_sums": lambda sums, pred, target, mask: metrics.update_sums(
          name, sums, pred, target, mask=mask),
      "finalize": functools.partial(metrics.finalize, name),
  }


def _teacher_class_weight(teacher: jax.Array, extra: Mapping[str, Any], class_weights=None,
                          **unused) -> jax.Array:
  del extra, unused
  if class_weights is None:
    return jnp.ones(teacher.shape[:3], jnp.float32)
  return jnp.asarray(class_weights, jnp.float32)[jnp.argmax(teacher, axis=-1)]


register(DenseTask(
    name="seg", target="label", class_logits=True,
    readout=lambda raw, extra: raw,
    answer=lambda logits: jnp.argmax(logits, axis=-1),
    supervised_losses={
        "ce": lambda raw, target, extra, class_weights=None, ignore_label=255:
            losses.seg_cross_entropy(raw, target, ignore_label, class_weights)},
    projection_losses={
        "kl": lambda s, t, extra, temperature=1.0, class_weights=None:
            losses.kl_projection(s, t, temperature, class_weights),
        "hard_ce": lambda s, t, extra, class_weights=None:
            losses.hard_ce_projection(s, t, class_weights)},
    # Both losses weigh a pixel by the class weight of the teacher's class (if any).
    projection_weights=dict.fromkeys(("kl", "hard_ce"), _teacher_class_weight),
    **_metric_parts("seg"), table_metrics=("miou", "pixel_acc", "mean_acc"),
    colorize=lambda ids, value_range=None: visualize.colorize_labels(ids),
    files=_seg_files))

register(DenseTask(
    name="depth", target="depth", num_outputs=1, readout=_depth_readout,
    supervised_losses={
        "l1": lambda raw, target, extra: losses.depth_l1(raw[..., 0], target),
        "berhu": lambda raw, target, extra: losses.depth_berhu(raw[..., 0], target),
        "silog": lambda raw, target, extra, lam=0.85: losses.depth_silog(raw[..., 0], target,
                                                                         lam),
        "bins": lambda raw, target, extra: losses.depth_bins_ce(raw, target,
                                                                **extra["depth_bins"])},
    projection_losses={"l1": _on_depth(losses.l1_projection),
                       "log_l1": _on_depth(losses.log_l1_projection),
                       "berhu": _on_depth(losses.berhu_projection)},
    **_metric_parts("depth"), table_metrics=("rmse", "abs_rel", "delta1"),
    colorize=_depth_colorize, teacher_extra=_depth_extra,
    files=lambda depth, value_range=None: {
        "depth": visualize.depth_to_png16(depth),
        "depth_preview": _depth_colorize(depth, value_range)}))

def _resize_normals(normals: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  value = visualize.resize_map(normals, hw, nearest=False)
  # Interpolated unit vectors are shorter than 1.
  return value / np.maximum(np.linalg.norm(value, axis=-1, keepdims=True), 1e-6)


register(DenseTask(
    name="normals", target="normals", num_outputs=3, readout=_normals_readout,
    resize=_resize_normals,
    # Mirroring the image mirrors the camera's x axis: the normal's x component changes sign.
    mirror=lambda raw: raw[:, :, ::-1] * jnp.asarray([-1.0, 1.0, 1.0], raw.dtype),
    supervised_losses={"cosine": lambda raw, target, extra: losses.normals_cosine(raw, target)},
    projection_losses={"cosine": lambda s, t, extra: losses.cosine_projection(s, t)},
    **_metric_parts("normals"),
    table_metrics=("angle_mean", "angle_median", "within_11_25", "within_22_5", "within_30"),
    colorize=lambda normals, value_range=None: visualize.colorize_normals(normals)))

# The built-in tasks (kept for code that lists them; plug-ins are in registered()).
TASKS = registered()
