"""The processes of one distributed run (`launch.py --distributed`, docs/scaling.md).

Their flags are checked before `jax.distributed.initialize` (one line, not JAX's traceback); each
says what it waits for while its peers connect; once connected, all of them check that they hold
the same settings, so that processes started with different overrides never train together. The
messages are listed in docs/troubleshooting.md.
"""

import json

from fer_jax.config_loading import field_differences, leaves

# Settings of one host alone: where it caches the decoded data and how many threads read it.
HOST_LOCAL_FIELDS = ("data.cache_dir", "data.num_workers")

_SETTINGS_KEY = "fer_jax/settings/"
_VERDICT_KEY = "fer_jax/settings_verdict"


class DistributedError(ValueError):
  """A distributed run that cannot start as asked; the message says what to do."""


def check_flags(coordinator, num_processes, process_id):
  """Refuses flags that jax.distributed.initialize would reject with a traceback (flags left
  unset are detected by JAX from the cluster: Cloud TPU, SLURM, Open MPI, Kubernetes)."""
  if coordinator is not None:
    port = coordinator.rpartition(":")[2]
    if ":" not in coordinator or not port.isdigit() or not coordinator.rpartition(":")[0]:
      raise DistributedError(
        f"--coordinator_address={coordinator}: expected HOST:PORT (process 0's host and a free "
        "port, the same on every process)"
      )
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f"--num_processes={num_processes}: must be >= 1")
  if process_id is not None:
    if num_processes is not None and not 0 <= process_id < num_processes:
      raise DistributedError(
        f"--process_id={process_id} with --num_processes={num_processes}: the processes are "
        f"numbered 0 to {num_processes - 1}; give each process its own number in that range"
      )
    if process_id < 0:
      raise DistributedError(f"--process_id={process_id}: must be >= 0")


def waiting_line(coordinator, num_processes, process_id, timeout_s) -> str:
  """What a process prints before it connects: a lone process otherwise waits in silence."""
  who = f"process {process_id}" if process_id is not None else "this process"
  peers = f"all {num_processes} processes" if num_processes is not None else "all processes"
  at = (
    f"the coordinator at {coordinator}"
    if coordinator is not None
    else "the coordinator (found from the cluster's environment)"
  )
  return (
    f"{who}: waiting up to {timeout_s} s (--initialization_timeout) for {peers} to connect to {at}"
  )


def initialize(
  coordinator, num_processes, process_id, initialization_timeout, heartbeat_timeout, workdir
):
  """Checks the flags, says what it waits for, then jax.distributed.initialize(); from then on a
  lost peer is announced in one line before JAX's abort (peer_loss)."""
  import jax

  from fer_jax.platform import peer_loss

  check_flags(coordinator, num_processes, process_id)
  peer_loss.route_stderr(process_id, num_processes, workdir)
  print(waiting_line(coordinator, num_processes, process_id, initialization_timeout), flush=True)
  try:
    jax.distributed.initialize(
      coordinator,
      num_processes,
      process_id,
      initialization_timeout=initialization_timeout,
      heartbeat_timeout_seconds=heartbeat_timeout,
    )
  except (ValueError, TypeError) as e:  # what JAX could not detect from the environment
    raise DistributedError(
      f"--distributed: {e} (no cluster detected: pass --coordinator_address=HOST:PORT "
      "--num_processes=N --process_id=I)"
    ) from None


def settings_of(config, workdir) -> dict:
  """{field: value} that must be equal on every process (JSON values, tuples as lists)."""
  values = {k: v for k, v in leaves(config).items() if k not in HOST_LOCAL_FIELDS}
  values["--workdir"] = workdir
  return json.loads(json.dumps(values, default=str))


def check_same_settings(config, workdir, timeout_s):
  """Refuses, on every process alike, a run whose processes hold different settings.

  Each process posts its settings in the distributed key-value store; process 0 compares them
  with its own and posts one verdict, which every process reads: all of them refuse together
  (and exit together, so none waits for the others at shutdown).
  """
  import jax
  from jax._src import distributed

  client = distributed.global_state.client
  me, n = jax.process_index(), jax.process_count()
  mine = settings_of(config, workdir)
  client.key_value_set(f"{_SETTINGS_KEY}{me}", json.dumps(mine))
  timeout_ms = timeout_s * 1000
  if me == 0:
    problems = []
    for i in range(1, n):
      theirs = json.loads(client.blocking_key_value_get(f"{_SETTINGS_KEY}{i}", timeout_ms))
      diffs = field_differences(mine, theirs)
      if diffs:
        problems.append(f"process {i} differs from process 0 in {'; '.join(diffs)}")
    client.key_value_set(_VERDICT_KEY, " | ".join(problems))
  verdict = client.blocking_key_value_get(_VERDICT_KEY, timeout_ms)
  if verdict:
    raise DistributedError(
      f"the processes of this run hold different settings ({verdict}); start every process "
      "with the same --config, overrides and --workdir"
    )
