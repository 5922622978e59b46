"""Federated averaging with optax server optimizers, as a pair of pure functions.

One round, readable top to bottom (all inside one `jax.jit`)::

  round_key = fold_in(seed_key, round)
  ids       = sample(clients_per_round of num_clients)       # without replacement
  sums      = scan over chunks: vmap(client_update) -> vmap(encode) -> decode -> sum
  H         = sum_i n_i delta_i / sum_i n_i                   # example-weighted mean
  updates   = server_optimizer.update(-H)                     # pseudo-gradient
  params    = params + updates

A non-finite aggregate is never applied: the round keeps the old parameters
and reports ``finite=False``, and the runner stops naming the round.

References:
  McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from
  Decentralized Data (arXiv 1602.05629).
  Reddi et al. 2020, Adaptive Federated Optimization (arXiv 2003.00295).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fedjax_comp import aggregation
from fedjax_comp import codecs
from fedjax_comp import keys
from fedjax_comp.clients import ClientUpdateFn
from fedjax_comp.data.federated import ClientArrays, sample_clients
from fedjax_comp.models import Params


@flax.struct.dataclass
class ServerState:
  params: Params
  opt_state: optax.OptState
  round: jax.Array  # int32: rounds completed so far
  seed_key: jax.Array  # typed root key; every round's randomness derives from it


class RoundMetrics(NamedTuple):
  train_loss: jax.Array  # example-weighted mean of the clients' local losses
  num_examples: jax.Array  # examples held by this round's clients
  num_clients: jax.Array  # clients with at least one example
  num_steps: jax.Array  # local steps taken by all clients
  update_norm: jax.Array  # ||H||, the global norm of the averaged delta
  finite: jax.Array  # False if the aggregate was NaN/Inf (and so not applied)


class FederatedAlgorithm(NamedTuple):
  """``init(seed) -> state`` and a jitted ``round(state, clients) -> (state, metrics)``."""

  init: Callable[[int], ServerState]
  round: Callable[[ServerState, ClientArrays], tuple[ServerState, RoundMetrics]]


def round_client_ids(state: ServerState, num_clients: int, clients_per_round: int) -> jax.Array:
  """The ids sampled in the round `state` is about to run (rebuildable by anyone)."""
  round_key = keys.round_key(state.seed_key, state.round)
  sampling_key = keys.stream(keys.server_key(round_key), keys.Stream.CLIENT_SAMPLING)
  return sample_clients(sampling_key, num_clients, clients_per_round)


def fed_avg(init_params: Callable[[jax.Array], Params], client_update: ClientUpdateFn,
            server_optimizer: optax.GradientTransformation, *, clients_per_round: int,
            client_chunk: int = 1, codec: codecs.Codec | None = None,
            mesh: Mesh | None = None) -> FederatedAlgorithm:
  """Builds FedAvg (and FedAvgM/FedAdam/FedYogi/FedAdagrad by `server_optimizer`).

  Args:
    init_params: ``init(key) -> params``, e.g. ``model.init``.
    client_update: from `clients.make_client_update`.
    server_optimizer: from `server.server_optimizer`; gets -H as its gradient.
    clients_per_round: clients sampled each round, uniformly without replacement.
    client_chunk: clients per vmapped block inside the round's scan.
    codec: uplink codec; identity by default.
    mesh: optional mesh with a ``"clients"`` axis; `clients` passed to
      `round` should then be replicated on it (`sharding.replicate`).

  Returns:
    A `FederatedAlgorithm`.
  """
  if clients_per_round < 1:
    raise ValueError(f"clients_per_round must be >= 1, got {clients_per_round}")
  codec = codec or codecs.identity()

  def init(seed: int) -> ServerState:
    seed_key = keys.seed_key(seed)
    params = jax.jit(init_params)(keys.init_key(seed_key))  # eager init compiles op by op
    return ServerState(params=params, opt_state=server_optimizer.init(params),
                       round=jnp.int32(0), seed_key=seed_key)

  def run_round(state: ServerState, clients: ClientArrays) -> tuple[ServerState, RoundMetrics]:
    round_key = keys.round_key(state.seed_key, state.round)
    ids = round_client_ids(state, clients.num_clients, clients_per_round)
    sums = aggregation.sum_client_updates(client_update, codec, state.params, clients, ids,
                                          round_key, chunk=client_chunk, mesh=mesh)
    mean_delta = aggregation.weighted_mean(sums)
    updates, opt_state = server_optimizer.update(
        jax.tree.map(jnp.negative, mean_delta), state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    norm = optax.tree.norm(mean_delta)
    finite = jnp.isfinite(norm) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    keep = lambda new, old: jnp.where(finite, new, old)
    new_state = ServerState(params=jax.tree.map(keep, params, state.params),
                            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
                            round=state.round + 1, seed_key=state.seed_key)
    metrics = RoundMetrics(
        train_loss=sums.weighted_loss / jnp.maximum(sums.weight, 1.0),
        num_examples=sums.weight, num_clients=sums.num_clients, num_steps=sums.num_steps,
        update_norm=norm, finite=finite)
    return new_state, metrics

  return FederatedAlgorithm(init=init, round=jax.jit(run_round))


def loop_round_sums(client_update: ClientUpdateFn, codec: codecs.Codec, params: Params,
                    clients: ClientArrays, client_ids, round_key: jax.Array
                    ) -> aggregation.ClientSums:
  """The reference: a Python loop calling a jitted single-client update per client.

  This is how FedJAX's default backend runs a round (one client after
  another, one dispatch each), kept as the baseline `benchmarks.throughput`
  compares the vmapped round with, and as the ground truth in tests. Returns
  the same sums as `aggregation.sum_client_updates`.
  """
  one = _jitted_single_client(client_update, codec)
  total = None
  for cid in [int(c) for c in client_ids]:
    client = jax.tree.map(lambda a: a[cid], clients)
    sums = one(params, client, round_key, cid)
    total = sums if total is None else _add_sums(total, sums)
  return total


@functools.cache
def _jitted_single_client(client_update, codec):
  """One jit per (client_update, codec); written apart from `aggregation` on purpose,
  so that the reference shares no code with the vmapped path it checks."""

  @jax.jit
  def one(params, client, round_key, cid):
    ckey = keys.client_key(round_key, cid)
    delta, metrics = client_update(params, client, ckey)
    codec_key = keys.stream(ckey, keys.Stream.CODEC)
    payload, _ = codec.encode(codec_key, delta, codec.init(delta))
    decoded = codec.decode(codec_key, payload)
    weight = client.num_examples.astype(jnp.float32)
    live = weight > 0
    return aggregation.ClientSums(
        weighted_delta=jax.tree.map(lambda d: jnp.where(live, weight * d, 0.0), decoded),
        weight=weight, weighted_loss=jnp.where(live, weight * metrics.train_loss, 0.0),
        num_clients=live.astype(jnp.int32), num_steps=metrics.num_steps)

  return one


_add_sums = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
