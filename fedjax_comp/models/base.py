"""What a model is to the rest of the suite: pure functions over batches of named features.

A `Model` carries its own training loss and evaluation metrics, so the round
engine, the client update and the evaluation never assume "a float vector in,
one class out" (FedJAX's `core.models.Model` has the same shape)::

  params  = model.init(key)
  outputs = model.apply(params, batch["x"])                # e.g. logits
  loss    = model.train_loss(params, batch, mask)          # mean over the valid examples
  sums    = model.eval_metrics(params, batch, mask)        # {name: (total, count)}

A batch is a dict of arrays with a leading example axis (``"x"`` the input,
``"y"`` the target; a model may read other features). ``mask`` is bool
``[batch]``: False marks a padding example, which must weigh nothing in the
loss and the metrics. Metrics are returned as (total, count) pairs so that
batches and devices can be summed before dividing (`evaluation.evaluate`).

Two losses are provided: `classification` (softmax cross-entropy and
accuracy per example) and `next_token` (per-token cross-entropy and accuracy
of a sequence model, padding tokens excluded from both and chosen special
tokens from the accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = dict  # a flax parameter tree
Batch = Mapping[str, jax.Array]
MetricSums = dict[str, tuple[jax.Array, jax.Array]]  # name -> (total, count)


class Model(NamedTuple):
  """A model as pure functions, the shapes it was built for and its round chunk sizes."""

  init: Callable[[jax.Array], Params]
  apply: Callable[[Params, jax.Array], jax.Array]
  train_loss: Callable[[Params, Batch, jax.Array], jax.Array]
  eval_metrics: Callable[[Params, Batch, jax.Array], MetricSums]
  name: str
  input_shape: tuple[int, ...]
  num_classes: int  # classes, or the vocabulary size of a sequence model
  cpu_chunk: int = 1  # clients per vmapped block of the round on a CPU
  gpu_chunk: int = 64  # ... on an accelerator
  stochastic: bool = False  # train_loss reads a dropout key from batch["rng"] when given

  def default_chunk(self, backend: str) -> int:
    """A good `client_chunk` for this model on `backend` ("cpu", "gpu", "tpu")."""
    return self.cpu_chunk if backend == "cpu" else self.gpu_chunk


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  weights = weights.astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def classification(apply: Callable[[Params, jax.Array], jax.Array]):
  """``(train_loss, eval_metrics)`` of a classifier ``apply(params, x) -> logits``.

  The loss is the mean softmax cross-entropy over the valid examples (0 if
  none); the metrics are ``loss`` and ``accuracy`` per example.
  """

  def train_loss(params: Params, batch: Batch, mask: jax.Array) -> jax.Array:
    logits = apply(params, batch["x"])
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    return _masked_mean(per_example, mask)

  def eval_metrics(params: Params, batch: Batch, mask: jax.Array) -> MetricSums:
    logits = apply(params, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    correct = (jnp.argmax(logits, -1) == batch["y"]) & mask
    count = jnp.sum(mask)
    return {"loss": (jnp.sum(jnp.where(mask, loss, 0.0)), count),
            "accuracy": (jnp.sum(correct), count)}

  return train_loss, eval_metrics


def next_token(apply: Callable[[Params, jax.Array], jax.Array], *, pad: int,
               excluded: Sequence[int] = ()):
  """``(train_loss, eval_metrics)`` of a sequence model ``apply(params, x) -> [B, T, V]`` logits.

  ``batch["y"]`` holds the target token of every position. Tokens equal to
  `pad`, and every token of a padding example, weigh nothing in the loss and
  the metrics; tokens in `excluded` (e.g. beginning/end of sequence,
  out-of-vocabulary) are also left out of the accuracy, as Reddi et al.
  2020 count it for Shakespeare and StackOverflow. The loss is the mean
  cross-entropy per counted token.
  """
  excluded = tuple(int(t) for t in excluded)

  def token_weights(batch, mask):
    y = batch["y"]
    return (y != pad) & mask[:, None]

  def train_loss(params: Params, batch: Batch, mask: jax.Array) -> jax.Array:
    logits = apply(params, batch["x"])
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    return _masked_mean(per_token, token_weights(batch, mask))

  def eval_metrics(params: Params, batch: Batch, mask: jax.Array) -> MetricSums:
    logits = apply(params, batch["x"])
    y = batch["y"]
    weights = token_weights(batch, mask)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    scored = weights
    for token in excluded:
      scored = scored & (y != token)
    correct = (jnp.argmax(logits, -1) == y) & scored
    return {"loss": (jnp.sum(jnp.where(weights, loss, 0.0)), jnp.sum(weights)),
            "accuracy": (jnp.sum(correct), jnp.sum(scored))}

  return train_loss, eval_metrics


def num_params(params: Params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))
