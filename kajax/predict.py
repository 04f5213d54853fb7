"""Runs an exported (pruned) student on a folder of images and writes its predictions as PNGs.

  python -m kajax.predict --student_dir=WORKDIR/student --input_dir=PHOTOS --output_dir=OUT \\
      [--batch_size=8] [--keep_size | --image_size=240x320]

Every .png/.jpg/.jpeg/.bmp file directly in ``--input_dir`` (sorted by name; hidden files
skipped) is turned upright (EXIF orientation, as photo viewers do), converted to RGB, resized
bilinearly to its *network size* and normalised with the student's own statistics
(``student.json`` ``input.mean``/``std``), exactly like the evaluation pipeline
(``kajax.augment.eval_transform``). The network size is, by default, the training
resolution recorded in ``student.json`` (``input.image_size``): an image is scaled so that its
shorter side matches the training images' shorter side, keeping its aspect ratio (a 3024x4032
photo and a 240x320 training resolution give 240x320; a portrait photo 320x240), so objects
appear at the scale the student learnt. ``--keep_size`` feeds each image at its own size;
``--image_size=HxW`` at a fixed size. Predictions are resized back to the original image size
(nearest neighbour for class ids, bilinear for depth and normals, normals renormalised).

For an image ``NAME.ext`` and the tasks the student has:

  * seg:     ``NAME_seg.png`` (colourised class map, ``kajax.visualize.PALETTE``) and
             ``NAME_seg_labels.png`` (class ids as 8-bit grey; 16-bit for > 256 classes);
  * depth:   ``NAME_depth.png`` (16-bit grey, depth in millimetres: round(metres * 1000),
             clipped to 0..65535, i.e. up to 65.535 m) and ``NAME_depth_preview.png``
             (colour map, 0..``--preview_max_depth`` metres);
  * normals: ``NAME_normals.png`` (RGB = (n + 1) / 2 of the unit normal, camera coordinates).

Large folders are streamed: only image headers are read up front (so an unreadable file
stops the run before anything is written), then ``--batch_size`` images at a time are read,
predicted and written, with a progress bar. Images of equal network size are batched
together; a partial batch is padded up to a power of two (at most ``--batch_size``), so each
size compiles only a few programs. Existing files in ``--output_dir`` with the same names are
replaced; input files are never written (``--output_dir`` must differ from ``--input_dir``).

Library use: :func:`predict_images` (in-memory uint8 images -> per-task predictions).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import PIL.Image
import PIL.ImageOps
import tqdm
from absl import flags, logging

from kajax import augment, cli, export, tasks, visualize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# Five 2x2 poolings need at least 32 pixels per side (kajax.segnet).
MIN_SIZE = 32
DEPTH_PNG_SCALE = visualize.DEPTH_PNG_SCALE
DEFAULT_BATCH_SIZE = 8


# --- Library: in-memory prediction -------------------------------------------------------------

def predictable_tasks(info: Mapping[str, Any]) -> tuple[str, ...]:
  """The student's tasks that are registered in ``kajax.tasks`` (built-in or plug-in)."""
  return tuple(t for t in info["tasks"] if t in tasks.registered())


def _forward(module, readouts, variables, images):
  """Student forward pass (inference mode) and per-task readout.

  ``readouts`` is a hashable tuple of (task, JSON of its readout extras) so it can be a static
  argument of jit; each task's answer is computed on the device (for parsing, class ids: a
  C-times smaller transfer than logits).
  """
  outputs, _ = module.apply(variables, images, train=False)
  preds = {}
  for name, extra_json in readouts:
    task = tasks.get(name)
    preds[name] = task.answer(task.readout(outputs[name], json.loads(extra_json)))
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


def training_size(info: Mapping[str, Any]) -> tuple[int, int] | None:
  """The (H, W) the student was trained at (``student.json`` ``input.image_size``), if known."""
  size = info.get("input", {}).get("image_size")
  return (int(size[0]), int(size[1])) if size else None


def network_size(image_hw: tuple[int, int], info: Mapping[str, Any], *,
                 image_size: tuple[int, int] | None = None,
                 keep_size: bool = False) -> tuple[int, int]:
  """The size an image of ``image_hw`` enters the network at (see the module docstring).

  ``image_size`` wins, then ``keep_size``; otherwise the image is scaled so that its shorter
  side equals the training resolution's shorter side (aspect ratio kept). A student exported
  without its training resolution keeps each image's size.
  """
  if image_size is not None:
    return tuple(image_size)
  train = training_size(info)
  if keep_size or train is None:
    return tuple(image_hw)
  scale = min(train) / min(image_hw)
  return (max(MIN_SIZE, round(image_hw[0] * scale)), max(MIN_SIZE, round(image_hw[1] * scale)))


def restore_size(prediction: Mapping[str, np.ndarray], hw: tuple[int, int]
                 ) -> dict[str, np.ndarray]:
  """One image's predictions resized to (H, W), each as its task says (``DenseTask.resize``:
  nearest for class ids, bilinear otherwise, normals renormalised)."""
  return {name: tasks.get(name).resize_answer(value, hw) for name, value in prediction.items()}


def predict_images(module: Any, variables: Any, info: Mapping[str, Any],
                   images: Sequence[np.ndarray], *,
                   image_size: tuple[int, int] | None = None, keep_size: bool = False,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, np.ndarray]]:
  """Runs the student on uint8 RGB images; returns predictions at each image's own size.

  Args:
    module, variables, info: as returned by ``kajax.export.load_student``.
    images: uint8 arrays (H, W, 3), RGB; sizes may differ.
    image_size, keep_size: the network size (:func:`network_size`; default: the training
      resolution). Images are resized to it bilinearly, as in evaluation; it must be at least
      32x32.
    batch_size: images per forward pass; images of equal network size are batched together.

  Returns:
    One dict per image, in order, with an entry per task of :func:`predictable_tasks`, at the
    image's resolution (H, W): ``seg`` int32 class ids (H, W) (argmax of the logits),
    ``depth`` float32 metres (H, W), ``normals`` float32 unit vectors (H, W, 3).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be at least 1.")
  task_names = predictable_tasks(info)
  if not task_names:
    raise ValueError(f"The student's tasks {info['tasks']} include none of the registered "
                     f"tasks {tasks.registered()}; "
                     "kajax.predict cannot read its outputs.")
  extras = info.get("extras", {})
  readouts = tuple((t, json.dumps(extras.get(t, {}), sort_keys=True)) for t in task_names)
  normalization = {k: tuple(info.get("input", {}).get(k, default)) for k, default in
                   (("mean", augment.IMAGENET_MEAN), ("std", augment.IMAGENET_STD))}
  groups: dict[tuple[int, int], list[int]] = {}
  for i, image in enumerate(images):
    h, w = network_size(_check_image(image, i).shape[:2], info, image_size=image_size,
                        keep_size=keep_size)
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
        # The evaluation pipeline's own resize + normalisation.
        batch[row] = augment.eval_transform({"image": images[i]}, image_size=size,
                                            images_only=True, **normalization)["image"]
      preds = jax.device_get(_forward_jit(module, readouts, variables, batch))
      for row, i in enumerate(chunk):
        results[i] = restore_size({t: np.asarray(p[row]) for t, p in preds.items()},
                                  images[i].shape[:2])
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


# EXIF orientations that swap width and height (phones store portrait photos as landscape
# pixels plus this tag; viewers, and the student, must see them upright).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def image_size_of(path: str) -> tuple[int, int]:
  """Upright (H, W) from the file header, with an error naming an unreadable file."""
  try:
    with PIL.Image.open(path) as image:
      h, w = image.height, image.width
      if image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSING_ORIENTATIONS:
        h, w = w, h
      return h, w
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f"Cannot read image file {path}: {e}. Remove or replace it.") from e


def read_image(path: str) -> np.ndarray:
  """Upright uint8 RGB (H, W, 3) of an image file (EXIF rotation applied; grey, palette and
  RGBA files converted)."""
  try:
    with PIL.Image.open(path) as image:
      return np.asarray(PIL.ImageOps.exif_transpose(image).convert("RGB"))
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f"Cannot read image file {path}: {e}. Remove or replace it.") from e


depth_to_png16 = visualize.depth_to_png16


def write_predictions(output_dir: str, name: str, prediction: Mapping[str, np.ndarray],
                      preview_max_depth: float = 10.0) -> list[str]:
  """Writes the PNGs of one image's prediction (see the module docstring); returns paths.

  Each task names its files (``DenseTask.files``; by default one colour image
  ``NAME_{task}.png``); ``preview_max_depth`` is the colour range of tasks that need one.
  """
  images = {}
  for task_name, answer in prediction.items():
    task = tasks.get(task_name)
    files = (task.files(answer, preview_max_depth) if task.files else
             {task_name: task.colorize(answer, preview_max_depth)})
    images.update({f"{name}_{suffix}.png": array for suffix, array in files.items()})
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

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  """Defines this CLI's flags on ``flag_values``."""
  holders = {
      "student_dir": flags.DEFINE_string("student_dir", None, "Exported student "
                                         "(WORKDIR/student of an amalgamation run).",
                                         flag_values=flag_values),
      "input_dir": flags.DEFINE_string("input_dir", None, "Folder of png/jpg/jpeg/bmp images.",
                                       flag_values=flag_values),
      "output_dir": flags.DEFINE_string("output_dir", None, "Folder for the predictions "
                                        "(created if missing).", flag_values=flag_values),
      "image_size": flags.DEFINE(cli.ImageSizeParser(), "image_size", None, "Network input "
                                 "size HxW for every image (default: the training "
                                 "resolution, aspect ratio kept).", flag_values),
      "keep_size": flags.DEFINE_bool("keep_size", False, "Feed each image at its own size "
                                     "instead of the training resolution.",
                                     flag_values=flag_values),
      "batch_size": flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Images per "
                                         "forward pass.", lower_bound=1,
                                         flag_values=flag_values),
      "preview_max_depth": flags.DEFINE_float("preview_max_depth", 10.0, "Metres mapped to "
                                              "the brightest colour of the depth preview.",
                                              lower_bound=1e-6, flag_values=flag_values),
  }
  flags.mark_flags_as_required(["student_dir", "input_dir", "output_dir"],
                               flag_values=flag_values)
  flags.register_multi_flags_validator(
      ["image_size", "keep_size"], lambda v: not (v["image_size"] and v["keep_size"]),
      "--image_size and --keep_size exclude each other: give one of them.",
      flag_values=flag_values)
  return holders


def run(args: Any) -> None:
  """Predicts every image of ``args.input_dir`` into ``args.output_dir``."""
  paths = list_images(args.input_dir)
  output_dir = prepare_output_dir(args.output_dir, args.input_dir)
  info = export.read_info(args.student_dir)
  # Headers only: fail on an unreadable or too small file before the (slow) model load.
  sizes = [network_size(image_size_of(p), info, image_size=args.image_size,
                        keep_size=args.keep_size) for p in paths]
  for path, (h, w) in zip(paths, sizes):
    if h < MIN_SIZE or w < MIN_SIZE:
      raise ValueError(f"{path} would enter the network at {h}x{w}; SegNet needs at least "
                       f"{MIN_SIZE}x{MIN_SIZE}. Pass --image_size=HxW to resize the images.")
  task_names = predictable_tasks(info)
  skipped = [t for t in info["tasks"] if t not in task_names]
  if skipped:
    logging.warning("No image output for student tasks %s (predict writes %s).", skipped,
                    ", ".join(tasks.registered()))
  if training_size(info) is None and not (args.image_size or args.keep_size):
    logging.warning("%s does not record its training resolution (exported by an older "
                    "kajax); images are fed at their own size.", args.student_dir)
  module, variables, info = export.load_student(args.student_dir)
  variables = jax.device_put(variables)  # Once, not per batch.
  groups: dict[tuple[int, int], list[int]] = {}
  for i, size in enumerate(sizes):
    groups.setdefault(size, []).append(i)
  start, written = time.perf_counter(), 0
  with tqdm.tqdm(total=len(paths), desc="predict", unit="img") as bar:
    for size, indices in groups.items():
      for first in range(0, len(indices), args.batch_size):
        chunk = indices[first:first + args.batch_size]
        images = [read_image(paths[i]) for i in chunk]
        preds = predict_images(module, variables, info, images, image_size=size,
                               batch_size=args.batch_size)
        for i, pred in zip(chunk, preds):
          name = os.path.splitext(os.path.basename(paths[i]))[0]
          written += len(write_predictions(output_dir, name, pred, args.preview_max_depth))
        bar.update(len(chunk))
  seconds = time.perf_counter() - start
  size_text = ", ".join(f"{h}x{w} ({len(ix)})" for (h, w), ix in groups.items())
  print(f"Predicted {len(paths)} images ({', '.join(task_names)}) in {seconds:.1f} s "
        f"({len(paths) / seconds:.2f} img/s, including compilation)\n"
        f"  network sizes: {size_text}; outputs at each image's own size\n"
        f"  wrote {written} PNGs to {os.path.abspath(output_dir)}")


if __name__ == "__main__":
  cli.run(define_flags, run)
