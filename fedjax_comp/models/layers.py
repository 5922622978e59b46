"""Layers written for the round's vmap over clients on XLA:CPU (same parameters as flax's).

`Dense` and `PatchConv` have flax's parameter names, shapes and
initializers, and its outputs up to float summation order; they differ in
how their gradients are computed, which is what the round spends its time
on (WORKSPACE.md, performance notes). `max_pool_2x2` is `nn.max_pool` with a
2x2 window and stride 2.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """``x @ kernel + bias`` for ``x`` of shape [batch, in]; its kernel gradient is a plain matmul.

  Autodiff would compute the kernel gradient ``x.T @ dy`` as one dot that
  contracts the leading (batch) axis of both operands. Inside the round's
  vmap over clients that is a batch of [in, b] x [b, out] products whose
  contraction (b = the local batch, e.g. 10) is the major axis of both, and
  XLA's CPU backend runs it at about half the rate of the forward product.
  Here ``x.T`` is written out first (behind an optimization barrier, so XLA
  cannot fold the transpose back into the dot): the gradient becomes an
  ordinary [in, b] x [b, out] product, and the MLP round is about 19% faster
  on a 2-core CPU (WORKSPACE.md). Same values as autodiff up to float
  summation order. Being a `jax.custom_vjp`, it has reverse-mode derivatives
  only: `jax.grad`/`jax.vjp` work, `jax.jvp`/`jax.jacfwd` through it raise.
  """
  return x @ kernel + bias


def _dense_fwd(x, kernel, bias):
  return x @ kernel + bias, (x, kernel)


def _dense_bwd(residuals, dy):
  x, kernel = residuals
  d_kernel = jax.lax.optimization_barrier(x.T) @ dy
  # dx as (kernel @ dy.T).T reads the kernel in its stored layout; written
  # dy @ kernel.T, XLA copied out the transposed kernel first (6.4 MB per
  # step for the CNN's dense layer, about 8% of its round).
  d_x = (kernel @ dy.T).T
  return d_x, d_kernel, jnp.sum(dy, axis=0)


dense.defvjp(_dense_fwd, _dense_bwd)


class Dense(nn.Module):
  """`flax.linen.Dense` (same parameter names, shapes and initializers) on `dense`."""

  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    y = dense(x.reshape(-1, x.shape[-1]), kernel, bias)
    return y.reshape(*x.shape[:-1], self.features)


def _patches(x: jax.Array, kh: int, kw: int, padding: str = "SAME") -> jax.Array:
  """[N, H, W, C] -> [N, H', W', kh*kw*C] patches, features ordered (i, j, c).

  ``SAME`` pads so that H' = H, W' = W; ``VALID`` takes only whole windows
  (H' = H - kh + 1). Built from kh*kw shifted slices rather than
  `lax.conv_general_dilated_patches`: autodiff then transposes it into pads
  and adds (a cheap col2im) instead of a grouped convolution, which XLA's CPU
  backend runs about 3x slower. The slices are stacked on the axis before
  the channels, so each one is written (and its gradient read) as runs of C
  contiguous floats; stacked on the last axis they would be strided one
  float at a time, and building the patches and their gradient took a
  quarter of the CNN round.
  """
  n, h, w, c = x.shape
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
  oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  shifted = [x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)]
  return jnp.stack(shifted, axis=-2).reshape(n, oh, ow, kh * kw * c)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 ("VALID": an odd last row or column is dropped).

  The same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, written as a
  reshape and a max: XLA's CPU backend runs the reduce-window of
  `nn.max_pool` and its select-and-scatter gradient several times slower.
  Where a window holds tied maxima, the gradient is shared among them
  instead of going to one (after a ReLU, the tied zeros get no gradient
  either way).
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class PatchConv(nn.Module):
  """A stride-1 convolution ("SAME" or "VALID" padding) as image patches times a matrix (im2col).

  Same parameters (``kernel`` [kh, kw, in, out], ``bias``) and outputs as
  `flax.linen.Conv`, up to float summation order. Why: inside the round's
  scan of vmapped clients, XLA's CPU backend computes the kernel gradient of
  `lax.conv` as a convolution with an image-sized window, about 10x slower
  than the patches-transpose-times-gradient matmul this layer produces
  (measured 110 vs 16 ms for the CNN's second layer at batch 10).
  """

  features: int
  kernel_size: tuple[int, int]
  padding: str = "SAME"
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    channels = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, channels, self.features))
    if self.padding not in ("SAME", "VALID"):
      raise ValueError(f"PatchConv: padding must be SAME or VALID, got {self.padding!r}")
    patches = _patches(x, kh, kw, self.padding)
    out = patches @ kernel.reshape(kh * kw * channels, self.features)
    if not self.use_bias:
      return out
    return out + self.param("bias", nn.initializers.zeros_init(), (self.features,))


class _GateParams(nn.Module):
  """A kernel (and bias) under flax's LSTM cell parameter names ('ii', 'hi', ...)."""

  features: int
  use_bias: bool
  kernel_init: object

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", self.kernel_init, (in_features, self.features))
    bias = (self.param("bias", nn.initializers.zeros_init(), (self.features,))
            if self.use_bias else None)
    return kernel, bias


class LSTM(nn.Module):
  """``nn.RNN(nn.OptimizedLSTMCell(features))`` with the input projection out of the loop.

  Same parameters (names, shapes, initializers: named ``OptimizedLSTMCell_<i>``
  it initializes the very parameters of the flax cell it replaces inside a
  compact module, bit for bit) and the
  same outputs up to float summation order. The input's share of every
  gate, ``x_t W_i``, is one [B*T, D] x [D, 4H] matmul before the scan
  instead of T small ones inside it; only ``h W_h`` stays sequential
  (about 11-15% faster for Shakespeare's LSTM on a 2-core CPU, measured).
  Zero initial state, time on axis 1, outputs every step's h.
  """

  features: int

  @nn.compact
  def __call__(self, x):
    ins, hid = [], []
    for gate in "ifgo":  # flax's LSTM cell order and names
      ins.append(_GateParams(self.features, False, nn.initializers.lecun_normal(),
                             name=f"i{gate}")(x.shape[-1])[0])
      hid.append(_GateParams(self.features, True, nn.initializers.orthogonal(),
                             name=f"h{gate}")(self.features))
    w_in, w_h = jnp.concatenate(ins, -1), jnp.concatenate([k for k, _ in hid], -1)
    bias = jnp.concatenate([b for _, b in hid], -1)
    gates_in = jnp.einsum("btd,dg->btg", x, w_in) + bias

    def step(carry, g_in):
      c, h = carry
      i, f, g, o = jnp.split(g_in + h @ w_h, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (c, h), h

    zeros = jnp.zeros((x.shape[0], self.features), gates_in.dtype)
    _, hs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(gates_in, 0, 1))
    return jnp.swapaxes(hs, 0, 1)
