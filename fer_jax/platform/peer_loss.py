"""One line of our own before JAX's dump when a process of a distributed run dies.

When a peer or the coordinator dies, JAX's coordination service aborts every other process from
a C++ thread (about 70 lines: a check failure, its stack, Python's thread dump; exit code 134).
No Python code runs before that abort (JAX 0.10 offers no callback from Python), so a process
watching from inside cannot speak first. Instead, each process of a `--distributed` run sends its
stderr through this small filter process: it forwards every byte unchanged, and before the
coordination service's error it writes one line saying which process was lost and how to resume.
The filter ignores Ctrl-C and SIGTERM (the run's own handling of them is unchanged) and ends when
the run's last writer closes stderr.

  python -m fer_jax.platform.peer_loss --process_id=1 --num_processes=2 --workdir=runs/x
"""

import argparse
import os
import re
import signal
import subprocess
import sys

# What the coordination service writes (coordination_service.cc, client.h) when a task is lost.
_UNHEALTHY = b"The following tasks are unhealthy"
_FATAL = b"Terminating process because the JAX distributed service detected fatal errors"
_TASK_ID = re.compile(rb"^\s*(\d+)\s*$")
_MAX_HELD_LINES = 32  # the list of lost tasks follows the first line; never hold output longer


def lost_line(process_id, num_processes, workdir, lost) -> str:
  """The line written before the dump. `lost`: the task ids the service named (may include
  this process itself when the coordinator is the one that died, and may be empty)."""
  me = f"process {process_id}" if process_id is not None else "this process"
  others = sorted(set(lost) - {process_id})
  if not others:
    who = "a process of this run"
  elif others == [0]:
    who = "process 0 (the coordinator)"
  else:
    names = ", ".join(str(i) for i in others)
    who = f"process {names}" + (" (the coordinator among them)" if 0 in others else "")
  count = f"all {num_processes}" if num_processes is not None else "all the"
  return (
    f"error: {me}: the distributed run lost {who} (killed, crashed, out of memory or "
    f"unreachable), so JAX stops every process now; start {count} processes again with the "
    f"same command and training resumes from the last checkpoint in {workdir}\n"
  )


def filter_stream(source, sink, process_id, num_processes, workdir):
  """Copies `source` to `sink` line by line, writing `lost_line` once, before the first line
  of the coordination service's error (with the lost task ids read from the lines after it)."""
  held, lost, said = [], [], False
  for line in iter(source.readline, b""):
    if not said and not held and (_UNHEALTHY in line or _FATAL in line):
      held.append(line)
      if _UNHEALTHY not in line:  # the fatal line without the list: nothing more to wait for
        held, said = _release(sink, held, process_id, num_processes, workdir, lost), True
      continue
    if held:
      held.append(line)
      match = _TASK_ID.match(line)
      if match and len(held) < _MAX_HELD_LINES:
        lost.append(int(match.group(1)))
      else:
        held, said = _release(sink, held, process_id, num_processes, workdir, lost), True
      continue
    sink.write(line)
    sink.flush()
  _release(sink, held, process_id, num_processes, workdir, lost)


def _release(sink, held, process_id, num_processes, workdir, lost):
  if held:
    sink.write(lost_line(process_id, num_processes, workdir, lost).encode())
    sink.writelines(held)
    sink.flush()
  return []


def route_stderr(process_id, num_processes, workdir):
  """Sends this process's stderr (fd 2, C++ included) through the filter from now on."""
  flags = [f"--workdir={workdir}"]
  if process_id is not None:
    flags.append(f"--process_id={process_id}")
  if num_processes is not None:
    flags.append(f"--num_processes={num_processes}")
  sys.stderr.flush()
  proc = subprocess.Popen(
    [sys.executable, "-m", "fer_jax.platform.peer_loss", *flags], stdin=subprocess.PIPE
  )
  os.dup2(proc.stdin.fileno(), 2)
  proc.stdin.close()  # fd 2 keeps the pipe open; the filter ends when the run's writers exit


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args(argv)
  # Ctrl-C reaches the whole process group: the run handles it and says so through this filter.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  filter_stream(
    sys.stdin.buffer, sys.stderr.buffer, args.process_id, args.num_processes, args.workdir
  )


if __name__ == "__main__":
  main()
