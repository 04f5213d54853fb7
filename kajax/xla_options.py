"""XLA compiler options for kajax's compiled training steps, per ``jax.jit`` (no env vars).

What was measured on this project's 2-core CPU (jax 0.10.2; docs/speed.md):

* ``xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED``: XLA's default CPU scheduler
  starts independent work early, and in a training step much of the backward pass's input is
  ready during the forward pass (the weight gradients' shifted activation copies of
  ``kajax.conv``), so it kept several copies of every activation alive: a 2x240x320
  fine-tuning step needed 4.6 GiB of temporaries, 1.2 GiB with this scheduler. It is also
  the faster one at the demo's size (96x128, width 1/8, batch 8; 2026-12-05, the AVX2-only
  EPYC, two alternating rounds of ``kajax.benchmarks.train_steps``): teacher, block-wise and
  fine-tuning steps of 0.15-0.16 / 0.23-0.24 / 0.26-0.28 s against 0.21-0.23 / 0.25-0.26 /
  0.36-0.37 s with the default scheduler.
* Tried and not used: oneDNN (``xla_cpu_use_onednn``, ``xla_cpu_experimental_onednn_custom_call``),
  XNNPACK/YNNPACK fusion types for convolutions and turning XNNPACK off: none made XLA's own
  convolution weight gradient fast (still 6-10x the forward convolution), which is why
  ``kajax.conv`` computes it with matrix products.

Options apply to the CPU backend only; on GPU/TPU the defaults are kept.
"""

from __future__ import annotations

import jax

_CPU_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def train_step_options(backend: str | None = None) -> dict[str, str]:
  """``compiler_options`` for ``jax.jit`` of a training step on ``backend`` (default: JAX's)."""
  backend = backend or jax.default_backend()
  return dict(_CPU_OPTIONS) if backend == "cpu" else {}
