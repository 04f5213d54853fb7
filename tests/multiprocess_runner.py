"""Starts kajax CLI runs as real JAX processes on 127.0.0.1 for the multi-host tests.

Each process gets its own fake CPU devices (``JAX_NUM_CPU_DEVICES``), gloo collectives and
``--jax_distributed`` with a local coordinator: exactly what ``launch/gpu.sh`` does on real
nodes. Every process runs in its own process group with a hard deadline, and :meth:`close`
kills whatever is left, so a hung collective can never outlive the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Sequence


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
  """The environment of a kajax process with ``devices`` fake CPU devices."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", OPENBLAS_NUM_THREADS="1",
             PYTHONUNBUFFERED="1", NO_GCE_CHECK="true", **extra)
  return env


class Processes:
  """``n`` kajax.main processes (one per simulated host), logs in ``log_dir``."""

  def __init__(self, args: Sequence[str] | Callable[[int], Sequence[str]], n: int,
               devices_per_process: int, log_dir: str, tag: str, cwd: str | None = None,
               extra_env: dict[str, str] | None = None, gpu_script: str | None = None):
    """Starts the processes.

    Args:
      args: the kajax.main flags, or a function of the process index giving them.
      n: number of processes; with more than one they get ``--jax_distributed`` and a
        coordinator on 127.0.0.1.
      devices_per_process: fake CPU devices of each.
      log_dir, tag: each process's output goes to ``log_dir/tag.i.log``.
      cwd: working directory.
      extra_env: more environment variables.
      gpu_script: path of ``launch/gpu.sh``: start through it, the coordinator and process
        given as ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` as its
        documentation says, instead of as flags.
    """
    self.logs = [os.path.join(log_dir, f"{tag}.{i}.log") for i in range(n)]
    port = free_port()
    self.procs = []
    for i in range(n):
      flags = list(args(i) if callable(args) else args)
      env = cpu_env(devices_per_process, **(extra_env or {}))
      if gpu_script:
        cmd = ["bash", gpu_script, "--", *flags]
        env["KAJAX_VENV"] = sys.prefix  # This interpreter's virtualenv.
        if n > 1:
          env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n),
                     JAX_PROCESS_ID=str(i))
      else:
        cmd = [sys.executable, "-m", "kajax.main", *flags]
        if n > 1:
          cmd += ["--jax_distributed", f"--coordinator_address=127.0.0.1:{port}",
                  f"--num_processes={n}", f"--process_id={i}"]
      with open(self.logs[i], "w") as log:
        self.procs.append(subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
            env=env))

  def output(self, i: int) -> str:
    with open(self.logs[i]) as f:
      return f.read()

  def wait(self, timeout: float) -> list[int]:
    """Return codes; kills everything and fails when ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    codes = []
    for p in self.procs:
      try:
        codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
      except subprocess.TimeoutExpired:
        self.close()
        tails = "\n".join(f"--- process {i}:\n{self.output(i)[-3000:]}"
                          for i in range(len(self.procs)))
        raise AssertionError(f"processes still running after {timeout} s:\n{tails}")
    return codes

  def wait_for(self, predicate, timeout: float, what: str) -> None:
    """Polls ``predicate()`` until true; fails (and kills) if a process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
      if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
        self.close()
        tails = "\n".join(f"--- process {i} (rc {p.returncode}):\n{self.output(i)[-3000:]}"
                          for i, p in enumerate(self.procs))
        raise AssertionError(f"never saw {what}:\n{tails}")
      time.sleep(0.1)

  def signal(self, i: int, sig: int) -> None:
    os.killpg(self.procs[i].pid, sig)

  def close(self) -> None:
    """Kills every process group still alive (idempotent)."""
    for p in self.procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
        p.wait()
