"""Flax models, chosen by name; the input shape and class count come from the data.

=============  ==========================================================
name           model
=============  ==========================================================
``logistic``   multinomial logistic regression (one dense layer)
``mlp``        two hidden ReLU layers of 100, the natural MNIST-1D model
``2nn``        McMahan et al. 2017's 2NN: two hidden ReLU layers of 200
               (199,210 parameters on 28x28 inputs)
``cnn``        McMahan et al. 2017's CNN: 5x5 conv 32, 2x2 max-pool, 5x5
               conv 64, 2x2 max-pool, dense 512, dense classes, "same"
               padding (1,663,370 parameters on 28x28x1 inputs)
``cifar_cnn``  a small CIFAR CNN: 3x3 conv 32, pool, 3x3 conv 64, pool,
               3x3 conv 64, dense 64, dense classes
=============  ==========================================================

A `Model` is a pair of pure functions, ``init(key) -> params`` and
``apply(params, x) -> logits``, over a batch ``x`` of shape
``[batch, *input_shape]``. Adding a model: write a `flax.linen.Module` and add
a line to `_FACTORIES`.

References:
  McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from
  Decentralized Data (arXiv 1602.05629).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = dict  # a flax parameter tree


class Model(NamedTuple):
  """A model as two pure functions plus the shapes it was built for."""

  init: Callable[[jax.Array], Params]
  apply: Callable[[Params, jax.Array], jax.Array]
  name: str
  input_shape: tuple[int, ...]
  num_classes: int


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


class _MLP(nn.Module):
  hidden: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(Dense(width)(x))
    return Dense(self.num_classes)(x)


def _same_patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """[N, H, W, C] -> [N, H, W, kh*kw*C] "same" patches, features ordered (i, j, c).

  Built from kh*kw shifted slices rather than `lax.conv_general_dilated_patches`:
  autodiff then transposes it into pads and adds (a cheap col2im) instead of a
  grouped convolution, which XLA's CPU backend runs about 3x slower. The
  slices are stacked on the axis before the channels, so each one is written
  (and its gradient read) as runs of C contiguous floats; stacked on the last
  axis they would be strided one float at a time, and building the patches
  and their gradient took a quarter of the CNN round.
  """
  n, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
  shifted = [padded[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)]
  return jnp.stack(shifted, axis=-2).reshape(n, h, w, kh * kw * c)


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
  """A "same"-padded, stride-1 convolution as image patches times a matrix (im2col).

  Same parameters (``kernel`` [kh, kw, in, out], ``bias``) and outputs as
  `flax.linen.Conv`, up to float summation order. Why: inside the round's
  scan of vmapped clients, XLA's CPU backend computes the kernel gradient of
  `lax.conv` as a convolution with an image-sized window, about 10x slower
  than the patches-transpose-times-gradient matmul this layer produces
  (measured 110 vs 16 ms for the CNN's second layer at batch 10).
  """

  features: int
  kernel_size: tuple[int, int]

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    channels = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    patches = _same_patches(x, kh, kw)
    return patches @ kernel.reshape(kh * kw * channels, self.features) + bias


class _McMahanCNN(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(PatchConv(32, (5, 5))(x))
    x = max_pool_2x2(x)
    x = nn.relu(PatchConv(64, (5, 5))(x))
    x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(Dense(512)(x))
    return Dense(self.num_classes)(x)


class _CifarCNN(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(PatchConv(32, (3, 3))(x))
    x = max_pool_2x2(x)
    x = nn.relu(PatchConv(64, (3, 3))(x))
    x = max_pool_2x2(x)
    x = nn.relu(PatchConv(64, (3, 3))(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(Dense(64)(x))
    return Dense(self.num_classes)(x)


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Conv models take [H, W, C]; a [H, W] input gets one channel."""
  if len(input_shape) == 2:
    return (*input_shape, 1)
  if len(input_shape) == 3:
    return input_shape
  raise ValueError(
      f"model {name!r} needs image inputs of shape [H, W] or [H, W, C], got "
      f"input_shape={input_shape}; use 'logistic', 'mlp' or '2nn' for vectors")


_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "logistic": lambda c: _MLP(hidden=(), num_classes=c),
    "mlp": lambda c: _MLP(hidden=(100, 100), num_classes=c),
    "2nn": lambda c: _MLP(hidden=(200, 200), num_classes=c),
    "cnn": lambda c: _McMahanCNN(num_classes=c),
    "cifar_cnn": lambda c: _CifarCNN(num_classes=c),
}
_CONV = ("cnn", "cifar_cnn")
MODELS = tuple(_FACTORIES)


def get_model(name: str, input_shape: Sequence[int], num_classes: int) -> Model:
  """Builds the named model for inputs of `input_shape` and `num_classes` classes.

  Args:
    name: one of `MODELS`.
    input_shape: the shape of one example, without the batch axis.
    num_classes: the number of output logits.

  Returns:
    A `Model`.

  Raises:
    ValueError: for an unknown name, a bad class count, or inputs the model
      cannot take.
  """
  if name not in _FACTORIES:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  input_shape = tuple(int(d) for d in input_shape)
  module = _FACTORIES[name](num_classes)
  model_shape = _image_shape(name, input_shape) if name in _CONV else input_shape

  def init(key: jax.Array) -> Params:
    return module.init(key, jnp.zeros((1, *model_shape), jnp.float32))["params"]

  def apply(params: Params, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], *model_shape)).astype(jnp.float32)
    return module.apply({"params": params}, x)

  return Model(init=init, apply=apply, name=name, input_shape=input_shape,
               num_classes=num_classes)


def num_params(params: Params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))
