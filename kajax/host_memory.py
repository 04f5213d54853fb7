"""Hands host memory back to the operating system between the phases of a run.

Two things keep a finished phase's memory resident on a CPU host, measured on a full-size
NYUv2 amalgamation (``kajax.main`` on ``configs/nyu.py``, batch 8; README "Speed"):

* reference cycles. After the branch search ~1.7 GB stayed resident until an explicit
  ``gc.collect()``; the cycle it broke held the search's jitted function, the exhausted grain
  iterators with the ``StopIteration`` they keep (a traceback, and through it frames), and a
  few arrays. Python's cycle collector runs only when its allocation counters say so, which
  a phase of few, large allocations may not trigger for a long time.
* glibc's allocator. XLA's buffers below glibc's mmap threshold come from malloc arenas; when
  they are freed, glibc keeps the pages for reuse (1.2 GB after the block-wise phase).
  ``malloc_trim(0)`` returns every whole free page to the system.

:func:`release` does both. It takes 0.3-0.5 s in a run's process (measured: the collection
is most of it), nothing next to a phase, and only collects garbage on a C library without
``malloc_trim`` (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
  """glibc's ``malloc_trim``, or None where the C library has none."""
  name = ctypes.util.find_library("c")
  try:
    return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
  except (OSError, AttributeError):
    return None


def release() -> bool:
  """Collects reference cycles, then asks glibc to return free heap pages to the system.

  Returns:
    Whether ``malloc_trim`` ran (False on C libraries without it).
  """
  gc.collect()
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True
