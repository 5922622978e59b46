"""Local SGD and Delayed Gradient Averaging: periodic averaging of workers' updates.

Periodic averaging (`periodic_averaging`), local SGD when ``delay == 0`` and
Delayed Gradient Averaging (Zhu et al., NeurIPS 2021) when ``delay > 0``::

  every step:       w_i  = w_i + u_i         (u_i: worker i's local optimizer step)
                    Δ_i += u_i                (local updates not yet averaged)
  step t = mK:      send Δ_i; the server averages mean_j decode(encode(Δ_j)); Δ_i = 0
  step t = mK + D:  w_i  = w_i - Δ_i(sent at mK) + mean_j Δ_j(sent at mK)

The worker keeps training while its update is in flight and, when the
average arrives D steps later, swaps its own contribution for everyone's:
the D newer local steps are kept (overwriting w_i with the stale average
would throw them away). With D = 0 every worker holds the same model after
each averaging, which is local SGD (K = 1 with plain SGD is synchronous SGD
up to float rounding). An update sent at step mK arrives before the one sent
at (m+1)K, and at most ``D // K + 1`` are in flight; each waits in a ring
buffer (the worker's own part and the mean, see `PeriodicState`). A worker
subtracts its own *raw* update, so with a lossy codec and D = 0 the workers
still hold bit-identical models after each averaging.

Local optimizer state stays local (it is not averaged). A worker's minibatches
walk through epochs of its own shard (`batching.minibatch`), continuing across
averaging periods. Randomness: worker w's data order comes from
``stream(client_key(round_key(seed, 0), w), DATA_ORDER)``, and the codec key
of its m-th upload from ``stream(client_key(round_key(seed, m), w), CODEC)``
(in `sync_sgd`, m is the step), so the server can rebuild every key.

The protocol and shared pieces are in `algorithms.workers`.

References:
  Zhu et al. 2021, Delayed Gradient Averaging: Tolerate the Communication
  Latency for Federated Learning (NeurIPS 2021).
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
from fedjax_comp.sharding import CLIENTS_AXIS


@flax.struct.dataclass
class PeriodicState:
  """Periodic averaging's state: one model per worker (leading axis N), split as

    params_i = base_i + in_flight_sum_i + pending_i

  where `base` is what worker i holds from averages (identical across
  workers with D = 0), `pending` its local updates not yet sent, and
  `in_flight_sum` those sent whose average has not arrived. Each in-flight
  upload's own part and mean wait in ring buffers `in_flight_own` ([Q, N,
  ...]) and `in_flight_mean` ([Q, ...]). An arrival sets ``base += mean`` and
  rebuilds `params` from the split, so with D = 0 every worker holds
  bit-identical parameters after an averaging.
  """

  params: Params
  opt_state: optax.OptState
  base: Params
  pending: Params
  in_flight_sum: Params
  in_flight_own: Params
  in_flight_mean: Params
  step: jax.Array  # int32: local steps done
  seed_key: jax.Array


def periodic_averaging(init_params: Callable[[jax.Array], Params], loss_fn: LossFn,
                       optimizer: optax.GradientTransformation, *, period: int,
                       delay: int = 0, batch_size: int | None = 10,
                       codec: codecs.Codec | None = None,
                       mesh: Mesh | None = None) -> WorkerAlgorithm:
  """Local SGD (``delay=0``) or Delayed Gradient Averaging (``delay=D > 0``).

  Args:
    init_params: ``init(key) -> params``; every worker starts from the same model.
    loss_fn: ``loss_fn(params, batch, mask) -> scalar`` (a model's ``train_loss``).
    optimizer: each worker's local optimizer (its state is not averaged).
    period: K >= 1, local steps between two uploads.
    delay: D >= 0, local steps between an upload and the arrival of its average.
    batch_size: each worker's minibatch; None is its whole shard.
    codec: compresses each upload Δ_i (identity by default).
    mesh: optional mesh with a ``"clients"`` axis to shard the workers over.
  """
  if not isinstance(period, int) or period < 1:
    raise ValueError(f"period K must be an integer >= 1, got {period!r}")
  if not isinstance(delay, int) or delay < 0:
    raise ValueError(f"delay D must be an integer >= 0 steps, got {delay!r}")
  codec, mesh = check_common(batch_size, codec, mesh)
  grad_one = jax.value_and_grad(loss_fn)
  slots = delay // period + 1  # updates in flight at most

  def init(seed: int, num_workers: int) -> PeriodicState:
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    seed_key = keys.seed_key(seed)
    params = jax.jit(init_params)(keys.init_key(seed_key))
    stack = lambda p: jnp.broadcast_to(jnp.asarray(p), (num_workers, *jnp.shape(p)))
    zeros = lambda *lead: jax.tree.map(lambda p: jnp.zeros((*lead, *p.shape), p.dtype), params)
    return PeriodicState(
        params=jax.tree.map(stack, params),
        opt_state=jax.tree.map(stack, optimizer.init(params)),
        base=jax.tree.map(stack, params), pending=zeros(num_workers),
        in_flight_sum=zeros(num_workers), in_flight_own=zeros(slots, num_workers),
        in_flight_mean=zeros(slots), step=jnp.int32(0), seed_key=seed_key)

  def local_step(params, opt_state, batch, valid):
    loss, grads = grad_one(params, batch, valid)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, updates, loss

  def body(state: PeriodicState, shards: ClientArrays, num_steps: int):
    ids = local_ids(shards.num_clients, mesh)
    batcher = Batcher.make(shards, worker_keys(state.seed_key, 0, ids,
                                                 keys.Stream.DATA_ORDER), batch_size)
    tmap = jax.tree.map

    def send(s: PeriodicState, t1) -> PeriodicState:
      m = t1 // period  # this upload's number, 1, 2, ...
      mean = codec_mean(codec, m, s.seed_key, ids, s.pending, mesh)
      return s.replace(
          in_flight_own=tmap(lambda buf, d: buf.at[m % slots].set(d), s.in_flight_own,
                             s.pending),
          in_flight_mean=tmap(lambda buf, mu: buf.at[m % slots].set(mu), s.in_flight_mean,
                              mean),
          in_flight_sum=tmap(jnp.add, s.in_flight_sum, s.pending),
          pending=tmap(jnp.zeros_like, s.pending))

    def arrive(s: PeriodicState, t1) -> PeriodicState:
      slot = ((t1 - delay) // period) % slots  # the upload that arrives now
      base = tmap(lambda b, mu: b + mu[slot][None], s.base, s.in_flight_mean)
      in_flight_sum = tmap(lambda a, own: a - own[slot], s.in_flight_sum, s.in_flight_own)
      # w_i - Δ_i + mean, from the split: the D newer local steps are kept.
      params = tmap(lambda b, a, p: b + a + p, base, in_flight_sum, s.pending)
      return s.replace(params=params, base=base, in_flight_sum=in_flight_sum)

    def skip(s: PeriodicState, t1) -> PeriodicState:
      return s

    def step(carry, t):
      s, orders = carry
      orders, (batch, valid) = batcher.next(orders, t)
      params, opt_state, updates, losses = jax.vmap(local_step)(s.params, s.opt_state, batch,
                                                                valid)
      s = s.replace(params=params, opt_state=opt_state,
                    pending=tmap(jnp.add, s.pending, updates))
      t1 = t + 1  # steps done
      s = lax.cond(t1 % period == 0, send, skip, s, t1)
      due = (t1 - delay >= period) & ((t1 - delay) % period == 0)
      s = lax.cond(due, arrive, skip, s, t1)
      return (s, orders), worker_mean(losses, mesh)

    steps = state.step + jnp.arange(num_steps, dtype=jnp.int32)
    (new, _), losses = lax.scan(step, (state, batcher.first(state.step)), steps)
    finite = all_finite(new.params)
    if mesh is not None:
      finite = lax.pmin(finite.astype(jnp.int32), CLIENTS_AXIS) > 0
    return new.replace(step=state.step + num_steps), StepMetrics(loss=losses, finite=finite)

  per_worker = P(CLIENTS_AXIS)
  specs = PeriodicState(params=per_worker, opt_state=per_worker, base=per_worker,
                      pending=per_worker, in_flight_sum=per_worker,
                      in_flight_own=P(None, CLIENTS_AXIS), in_flight_mean=P(), step=P(),
                      seed_key=P())

  _run = jax.jit(lambda state, shards, num_steps: shard_run(
      body, mesh, specs, state, shards, num_steps), static_argnums=2)

  def run(state, shards, num_steps):
    check_shards(shards, jax.tree.leaves(state.pending)[0].shape[0], mesh)
    return _run(state, shards, num_steps)

  model = jax.jit(lambda state: jax.tree.map(lambda p: jnp.mean(p, axis=0), state.params))
  return WorkerAlgorithm(init=init, run=run, model=model, period=period, delay=delay)
