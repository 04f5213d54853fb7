"""Trains teachers and amalgamates them into a student, as a config file describes.

  python -m kajax.main --config=configs/demo.py --workdir=/tmp/kajax_demo
  python -m kajax.main --config=configs/teacher_rooms_seg.py --workdir=DIR [--config.x=y]
  python -m kajax.main --config=configs/demo.py --workdir=DIR --config.mode=evaluate

``config.mode`` selects the job: 'teacher' (train one teacher from labels), 'amalgamate'
(train teachers the config asks for if missing, then the four steps, evaluation and export),
'evaluate' (re-evaluate the student and teachers of an existing workdir), 'compare' (several
amalgamation runs sharing teachers, reported side by side: ``configs/demo3.py``).

``--config=FILE[:ARG]``: FILE is taken relative to the current directory; when it is not
there, relative to the kajax checkout, so ``configs/demo.py`` works from any directory. ARG is
the config's variant (``:tiny``, ``:seed=3``, ...; ``kajax.config_blocks.parse_arg``).
Every path typed in a flag (``--workdir``, ``--config.teachers.seg.dir``,
``--config.data_dir``) means what it means in the shell: relative to the current directory.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from absl import flags
from ml_collections import config_flags

from kajax import cli

MODES = ("teacher", "amalgamate", "evaluate", "compare")
_DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id",
                      "heartbeat_timeout_seconds")
# The checkout kajax runs from (the parent of the package): where configs/ lives.
CHECKOUT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_config_path(path: str) -> str:
  """A config file as typed, else inside the kajax checkout; an error lists both places."""
  path = os.path.expanduser(path)
  candidates = [path] if os.path.isabs(path) else [path, os.path.join(CHECKOUT_DIR, path)]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise ValueError(f"config file {path} not found (looked in "
                   f"{' and '.join(os.path.abspath(c) for c in candidates)}); the configs "
                   "shipped with kajax are configs/*.py.")


class ConfigFileParser(flags.ArgumentParser):
  """``--config=FILE[:ARG]`` -> ``get_config(ARG)``, with one-line errors (no traceback).

  ml_collections' own parser looks only in the current directory and wraps a ``get_config``
  error in the text of its traceback; a mistyped ``:arg`` deserves one clear line.
  """

  def __init__(self, name: str):
    self.name = name

  def parse(self, argument: Any) -> Any:
    if not isinstance(argument, str):
      return argument
    path, has_arg, arg = argument.partition(":")
    resolved = resolve_config_path(path)
    spec = importlib.util.spec_from_file_location(f"{self.name}_config", resolved)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ValueError(f"{resolved} has no get_config() function.")
    config = module.get_config(arg) if has_arg else module.get_config()
    if hasattr(config, "lock"):
      config.lock()  # An override of a field the config does not have is an error.
    return config

  def flag_type(self) -> str:
    return "config object"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS,
                 argv: list[str] | None = None) -> dict[str, flags.FlagHolder]:
  """Defines this CLI's flags on ``flag_values``.

  Args:
    flag_values: where to define them (a fresh ``flags.FlagValues`` in tests).
    argv: the command line, for ml_collections to find the ``--config.x=y`` overrides
      (default ``sys.argv``).
  """
  config = config_flags.DEFINE_config_file(
      "config", None, "Config file, optionally FILE:ARG (e.g. configs/demo.py:tiny); "
      "override any field with --config.FIELD=VALUE.", flag_values=flag_values,
      lock_config=True, sys_argv=argv)
  flag_values["config"].parser = ConfigFileParser("config")
  holders = {
      "config": config,
      "workdir": flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and "
                                     "results (created if missing).", flag_values=flag_values),
      "jax_distributed": flags.DEFINE_bool(
          "jax_distributed", False, "Call jax.distributed.initialize() first (multi-host: "
          "one process per host on Cloud TPU pods or multi-node GPU). On TPU VMs, SLURM and "
          "Open MPI nothing else is needed; elsewhere give the three flags below or "
          "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID.",
          flag_values=flag_values),
      "coordinator_address": flags.DEFINE_string(
          "coordinator_address", None, "With --jax_distributed: host:port of process 0 "
          "(default $JAX_COORDINATOR_ADDRESS or auto-detected).", flag_values=flag_values),
      "num_processes": flags.DEFINE_integer(
          "num_processes", None, "With --jax_distributed: number of processes (default "
          "$JAX_NUM_PROCESSES or auto-detected).", flag_values=flag_values),
      "process_id": flags.DEFINE_integer(
          "process_id", None, "With --jax_distributed: this process's index (default "
          "$JAX_PROCESS_ID or auto-detected).", flag_values=flag_values),
      "heartbeat_timeout_seconds": flags.DEFINE_integer(
          "heartbeat_timeout_seconds", None, "With --jax_distributed: a process silent for "
          "this long counts as dead and the others stop (JAX's default 100).",
          flag_values=flag_values),
  }
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
  flags.register_multi_flags_validator(
      ["jax_distributed", *_DISTRIBUTED_FLAGS],
      lambda v: v["jax_distributed"] or all(v[n] is None for n in _DISTRIBUTED_FLAGS),
      "/".join(f"--{n}" for n in _DISTRIBUTED_FLAGS) + " need --jax_distributed.",
      flag_values=flag_values)
  return holders


def run(args: Any) -> None:
  """Runs the job ``args.config.mode`` names in ``args.workdir``."""
  from kajax import multihost, storage  # After parsing: --help stays fast.
  if args.jax_distributed:
    multihost.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         args.heartbeat_timeout_seconds)
  multihost.install_sigterm_handler()
  # gs://... stays as it is; a local path is taken from the current directory.
  workdir = os.fspath(storage.resolve(args.workdir))
  with multihost.exit_on_failure():
    _run(args.config, workdir)


def _run(config: Any, workdir: str) -> None:
  mode = config.get("mode")
  if mode not in MODES:
    raise ValueError(f"--config.mode={mode!r}: choose one of {MODES}.")
  from kajax import multihost, parallel
  multihost.log_runtime(parallel.make_mesh())  # First status line of every process.
  if "compute_dtype" in config:
    from kajax import step_parallelism
    multihost.log("Compute dtype: %s (--config.compute_dtype=%s)",
                  step_parallelism.compute_dtype_name(config), config.compute_dtype)
  if mode == "teacher":
    from kajax import train_teacher
    train_teacher.train_and_evaluate(config, workdir)
  elif mode == "amalgamate":
    from kajax import amalgamate
    amalgamate.train_and_evaluate(config, workdir)
  elif mode == "evaluate":
    from kajax import amalgamate
    amalgamate.evaluate_workdir(config, workdir)
  elif mode == "compare":
    from kajax import comparison
    comparison.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  cli.run(define_flags, run)
