"""Central evaluation of the server model on the held-out test split."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_comp.models import Model, Params


class EvalMetrics(NamedTuple):
  accuracy: jax.Array
  loss: jax.Array


@functools.partial(jax.jit, static_argnames=("apply",))
def _evaluate(apply, params, x, y, mask):
  def batch_sums(_, batch):
    bx, by, bm = batch
    logits = apply(params, bx)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, by)
    correct = (jnp.argmax(logits, -1) == by)
    return None, (jnp.sum(jnp.where(bm, loss, 0.0)), jnp.sum(correct & bm))

  _, (losses, corrects) = jax.lax.scan(batch_sums, None, (x, y, mask))
  count = jnp.sum(mask)
  return EvalMetrics(accuracy=jnp.sum(corrects) / count, loss=jnp.sum(losses) / count)


def batch_for_eval(x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
  """Pads and reshapes a split into ``[num_batches, batch_size, ...]`` device arrays."""
  n = len(y)
  if n == 0:
    raise ValueError("cannot evaluate on an empty split")
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
  y = np.concatenate([y, np.zeros((pad,), y.dtype)])
  mask = np.arange(num_batches * batch_size) < n
  shape = (num_batches, batch_size)
  return (jnp.asarray(x.reshape(*shape, *x.shape[1:])), jnp.asarray(y.reshape(shape)),
          jnp.asarray(mask.reshape(shape)))


def evaluate(model: Model, params: Params, batches) -> EvalMetrics:
  """Accuracy and mean cross-entropy over batches from `batch_for_eval`."""
  return _evaluate(model.apply, params, *batches)
