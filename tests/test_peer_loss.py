"""The line a distributed process writes before JAX's abort when a peer dies (peer_loss), on
the coordination service's own words as JAX 0.10 writes them (the two-process kill is in
test_multiprocess)."""

import io

from fer_jax.platform import peer_loss

# What process 0 (the coordinator) wrote when process 1 was killed, shortened.
PEER_DIED = b"""epoch 1/30  train loss 2.0107 acc 25.00%
E1204 23:05:27.643439 1719 coordination_service.cc:1549] [1714] Use error polling to propagate \
the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped \
sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error.
E1204 23:05:27.644546 1730 coordination_service_agent.cc:289] Polled an error from coordination \
service (this can be an error from this or another task).
F1204 23:05:27.644711 1730 client.h:80] Terminating process because the JAX distributed service \
detected fatal errors. absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped \
sending heartbeats):
1
The tasks have crashed.
*** Check failure stack trace: ***
"""


def _filtered(text, process_id=0, num_processes=2):
  sink = io.BytesIO()
  peer_loss.filter_stream(io.BytesIO(text), sink, process_id, num_processes, "runs/x")
  return sink.getvalue()


def test_a_dead_peer_is_named_once_before_the_dump_and_nothing_is_lost():
  out = _filtered(PEER_DIED)
  line = peer_loss.lost_line(0, 2, "runs/x", [1]).encode()
  assert line.startswith(b"error: process 0: the distributed run lost process 1 (killed")
  assert out.count(b"error: process 0:") == 1
  assert out.replace(line, b"") == PEER_DIED  # every byte forwarded, in order
  assert out.index(line) == PEER_DIED.index(b"E1204")


def test_the_coordinators_death_lists_this_process_too_and_names_the_coordinator():
  text = (
    b"F1204 client.h:80] Terminating process because the JAX distributed service detected fatal "
    b"errors. UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n"
    b"1\n0\nThe tasks have crashed.\n"
  )
  out = _filtered(text, process_id=1)
  assert out.startswith(b"error: process 1: the distributed run lost process 0 (the coordinator)")
  assert out.endswith(text)


def test_a_lost_connection_to_the_coordinator_names_it():
  # What process 1 wrote when process 0 was killed mid-epoch (the service's socket closed).
  text = (
    b"E1205 00:42:35.426989 18712 coordination_service_agent.cc:289] Polled an error from "
    b"coordination service (this can be an error from this or another task).\n"
    b"F1205 00:42:35.427027 18712 client.h:80] Terminating process because the JAX distributed "
    b"service detected fatal errors. This most likely indicates that another task died\n"
    b"Additional GRPC error information from remote target coordination_service while calling "
    b"/xla.coordination.CoordinationService/PollForError:\n"
    b':UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}\n'
    b"*** Check failure stack trace: ***\n"
    b"    @     0x7fbba4f40634  absl::log_internal::LogMessage::SendToLog()\n"
  )
  out = _filtered(b"progress\n" + text, process_id=1)
  line = peer_loss.lost_line(1, 2, "runs/x", [0]).encode()
  assert b"lost process 0 (the coordinator)" in line
  assert out == b"progress\n" + line + text


def test_other_fatal_errors_get_the_general_line_and_ordinary_output_passes_untouched():
  plain = b"W0000 some warning\nprogress\n"
  assert _filtered(plain) == plain
  text = b"F1204 client.h:80] Terminating process because the JAX distributed service detected "
  text += b"fatal errors. DEADLINE_EXCEEDED: barrier timed out\n"
  out = _filtered(text, process_id=None, num_processes=None)
  assert out.startswith(b"error: this process: the distributed run lost a process of this run")
  assert b"start all the processes again" in out and out.endswith(text)


def test_a_list_cut_off_at_the_end_of_the_stream_still_gets_its_line():
  text = b"E0 x] The following tasks are unhealthy (stopped sending heartbeats):\n3\n"
  out = _filtered(text, process_id=0, num_processes=4)
  assert out.startswith(b"error: process 0: the distributed run lost process 3 (")
  assert out.endswith(text)
