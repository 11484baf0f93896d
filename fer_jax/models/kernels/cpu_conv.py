"""Convolution and pooling primitives used by the CNN family, with gradients fast on XLA:CPU.

`conv_impl` (config.model.conv_impl, resolved by `resolve_impl`):
  'auto'      on CPU, per conv layer shape the implementation below measured fastest on this
              CPU (fer_jax/models/kernels/conv_choice.py; resolved in
              fer_jax.models.cnn.Conv3x3); off CPU 'xla'.
  'xla'       XLA's own kernels for everything.
  'im2col'    XLA's forward convolution and input gradient; the weight gradient as one matrix
              product over shifted copies of the input (XLA:CPU's own weight gradient takes 2-12x
              as long as its forward pass on these layers).
  'winograd'  3x3 convolutions with >= 32 input channels computed with Winograd's
              F(4x4, 3x3) in forward, input gradient and weight gradient, 4x fewer multiplications
              than direct convolution; other convolutions, and every one in bfloat16, as
              'im2col'.
Any impl but 'xla' also gives 2x2 max-pool a backward pass from the argmax found in the forward
pass (XLA:CPU's `select_and_scatter` is slow). Measurements: docs/performance.md.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NHWC_HWIO = ("NHWC", "HWIO", "NHWC")  # dimension numbers of every conv here
IMPLS = ("xla", "im2col", "winograd")


def resolve_impl(conv_impl) -> str:
  """config.model.conv_impl -> what the model runs: one of IMPLS, or 'auto' (per layer, on CPU)."""
  if conv_impl == "auto":
    return "auto" if jax.default_backend() == "cpu" else "xla"
  if conv_impl not in IMPLS:
    raise ValueError(
      f"config.model.conv_impl: unknown {conv_impl!r}; use auto | {' | '.join(IMPLS)}"
    )
  return conv_impl


def conv2d_same(x, kernel, impl="xla"):
  """3x3 (or any odd k) stride-1 'same' convolution, NHWC x HWIO; `impl` one of IMPLS."""
  if impl == "winograd" and _winograd_pays(x, kernel):
    return _conv_winograd(x, kernel)
  if impl in ("im2col", "winograd"):
    return _conv_im2col(x, kernel)
  return _conv(x, kernel)


def max_pool_2x2(x, impl="xla"):
  """2x2 max-pool, stride 2, 'valid' padding (Keras MaxPooling2D default)."""
  if impl == "xla":
    # Flax's pool is this reduce_window; converters (jax2onnx, fer_jax.export) know it as a pool.
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
  # Keras 'valid' drops an odd last row/column; the slice's gradient pads it back with zeros.
  return _max_pool_even(x[:, : x.shape[1] - x.shape[1] % 2, : x.shape[2] - x.shape[2] % 2])


def _conv(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC_HWIO)


def _input_grad_kernel(kernel):
  """The input gradient of a 'same' stride-1 conv is the 'same' conv of dy with this kernel:
  rotated 180 degrees, input and output channels swapped."""
  return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


# ---- im2col weight gradient ----


def _im2col_weight_grad(x, dy, k):
  """Sum over (n, h, w) of the k*k shifted copies of x times dy: one matrix product."""
  n, h, w, c = x.shape
  r = k // 2
  xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
  patches = jnp.concatenate(
    [xp[:, i : i + h, j : j + w] for i in range(k) for j in range(k)], axis=-1
  )
  return lax.dot_general(patches, dy, (((0, 1, 2), (0, 1, 2)), ((), ()))).reshape(
    k, k, c, dy.shape[-1]
  )


@jax.custom_vjp
def _conv_im2col(x, kernel):
  return _conv(x, kernel)


def _conv_im2col_fwd(x, kernel):
  return _conv(x, kernel), (x, kernel)


def _conv_im2col_bwd(res, dy):
  x, kernel = res
  return _conv(dy, _input_grad_kernel(kernel)), _im2col_weight_grad(x, dy, kernel.shape[0]).astype(
    kernel.dtype
  )


_conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


# ---- Winograd F(4x4, 3x3) ----
# Lavin & Gray 2016: each 4x4 output tile is Y = A^T [(G g G^T) * (B^T d B)] A for the 6x6 input
# tile d around it, so the convolution becomes 36 matrix products [tiles, C] x [C, O] (one batched
# product) between an input and an output transform. The transforms are written as small matrix
# products along a leading axis too: as XLA:CPU elementwise fusions they were either re-read from
# memory 36 times or recomputed inside their consumers' fusions (measured: slower than im2col).
_TILE = 4  # output tile side; input tiles are 6x6 at stride 4
_BT = np.array(
  [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
  ],
  np.float64,
)
_G = np.array(
  [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
  ],
  np.float64,
)
_AT = np.array(
  [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64
)


def winograd_dtype(dtype) -> bool:
  """Whether 'winograd' computes in `dtype`: in 16-bit floats F(4x4, 3x3) would lose too much
  precision, so there it runs 'im2col'."""
  return jnp.dtype(dtype) in (np.float32, np.float64)


def _winograd_pays(x, kernel):
  # Below 32 input channels the transforms cost more than the products save (docs/performance.md).
  return kernel.shape[:2] == (3, 3) and x.shape[-1] >= 32 and winograd_dtype(x.dtype)


def _along(matrix, stacked):
  """`matrix` [p, q] applied along the leading axis (size q) of `stacked`."""
  return jnp.tensordot(jnp.asarray(matrix, stacked.dtype), stacked, 1)


def _sandwich(matrix, grid):
  """matrix @ grid @ matrix^T for a small grid (list of lists) of arrays, as sums of scaled arrays.

  Used on kernel-sized arrays, where this is cheaper than a product XLA would transpose for.
  """

  def combine(items):
    return [
      functools.reduce(jnp.add, [it * float(c) for c, it in zip(row, items) if c]) for row in matrix
    ]

  cols = [combine([row[j] for row in grid]) for j in range(len(grid[0]))]
  return [combine([col[r] for col in cols]) for r in range(len(matrix))]


def _tile_counts(h, w):
  return -(-h // _TILE), -(-w // _TILE)


def _winograd_input(x):
  """B^T d B for every 6x6 input tile d: [36, tiles, C], tiles ordered by (n, tile row, col)."""
  n, h, w, c = x.shape
  th, tw = _tile_counts(h, w)
  a = _TILE + 2
  xp = jnp.pad(x, ((0, 0), (1, _TILE * th + 1 - h), (1, _TILE * tw + 1 - w), (0, 0)))
  # [6, n, th, W', c]
  rows = _along(_BT, jnp.stack([xp[:, i : i + _TILE * th : _TILE] for i in range(a)]))
  # [6(col), 6(row), ...]
  v = _along(_BT, jnp.stack([rows[:, :, :, j : j + _TILE * tw : _TILE] for j in range(a)]))
  return jnp.swapaxes(v, 0, 1).reshape(a * a, n * th * tw, c)


def _winograd_conv(x, kernel):
  """(y, the transformed input, kept for the weight gradient)."""
  n, h, w, _ = x.shape
  th, tw = _tile_counts(h, w)
  v = _winograd_input(x)
  u = jnp.stack(
    [a for row in _sandwich(_G, [[kernel[i, j] for j in range(3)] for i in range(3)]) for a in row]
  )
  prods = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # [36, tiles, O]
  y = _along(np.kron(_AT, _AT), prods)  # [16 (row, col in the output tile), tiles, O]
  y = jnp.transpose(y.reshape(_TILE, _TILE, n, th, tw, -1), (2, 3, 0, 4, 1, 5))
  return y.reshape(n, _TILE * th, _TILE * tw, -1)[:, :h, :w], v


def _winograd_weight_grad(v, dy):
  """The adjoint of the forward pass in the kernel.

  dU = V^T (A dY A^T) per tile position, then dW = G^T dU G.
  """
  n, h, w, o = dy.shape
  th, tw = _tile_counts(h, w)
  a = _TILE + 2
  dyp = jnp.pad(dy, ((0, 0), (0, _TILE * th - h), (0, _TILE * tw - w), (0, 0)))
  tiles = jnp.transpose(dyp.reshape(n, th, _TILE, tw, _TILE, o), (2, 4, 0, 1, 3, 5)).reshape(
    _TILE**2, -1, o
  )
  dm = _along(np.kron(_AT, _AT).T, tiles)  # [36, tiles, O]
  du = lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))))  # [36, C, O]
  dw = _sandwich(_G.T, [[du[a * i + j] for j in range(a)] for i in range(a)])
  return jnp.stack([jnp.stack(row) for row in dw])


@jax.custom_vjp
def _conv_winograd(x, kernel):
  return _winograd_conv(x, kernel)[0]


def _conv_winograd_fwd(x, kernel):
  y, v = _winograd_conv(x, kernel)
  return y, (v, kernel)


def _conv_winograd_bwd(res, dy):
  v, kernel = res
  return _winograd_conv(dy, _input_grad_kernel(kernel))[0], _winograd_weight_grad(v, dy).astype(
    kernel.dtype
  )


_conv_winograd.defvjp(_conv_winograd_fwd, _conv_winograd_bwd)


# ---- 2x2 max-pool with an argmax backward ----


@jax.custom_vjp
def _max_pool_even(x):
  n, h, w, c = x.shape
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _max_pool_even_fwd(x):
  n, h, w, c = x.shape
  win = x.reshape(n, h // 2, 2, w // 2, 2, c)
  y = jnp.max(win, axis=(2, 4))
  # The first maximum in window order (row-major) takes the whole gradient: after ReLU many
  # windows tie at 0, and the gradient must go to one input, not be split or duplicated.
  first = jnp.where(
    win[:, :, 0, :, 0] == y,
    0,
    jnp.where(win[:, :, 0, :, 1] == y, 1, jnp.where(win[:, :, 1, :, 0] == y, 2, 3)),
  )
  return y, first.astype(jnp.int8)


def _max_pool_even_bwd(first, dy):
  n, h2, w2, c = dy.shape
  shape = (1, 1, 2, 1, 2, 1)
  position = 2 * lax.broadcasted_iota(jnp.int8, shape, 2) + lax.broadcasted_iota(jnp.int8, shape, 4)
  dwin = jnp.where(position == first[:, :, None, :, None, :], dy[:, :, None, :, None, :], 0)
  return (dwin.reshape(n, 2 * h2, 2 * w2, c),)


_max_pool_even.defvjp(_max_pool_even_fwd, _max_pool_even_bwd)
