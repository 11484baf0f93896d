"""The benchmarks' clock."""

import os
import time


def timed(fn):
  """(fn(), wall seconds, CPU seconds of this process and its finished children).

  On a shared machine the wall time depends on the other load; the CPU time much less so,
  and CPU time / cores is what the wall time would be on idle cores with perfect scaling.
  """
  start, start_cpu = time.perf_counter(), _cpu_seconds()
  out = fn()
  return out, time.perf_counter() - start, _cpu_seconds() - start_cpu


def _cpu_seconds():
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system
