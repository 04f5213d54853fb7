"""Command line entry point: flags only; the work is in ``train_teacher`` and ``amalgamate``.

  python -m kajax.main --config=configs/demo.py --workdir=/tmp/kajax_demo
  python -m kajax.main --config=configs/teacher_rooms_seg.py --workdir=DIR [--config.x=y]
  python -m kajax.main --config=configs/demo.py --workdir=DIR --config.mode=evaluate

``config.mode`` selects the job: 'teacher' (train one teacher from labels), 'amalgamate'
(train teachers the config asks for if missing, then the four steps, evaluation and export),
'evaluate' (re-evaluate the student and teachers of an existing workdir).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config "
                                          "file (optionally FILE:ARG, e.g. :tiny).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() first (multi-host: one "
    "process per host on Cloud TPU pods or multi-node GPU). On TPU VMs, SLURM and Open MPI "
    "nothing else is needed; elsewhere give the three flags below or $JAX_COORDINATOR_ADDRESS, "
    "$JAX_NUM_PROCESSES, $JAX_PROCESS_ID.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --jax_distributed: host:port of process 0 (default "
    "$JAX_COORDINATOR_ADDRESS or auto-detected).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --jax_distributed: number of processes (default "
    "$JAX_NUM_PROCESSES or auto-detected).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --jax_distributed: this process's index (default "
    "$JAX_PROCESS_ID or auto-detected).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", None, "With --jax_distributed: a process silent for this "
    "long counts as dead and the others stop (JAX's default 100).")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id",
                      "heartbeat_timeout_seconds")

MODES = ("teacher", "amalgamate", "evaluate")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from kajax import multihost, training_logs
  if not flags.FLAGS["verbosity"].present:
    training_logs.show_status_lines()  # kajax's INFO lines, not Orbax's per-step ones.
  if _DISTRIBUTED.value:
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         _HEARTBEAT.value)
  elif any(flags.FLAGS[n].present for n in _DISTRIBUTED_FLAGS):
    raise app.UsageError("/".join(f"--{n}" for n in _DISTRIBUTED_FLAGS) +
                         " need --jax_distributed.")
  multihost.install_sigterm_handler()
  with multihost.exit_on_failure():
    _run(_CONFIG.value, _WORKDIR.value)


def _run(config, workdir):
  mode = config.get("mode")
  if mode == "teacher":
    from kajax import train_teacher
    train_teacher.train_and_evaluate(config, workdir)
  elif mode == "amalgamate":
    from kajax import amalgamate
    amalgamate.train_and_evaluate(config, workdir)
  elif mode == "evaluate":
    from kajax import amalgamate
    amalgamate.evaluate_workdir(config, workdir)
  else:
    raise app.UsageError(f"--config.mode={mode!r}: choose one of {MODES}.")


if __name__ == "__main__":
  app.run(main)
