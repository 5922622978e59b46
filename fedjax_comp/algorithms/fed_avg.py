"""Federated averaging with optax server optimizers, and any uplink codec.

One round, readable top to bottom (`engine.make_round`)::

  round_key = fold_in(seed_key, round)
  ids       = the cohort's clients (sampled by the store: `sampling.round_ids`)
  per client: delta_i = client_update(W)                 # local training
              x_i     = decode(encode(delta_i))          # uplink codec, keys rebuilt
  H         = sum_i n_i x_i / sum_i n_i                  # example-weighted mean
  updates   = server_optimizer.update(-H)                # pseudo-gradient
  W         = W + updates

A codec may replace the mean by its own rule (`codecs.aggregation`: a
majority vote for signSGD, EF21's running mean); a downlink codec makes the
clients train from a compressed copy of W (`algorithms.downlink`).

The algorithm is the only consumer of its codec: a structured codec
(``low_rank``, ``random_mask``) reparametrizes the local training here, and
a codec with state (its ``init`` returns arrays) keeps that state per client
as the client's row. A non-finite aggregate is never applied: the round
keeps the old parameters and reports ``finite=False``.

References:
  McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from
  Decentralized Data (arXiv 1602.05629).
  Reddi et al. 2020, Adaptive Federated Optimization (arXiv 2003.00295).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fedjax_comp import codecs, keys
from fedjax_comp.algorithms import base, downlink, engine
from fedjax_comp.client_update import LocalSchedule, make_client_update
from fedjax_comp.models import Model, Params


class Broadcast(NamedTuple):
  """What FedAvg sends each client: the model it trains from, and the round number."""

  params: Params  # the server's model, or the clients' decoded copy of it (downlink codec)
  round: jax.Array  # int32: for a stateful codec's `age` (rounds a client missed)


def codec_row(codec: codecs.Codec, params) -> tuple[bool, object]:
  """``(stateful, init_row)``: whether `codec` keeps state, and a client's initial row.

  The row is the codec's state, and with a codec that ages its state
  (`Codec.age`) also ``last``, the round the client last took part in (-1:
  never).
  """
  x = codecs.codec_input(codec, params)  # abstract: shapes only
  stateful = bool(jax.tree.leaves(jax.eval_shape(codec.init, x)))

  def init_row(params):
    if not stateful:
      return ()
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), codecs.codec_input(codec, params))
    state = codec.init(zeros)
    return {"codec": state, "last": jnp.int32(-1)} if codec.age is not None else state

  return stateful, init_row


def fed_avg(model: Model, client_optimizer: optax.GradientTransformation,
            server_optimizer: optax.GradientTransformation,
            schedule: LocalSchedule = LocalSchedule(), *, clients_per_round: int,
            codec: codecs.Codec | None = None, client_chunk: int | None = None,
            mesh: Mesh | None = None, reproducible: bool = False, prox_mu: float = 0.0,
            downlink_codec: codecs.Codec | None = None, downlink_feedback: bool = True,
            name: str = "fedavg") -> base.FederatedAlgorithm:
  """Builds FedAvg (and FedAvgM/FedAdam/FedYogi/FedAdagrad by `server_optimizer`).

  Args:
    model: the model; its ``train_loss`` is the local objective.
    client_optimizer: the client's optax optimizer (``optax.sgd(client_lr)``).
    server_optimizer: from `server_optimizers.server_optimizer`; gets
      -update as its gradient, where the update is the codec's aggregation
      rule over the cohort (the example-weighted mean by default).
    schedule: local epochs/steps and batch size.
    clients_per_round: clients sampled each round, uniformly without replacement.
    codec: uplink codec; identity by default.
    client_chunk: clients per vmapped block; default ``model.default_chunk``.
    mesh: optional mesh with a ``"clients"`` axis to shard the cohort over.
    reproducible: sum the clients' updates in a fixed order (`engine.layout`):
      the same round on any power-of-two device count, bit for bit, at a
      cost (WORKSPACE.md: ~1-4% for logistic/mlp, ~15-40% for chunk-1 models).
    prox_mu: FedProx's proximal weight (`algorithms.fed_prox`); 0 is FedAvg.
    downlink_codec: compresses the broadcast (`algorithms.downlink`); None
      broadcasts the float32 model.
    downlink_feedback: with a downlink codec, compress the model's distance
      from the clients' copy (EF21-P, error feedback on the server) rather
      than the last round's model change.
    name: the algorithm's name in results.

  Returns:
    A `base.FederatedAlgorithm` whose state is a `base.ServerState`.
  """
  codec = codec or codecs.identity()
  chunk = client_chunk or model.default_chunk(jax.default_backend())
  base.check_common(clients_per_round, chunk)
  client_update = make_client_update(model.train_loss, client_optimizer, schedule,
                                     structure=codec.structure, prox_mu=prox_mu,
                                     dropout=model.stochastic)
  abstract_params = jax.eval_shape(model.init, jax.random.key(0))
  stateful, init_row = codec_row(codec, abstract_params)
  aggregator = codec.aggregator or codecs.weighted_mean()
  down = downlink.Downlink(downlink_codec, downlink_feedback) if downlink_codec else None

  def broadcast(state: base.ServerState) -> Broadcast:
    return Broadcast(params=state.params if down is None else down.model(state),
                     round=state.round)

  def client(b: Broadcast, data, row, key) -> base.ClientOutput:
    delta, metrics = client_update(b.params, data, key)
    codec_key = keys.stream(key, keys.Stream.CODEC)
    if not stateful:
      codec_state = codec.init(delta)
    elif codec.age is not None:  # rounds missed since the client's last round
      codec_state = codec.age(row["codec"], jnp.maximum(b.round - row["last"] - 1, 0))
    else:
      codec_state = row
    payload, codec_state = codec.encode(codec_key, delta, codec_state)
    decoded = codec.decode(codec_key, payload)
    if stateful and codec.age is not None:
      codec_state = {"codec": codec_state, "last": b.round.astype(jnp.int32)}
    return base.ClientOutput(
        sums={"delta": base.Weighted(aggregator.weight(data.num_examples), decoded)},
        row=codec_state if stateful else (), train_loss=metrics.train_loss,
        num_steps=metrics.num_steps)

  def server(state: base.ServerState, sums: base.CohortSums, num_clients: int):
    update, agg_state = aggregator.finalize(state.aggregator, sums.sums["delta"],
                                            sums.weights["delta"], num_clients)
    params, opt_state, finite = base.server_step(state, update, server_optimizer)
    new = state.replace(params=params, opt_state=opt_state, round=state.round + 1,
                        aggregator=base.keep_if(finite, agg_state, state.aggregator))
    if down is not None:
      new = new.replace(downlink=down.update(state, new))
    return new, base.round_metrics(sums, update, finite)

  def init(seed):
    state = base.init_server_state(seed, model.init, server_optimizer)
    state = state.replace(aggregator=aggregator.init(state.params))
    return state if down is None else state.replace(downlink=down.init(state.params))

  return base.FederatedAlgorithm(
      name=name, init=init, broadcast=broadcast, client=client, server=server,
      init_row=init_row,
      round=engine.make_round(broadcast, client, server, chunk=chunk, mesh=mesh,
                               exact=reproducible),
      clients_per_round=clients_per_round, client_chunk=chunk, reproducible=reproducible,
      uplink_bits=lambda params: codecs.uplink_bits(codec, params),
      downlink_bits=codecs.dense_bits if down is None else down.bits, mesh=mesh,
      downlink_copy_bits=None if down is None else codecs.dense_bits)  # W_hat in float32
