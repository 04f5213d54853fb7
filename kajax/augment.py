"""Per-example augmentation in pure NumPy/PIL: joint scale-crop, flip, colour jitter, normalise.

An example is a dict of arrays of one image: ``image`` uint8 (H,W,3) and, when the source has
them, ``label`` uint8 (H,W) (255 = void), ``depth`` float32 (H,W) in metres (0 = invalid) and
``normals`` float32 (H,W,3) ((0,0,0) = invalid). Every geometric step is applied to all of them
with the same parameters so targets stay aligned with the pixels: the image is resampled
bilinearly, label/depth/normals by nearest neighbour (labels keep their class ids, depth is not
averaged across object borders, normals keep unit length). Colour jitter touches the image only.

Precomputed teacher targets (``config.loss.teacher_targets='precomputed'``,
``kajax.teacher_targets``) travel with the image as float arrays (h,w,C) under keys starting
with ``TEACHER_TARGET_PREFIX``, at their own resolution: they are zoomed and cropped with the
image (nearest neighbour, the same window in relative coordinates) but *not* mirrored, and
colour jitter does not reach them. Whenever such keys are present the example also carries
``flip`` (bool): the training step mirrors the targets with the task's own rule
(``kajax.tasks`` ``mirror_raw``; normals negate x), which the host cannot know.

Randomness comes only from the ``np.random.Generator`` passed in (grain's ``random_map`` seeds
it from the pipeline seed and the element index), so an example's augmentation is reproducible.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import PIL.Image

# ImageNet statistics of RGB in [0, 1] (the VGG16-BN encoder was pretrained with them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R BT.601 luma weights, as used by common colour-jitter implementations.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
TARGET_KEYS = ("label", "depth", "normals")
# Keys of precomputed teacher outputs ("teacher_target_seg", ...; kajax.teacher_targets).
TEACHER_TARGET_PREFIX = "teacher_target_"
DEPTH_SCALE_MODES = ("keep", "divide")


def as_size(value: Any, name: str) -> tuple[int, int] | None:
  """(H, W) from a 2-sequence or None; an error naming config key ``name`` otherwise."""
  if value is None:
    return None
  try:
    h, w = (int(v) for v in value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"input config {name}={value!r} must be (height, width) or None.") from e
  if h <= 0 or w <= 0:
    raise ValueError(f"input config {name}={value!r} must be positive.")
  return h, w


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training augmentation settings (the augmentation fields of the config's ``input`` block).

  Attributes:
    crop_size: (H, W) of the training crops; None = ``image_size`` (or the source size).
    scale_range: (min, max) zoom factor s ~ U(min, max). The image (at ``image_size``) is
      conceptually resized by s and a random ``crop_size`` window cut out of it, so s >= 1
      zooms in. Requires s*image_size >= crop_size for every s in the range.
    flip: random horizontal flip with probability 1/2 (negates the normals' x component).
    color_jitter: (brightness, contrast, saturation) strengths; each factor is drawn from
      U(1 - strength, 1 + strength). 0 disables that part; a single float sets all three.
    depth_scale_mode: 'keep' (default): metric depth is left unchanged by the zoom, which is
      physically right: the same camera sees the same distances. 'divide': depth / s, as in
      the MTAN pipeline, so that depth stays consistent with the apparent object size (a zoom
      by s looks like moving s times closer).
  """
  crop_size: tuple[int, int] | None = None
  scale_range: tuple[float, float] = (1.0, 1.5)
  flip: bool = True
  color_jitter: tuple[float, float, float] = (0.2, 0.2, 0.2)
  depth_scale_mode: str = "keep"

  def __post_init__(self):
    object.__setattr__(self, "crop_size", as_size(self.crop_size, "crop_size"))
    lo, hi = (float(v) for v in self.scale_range)
    if not 0 < lo <= hi:
      raise ValueError(f"input config scale_range={self.scale_range!r} must be (min, max) "
                       "with 0 < min <= max, e.g. (1.0, 1.5).")
    object.__setattr__(self, "scale_range", (lo, hi))
    jitter = self.color_jitter
    jitter = (jitter,) * 3 if isinstance(jitter, (int, float)) else tuple(jitter)
    if len(jitter) != 3 or not all(0 <= float(j) < 1 for j in jitter):
      raise ValueError(f"input config color_jitter={self.color_jitter!r} must be a float or "
                       "(brightness, contrast, saturation), each in [0, 1).")
    object.__setattr__(self, "color_jitter", tuple(float(j) for j in jitter))
    if self.depth_scale_mode not in DEPTH_SCALE_MODES:
      raise ValueError(f"input config depth_scale_mode={self.depth_scale_mode!r} must be one "
                       f"of {DEPTH_SCALE_MODES}.")

  @classmethod
  def from_config(cls, config: Any) -> "AugmentConfig":
    """From an AugmentConfig, a dict/ConfigDict with (a subset of) the fields, or None.

    Keys that are not augmentation fields (e.g. ``num_threads``) are ignored here.
    """
    if config is None:
      return cls()
    if isinstance(config, cls):
      return config
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{n: config[n] for n in names if n in config and config[n] is not None})


def check_example(example: Mapping[str, np.ndarray]) -> tuple[int, int]:
  """Checks keys, dtypes and shapes of a source example; returns its (H, W)."""
  if "image" not in example:
    raise KeyError(f"Data source example has no 'image' key (keys: {sorted(example)}); "
                   "kajax sources must provide 'image' uint8 (H,W,3).")
  image = np.asarray(example["image"])
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"Data source 'image' must be uint8 (H,W,3); got {image.dtype} "
                     f"{image.shape}.")
  hw = image.shape[:2]
  for key, ndim in (("label", 2), ("depth", 2), ("normals", 3)):
    if key in example:
      shape = np.shape(example[key])
      if len(shape) != ndim or shape[:2] != hw or (key == "normals" and shape[-1] != 3):
        raise ValueError(f"Data source '{key}' has shape {shape}, which does not match "
                         f"'image' {image.shape} (expected {hw}{' + (3,)' * (key == 'normals')}).")
  return hw


def check_crop(base_size: tuple[int, int], config: AugmentConfig) -> tuple[int, int]:
  """The crop size for images of ``base_size``; raises if even the smallest zoom is too small."""
  base_h, base_w = base_size
  crop_h, crop_w = config.crop_size or (base_h, base_w)
  lo = config.scale_range[0]
  if lo * base_h < crop_h - 1e-6 or lo * base_w < crop_w - 1e-6:
    raise ValueError(
        f"input config crop_size={(crop_h, crop_w)} is larger than image_size "
        f"{(base_h, base_w)} zoomed by scale_range min {lo}; raise scale_range[0] to at least "
        f"{max(crop_h / base_h, crop_w / base_w):.4g} or use a smaller crop_size.")
  return crop_h, crop_w


def _nearest_indices(start: float, stop: float, n: int, size: int) -> np.ndarray:
  """Source pixel of each of ``n`` output pixels covering [start, stop) (pixel-edge coords)."""
  centres = start + (np.arange(n, dtype=np.float64) + 0.5) * ((stop - start) / n)
  return np.clip(np.floor(centres).astype(np.int64), 0, size - 1)


def resample(example: Mapping[str, np.ndarray], box: tuple[float, float, float, float],
             out_size: tuple[int, int], flip: bool = False) -> dict[str, np.ndarray]:
  """Resamples the window ``box`` of every array to ``out_size``, optionally mirrored.

  Args:
    example: dict with ``image`` uint8 (H,W,3) and optional label/depth/normals.
    box: (top, left, bottom, right) in source pixel-edge coordinates (floats allowed).
    out_size: output (H, W).
    flip: mirror left-right; the normals' x component (channel 0, along image columns)
      changes sign, since mirroring the image mirrors that axis.

  Returns:
    Same keys, new arrays; ``image`` bilinear (PIL, antialiased when shrinking), the rest
    nearest neighbour at the same sample positions.
  """
  top, left, bottom, right = box
  h, w = out_size
  src_h, src_w = np.shape(example["image"])[:2]
  identity = (h, w) == (src_h, src_w) and tuple(box) == (0, 0, src_h, src_w)
  image = PIL.Image.fromarray(np.asarray(example["image"]))
  if not identity:
    image = image.resize((w, h), PIL.Image.BILINEAR, box=(left, top, right, bottom))
  if flip:
    image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
  out = {"image": np.asarray(image)}
  rows = _nearest_indices(top, bottom, h, src_h)
  cols = _nearest_indices(left, right, w, src_w)
  if flip:
    cols = cols[::-1]
  for key in TARGET_KEYS:
    if key in example:
      # Gathering with index arrays copies, so the in-place sign change below is safe.
      out[key] = np.asarray(example[key]).take(rows, axis=0).take(cols, axis=1)
  if flip and "normals" in out:
    out["normals"][..., 0] *= -1
  for key in _teacher_target_keys(example):
    # The same window at the map's own resolution; left unmirrored (module docstring).
    tmap = np.asarray(example[key])
    fy, fx = tmap.shape[0] / src_h, tmap.shape[1] / src_w
    out[key] = tmap.take(_nearest_indices(top * fy, bottom * fy, h, tmap.shape[0]), axis=0
                         ).take(_nearest_indices(left * fx, right * fx, w, tmap.shape[1]),
                                axis=1)
  if _teacher_target_keys(example):
    out["flip"] = np.bool_(flip)
  return out


def _teacher_target_keys(example: Mapping[str, Any]) -> list[str]:
  return [k for k in example if k.startswith(TEACHER_TARGET_PREFIX)]


def color_jitter(image: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
  """Brightness, contrast, saturation (in that order) on an RGB image in [0, 255].

  Args:
    image: (H,W,3) in [0, 255], any dtype.
    factors: (brightness, contrast, saturation) multipliers; 1 leaves the image unchanged.

  Returns:
    float32 (H,W,3), clipped to [0, 255] once at the end.
  """
  b, c, s = (float(f) for f in factors)
  x = image.astype(np.float32)
  gray = x @ _LUMA
  # Sequentially: x1 = b*x; x2 = c*(x1 - m) + m with m = mean gray of x1 = b*mean(gray);
  # x3 = s*x2 + (1-s)*gray(x2), and gray(x2) = b*c*gray + (1-c)*m since gray is linear.
  # Expanded into one affine map of (x, gray) to make a single pass over the pixels.
  m = b * float(gray.mean())
  x *= np.float32(s * b * c)
  x += (np.float32((1 - s) * b * c) * gray + np.float32((1 - c) * m))[..., None]
  return np.clip(x, 0, 255, out=x)


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
  """RGB in [0, 255] -> float32 ``(x/255 - mean) / std``."""
  scale = 1.0 / (255.0 * np.asarray(std, np.float32))
  return (np.asarray(image, np.float32) - 255.0 * np.asarray(mean, np.float32)) * scale


def _finish(example: dict[str, np.ndarray], mean, std) -> dict[str, np.ndarray]:
  """Normalised float32 image, int32 label, contiguous float32 depth/normals."""
  out = {"image": normalize(example["image"], mean, std)}
  if "label" in example:
    out["label"] = np.ascontiguousarray(example["label"], np.int32)
  for key in ("depth", "normals", *_teacher_target_keys(example)):
    if key in example:
      out[key] = np.ascontiguousarray(example[key], np.float32)
  if "flip" in example:
    out["flip"] = np.bool_(example["flip"])
  return out


def _select(example: Mapping[str, Any], images_only: bool) -> dict[str, np.ndarray]:
  keys = ("image",) if images_only else ("image",) + TARGET_KEYS
  # Teacher targets are not labels: an images-only (student) pipeline keeps them.
  keys += tuple(_teacher_target_keys(example))
  return {k: np.asarray(example[k]) for k in keys if k in example}


def train_transform(example: Mapping[str, Any], rng: np.random.Generator, *,
                    image_size: tuple[int, int] | None, config: AugmentConfig,
                    images_only: bool = False, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD) -> dict[str, np.ndarray]:
  """Augments one example for training (scale-crop, flip, jitter, normalise).

  Args:
    example: source dict (see module docstring); keys other than image/label/depth/normals
      are dropped.
    rng: per-example generator (from grain's ``random_map``).
    image_size: base (H, W) the source is resized to before zooming; None = source size.
    config: augmentation settings.
    images_only: keep only ``image`` (amalgamation never sees labels).
    mean, std: normalisation statistics of RGB in [0, 1].

  Returns:
    ``image`` float32 (h,w,3) normalised, and ``label`` int32 / ``depth`` float32 /
    ``normals`` float32 when present, with (h, w) = crop size.
  """
  src_h, src_w = check_example(example)
  example = _select(example, images_only)
  base_h, base_w = image_size or (src_h, src_w)
  crop_h, crop_w = check_crop((base_h, base_w), config)
  s = rng.uniform(*config.scale_range)
  # Crop offset inside the zoomed image of size s*base, then mapped to source pixels.
  top = rng.uniform(0, s * base_h - crop_h) if s * base_h > crop_h else 0.0
  left = rng.uniform(0, s * base_w - crop_w) if s * base_w > crop_w else 0.0
  fy, fx = src_h / (s * base_h), src_w / (s * base_w)
  box = (top * fy, left * fx, (top + crop_h) * fy, (left + crop_w) * fx)
  flip = bool(rng.random() < 0.5) and config.flip
  out = resample(example, box, (crop_h, crop_w), flip=flip)
  if config.depth_scale_mode == "divide" and "depth" in out:
    out["depth"] = out["depth"] / np.float32(s)  # 0 (invalid) stays 0.
  # Drawn even when disabled so toggling one option does not change the other draws.
  factors = [rng.uniform(1 - k, 1 + k) for k in config.color_jitter]
  if any(config.color_jitter):
    out["image"] = color_jitter(out["image"], factors)
  return _finish(out, mean, std)


def eval_transform(example: Mapping[str, Any], *, image_size: tuple[int, int] | None,
                   images_only: bool = False, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD) -> dict[str, np.ndarray]:
  """Evaluation preprocessing: optional resize to ``image_size`` (nearest for targets), normalise.

  Args:
    example: source dict.
    image_size: output (H, W); None keeps the source resolution.
    images_only: keep only ``image``.
    mean, std: normalisation statistics of RGB in [0, 1].
  """
  src_h, src_w = check_example(example)
  example = _select(example, images_only)
  h, w = image_size or (src_h, src_w)
  return _finish(resample(example, (0, 0, src_h, src_w), (h, w)), mean, std)
