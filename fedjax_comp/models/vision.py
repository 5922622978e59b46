"""Image and vector classifiers: logistic regression, MLPs and McMahan et al.'s CNNs.

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

References:
  McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from
  Decentralized Data (arXiv 1602.05629).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_comp.models.base import Model, Params, classification
from fedjax_comp.models.layers import Dense, PatchConv, max_pool_2x2


class MLP(nn.Module):
  hidden: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(Dense(width)(x))
    return Dense(self.num_classes)(x)


class McMahanCNN(nn.Module):
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


class CifarCNN(nn.Module):
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


def image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Conv models take [H, W, C]; a [H, W] input gets one channel."""
  if len(input_shape) == 2:
    return (*input_shape, 1)
  if len(input_shape) == 3:
    return input_shape
  raise ValueError(
      f"model {name!r} needs image inputs of shape [H, W] or [H, W, C], got "
      f"input_shape={input_shape}; use 'logistic', 'mlp' or '2nn' for vectors")


def classifier(module: nn.Module, *, name: str, input_shape: tuple[int, ...],
               num_classes: int, model_shape: tuple[int, ...] | None = None,
               cpu_chunk: int = 1, gpu_chunk: int = 64) -> Model:
  """A `Model` of a flax classifier over float inputs of `input_shape`.

  `model_shape` is the shape the module sees (an image gets its channel
  axis); inputs are reshaped to it and cast to float32.
  """
  model_shape = model_shape or input_shape

  def init(key: jax.Array) -> Params:
    return module.init(key, jnp.zeros((1, *model_shape), jnp.float32))["params"]

  def apply(params: Params, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], *model_shape)).astype(jnp.float32)
    return module.apply({"params": params}, x)

  train_loss, eval_metrics = classification(apply)
  return Model(init=init, apply=apply, train_loss=train_loss, eval_metrics=eval_metrics,
               name=name, input_shape=input_shape, num_classes=num_classes,
               cpu_chunk=cpu_chunk, gpu_chunk=gpu_chunk)


# Chunk sizes: CPU measured with benchmarks/throughput.py (20 examples, batch
# 10, 2 steps) on a 2-core CPU, where narrow chunks keep per-client weights in
# cache; GPU: the fastest chunk of scripts/device_bench.py's sweep at 10,000
# clients on one H200 (docs/measurements/device_bench_h200_2026-11-29.json),
# where wide chunks fill the device (logistic and mlp were fastest with the
# whole round in one vmap). A chunk larger than a device's share of a round
# is cut to it. cifar_cnn's GPU chunk is not measured yet: 64 is a placeholder
# until scripts/device_bench.sh sweeps it (pass --client_chunk meanwhile).
def logistic(input_shape, num_classes) -> Model:
  return classifier(MLP(hidden=(), num_classes=num_classes), name="logistic",
                    input_shape=input_shape, num_classes=num_classes, cpu_chunk=64,
                    gpu_chunk=10000)


def mlp(input_shape, num_classes) -> Model:
  return classifier(MLP(hidden=(100, 100), num_classes=num_classes), name="mlp",
                    input_shape=input_shape, num_classes=num_classes, cpu_chunk=25,
                    gpu_chunk=10000)


def two_nn(input_shape, num_classes) -> Model:
  return classifier(MLP(hidden=(200, 200), num_classes=num_classes), name="2nn",
                    input_shape=input_shape, num_classes=num_classes, cpu_chunk=1,
                    gpu_chunk=1024)


def cnn(input_shape, num_classes) -> Model:
  return classifier(McMahanCNN(num_classes=num_classes), name="cnn", input_shape=input_shape,
                    num_classes=num_classes, model_shape=image_shape("cnn", input_shape),
                    cpu_chunk=1, gpu_chunk=256)


def cifar_cnn(input_shape, num_classes) -> Model:
  return classifier(CifarCNN(num_classes=num_classes), name="cifar_cnn",
                    input_shape=input_shape, num_classes=num_classes,
                    model_shape=image_shape("cifar_cnn", input_shape), cpu_chunk=1,
                    gpu_chunk=64)
