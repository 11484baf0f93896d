"""fer_jax.models.layers: the CPU depthwise convolution (shifted multiply-adds) equals XLA's grouped
one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fer_jax.models import layers
from fer_jax.models.kernels import cpu_conv


@pytest.mark.parametrize(
  "shape,k,stride,padding",
  [
    ((2, 9, 9, 5), 3, 1, "SAME"),  # mini-XCEPTION's separable convs
    ((2, 10, 10, 4), 5, 2, ((1, 2), (1, 2))),  # EfficientNet's stride-2 blocks after correct_pad
    ((1, 7, 7, 3), 3, 2, "VALID"),
    ((2, 8, 8, 6), 3, 1, "VALID"),
  ],
)
def test_depthwise_shift_add_matches_grouped_conv_values_and_gradients(shape, k, stride, padding):
  rng = np.random.default_rng(0)
  c = shape[-1]
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, c, 1)), jnp.float32)

  def grouped(x, w):
    return lax.conv_general_dilated(
      x,
      w.reshape(k, k, 1, c),
      (stride, stride),
      padding,
      dimension_numbers=cpu_conv.NHWC_HWIO,
      feature_group_count=c,
    )

  def shift_add(x, w):
    return layers._depthwise_shift_add(x, w[:, :, :, 0], stride, padding)

  # jitted as the models run them (op by op, the k x k shifts and their gradients take seconds)
  def gradients(f):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))(x, w)

  np.testing.assert_allclose(jax.jit(shift_add)(x, w), grouped(x, w), rtol=1e-5, atol=1e-5)
  for got, want in zip(gradients(shift_add), gradients(grouped)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
