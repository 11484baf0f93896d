"""fer_jax.models.kernels.cpu_conv: every conv / pool implementation against XLA's, and a whole
CNN's gradients in float32 against the same CNN in float64 with XLA's own gradients."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax.models import cnn
from fer_jax.models.kernels import cpu_conv


def relative_error(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def conv_and_grads(impl, x, kernel, dy):
  y, vjp = jax.vjp(lambda x, k: cpu_conv.conv2d_same(x, k, impl), x, kernel)
  return (y, *vjp(dy))


# (N, H, W, C_in, C_out): 'winograd' runs Winograd from 32 input channels (odd and non-multiple-of-4
# sizes exercise its tile padding), and the im2col path below that.
CONV_SHAPES = [(2, 9, 7, 32, 8), (3, 12, 12, 48, 16), (2, 5, 6, 3, 8), (1, 1, 1, 32, 4)]


@pytest.mark.parametrize("impl", ["im2col", "winograd"])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv_output_and_gradients_match_xla(impl, shape):
  n, h, w, c, o = shape
  kx, kk, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.nn.relu(jax.random.normal(kx, (n, h, w, c)))  # many exact zeros, as after ReLU
  kernel = jax.random.normal(kk, (3, 3, c, o)) / np.sqrt(9 * c)
  dy = jax.random.normal(kd, (n, h, w, o))
  want = jax.jit(conv_and_grads, static_argnums=0)("xla", x, kernel, dy)
  got = jax.jit(conv_and_grads, static_argnums=0)(impl, x, kernel, dy)
  for name, g, r in zip(("output", "input gradient", "kernel gradient"), got, want):
    assert g.shape == r.shape
    # float32 sums of up to 9 * C * N * H * W terms in a different order (Winograd: through its
    # transforms, whose largest coefficient is 8): 1e-5..3e-5 relative is what float32 gives.
    assert relative_error(g, r) < 2e-4, name


SHARDED = """
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from fer_jax.models.kernels import cpu_conv
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
x = jax.random.normal(jax.random.key(0), (8, 10, 10, 32))
k = jax.random.normal(jax.random.key(1), (3, 3, 32, 16)) / 17
def loss(x, k):
  y = jax.nn.relu(cpu_conv.conv2d_same(x, k, "winograd"))
  return jnp.sum(cpu_conv.max_pool_2x2(y, "winograd") ** 2)
grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
want = grads(x, k)
got = grads(jax.device_put(x, NamedSharding(mesh, P("data"))), k)
err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(got, want))
assert jax.device_count() == 4 and err < 1e-4, err
"""


def test_winograd_gradients_on_a_batch_sharded_over_devices():
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="4")
  proc = subprocess.run(
    [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_winograd_runs_only_where_it_pays():
  x32, x8 = jnp.zeros((1, 8, 8, 32)), jnp.zeros((1, 8, 8, 8))
  k3 = jnp.zeros((3, 3, 32, 4))
  assert cpu_conv._winograd_pays(x32, k3)
  assert not cpu_conv._winograd_pays(x8, jnp.zeros((3, 3, 8, 4)))
  assert not cpu_conv._winograd_pays(x32, jnp.zeros((5, 5, 32, 4)))
  assert not cpu_conv._winograd_pays(x32.astype(jnp.bfloat16), k3)


def test_resolve_impl():
  assert cpu_conv.resolve_impl("auto") == ("auto" if jax.default_backend() == "cpu" else "xla")
  assert cpu_conv.resolve_impl("im2col") == "im2col"
  with pytest.raises(ValueError, match="config.model.conv_impl"):
    cpu_conv.resolve_impl("fft")


def first_max_gradient(x, dy):
  """NumPy reference: each 2x2 window's gradient goes to its first maximum in row-major order;
  an odd last row / column (dropped by 'valid' pooling) gets none."""
  x, dy = np.asarray(x), np.asarray(dy)
  n, h, w, c = x.shape
  dx = np.zeros_like(x)
  for i in range(h // 2):
    for j in range(w // 2):
      win = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(n, 4, c)
      first = np.argmax(win, axis=1)  # NumPy's argmax returns the first maximum
      for b in range(n):
        for ch in range(c):
          r, s = divmod(first[b, ch], 2)
          dx[b, 2 * i + r, 2 * j + s, ch] = dy[b, i, j, ch]
  return dx


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (2, 7, 5, 4), (1, 3, 3, 2)], ids=str)
def test_max_pool_matches_xla_and_sends_ties_to_first_max(shape):
  kx, kd = jax.random.split(jax.random.key(1))
  # ReLU of a shifted normal: most windows hold several exact zeros, many are all zero.
  x = jax.nn.relu(jax.random.normal(kx, shape) - 0.8)
  dy = jax.random.normal(kd, (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
  y, vjp = jax.vjp(lambda x: cpu_conv.max_pool_2x2(x, "winograd"), x)
  y_xla, vjp_xla = jax.vjp(lambda x: cpu_conv.max_pool_2x2(x, "xla"), x)
  np.testing.assert_array_equal(y, y_xla)
  (dx,) = vjp(dy)
  np.testing.assert_array_equal(dx, first_max_gradient(x, dy))
  # Where no window ties, XLA's select_and_scatter must agree exactly.
  x_distinct = jax.random.normal(kx, shape)
  np.testing.assert_array_equal(
    jax.vjp(lambda x: cpu_conv.max_pool_2x2(x, "im2col"), x_distinct)[1](dy)[0],
    jax.vjp(lambda x: cpu_conv.max_pool_2x2(x, "xla"), x_distinct)[1](dy)[0],
  )


def small_cnn(bn_placement, conv_impl, dtype):
  # 14x14 -> pool 7x7 (odd: the pool drops a row and a column) -> pool 3x3. Widths 8 then 32 put
  # the im2col path on the first three convs and Winograd (7x7 in 4x4 tiles) on the last.
  return cnn.CNN(
    num_classes=4,
    widths=(8, 32),
    convs_per_block=2,
    bn_placement=bn_placement,
    pool_after=(True, True),
    block_dropouts=(0.0, 0.0),
    head_pool="flatten",
    head_pre_dropout=0.0,
    dense_widths=(16,),
    dense_bn=True,
    dense_dropouts=(0.0,),
    conv_impl=conv_impl,
    dtype=dtype,
  )


def loss_gradients(model, variables, images, labels):
  def loss(params):
    logits, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      images,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  return jax.jit(jax.grad(loss))(variables["params"])


def gradient_error(grads, reference):
  """Worst over parameters of max |g - ref| / max |ref|, in float64.

  A conv bias followed by BN has a zero gradient in exact arithmetic, so leaves whose gradient
  is below 0.1 % of the largest are measured on that absolute scale instead of their own.
  """
  floor = 1e-3 * max(np.max(np.abs(r)) for r in jax.tree.leaves(reference))
  errors = jax.tree.map(
    lambda g, r: np.max(np.abs(np.asarray(g, np.float64) - r)) / max(np.max(np.abs(r)), floor),
    grads,
    reference,
  )
  return float(max(jax.tree.leaves(errors)))


# conv_relu_bn (B, B+, B++): ReLU zeros become BN-shifted ties that still reach the pool;
# conv_bn_relu (Model 0): the pool sees ReLU's zeros directly.
@pytest.mark.parametrize("bn_placement", ["conv_relu_bn", "conv_bn_relu"])
def test_whole_cnn_gradients_match_float64_xla(bn_placement):
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (4, 14, 14, 1)).astype(np.float32)
  labels = np.array([0, 1, 2, 3], np.int32)
  variables = small_cnn(bn_placement, "xla", jnp.float32).init(
    jax.random.key(0), images, train=False
  )
  with jax.enable_x64(True):
    variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    reference = loss_gradients(
      small_cnn(bn_placement, "xla", jnp.float64), variables64, images.astype(np.float64), labels
    )
    reference = jax.tree.map(np.asarray, reference)
  error = gradient_error(
    loss_gradients(small_cnn(bn_placement, "winograd", jnp.float32), variables, images, labels),
    reference,
  )
  # float32 itself is the limit: over 6 seeds XLA's own float32 gradients were 3e-6..5e-5 from
  # float64 with BN after ReLU and 2e-4..5e-4 with BN before it (4-image batch statistics), and
  # Winograd F(4x4, 3x3) (transform coefficients up to 8) at most 2.5e-4 / 5.5e-4. A misrouted
  # max-pool gradient or a wrong transform term is an O(1) error in the leaves it touches.
  assert error < 1e-3
