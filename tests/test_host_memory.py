"""Tests for kajax.host_memory: memory held by a reference cycle, and by glibc's free lists,
goes back to the system. The resident set size is read from /proc (Linux only)."""

import gc
import sys

import numpy as np
import pytest

from kajax import host_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the resident set size from /proc/self/status")

MIB = 2**20


def _rss_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  raise AssertionError("no VmRSS line")


def _cycle_holding(array):
  """The real case in miniature: an exhausted iterator that keeps its StopIteration, whose
  traceback's frame holds the iterator (and whatever else the frame's locals hold)."""

  class Iterator:

    def __next__(self):
      payload = array  # noqa: F841  (held by this frame's locals)
      try:
        raise StopIteration
      except StopIteration as e:
        self.error = e  # error -> traceback -> this frame -> self: a cycle
        raise

  it = Iterator()
  with pytest.raises(StopIteration):
    next(it)


def test_release_frees_memory_held_by_a_reference_cycle():
  gc.collect()
  gc.disable()  # so that only release() can collect the cycle
  try:
    before = _rss_mib()
    _cycle_holding(np.ones(300 * MIB // 8))  # 300 MiB, touched
    held = _rss_mib()
    assert held - before > 250, "the cycle's array should be resident before release()"
    host_memory.release()
    after = _rss_mib()
  finally:
    gc.enable()
  assert held - after > 250, (before, held, after)


@pytest.mark.skipif(host_memory._malloc_trim() is None,  # pylint: disable=protected-access
                    reason="the C library has no malloc_trim (not glibc)")
def test_release_returns_freed_heap_pages_to_the_system():
  gc.collect()
  # 64 KiB blocks come from malloc's heap (below the mmap threshold). Keeping every 16th one
  # pins the heap's top, so free() alone cannot shrink it: the freed pages stay resident.
  blocks = [bytearray(64 * 1024) for _ in range(6000)]  # ~375 MiB
  for b in blocks:
    b[::4096] = b"\1" * len(b[::4096])  # touch every page
  kept = blocks[15::16]
  del blocks
  gc.collect()
  held = _rss_mib()  # ~350 MiB freed but resident (free() alone gives back nothing here)
  assert host_memory.release() is True
  after = _rss_mib()
  assert held - after > 100, (held, after)
  assert len(kept) == 375  # the pinned blocks are still alive
