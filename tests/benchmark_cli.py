"""Runs a ``kajax.benchmarks`` command the way a user does, for the benchmark CLI tests."""

import os
import subprocess
import sys


def run(module, flags, cwd, timeout=900):
  """``python -m kajax.benchmarks.<module> <flags>`` on one CPU device (without the test
  session's fake devices), from ``cwd``; asserts it succeeded and returns its stdout."""
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-m", f"kajax.benchmarks.{module}", *flags],
                        capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout
