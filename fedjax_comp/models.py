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


class _MLP(nn.Module):
  hidden: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


def _same_patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """[N, H, W, C] -> [N, H, W, C*kh*kw] "same" patches, features ordered (c, i, j).

  Built from kh*kw shifted slices rather than `lax.conv_general_dilated_patches`:
  autodiff then transposes it into pads and adds (a cheap col2im) instead of a
  grouped convolution, which XLA's CPU backend runs about 3x slower.
  """
  n, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
  shifted = [padded[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)]
  return jnp.stack(shifted, axis=-1).reshape(n, h, w, c * kh * kw)


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
    matrix = kernel.transpose(2, 0, 1, 3).reshape(channels * kh * kw, self.features)
    return patches @ matrix + bias


class _McMahanCNN(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(PatchConv(32, (5, 5))(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(PatchConv(64, (5, 5))(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(512)(x))
    return nn.Dense(self.num_classes)(x)


class _CifarCNN(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(PatchConv(32, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(PatchConv(64, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(PatchConv(64, (3, 3))(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(self.num_classes)(x)


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
