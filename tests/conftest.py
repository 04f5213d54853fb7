"""Test setup: 8 fake CPU devices, set before JAX initialises (tests need a mesh)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# No test may reach the network (TFDS tries to fetch metadata from GCS otherwise).
os.environ.setdefault("NO_GCE_CHECK", "true")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)

jax.config.update("jax_num_cpu_devices", 8)
