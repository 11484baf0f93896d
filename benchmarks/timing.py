"""The benchmarks' clock."""

import os
import time


def timed(fn):
  """(fn(), wall seconds, CPU seconds of this process and its finished children).

  On a shared machine the wall time depends on the other load; the CPU time much less so,
  and CPU time / cores is what the wall time would be on idle cores with perfect scaling.
  """
  cpu = lambda t: t.user + t.system + t.children_user + t.children_system  # noqa: E731
  start, start_cpu = time.perf_counter(), cpu(os.times())
  out = fn()
  return out, time.perf_counter() - start, cpu(os.times()) - start_cpu
