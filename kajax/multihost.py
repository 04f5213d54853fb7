"""Running on several hosts with JAX's multi-controller runtime (one process per host).

Every kajax process runs the same program on its own devices; ``jax.distributed`` connects
them. The rules this module helps to keep (docs/method.md, "Parallelism"):

* only process 0 writes files (:func:`is_main_process`); every read of something process 0
  wrote comes after :func:`sync` (``multihost_utils.sync_global_devices``);
* a decision that changes control flow (train a teacher? resume?) is taken once, on process 0,
  and broadcast (:func:`broadcast_decision`), so processes never take different paths and
  hang in different collectives;
* status lines go through absl logging on process 0 (:func:`log`);
* a failing process exits at once without JAX's shutdown barrier (:func:`exit_on_failure`):
  its peers' collectives then fail (CPU/GPU) or the coordination service's heartbeat check
  stops them (TPU) instead of everyone hanging;
* SIGTERM, which a pod scheduler sends before preempting, makes training loops save a
  checkpoint and stop at the same step on every process (:class:`PreemptionWatch`, using
  JAX's preemption sync manager when distributed).

In a one-process run every helper is a no-op or trivially true.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from typing import Any, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath

# Exit status of a run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM, what a
# shell reports for a process killed by it): schedulers restart it, a rerun resumes.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
  """Raised by a training loop after it saved a checkpoint because of SIGTERM."""


def is_main_process() -> bool:
  """True on the process that writes files and prints (process 0)."""
  return jax.process_index() == 0


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def sync(name: str) -> None:
  """Waits until every process reaches this point (no-op with one process).

  Args:
    name: a label unique to this point of the program (shown in timeouts).
  """
  if is_multiprocess():
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def broadcast_decision(value: Any) -> Any:
  """Process 0's ``value`` (bool, int or float) on every process.

  Use it for every decision that changes which collectives run next (``value`` computed from
  files, clocks or anything else a host may see differently).
  """
  if not is_multiprocess():
    return value
  from jax.experimental import multihost_utils
  kind = type(value)
  array = np.asarray(value, np.float64 if kind is float else np.int64)
  return kind(multihost_utils.broadcast_one_to_all(array).item())


def all_processes(value: Any) -> np.ndarray:
  """``value`` (a number) of every process, indexed by process (one-process: length 1)."""
  if not is_multiprocess():
    return np.asarray([value])
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.asarray(value))).reshape(-1)


def log(message: str, *args: Any) -> None:
  """A status line: absl ``logging.info`` on process 0, nothing elsewhere."""
  if is_main_process():
    logging.info(message, *args)


# Log lines name the caller of log(), not this module.
logging.ABSLLogger.register_frame_to_skip(__file__, "log")


_RUNTIME_LOGGED = []


def log_runtime(mesh: Any) -> None:
  """Logs ``process i/n, local/global devices, mesh`` (on every process, once per run)."""
  if _RUNTIME_LOGGED:
    return
  _RUNTIME_LOGGED.append(True)
  logging.info("process %d/%d, local/global devices %d/%d (%s), mesh %s",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform,
               dict(zip(mesh.axis_names, mesh.devices.shape)))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               heartbeat_timeout_seconds: int | None = None) -> None:
  """``jax.distributed.initialize`` with kajax's environment variables as fallbacks.

  On Cloud TPU VMs, SLURM and Open MPI everything is detected and no argument is needed.
  Elsewhere (several GPU nodes, or processes on one machine) give the coordinator's
  ``host:port`` (process 0's address), the number of processes and this process's id, as
  arguments or as ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: how many processes take part.
    process_id: this process's index in ``[0, num_processes)``.
    heartbeat_timeout_seconds: after how long without heartbeats a process counts as dead
      and the others are stopped (JAX's default: 100 s).
  """
  env = os.environ
  kwargs: dict[str, Any] = {
      "coordinator_address": coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"),
      "num_processes": num_processes if num_processes is not None else
      _int_env("JAX_NUM_PROCESSES"),
      "process_id": process_id if process_id is not None else _int_env("JAX_PROCESS_ID"),
  }
  if heartbeat_timeout_seconds:
    kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout_seconds)
  jax.distributed.initialize(**kwargs)


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"${name}={value!r} must be an integer.") from None


@contextlib.contextmanager
def exit_on_failure() -> Iterator[None]:
  """Around a multi-process program: an exception ends this process at once.

  Python's normal exit would run ``jax.distributed.shutdown``, whose barrier waits for every
  other process — which are themselves waiting in a collective for this one: nobody would ever
  stop. ``os._exit`` skips the barrier and ends the heartbeats; a peer then either sees its
  collective fail (a closed connection) and exits through this same path, or is stopped by
  JAX's coordination service once the heartbeat timeout has passed. A :class:`Preempted` run
  (every process at the same step) exits normally with :data:`PREEMPTED_EXIT_CODE`.
  """
  try:
    yield
  except Preempted as e:
    logging.warning("%s", e)
    sys.exit(PREEMPTED_EXIT_CODE)
  except BaseException as e:  # pylint: disable=broad-except
    if not is_multiprocess() or isinstance(e, SystemExit) and not e.code:
      raise
    logging.error("process %d/%d failed:\n%s", jax.process_index(), jax.process_count(),
                  "".join(traceback.format_exception(e)))
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


class PreemptionWatch:
  """Tells training loops when to save and stop because the job is being preempted.

  Distributed runs use JAX's preemption sync manager: when any process receives SIGTERM,
  every process's :meth:`reached` returns True at the same (next safe) step. A one-process
  run installs a SIGTERM handler (from :func:`install_sigterm_handler`) that sets a flag
  checked between steps; outside a training loop it ends the program at once.
  """

  def __init__(self) -> None:
    self._counter = 0  # Calls so far, over all loops of the run (JAX wants it increasing).
    self._sigterm = threading.Event()
    self._in_loop = False
    self._distributed = False

  def use_jax_sync_manager(self) -> None:
    from jax._src import distributed  # The sync manager is created by initialize().
    self._distributed = distributed.global_state.preemption_sync_manager is not None

  @contextlib.contextmanager
  def training(self) -> Iterator[None]:
    """Marks a training loop: SIGTERM is then handled between steps."""
    self._in_loop = True
    try:
      yield
    finally:
      self._in_loop = False

  def reached(self) -> bool:
    """Called after every step by every process; True when all should save and stop now.

    Nothing else may query JAX's sync point (it keeps only the latest call count it was
    given): ``kajax.checkpointing`` keeps Orbax from doing so.
    """
    self._counter += 1
    if self._distributed:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(self._counter)
    return self._sigterm.is_set()

  def on_sigterm(self, signum: int, frame: Any) -> None:
    del frame
    self._sigterm.set()
    if not self._in_loop:
      raise Preempted(f"Stopped by signal {signum} outside a training loop; finished phases "
                      "are saved, rerun the same command to continue.")


PREEMPTION = PreemptionWatch()


def install_sigterm_handler() -> None:
  """Makes SIGTERM a clean stop (for ``kajax.main`` only; libraries leave signals alone).

  With ``jax.distributed`` JAX's own handler is already installed and feeds its preemption
  sync manager; it is kept. A one-process run gets :class:`PreemptionWatch`'s handler.
  """
  PREEMPTION.use_jax_sync_manager()
  if not PREEMPTION._distributed:  # pylint: disable=protected-access
    signal.signal(signal.SIGTERM, PREEMPTION.on_sigterm)


def check_shared_directory(path: str | os.PathLike, what: str, flag: str) -> None:
  """Fails on every process when some process does not see ``path`` as process 0 does.

  Process 0 writes a file with a fresh random token into ``path``; after a barrier every
  process reads it back; the verdicts are gathered so all processes raise together.

  Args:
    path: a directory all processes must share (the workdir).
    what: how to call it in the error ('workdir').
    flag: the flag that sets it ('--workdir').
  """
  if not is_multiprocess():
    return
  path = epath.Path(path)
  token = broadcast_decision(int(np.random.default_rng().integers(1, 2**62)))
  probe = path / f".kajax_shared_check_{token}"
  if is_main_process():
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text(str(token))
  sync(f"shared check written {probe.name}")
  try:
    seen = probe.exists() and probe.read_text().strip() == str(token)
  except OSError:
    seen = False
  verdicts = all_processes(int(seen))
  sync(f"shared check read {probe.name}")
  if is_main_process():
    probe.unlink(missing_ok=True)
  blind = [int(i) for i in np.flatnonzero(verdicts == 0)]
  if blind:
    raise RuntimeError(
        f"Process(es) {blind} do not see the {what} {path} ({flag}) that process 0 writes "
        f"(its file {probe.name} is missing there). Every host must see the same {what}: use "
        "a gs:// path or a shared filesystem mounted at the same path on every host.")
