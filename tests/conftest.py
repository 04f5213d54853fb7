"""Test setup: 8 fake CPU devices, set before JAX initialises (tests need a mesh), cheap
compilation, and one JAX compilation cache per test session."""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# No test may reach the network (TFDS tries to fetch metadata from GCS otherwise).
os.environ.setdefault("NO_GCE_CHECK", "true")
# Compiling is most of a test's time: the tests' networks are tiny and run a few steps, so
# XLA's backend optimisation (LLVM at -O2 and its expensive passes) costs far more than it
# saves. JAX's switch for that (XLA backend optimisation level 0, no expensive LLVM passes)
# halves the CPU time of a tiny demo run (193 s -> 84 s of CPU, 2026-12-04) and changes what
# is computed only by float rounding (after that run's few training steps its depth RMSE
# agrees to 1e-5 relative; its parsing scores, counts of a few hundred correct pixels, move
# by about 1%). Every test compares runs made under the same setting, or against references
# with tolerances. An environment variable, so that every ``kajax.main`` subprocess of a
# test inherits it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)

jax.config.update("jax_num_cpu_devices", 8)

_CACHE_VARIABLES = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config):
  """Shares compiled programs between tests, xdist workers and ``python -m kajax.main`` runs.

  Compiling is most of a tiny run's CPU time (a tiny demo run from scratch: ~200 s of CPU,
  ~50 s with every program in the cache), and many tests compile the same steps. The cache
  lives in a new directory for each session (removed at its end), so nothing compiled by an
  earlier session or another JAX version is reused; cached and fresh compilations give the
  same executables, so every result is what it would be without the cache.
  """
  if config.pluginmanager.hasplugin("xdist") and config.getoption("maxschedchunk") is None:
    # xdist's default hands each worker a quarter of the tests up front, so all the slow tests
    # (sorted first below) would go to one worker; instead each takes one more when it can.
    config.option.maxschedchunk = 1
  if not hasattr(config, "workerinput"):  # The controller (or a run without xdist).
    config.kajax_jax_cache = tempfile.mkdtemp(prefix="kajax-tests-jax-cache-")
    # Inherited by the xdist workers (started after this hook) and by every subprocess.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config.kajax_jax_cache
    os.environ.update(_CACHE_VARIABLES)
  # This process's own compilations (none has happened yet: tests are not collected).
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  for name, value in _CACHE_VARIABLES.items():
    jax.config.update(name.lower(), int(value))


def pytest_unconfigure(config):
  if hasattr(config, "kajax_jax_cache"):
    shutil.rmtree(config.kajax_jax_cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Slow tests (``@pytest.mark.slow``) first, so that with ``-n 2`` the longest ones start
  at once instead of last; the others keep their order."""
  del config
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
