"""Runs an exported (pruned) student on a folder of images and writes its predictions as PNGs.

  python -m kajax.predict --student_dir=WORKDIR/student --input_dir=PHOTOS --output_dir=OUT \\
      [--image_size=240x320] [--batch_size=8]

Every .png/.jpg/.jpeg/.bmp file directly in ``--input_dir`` (sorted by name; hidden files
skipped) is converted to RGB, resized bilinearly to ``--image_size`` (default: its own size)
and normalised with ImageNet statistics exactly like the evaluation pipeline
(``kajax.augment.eval_transform``). For an image ``NAME.ext`` and the tasks the student has:

  * seg:     ``NAME_seg.png`` (colourised class map, ``kajax.visualize.PALETTE``) and
             ``NAME_seg_labels.png`` (class ids as 8-bit grey; 16-bit for > 256 classes);
  * depth:   ``NAME_depth.png`` (16-bit grey, depth in millimetres: round(metres * 1000),
             clipped to 0..65535, i.e. up to 65.535 m) and ``NAME_depth_preview.png``
             (colour map, 0..``--preview_max_depth`` metres);
  * normals: ``NAME_normals.png`` (RGB = (n + 1) / 2 of the unit normal, camera coordinates).

Resolution: predictions are written at the network's resolution, which is the resolution of
the image fed to it (``--image_size`` if given, else the image's own size: SegNet's unpooling
restores every pooled size). They are *not* resized back to the original image size; resize
them yourself (nearest neighbour for labels) if you need that.

Images of equal network size are batched together; a partial batch is padded up to a power of
two (at most ``--batch_size``), so each image size compiles only a few programs. Existing files
in ``--output_dir`` with the same names are replaced; input files are never written
(``--output_dir`` must differ from ``--input_dir``).

Library use: :func:`predict_images` (in-memory uint8 images -> per-task predictions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import tqdm

from kajax import augment, export, tasks, visualize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# Five 2x2 poolings need at least 32 pixels per side (kajax.segnet).
MIN_SIZE = 32
# The 16-bit depth PNG stores millimetres (the usual convention of depth cameras and NYUv2).
DEPTH_PNG_SCALE = 1000.0
DEFAULT_BATCH_SIZE = 8


# --- Library: in-memory prediction -------------------------------------------------------------

def predictable_tasks(info: Mapping[str, Any]) -> tuple[str, ...]:
  """The student's tasks that ``kajax.tasks.readout`` knows (seg, depth, normals)."""
  return tuple(t for t in info["tasks"] if t in tasks.TASKS)


def _forward(module, readouts, variables, images):
  """Student forward pass (inference mode) and per-task readout.

  ``readouts`` is a hashable tuple of (task, JSON of its readout extras) so it can be a static
  argument of jit; seg is reduced to class ids on the device (a C-times smaller transfer).
  """
  outputs, _ = module.apply(variables, images, train=False)
  preds = {}
  for task, extra_json in readouts:
    pred = tasks.readout(task, outputs[task], json.loads(extra_json))
    preds[task] = jnp.argmax(pred, axis=-1).astype(jnp.int32) if task == "seg" else pred
  return preds


# Module-level so every predict_images call reuses the compiled programs (the module is a
# hashable frozen dataclass; a new jit per call would recompile for every batch).
_forward_jit = jax.jit(_forward, static_argnums=(0, 1))


def _check_image(image: Any, index: int) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"images[{index}] must be a uint8 RGB array (H, W, 3); got "
                     f"{image.dtype} {image.shape}. Convert it, e.g. with "
                     "np.asarray(PIL.Image.open(path).convert('RGB')).")
  return image


def _padded_size(n: int, batch_size: int) -> int:
  """Smallest power of two >= n, capped at batch_size: few compiled shapes, little waste."""
  size = 1
  while size < n:
    size *= 2
  return min(size, batch_size)


def predict_images(module: Any, variables: Any, info: Mapping[str, Any],
                   images: Sequence[np.ndarray], *,
                   image_size: tuple[int, int] | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, np.ndarray]]:
  """Runs the student on uint8 RGB images.

  Args:
    module, variables, info: as returned by ``kajax.export.load_student``.
    images: uint8 arrays (H, W, 3), RGB; sizes may differ.
    image_size: (H, W) every image is resized to (bilinear, as in evaluation); None keeps
      each image's size. The network size must be at least 32x32.
    batch_size: images per forward pass; images of equal network size are batched together.

  Returns:
    One dict per image, in order, with an entry per task of :func:`predictable_tasks`, at the
    network's resolution (h, w): ``seg`` int32 class ids (h, w) (argmax of the logits),
    ``depth`` float32 metres (h, w), ``normals`` float32 unit vectors (h, w, 3).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be at least 1.")
  task_names = predictable_tasks(info)
  if not task_names:
    raise ValueError(f"The student's tasks {info['tasks']} include none of {tasks.TASKS}; "
                     "kajax.predict cannot read its outputs.")
  extras = info.get("extras", {})
  readouts = tuple((t, json.dumps(extras.get(t, {}), sort_keys=True)) for t in task_names)
  groups: dict[tuple[int, int], list[int]] = {}
  for i, image in enumerate(images):
    h, w = image_size or _check_image(image, i).shape[:2]
    if h < MIN_SIZE or w < MIN_SIZE:
      raise ValueError(f"images[{i}] would enter the network at {h}x{w}; SegNet needs at "
                       f"least {MIN_SIZE}x{MIN_SIZE}. Pass a larger image_size.")
    groups.setdefault((h, w), []).append(i)
  results: list[dict[str, np.ndarray] | None] = [None] * len(images)
  for size, indices in groups.items():
    for start in range(0, len(indices), batch_size):
      chunk = indices[start:start + batch_size]
      batch = np.zeros((_padded_size(len(chunk), batch_size),) + size + (3,), np.float32)
      for row, i in enumerate(chunk):
        # The evaluation pipeline's own resize + ImageNet normalisation.
        batch[row] = augment.eval_transform({"image": _check_image(images[i], i)},
                                            image_size=size, images_only=True)["image"]
      preds = jax.device_get(_forward_jit(module, readouts, variables, batch))
      for row, i in enumerate(chunk):
        results[i] = {t: np.asarray(p[row]) for t, p in preds.items()}
  return results


# --- Files -------------------------------------------------------------------------------------

def list_images(input_dir: str) -> list[str]:
  """Sorted paths of the image files directly in ``input_dir`` (hidden files skipped)."""
  if not os.path.isdir(input_dir):
    what = "is not a directory" if os.path.exists(input_dir) else "does not exist"
    raise FileNotFoundError(f"--input_dir {input_dir} {what}; point it at a folder of "
                            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images.")
  names = sorted(n for n in os.listdir(input_dir)
                 if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
                 and os.path.isfile(os.path.join(input_dir, n)))
  if not names:
    raise FileNotFoundError(f"--input_dir {input_dir} holds no image files (looked for "
                            f"{', '.join(IMAGE_EXTENSIONS)}, case-insensitive).")
  stems: dict[str, str] = {}
  for n in names:
    stem = os.path.splitext(n)[0]
    if stem in stems:
      raise ValueError(f"--input_dir {input_dir}: {stems[stem]} and {n} would write the same "
                       f"outputs ({stem}_*.png); rename one of them.")
    stems[stem] = n
  return [os.path.join(input_dir, n) for n in names]


def image_size_of(path: str) -> tuple[int, int]:
  """(H, W) from the file header, with an error naming an unreadable file."""
  try:
    with PIL.Image.open(path) as image:
      return image.height, image.width
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f"Cannot read image file {path}: {e}. Remove or replace it.") from e


def read_image(path: str) -> np.ndarray:
  """uint8 RGB (H, W, 3) of an image file (grey, palette and RGBA files are converted)."""
  try:
    with PIL.Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f"Cannot read image file {path}: {e}. Remove or replace it.") from e


def depth_to_png16(depth_m: np.ndarray) -> np.ndarray:
  """Metres -> uint16 millimetres, rounded and clipped to 0..65535 (NaN -> 0)."""
  mm = np.rint(np.nan_to_num(np.asarray(depth_m, np.float64), nan=0.0) * DEPTH_PNG_SCALE)
  return np.clip(mm, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def write_predictions(output_dir: str, name: str, prediction: Mapping[str, np.ndarray],
                      preview_max_depth: float = 10.0) -> list[str]:
  """Writes the PNGs of one image's prediction (see the module docstring); returns paths."""
  images = {}
  if "seg" in prediction:
    labels = prediction["seg"]
    images[f"{name}_seg.png"] = visualize.colorize_labels(labels)
    # Mode 'L' (8-bit) whenever the ids fit; 'I;16' otherwise.
    dtype = np.uint8 if labels.max(initial=0) <= np.iinfo(np.uint8).max else np.uint16
    images[f"{name}_seg_labels.png"] = labels.astype(dtype)
  if "depth" in prediction:
    images[f"{name}_depth.png"] = depth_to_png16(prediction["depth"])
    images[f"{name}_depth_preview.png"] = visualize.colorize_depth(prediction["depth"],
                                                                    preview_max_depth)
  if "normals" in prediction:
    images[f"{name}_normals.png"] = visualize.colorize_normals(prediction["normals"])
  paths = []
  for file_name, array in images.items():
    path = os.path.join(output_dir, file_name)
    try:
      visualize.save_png(path, array)
    except OSError as e:
      raise OSError(f"Cannot write {path}: {e}. Check --output_dir.") from e
    paths.append(path)
  return paths


def prepare_output_dir(output_dir: str, input_dir: str) -> str:
  """Creates ``output_dir`` and checks it is writable and is not ``input_dir``."""
  if os.path.realpath(output_dir) == os.path.realpath(input_dir):
    raise ValueError(f"--output_dir {output_dir} is the --input_dir; choose another folder so "
                     "the input images are never overwritten.")
  try:
    os.makedirs(output_dir, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".kajax-write-test-", dir=output_dir)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise OSError(f"--output_dir {output_dir} is not a writable directory ({e}); choose "
                  "another folder.") from e
  return output_dir


# --- CLI ---------------------------------------------------------------------------------------

def parse_image_size(text: str) -> tuple[int, int]:
  """'240x320' -> (240, 320); argparse type with an error naming the flag."""
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--image_size={text!r} must look like HxW, e.g. "
                                      "240x320.") from None
  if h < MIN_SIZE or w < MIN_SIZE:
    raise argparse.ArgumentTypeError(f"--image_size={text!r}: SegNet needs at least "
                                     f"{MIN_SIZE}x{MIN_SIZE}.")
  return h, w


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m kajax.predict",
      description="Run an exported kajax student on a folder of images; write PNGs.")
  parser.add_argument("--student_dir", required=True,
                      help="exported student (WORKDIR/student of an amalgamation run)")
  parser.add_argument("--input_dir", required=True, help="folder of png/jpg/jpeg/bmp images")
  parser.add_argument("--output_dir", required=True, help="folder for the predictions")
  parser.add_argument("--image_size", type=parse_image_size, default=None,
                      help="HxW network input size (default: each image's own size)")
  parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                      help="images per forward pass")
  parser.add_argument("--preview_max_depth", type=float, default=10.0,
                      help="metres mapped to the brightest colour of the depth preview")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
  if not args.preview_max_depth > 0:
    parser.error(f"--preview_max_depth must be > 0, got {args.preview_max_depth}")
  return args


def _run(args: argparse.Namespace) -> int:
  paths = list_images(args.input_dir)
  output_dir = prepare_output_dir(args.output_dir, args.input_dir)
  # Headers only: fail on an unreadable file before the (slow) model load and before writing.
  sizes = [args.image_size or image_size_of(p) for p in paths]
  for path, (h, w) in zip(paths, sizes):
    if h < MIN_SIZE or w < MIN_SIZE:
      raise ValueError(f"{path} is {h}x{w}; SegNet needs at least {MIN_SIZE}x{MIN_SIZE}. "
                       "Pass --image_size=HxW to resize the images.")
  module, variables, info = export.load_student(args.student_dir)
  task_names = predictable_tasks(info)
  skipped = [t for t in info["tasks"] if t not in task_names]
  if skipped:
    print(f"note: no image output for student tasks {skipped} (predict writes "
          f"{', '.join(tasks.TASKS)}).", file=sys.stderr)
  variables = jax.device_put(variables)  # Once, not per batch.
  groups: dict[tuple[int, int], list[int]] = {}
  for i, size in enumerate(sizes):
    groups.setdefault(size, []).append(i)
  start, written = time.perf_counter(), 0
  with tqdm.tqdm(total=len(paths), desc="predict", unit="img") as bar:
    for indices in groups.values():
      for first in range(0, len(indices), args.batch_size):
        chunk = indices[first:first + args.batch_size]
        images = [read_image(paths[i]) for i in chunk]
        preds = predict_images(module, variables, info, images, image_size=args.image_size,
                               batch_size=args.batch_size)
        for i, pred in zip(chunk, preds):
          name = os.path.splitext(os.path.basename(paths[i]))[0]
          written += len(write_predictions(output_dir, name, pred, args.preview_max_depth))
        bar.update(len(chunk))
  seconds = time.perf_counter() - start
  size_text = ", ".join(f"{h}x{w} ({len(ix)})" for (h, w), ix in groups.items())
  print(f"Predicted {len(paths)} images ({', '.join(task_names)}) in {seconds:.1f} s "
        f"({len(paths) / seconds:.2f} img/s, including compilation)\n"
        f"  network sizes: {size_text}\n"
        f"  wrote {written} PNGs to {os.path.abspath(output_dir)}"
        + ("\n  depth PNGs: uint16 millimetres" if "depth" in task_names else ""))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns the process exit code (0 ok, 1 bad input)."""
  args = _parse_args(argv)
  try:
    return _run(args)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
