"""Synchronous data-parallel SGD: a gradient all-reduce every step.

::

  g_i   = grad of worker i's minibatch loss at the shared model w
  w     = w + optimizer.update(mean_i decode(encode(g_i)))          # every step

The step-every-round baseline of `benchmarks.fl_vs_incenter`; the protocol
and shared pieces are in `algorithms.workers`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from fedjax_comp import codecs
from fedjax_comp import keys
from fedjax_comp.algorithms.workers import (Batcher, LossFn, StepMetrics, WorkerAlgorithm,
                                            all_finite, check_common, check_shards, codec_mean,
                                            local_ids, shard_run, worker_keys, worker_mean)
from fedjax_comp.data.federated import ClientArrays
from fedjax_comp.models import Params


@flax.struct.dataclass
class SyncState:
  """Synchronous SGD's state: the one shared model."""

  params: Params
  opt_state: optax.OptState
  step: jax.Array  # int32: steps done
  seed_key: jax.Array


def sync_sgd(init_params: Callable[[jax.Array], Params], loss_fn: LossFn,
             optimizer: optax.GradientTransformation, *, batch_size: int | None = 10,
             codec: codecs.Codec | None = None, mesh: Mesh | None = None) -> WorkerAlgorithm:
  """Synchronous data-parallel SGD: a gradient all-reduce every step.

  Args:
    init_params: ``init(key) -> params``, e.g. ``model.init``.
    loss_fn: ``loss_fn(params, batch, mask) -> scalar`` (a model's ``train_loss``).
    optimizer: applied once per step to the workers' mean gradient.
    batch_size: each worker's minibatch; None is its whole shard.
    codec: compresses each worker's gradient (identity by default).
    mesh: optional mesh with a ``"clients"`` axis to shard the workers over.
  """
  codec, mesh = check_common(batch_size, codec, mesh)
  grad_one = jax.value_and_grad(loss_fn)

  def init(seed: int, num_workers: int) -> SyncState:
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    seed_key = keys.seed_key(seed)
    params = jax.jit(init_params)(keys.init_key(seed_key))
    return SyncState(params=params, opt_state=optimizer.init(params), step=jnp.int32(0),
                     seed_key=seed_key)

  def body(state: SyncState, shards: ClientArrays, num_steps: int):
    ids = local_ids(shards.num_clients, mesh)
    batcher = Batcher.make(shards, worker_keys(state.seed_key, 0, ids,
                                                 keys.Stream.DATA_ORDER), batch_size)

    def step(carry, t):
      params, opt_state, orders = carry
      orders, (batch, valid) = batcher.next(orders, t)
      losses, grads = jax.vmap(grad_one, in_axes=(None, 0, 0))(params, batch, valid)
      mean_grad = codec_mean(codec, t + 1, state.seed_key, ids, grads, mesh)
      updates, opt_state = optimizer.update(mean_grad, opt_state, params)
      return ((optax.apply_updates(params, updates), opt_state, orders),
              worker_mean(losses, mesh))

    steps = state.step + jnp.arange(num_steps, dtype=jnp.int32)
    carry = (state.params, state.opt_state, batcher.first(state.step))
    (params, opt_state, _), losses = lax.scan(step, carry, steps)
    new = state.replace(params=params, opt_state=opt_state, step=state.step + num_steps)
    return new, StepMetrics(loss=losses, finite=all_finite(params))

  specs = SyncState(params=P(), opt_state=P(), step=P(), seed_key=P())

  def run(state, shards, num_steps):
    check_shards(shards, shards.num_clients, mesh)
    return _run(state, shards, num_steps)

  _run = jax.jit(lambda state, shards, num_steps: shard_run(
      body, mesh, specs, state, shards, num_steps), static_argnums=2)
  return WorkerAlgorithm(init=init, run=run, model=lambda state: state.params,
                         period=1, delay=0)
