"""A one-line progress counter on stderr (`loading images: 12000/25000`).

Hand-written because it is ten lines and the project has no tqdm dependency: on a terminal it
redraws one line; in a log (CI, nohup) it prints a line roughly every 10 % so logs stay short.
"""

import sys
import time


class Progress:
  def __init__(self, label, total, stream=None):
    self.label, self.total, self.done = label, total, 0
    self.stream = stream or sys.stderr
    self.tty = getattr(self.stream, "isatty", lambda: False)()
    self._last_decile = -1
    self._start = time.perf_counter()

  def update(self, n):
    self.done += n
    if self.tty:
      self.stream.write(f"\r{self.label}: {self.done}/{self.total}")
    elif self.done < self.total and self.done * 10 // self.total > self._last_decile:
      self._last_decile = self.done * 10 // self.total
      self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
    self.stream.flush()

  def close(self):
    seconds = time.perf_counter() - self._start
    end = "\n" if self.tty else ""
    self.stream.write(f"{end}{self.label}: {self.done}/{self.total} in {seconds:.1f} s\n")
    self.stream.flush()
