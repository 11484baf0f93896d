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

# What JAX's coordination service and its clients write (coordination_service*.cc, client.h) when
# a task is lost: any of these opens the error; the stack trace's first line closes its head.
_OPENERS = (
  b"Polled an error from coordination service",
  b"The following tasks are unhealthy",
  b"Terminating process because the JAX distributed service detected fatal errors",
)
_STACK = b"*** Check failure stack trace"
# A client that lost its connection to the service: the coordinator (process 0) is gone.
_UNREACHABLE = (b"Socket closed", b"failed to connect", b"Connection reset")
_TASK_ID = re.compile(rb"^\s*(\d+)\s*$")
_MAX_HELD_LINES = 32  # the head of the error is a few lines; never hold output longer


def lost_line(process_id, num_processes, workdir, lost) -> str:
  """The line written before the dump. `lost`: the processes the error names (may include this
  process itself when the coordinator is the one that died, and may be empty)."""
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


def lost_processes(held, process_id) -> list[int]:
  """The processes the head of the error names: the task ids it lists, or the coordinator when
  this process (not the coordinator) lost its connection to it."""
  lost = [int(m.group(1)) for m in map(_TASK_ID.match, held) if m]
  if not lost and process_id != 0 and any(u in line for line in held for u in _UNREACHABLE):
    lost = [0]
  return lost


def filter_stream(source, sink, process_id, num_processes, workdir):
  """Copies `source` to `sink` line by line, writing `lost_line` once, before the head of the
  coordination service's error (read whole first, for the processes it names)."""
  held, said = [], False
  for line in iter(source.readline, b""):
    if not said and (held or any(o in line for o in _OPENERS)):
      held.append(line)
      if _STACK in line or len(held) >= _MAX_HELD_LINES:
        said = _release(sink, held, process_id, num_processes, workdir)
        held = []
      continue
    sink.write(line)
    sink.flush()
  _release(sink, held, process_id, num_processes, workdir)


def _release(sink, held, process_id, num_processes, workdir) -> bool:
  if held:
    lost = lost_processes(held, process_id)
    sink.write(lost_line(process_id, num_processes, workdir, lost).encode())
    sink.writelines(held)
    sink.flush()
  return True


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
