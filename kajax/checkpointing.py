"""Training checkpoints: Orbax ``CheckpointManager`` in ``WORKDIR/checkpoints``.

One resume path (docs/method.md §3): a killed run restarted with the same command restores the
latest *finished* checkpoint and continues; it loses at most the steps since that save. Orbax
writes each step into a temporary directory and renames it when complete, so a kill during a
write leaves the previous checkpoint intact. A checkpoint holds two items:

* ``state``: the student's (or a teacher-in-training's) ``TrainState`` (params, batch stats,
  optimiser state, step);
* ``meta``: JSON — phase, branch-loss table and branch points, the data-iterator state and
  anything else small.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from kajax import storage


class _Manager(ocp.CheckpointManager):
  """Orbax's manager minus its own look at JAX's preemption sync point.

  The training loop asks the sync point once per step (``multihost.PreemptionWatch``) and
  saves with ``force=True`` when it says so. Orbax asks it too, inside ``save`` and from the
  background thread that finishes an async save, with *its* step numbers; the sync manager
  remembers only the latest number it was given, so the step all processes agree on would
  be computed from a stale one and never reached.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class Checkpointer:
  """Async, keep-N checkpoints of ``(state, meta)`` in one directory."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2,
               async_save: bool = True):
    self.directory = os.fspath(storage.resolve(directory))  # Local or gs://.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
        # Process 0 lists the steps and broadcasts them: every process resumes from the
        # same step even if a host's view of the directory lags.
        single_host_load_and_broadcast=True)
    self._manager = _Manager(self.directory, options=options, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> None:
    """Starts an (async) save of ``state`` and ``meta`` at ``step``."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[Any, dict[str, Any]] | None:
    """Restores ``(state, meta)`` at ``step`` (default latest), or None if there is none.

    Args:
      abstract_state: a pytree like the state (arrays or ``jax.ShapeDtypeStruct`` with
        shardings); restored arrays take its shapes, dtypes and shardings.
      step: which step; default the latest finished one.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def restore_meta(self, step: int | None = None) -> dict[str, Any] | None:
    """Only the ``meta`` JSON at ``step`` (default latest), or None: cheap, and readable even
    when the state no longer fits the model (to explain why)."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
