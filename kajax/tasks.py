"""The dense tasks kajax knows, and how a network's raw output becomes a prediction.

* ``seg``: C logits per pixel (scene parsing, 13 NYUv2 classes by default);
* ``depth``: 1 channel in metres, or ``num_bins`` logits read out as a soft-weighted sum of
  log-spaced bin centres when the teacher was trained as a classifier (``extra['depth_bins']``);
* ``normals``: 3 channels normalised per pixel to unit length (camera coordinates).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from kajax import losses

TASKS = ("seg", "depth", "normals")
# Which ground-truth feature of a dataset example supervises / evaluates each task.
TARGET_KEY = {"seg": "label", "depth": "depth", "normals": "normals"}


def check_task(task: str, where: str = "task") -> str:
  if task not in TASKS:
    raise ValueError(f"{where}={task!r} is not a task kajax knows; choose one of {TASKS}.")
  return task


def readout(task: str, outputs: jax.Array, extra: Mapping[str, Any] | None = None
            ) -> jax.Array:
  """Network output (N,H,W,C) -> task prediction.

  Returns logits (N,H,W,C) for seg, metres (N,H,W) for depth, unit vectors (N,H,W,3) for
  normals.
  """
  extra = extra or {}
  if task == "seg":
    return outputs
  if task == "depth":
    bins = extra.get("depth_bins")
    if bins:
      centers = losses.depth_bin_centers(outputs.shape[-1], bins["min_depth"],
                                         bins["max_depth"], outputs.dtype)
      return losses.depth_from_bins(outputs, centers)[..., 0]
    return outputs[..., 0]
  if task == "normals":
    norm = jnp.sqrt(jnp.sum(jnp.square(outputs), axis=-1, keepdims=True))
    return outputs / jnp.maximum(norm, 1e-6)
  raise ValueError(check_task(task))
