"""The client update: local training on one client's padded arrays, as a pure function.

``client_update(params, client, key) -> (delta, ClientMetrics)`` runs local
minibatch SGD (any optax optimizer) from the server's `params` and returns the
model delta H = W_local - W. It is written for one client; the round `vmap`s
it over a chunk of clients.

Local schedule (McMahan et al. 2017): E local epochs of minibatches of B
examples, each epoch a fresh random order of the client's own examples; the
last batch of an epoch may be smaller. ``batch_size=None`` is B = inf (full
batch), so FedSGD is ``local_epochs=1, batch_size=None``. With
``local_steps=K`` instead, every non-empty client takes exactly K steps,
cycling through epochs as needed.

Padding: every client is padded to the same ``max_examples``, so under `vmap`
all clients run the same number of scan steps. A client with n examples is
active for ``E * ceil(n / B)`` of them (or K); on the other steps its
parameters and optimizer state are left unchanged, and padded examples have
zero weight in every loss. An empty client returns a zero delta.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fedjax_comp import keys
from fedjax_comp.codecs import Structure
from fedjax_comp.data.federated import ClientArrays
from fedjax_comp.models import Model, Params

LossFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]


class ClientMetrics(NamedTuple):
  train_loss: jax.Array  # mean minibatch loss over the client's active steps
  num_steps: jax.Array  # local steps actually taken (int32)


ClientUpdateFn = Callable[[Params, ClientArrays, jax.Array], tuple[Params, ClientMetrics]]


def masked_cross_entropy(model: Model) -> LossFn:
  """Mean softmax cross-entropy over the examples where `mask` is True (0 if none)."""

  def loss_fn(params, x, y, mask):
    logits = model.apply(params, x)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    mask = mask.astype(per_example.dtype)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  return loss_fn


# Up to this many slots, `stable_argsort` ranks by pairwise comparison instead
# of sorting. Measured in the round on a 2-core CPU, paired (20 examples per
# client unless said): MLP -10% (also at 32 examples), logistic -28%, 2NN -1%;
# at 48 examples -2%, at 64 a tie. XLA:CPU's sort of many tiny rows was about
# 9% of the MLP round (measured by leaving it out).
_RANK_MAX = 32


def stable_argsort(keys: jax.Array) -> jax.Array:
  """``jnp.argsort(keys, stable=True)`` of a 1-D array, as int32, bit for bit."""
  n = keys.shape[0]
  if n > _RANK_MAX:
    return jnp.argsort(keys, stable=True).astype(jnp.int32)
  i = jnp.arange(n, dtype=jnp.int32)
  # rank[i] = #{j : (keys[j], j) < (keys[i], i)}, slot i's place in the stable
  # order; the ranks are a permutation, so the inverse is a plain scatter.
  before = (keys[None, :] < keys[:, None]) | (
      (keys[None, :] == keys[:, None]) & (i[None, :] < i[:, None]))
  rank = jnp.sum(before, axis=1, dtype=jnp.int32)
  return jnp.zeros((n,), jnp.int32).at[rank].set(i, unique_indices=True)


def epoch_order(key: jax.Array, num_examples: jax.Array, max_examples: int) -> jax.Array:
  """A random order of the first `num_examples` slots, padding slots after them."""
  bits = jax.random.bits(key, (max_examples,), jnp.uint32)
  # Padding sorts last; a uint32 tie with the sentinel is broken by position.
  bits = jnp.where(jnp.arange(max_examples) < num_examples, bits >> 1,
                   jnp.uint32(2**31))
  return stable_argsort(bits)


def steps_per_epoch(num_examples: jax.Array, batch: int) -> jax.Array:
  """Local steps in one epoch of a client with `num_examples` (at least 1)."""
  return jnp.maximum((num_examples + batch - 1) // batch, 1)


def padded_order(data_key: jax.Array, epoch: jax.Array, num_examples: jax.Array,
                 max_examples: int, batch: int) -> jax.Array:
  """Epoch `epoch`'s example order, padded to whole batches (padding points at slot 0)."""
  order = epoch_order(jax.random.fold_in(data_key, epoch), num_examples, max_examples)
  pad = math.ceil(max_examples / batch) * batch - max_examples
  return jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)])


def batch_of(order: jax.Array, b: jax.Array, num_examples: jax.Array,
             batch: int) -> tuple[jax.Array, jax.Array]:
  """Slots and validity of batch `b` of an epoch's `padded_order`."""
  positions = b * batch + jnp.arange(batch)
  return lax.dynamic_slice(order, (b * batch,), (batch,)), positions < num_examples


def minibatch(data_key: jax.Array, step: jax.Array, num_examples: jax.Array,
              max_examples: int, batch: int) -> tuple[jax.Array, jax.Array]:
  """Indices and validity mask of local step `step`'s minibatch of one client.

  Epoch e = step // ceil(n / batch) visits the client's n examples in the
  order ``epoch_order(fold_in(data_key, e))``, `batch` at a time; the last
  batch of an epoch may be short, and its missing positions point at a
  padding slot with mask False. `fedjax_comp.distributed` uses the same
  order, but keeps it between steps instead of sorting again.

  Returns:
    ``(idx, valid)``: int32 ``[batch]`` example slots, bool ``[batch]``.
  """
  spe = steps_per_epoch(num_examples, batch)
  order = padded_order(data_key, step // spe, num_examples, max_examples, batch)
  return batch_of(order, step % spe, num_examples, batch)


def make_client_update(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                       local_epochs: int = 1, batch_size: int | None = 10,
                       local_steps: int | None = None,
                       structure: Structure | None = None) -> ClientUpdateFn:
  """Builds the pure client update.

  Args:
    loss_fn: ``loss_fn(params, x, y, mask) -> scalar`` averaging over `mask`.
    optimizer: the client's optax optimizer (``optax.sgd(client_lr)`` for FedAvg).
    local_epochs: E, passes over the client's data (ignored if `local_steps`).
    batch_size: B; None means the full client dataset (B = inf).
    local_steps: if set, a fixed number of local steps K instead of epochs.
    structure: a structured codec's `Structure` (``codec.structure`` of
      ``low_rank``/``random_mask``): the client then trains the small
      variable z on ``loss(params + structure.expand(key, z))``, from
      ``structure.init(key, params)``, and returns the final z instead of
      the delta. The key is the client's codec stream, the one the server
      decodes with.

  Returns:
    ``client_update(params, client, key) -> (delta, ClientMetrics)`` for one
    client (delta is z with a `structure`); `vmap` it over clients.
  """
  if local_steps is None and local_epochs < 1:
    raise ValueError(f"local_epochs must be >= 1, got {local_epochs}")
  if local_steps is not None and local_steps < 1:
    raise ValueError(f"local_steps must be >= 1 (or None for epochs), got {local_steps}")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"batch_size must be >= 1 (or None for full batch), got {batch_size}")

  def client_update(params: Params, client: ClientArrays,
                    key: jax.Array) -> tuple[Params, ClientMetrics]:
    client = jax.tree.map(jnp.asarray, client)  # host arrays cannot be indexed by tracers
    max_n = client.max_examples
    batch = max_n if batch_size is None else min(batch_size, max_n)
    n = client.num_examples
    steps_per_epoch = jnp.maximum((n + batch - 1) // batch, 1)  # this client's
    if local_steps is None:
      total_steps = local_epochs * math.ceil(max_n / batch)  # the longest client's
      active_steps = jnp.where(n > 0, local_epochs * steps_per_epoch, 0)
    else:
      total_steps = local_steps
      active_steps = jnp.where(n > 0, local_steps, 0)
    data_key = keys.stream(key, keys.Stream.DATA_ORDER)
    if structure is None:
      trainable, model_params = params, lambda z: z
    else:
      codec_key = keys.stream(key, keys.Stream.CODEC)
      trainable = structure.init(codec_key, params)
      model_params = lambda z: jax.tree.map(
          jnp.add, params, structure.expand(codec_key, z))
    # Gradients with respect to the trainable variable: the params, or a
    # structured codec's z (for random_mask, exactly the masked gradient).
    grad_fn = jax.value_and_grad(lambda z, x, y, mask: loss_fn(model_params(z), x, y, mask))

    def step(carry, s):
      p, opt_state = carry
      idx, valid = minibatch(data_key, s, n, max_n, batch)
      active = s < active_steps
      mask = valid & active
      loss, grads = grad_fn(p, client.x[idx], client.y[idx], mask)
      updates, new_opt_state = optimizer.update(grads, opt_state, p)
      new_p = optax.apply_updates(p, updates)
      keep = lambda new, old: jnp.where(active, new, old)
      carry = (jax.tree.map(keep, new_p, p), jax.tree.map(keep, new_opt_state, opt_state))
      return carry, jnp.where(active, loss, 0.0)

    # The first step is peeled out of the scan: there every client still holds
    # the server's params, which `vmap` keeps unbatched, so its forward pass
    # and input gradients are one matmul over the whole chunk's examples
    # instead of a batch of per-client ones.
    carry, first_loss = step((trainable, optimizer.init(trainable)), 0)
    # unroll=2: lets XLA fuse across step pairs and drop per-iteration carry
    # copies (about 7% on the CPU for the MLP, measured in one process).
    (new_params, _), losses = lax.scan(step, carry, jnp.arange(1, total_steps), unroll=2)
    losses = jnp.concatenate([first_loss[None], losses])
    if structure is None:
      delta = jax.tree.map(jnp.subtract, new_params, params)
    else:
      delta = new_params  # z: expand(z0) == 0, so z itself is the update

    num_steps = active_steps.astype(jnp.int32)
    train_loss = jnp.sum(losses) / jnp.maximum(num_steps, 1)
    return delta, ClientMetrics(train_loss=train_loss, num_steps=num_steps)

  return client_update
