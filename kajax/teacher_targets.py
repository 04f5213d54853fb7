"""Teacher outputs computed once per unlabelled image, instead of once per training step.

``config.loss.teacher_targets``:

* ``'per_step'`` (the paper; ``configs/nyu.py``): every amalgamation step runs each teacher on
  the step's augmented images (``kajax.amalgamation_steps.teacher_outputs``).
* ``'precomputed'`` (the synthetic-rooms configs): before the block-wise phase, each teacher
  runs once over the unlabelled split at the training base resolution (unaugmented;
  flip-averaged when ``loss.teacher_flip_average`` is on) and the outputs are kept in host
  memory (float32).
  Training examples then carry their image's targets, zoomed and cropped with the image by
  ``kajax.augment`` and mirrored on the device (:func:`batch_targets`); the steps skip the
  teachers' forward passes (about a third of a fine-tuning step's FLOPs with flip-averaged
  targets at the demo's size).

What changes: a zoomed view's target is the teacher's full-image output resampled (nearest
neighbour), not the teacher's answer on the zoomed view, and colour jitter no longer reaches
the teacher -- the student learns to give the clean image's answer on a jittered one. The
memory is N x H x W x (sum of the teachers' output channels) x 4 bytes (the demo: 1,000
images x 96x128 x 14 channels = 688 MB), so this is for splits that fit in RAM. The
inference batches are split over the device mesh like training batches and the outputs
gathered back to every device, so in a multi-host run every process ends with the whole table
and its input pipeline needs nothing else.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kajax import augment, multihost, parallel, tasks

MODES = ("per_step", "precomputed")
PREFIX = augment.TEACHER_TARGET_PREFIX
# Host-memory dtype of the table. Not float16: with it, 4 block steps of the tiny test run
# moved parameters by up to 3e-4 away from the per-step run (the L1 loss's sign flips where
# a student output sits within float16 round-off of its target); float32 matches to 1e-6.
STORAGE_DTYPE = np.float32


def key(task: str) -> str:
  """The batch key of ``task``'s precomputed target."""
  return PREFIX + task


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"--config.loss.teacher_targets={mode!r}: choose one of {MODES}.")


class WithTargets:
  """A random-access source whose examples also carry their precomputed teacher targets."""

  def __init__(self, source: Any, targets: Mapping[str, np.ndarray]):
    sizes = {t: len(a) for t, a in targets.items()}
    if any(n != len(source) for n in sizes.values()):
      raise ValueError(f"Precomputed teacher targets cover {sizes} images; the source has "
                       f"{len(source)}.")
    self._source, self._targets = source, dict(targets)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = dict(self._source[index])
    example.update({key(t): a[index] for t, a in self._targets.items()})
    return example


def compute(source: Any, outputs_fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]],
            teacher_vars: Any, mesh: Any, *, image_size: tuple[int, int] | None,
            mean: Sequence[float], std: Sequence[float], batch_size: int
            ) -> dict[str, np.ndarray]:
  """Every teacher's outputs on every image of ``source``: {task: (N, H, W, C) float32}.

  ``outputs_fn(teacher_vars, images)`` is what a training step would compute as its targets
  (``amalgamation_steps.teacher_outputs`` with the run's models, dtype and flip averaging).
  Images are resized to ``image_size`` (None: the source's own, which must then be one size)
  and normalised exactly as in evaluation; ``batch_size`` images per forward pass (rounded up
  to a multiple of the mesh's devices; the last batch is padded); a progress line is logged
  every tenth of the split.
  """
  n = len(source)
  # The batch is split over the mesh like a training batch and the outputs gathered back to
  # every device, so each process ends with the whole table.
  fn = jax.jit(outputs_fn, out_shardings=parallel.replicated(mesh))
  sharding = parallel.batch_sharding(mesh)
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  table: dict[str, np.ndarray] = {}
  size = None
  next_report = 0
  for start in range(0, n, batch_size):
    rows = range(start, min(n, start + batch_size))
    images = [augment.eval_transform(source[i], image_size=image_size, images_only=True,
                                     mean=mean, std=std)["image"] for i in rows]
    shapes = {im.shape for im in images} | ({size} if size else set())
    if len(shapes) > 1:
      raise ValueError(
          f"--config.loss.teacher_targets='precomputed' needs every image at one size, but "
          f"the unlabelled split has {sorted(shapes)}; set --config.input.image_size.")
    size = images[0].shape
    host = np.zeros((batch_size,) + size, np.float32)
    host[:len(images)] = np.stack(images)
    batch = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    out = jax.device_get(fn(teacher_vars, batch))
    for t, value in out.items():
      if t not in table:
        table[t] = np.zeros((n,) + value.shape[1:], STORAGE_DTYPE)
      table[t][start:start + len(images)] = value[:len(images)]
    if start + len(images) >= next_report:
      multihost.log("Teacher targets: %d / %d images", start + len(images), n)
      next_report += max(1, n // 10)
  return table


def batch_targets(batch: Mapping[str, jax.Array], task_names: Sequence[str]
                  ) -> dict[str, jax.Array] | None:
  """The precomputed targets of a batch, mirrored where its image was, in float32; None when
  the batch carries none (``teacher_targets='per_step'``)."""
  if not any(k.startswith(PREFIX) for k in batch):
    return None
  missing = [t for t in task_names if key(t) not in batch]
  if missing:
    raise ValueError(f"The batch has precomputed targets but none for tasks {missing}.")
  flip = batch["flip"][:, None, None, None]
  out = {}
  for t in task_names:
    target = batch[key(t)].astype(jnp.float32)
    out[t] = jnp.where(flip, tasks.get(t).mirror_raw(target), target)
  return out
