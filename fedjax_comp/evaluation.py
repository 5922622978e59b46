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
                   batch_size: int = 1000, *, by_client: bool = False) -> EvalBatches:
  """Pads and reshapes a split (an `Examples`, or a dict of features) into batches.

  Padded examples have ``mask`` False and count in no metric. With
  `by_client`, the `Examples`' ``groups`` (each example's client) come
  along as dense ids in ``"groups"``, for per-client metrics (`evaluate`).
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
  if by_client:
    if not isinstance(split, Examples) or split.groups is None:
      raise ValueError("batch_for_eval(by_client=True) needs Examples with groups")
    _, dense_ids = np.unique(np.asarray(split.groups), return_inverse=True)
    out.num_groups = int(dense_ids.max()) + 1
    g = np.concatenate([dense_ids, np.zeros(pad, dense_ids.dtype)]).astype(np.int32)
    out["groups"] = jnp.asarray(g.reshape(shape))
  return out


def evaluate(model: Model, params: Params, batches: EvalBatches) -> dict[str, jax.Array]:
  """The model's metrics (e.g. ``accuracy``, ``loss``) over batches from `batch_for_eval`.

  With a ``groups`` entry (`batch_for_eval(..., by_client=True)`), each
  metric ``m`` also comes as ``m_per_client``: the unweighted mean over
  clients of each client's own metric (clients that count nothing are left
  out), beside the example-weighted ``m``.
  """
  features = {k: v for k, v in batches.items() if k not in ("mask", "groups")}
  if "groups" not in batches:
    return _evaluate(model.eval_metrics, params, features, batches["mask"])
  return _evaluate_grouped(model.eval_metrics, batches.num_groups, params, features,
                           batches["mask"], batches["groups"])


@functools.partial(jax.jit, static_argnames=("eval_metrics", "num_groups"))
def _evaluate_grouped(eval_metrics, num_groups, params, features, mask, groups):
  # Each example's (total, count) from a batch of one, vmapped, then summed per client.
  per_example = jax.vmap(lambda f, m: eval_metrics(params, jax.tree.map(lambda a: a[None], f),
                                                   m[None]))

  def batch_sums(acc, batch):
    feats, m, g = batch
    sums = per_example(feats, m)
    return jax.tree.map(lambda a, s: a + jax.ops.segment_sum(s, g, num_groups), acc, sums), None

  zeros = jax.tree.map(lambda s: jnp.zeros((num_groups,), jnp.float32),
                       jax.eval_shape(per_example, *jax.tree.map(lambda a: a[0],
                                                                 (features, mask))))
  sums, _ = jax.lax.scan(batch_sums, zeros, (features, mask, groups))
  out = {}
  for name, (total, count) in sums.items():
    out[name] = jnp.sum(total) / jnp.maximum(jnp.sum(count), 1)
    counted = count > 0
    out[f"{name}_per_client"] = (jnp.sum(jnp.where(counted, total / jnp.maximum(count, 1), 0.0))
                                 / jnp.maximum(jnp.sum(counted), 1))
  return out
