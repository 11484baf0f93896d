"""Device placement: a mesh 'member' x 'data' over every device; params replicated within a member
group, batches sharded over its 'data' devices. A plain run has one member group.

On several hosts each process feeds its own devices' rows of every global batch
(`jax.make_array_from_callback`); all processes hold the same (small) dataset and draw the same
epoch order from the seed, so no coordination is needed beyond the mesh. Host code reads device
values only through `to_host`: a global array that spans other processes' devices cannot be read
directly.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def configure_backend():
  """Per-backend JAX settings; call after jax.distributed.initialize(), before tracing anything.

  On XLA:CPU the partitionable threefry PRNG makes every program that draws random numbers
  (init, dropout, augmentation) compile several times slower (docs/performance.md) and there is
  nothing to partition on one host's CPU; accelerators keep the default.
  """
  if jax.default_backend() == "cpu":
    jax.config.update("jax_threefry_partitionable", False)


def make_mesh(member_groups=1) -> jax.sharding.Mesh:
  """Axes 'member' (groups of devices that each train some members of a vectorized run; 1 for a
  plain run) x 'data' (the devices of a group, which split its batches)."""
  # Auto axes: GSPMD propagates the batch sharding through the model (jax.make_mesh's
  # default became Explicit sharding, which every op would have to spell out).
  n = jax.device_count()
  return jax.make_mesh(
    (member_groups, n // member_groups),
    ("member", "data"),
    axis_types=(jax.sharding.AxisType.Auto,) * 2,
  )


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh, stacked=False, steps=False) -> NamedSharding:
  """Rows over 'data'; `stacked`: members over 'member', each member's rows (second axis) over
  'data'; `steps`: the same behind a leading axis of train steps (not split)."""
  return NamedSharding(mesh, P(*[None] * steps, *(("member", "data") if stacked else ("data",))))


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))


def put_members(tree, mesh):
  """A tree stacked over members (leading axis) -> the members spread over the 'member' groups."""
  members = NamedSharding(mesh, P("member"))

  def put(x):
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
      return jax.device_put(x, members)
    # A process-local value (the same on every process) becomes a global array shard by shard.
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, members, lambda index: value[index])

  return jax.tree.map(put, tree)


def check_batch_size(batch_size, field):
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(f"{field}={batch_size} must be a multiple of the {n} devices")


def shard_batch(mesh, *arrays, stacked=False, steps=False) -> list[jax.Array]:
  """Global host arrays (same on every process) -> arrays sharded over 'data' (their rows, or
  with `stacked` their second axis, behind a leading axis of members; with `steps` behind a
  leading axis of train steps too).

  Each process transfers only the rows of its own devices.
  """
  sharding = data_sharded(mesh, stacked, steps)
  return [
    jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in arrays
  ]


def to_host(tree):
  """Device arrays -> NumPy, the same full values on every process (a collective when sharded
  over several processes, so every process must call it at the same point)."""

  def fetch(x):
    if x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(fetch, tree)
