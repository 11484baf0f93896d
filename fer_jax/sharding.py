"""Device placement: one mesh axis 'data' over every device, params replicated, batches sharded.

On several hosts each process feeds its own rows of every global batch
(`jax.make_array_from_process_local_data`); all processes hold the same (small) dataset and
draw the same epoch order from the seed, so no coordination is needed beyond the mesh.
"""
import jax
from jax.sharding import NamedSharding, PartitionSpec as P


def configure_backend():
  """Per-backend JAX settings; call after jax.distributed.initialize(), before tracing anything.

  On XLA:CPU the partitionable threefry PRNG makes every program that draws random numbers
  (init, dropout, augmentation) compile several times slower (docs/performance.md) and there is
  nothing to partition on one host's CPU; accelerators keep the default.
  """
  if jax.default_backend() == "cpu":
    jax.config.update("jax_threefry_partitionable", False)


def make_mesh():
  # Auto axes: GSPMD propagates the batch sharding through the model (jax.make_mesh's
  # default became Explicit sharding, which every op would have to spell out).
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh):
  return NamedSharding(mesh, P())


def data_sharded(mesh):
  return NamedSharding(mesh, P("data"))


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))


def check_batch_size(batch_size, field):
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(f"{field}={batch_size} must be a multiple of the {n} devices")


def shard_batch(mesh, *arrays):
  """Global host arrays (same on every process) -> arrays sharded over 'data'.

  Each process contributes only its own contiguous slice of the rows.
  """
  sharding = data_sharded(mesh)
  n, pid = jax.process_count(), jax.process_index()
  out = []
  for a in arrays:
    rows = len(a) // n
    out.append(jax.make_array_from_process_local_data(sharding, a[pid * rows:(pid + 1) * rows], a.shape))
  return out
