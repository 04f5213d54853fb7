"""Device mesh and shardings for data-parallel training (docs/method.md §3).

One mesh axis, ``data``, spans every device of every process. Batches are split along it,
parameters and teachers are replicated. Under ``jax.jit`` BatchNorm statistics computed over
a sharded batch are global (sync BN) without any collective written by hand.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list[Any] | None = None) -> Mesh:
  """A 1-D ``data`` mesh over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimiser state, teachers)."""
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, flag: str = "batch_size") -> int:
  """Returns the per-process batch size; raises a clear error when it does not divide.

  Args:
    global_batch_size: images per step over all devices.
    mesh: the data mesh.
    flag: config key to name in the error message.
  """
  num_devices = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % num_devices:
    raise ValueError(
        f"--config.{flag}={global_batch_size} must be a positive multiple of the number of "
        f"devices ({num_devices}); e.g. use "
        f"{max(1, -(-global_batch_size // num_devices)) * num_devices}.")
  return global_batch_size // jax.process_count()


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of host or device arrays replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles this process's slice of a batch into global arrays sharded over ``data``."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
