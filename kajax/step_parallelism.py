"""How a pure training step is compiled: ``jax.jit`` over the device mesh, or ``jax.pmap``.

Every kajax training step is one pure function (``kajax.amalgamation_steps``,
``kajax.train_teacher.teacher_train_step``). The config chooses how it runs on the devices:

* ``config.parallelism='jit'`` (default): ``jax.jit`` of the step on global arrays, the batch
  sharded over the mesh's ``data`` axis; XLA inserts the gradient all-reduce and the
  BatchNorm statistics are global (docs/method.md §3).
* ``'pmap'``: the same step under ``jax.pmap`` with per-device batches: it is traced with
  ``axis_name='data'``, so gradients and metrics are ``lax.pmean``-ed and the modules'
  BatchNorm reduces its statistics over the device axis (``bn_axis_name``). State, teachers
  and the rng enter unmapped (``in_axes=None``) and the new state leaves unmapped
  (``out_axes=None``), so both forms take and return the same arrays and the training loop,
  checkpoints and evaluation are shared. One process (pmap is in maintenance mode since
  JAX 0.8; jit is the path for pods).

``config.compute_dtype`` ('auto' | 'float32' | 'bfloat16'; 'auto' = bfloat16 on TPU and GPU,
float32 on CPU) and ``config.grad_accum_steps`` are read by :func:`compute_dtype` /
:func:`check_config`; ``config.remat`` rematerialises encoder blocks.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from kajax import parallel, xla_options

PARALLELISMS = ("jit", "pmap")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
# What 'auto' means per backend: accelerators have fast bfloat16 units (TPU MXUs, GPU tensor
# cores). CPU runs (the demo, the tests, debugging) stay float32, the precision their
# published numbers and PyTorch references use.
_AUTO_DTYPE = {"tpu": "bfloat16", "gpu": "bfloat16", "cuda": "bfloat16", "rocm": "bfloat16"}
AXIS = parallel.DATA_AXIS


def check_config(config: Any, devices: int | None = None) -> None:
  """Clear errors for ``compute_dtype``, ``parallelism``, ``grad_accum_steps``."""
  dtype = config.get("compute_dtype", "auto")
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(f"--config.compute_dtype={dtype!r}: choose one of {COMPUTE_DTYPES}.")
  mode = config.get("parallelism", "jit")
  if mode not in PARALLELISMS:
    raise ValueError(f"--config.parallelism={mode!r}: choose one of {PARALLELISMS}.")
  if mode == "pmap" and jax.process_count() > 1:
    raise ValueError("--config.parallelism='pmap' runs in one process; use 'jit' (the "
                     "default) for multi-host runs.")
  accum = config.get("grad_accum_steps", 1)
  devices = devices or jax.device_count()
  per_device = config.batch_size // max(1, devices)
  if config.batch_size % devices:
    return  # parallel.check_batch_size names that mistake
  if not isinstance(accum, int) or accum < 1 or per_device % accum:
    raise ValueError(
        f"--config.grad_accum_steps={accum!r} must be a positive integer that divides the "
        f"per-device batch ({config.batch_size} images over {devices} devices = "
        f"{per_device}); e.g. 1 or a divisor of {per_device}.")


def compute_dtype_name(config: Any, backend: str | None = None) -> str:
  """'float32' or 'bfloat16': ``config.compute_dtype`` with 'auto' resolved for ``backend``
  (default: JAX's default backend)."""
  name = config.get("compute_dtype", "auto")
  if name == "auto":
    return _AUTO_DTYPE.get(backend or jax.default_backend(), "float32")
  return name


def compute_dtype(config: Any) -> Any:
  """The modules' compute dtype (``None`` for float32: variables' own dtype)."""
  name = compute_dtype_name(config)
  return None if name == "float32" else jnp.dtype(name)


def bn_axis_name(config: Any) -> str | None:
  """The BatchNorm axis the modules need: the device axis under pmap, else None."""
  return AXIS if config.get("parallelism", "jit") == "pmap" else None


def compile_train_step(step: Callable[..., Any], parallelism: str, batch_argnum: int
                       ) -> Callable[..., Any]:
  """Compiles ``step`` (a ``functools.partial`` of a kajax step) for the chosen form.

  Args:
    step: ``step(state, [teachers,] batch, rng, *, axis_name=None) -> (state, metrics)``
      with every static argument bound.
    parallelism: 'jit' or 'pmap'.
    batch_argnum: position of the batch argument (1 for teacher steps, 2 for amalgamation
      steps, whose argument 1 is the frozen teachers).

  Returns:
    A callable with the step's positional signature, taking and returning global arrays;
    the state argument is donated.
  """
  if parallelism == "jit":
    return jax.jit(step, donate_argnums=(0,),
                   compiler_options=xla_options.train_step_options())
  if parallelism != "pmap":
    raise ValueError(f"parallelism={parallelism!r}: choose one of {PARALLELISMS}.")

  def mapped_step(*args):
    return step(*args, axis_name=AXIS)

  num_args = batch_argnum + 2  # state, [teachers,] batch, rng
  in_axes = tuple(0 if i == batch_argnum else None for i in range(num_args))
  mapped = jax.pmap(mapped_step, axis_name=AXIS, in_axes=in_axes, out_axes=(None, None))
  devices = jax.device_count()

  @functools.wraps(step)
  def run(*args):
    args = list(args)
    args[batch_argnum] = jax.tree_util.tree_map(
        lambda x: jnp.reshape(x, (devices, x.shape[0] // devices) + x.shape[1:]),
        args[batch_argnum])
    return mapped(*args)

  return run
