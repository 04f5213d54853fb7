"""Progressive resizing: a run's first steps train on downscaled batches.

A step on images of half the side costs about a quarter of the FLOPs, so a teacher can see
several times as many batches in the same time if most of its steps run small and only the
last ones at the evaluation resolution (the network is fully convolutional, so the same
weights run at both sizes). The input pipeline is unchanged: batches are downscaled inside
the compiled step, so one data iterator, one checkpoint format and resuming work as for any
run. Configs: ``low_res_steps`` and ``low_res_size`` of a teacher config
(``kajax.config_blocks.teacher_config``).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping

import jax


def check_config(low_res_steps: int, low_res_size: tuple[int, int] | None,
                 num_steps: int) -> None:
  """Raises a ValueError naming the flag when the two fields do not describe a schedule."""
  if not low_res_steps:
    return
  if not 0 < low_res_steps <= num_steps:
    raise ValueError(f"--config.low_res_steps={low_res_steps} must lie in 0..num_steps "
                     f"({num_steps}); 0 turns progressive resizing off.")
  if low_res_size is None or len(low_res_size) != 2 or min(low_res_size) < 32:
    raise ValueError(f"--config.low_res_size={low_res_size!r}: give the size of the first "
                     f"{low_res_steps} steps' images as '(H, W)', each side at least 32 "
                     "(SegNet pools five times).")


def downscale_batch(batch: Mapping[str, jax.Array], size: tuple[int, int]
                    ) -> dict[str, jax.Array]:
  """Every image-sized array of ``batch`` at ``size`` (H, W), an integer fraction of it.

  The image is averaged over each output pixel's block (area resampling); every other
  per-pixel array (class ids, depth, normals, a plug-in task's target) takes the pixel at
  its block's centre, so no class id, depth or normal is blended across an edge and invalid
  pixels stay invalid. Arrays that are not image-sized pass through.

  Raises:
    ValueError: ``size`` does not divide the batch's image size.
  """
  height, width = batch["image"].shape[1:3]
  fh, fw = height // size[0], width // size[1]
  if fh * size[0] != height or fw * size[1] != width:
    raise ValueError(f"--config.low_res_size={tuple(size)!r} must divide the training "
                     f"images' size {height}x{width} (e.g. half of each side).")
  out = {}
  for key, value in batch.items():
    if value.ndim >= 3 and tuple(value.shape[1:3]) == (height, width):
      if key == "image":
        blocks = value.reshape(value.shape[0], size[0], fh, size[1], fw, *value.shape[3:])
        value = blocks.mean(axis=(2, 4)).astype(value.dtype)
      else:
        value = value[:, fh // 2::fh, fw // 2::fw]
    out[key] = value
  return out


def on_downscaled_batches(step: Callable[..., Any], size: tuple[int, int]
                          ) -> Callable[..., Any]:
  """``step(state, batch, *rest)`` run on ``downscale_batch(batch, size)``."""
  def low_res_step(state, batch, *rest):
    return step(state, downscale_batch(batch, size), *rest)
  return low_res_step


def switch_after(low_res_fn: Callable[..., Any], full_fn: Callable[..., Any],
                 low_res_steps: int, first_step: int) -> Callable[..., Any]:
  """A step function that calls ``low_res_fn`` for steps before ``low_res_steps`` and
  ``full_fn`` after; ``first_step`` is the step the run starts (or resumes) at.

  Steps are counted on the host (the training loop calls the function once per step), so
  choosing never waits for the device.
  """
  steps = itertools.count(first_step)

  def step_fn(*args):
    return (low_res_fn if next(steps) < low_res_steps else full_fn)(*args)
  return step_fn
