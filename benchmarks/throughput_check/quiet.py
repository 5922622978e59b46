"""Makes this process time steadily; call `quiet_process` before jax is imported.

See "Why one device, one thread, no async dispatch, a greedy allocator" in
the package docstring. `ONE_THREAD` records whether it was done, as part of
the execution set-up a baseline is comparable under (`figures.execution`).
"""

from __future__ import annotations

import ctypes
import os
import sys

ONE_THREAD = False  # set by `quiet_process`


def quiet_process() -> bool:
  """Quiets this process (see the module docstring); returns (and records) whether it did.

  Keeps glibc's allocator from returning freed memory to the OS, then starts
  XLA's CPU client single-threaded and synchronous. XLA sizes its CPU thread
  pool from the CPUs the process may run on when the client starts, so the
  client starts while the process may use one CPU, which is then given back:
  the scheduler may still run the one thread on whichever core is free. Not
  done where jax was imported first (a test process importing the check):
  its client may already exist.
  """
  global ONE_THREAD
  if "jax" in sys.modules or not hasattr(os, "sched_setaffinity"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: never trim the heap's top
    libc.mallopt(-3, 2**25)  # M_MMAP_THRESHOLD: buffers up to 32 MB from the heap, no mmap
  except (OSError, AttributeError):
    pass  # not glibc
  cpus = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {min(cpus)})
  try:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    jax.devices()
  finally:
    os.sched_setaffinity(0, cpus)
  ONE_THREAD = True
  return True
