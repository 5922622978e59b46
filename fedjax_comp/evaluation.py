"""Central evaluation of a model on a held-out split, with the model's own metrics."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_comp.data.examples import Examples
from fedjax_comp.models import Model, Params


class EvalBatches(dict):
  """A split as ``[num_batches, batch_size, ...]`` device arrays: the features and ``"mask"``."""


@functools.partial(jax.jit, static_argnames=("eval_metrics",))
def _evaluate(eval_metrics, params, features, mask):
  def batch_sums(_, batch):
    feats, m = batch
    return None, eval_metrics(params, feats, m)

  _, sums = jax.lax.scan(batch_sums, None, (features, mask))
  return {name: jnp.sum(total) / jnp.maximum(jnp.sum(count), 1)
          for name, (total, count) in sums.items()}


def batch_for_eval(split: Examples | Mapping[str, np.ndarray],
                   batch_size: int = 1000) -> EvalBatches:
  """Pads and reshapes a split (an `Examples`, or a dict of features) into batches.

  Padded examples have ``mask`` False and count in no metric.
  """
  features = ({"x": split.x, "y": split.y} if isinstance(split, Examples)
              else {k: np.asarray(v) for k, v in split.items()})
  n = len(next(iter(features.values())))
  if n == 0:
    raise ValueError("cannot evaluate on an empty split")
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  shape = (num_batches, batch_size)
  out = EvalBatches()
  for k, v in features.items():
    v = np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
    out[k] = jnp.asarray(v.reshape(*shape, *v.shape[1:]))
  out["mask"] = jnp.asarray((np.arange(num_batches * batch_size) < n).reshape(shape))
  return out


def evaluate(model: Model, params: Params, batches: EvalBatches) -> dict[str, jax.Array]:
  """The model's metrics (e.g. ``accuracy``, ``loss``) over batches from `batch_for_eval`."""
  features = {k: v for k, v in batches.items() if k != "mask"}
  return _evaluate(model.eval_metrics, params, features, batches["mask"])
