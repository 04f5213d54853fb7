"""Teacher outputs computed once per unlabelled image, instead of once per training step.

``config.loss.teacher_targets``:

* ``'per_step'`` (the paper; ``configs/nyu.py``): every amalgamation step runs each teacher on
  the step's augmented images (``kajax.amalgamation_steps.teacher_outputs``).
* ``'precomputed'`` (the synthetic-rooms configs): before the block-wise phase, each teacher
  runs once over the unlabelled split at the training base resolution (unaugmented;
  averaged over the views of ``loss.teacher_flip_average`` and ``teacher_shifts``,
  ``kajax.teacher_views``) and the outputs are kept in host memory (float32).
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

from kajax import augment, input_pipeline, multihost, parallel, tasks

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
            teacher_vars: Any, mesh: Any, *, input_config: Any, batch_size: int
            ) -> dict[str, np.ndarray]:
  """Every teacher's outputs on every image of ``source``: {task: (N, H, W, C) float32}.

  ``outputs_fn(teacher_vars, images)`` is what a training step would compute as its targets
  (``amalgamation_steps.teacher_outputs`` with the run's models, dtype and target views).
  The images come through the evaluation pipeline (``input_pipeline.make_eval_iterator``:
  resized to the base resolution of ``input_config`` -- the source's own when it sets none --
  and normalised as in evaluation), ``batch_size`` images per global batch (rounded up to a
  multiple of the mesh's devices), each process reading its own shard. A progress line is
  logged every tenth of the split.
  """
  n = len(source)
  config = dict(input_config or {})
  # One resolution for the whole table (the training pipeline's base resolution).
  config["image_size"] = tuple(
      input_pipeline.image_size_and_normalization(input_config, source)["image_size"])
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  # Every process's rows are gathered back to every device: each process ends with the whole
  # table, and its training pipeline needs nothing else.
  fn = jax.jit(outputs_fn, out_shardings=parallel.replicated(mesh))
  count = jax.process_count()
  local = input_pipeline.local_batch_size(batch_size, count)
  table: dict[str, np.ndarray] = {}
  done, next_report = 0, 0
  batches = input_pipeline.make_eval_iterator(source, config, global_batch_size=batch_size,
                                              images_only=True)
  for number, batch in enumerate(batches):
    out = jax.device_get(fn(teacher_vars, parallel.global_batch({"image": batch["image"]},
                                                                mesh)["image"]))
    rows = global_rows(number, n, local, count)
    real = rows >= 0
    for t, value in out.items():
      if t not in table:
        table[t] = np.zeros((n,) + value.shape[1:], STORAGE_DTYPE)
      table[t][rows[real]] = value[real]
    done += int(real.sum())
    if done >= next_report:
      multihost.log("Teacher targets: %d / %d images", done, n)
      next_report += max(1, n // 10)
  if done != n:  # Cannot happen unless the evaluation pipeline's sharding changes.
    raise RuntimeError(f"Teacher targets computed for {done} of {n} images.")
  return table


def global_rows(batch_number: int, num_examples: int, local_batch: int,
                process_count: int) -> np.ndarray:
  """The example index of every row of a global evaluation batch (-1 for padding).

  ``input_pipeline.make_dataset(train=False)`` gives process p the examples p, p + P,
  p + 2P, ... (P processes) in batches of ``local_batch``, padded at the end; a global batch
  stacks the processes' batches in process order.
  """
  process = np.repeat(np.arange(process_count), local_batch)
  position = batch_number * local_batch + np.tile(np.arange(local_batch), process_count)
  example = process + process_count * position
  return np.where(example < num_examples, example, -1)


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
