"""Federated averaging with optax server optimizers, and any uplink codec.

One round, readable top to bottom (`engine.make_round`)::

  round_key = fold_in(seed_key, round)
  ids       = the cohort's clients (sampled by the store: `sampling.round_ids`)
  per client: delta_i = client_update(W)                 # local training
              x_i     = decode(encode(delta_i))          # uplink codec, keys rebuilt
  H         = sum_i n_i x_i / sum_i n_i                  # example-weighted mean
  updates   = server_optimizer.update(-H)                # pseudo-gradient
  W         = W + updates

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

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fedjax_comp import codecs, keys
from fedjax_comp.algorithms import base, engine
from fedjax_comp.client_update import LocalSchedule, make_client_update
from fedjax_comp.models import Model


def codec_row(codec: codecs.Codec, params) -> tuple[bool, object]:
  """``(stateful, init_row)``: whether `codec` keeps state, and its per-client initial state."""
  x = codecs.codec_input(codec, params)  # abstract: shapes only
  stateful = bool(jax.tree.leaves(jax.eval_shape(codec.init, x)))

  def init_row(params):
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), codecs.codec_input(codec, params))
    return codec.init(zeros) if stateful else ()

  return stateful, init_row


def fed_avg(model: Model, client_optimizer: optax.GradientTransformation,
            server_optimizer: optax.GradientTransformation,
            schedule: LocalSchedule = LocalSchedule(), *, clients_per_round: int,
            codec: codecs.Codec | None = None, client_chunk: int | None = None,
            mesh: Mesh | None = None, reproducible: bool = False, prox_mu: float = 0.0,
            name: str = "fedavg") -> base.FederatedAlgorithm:
  """Builds FedAvg (and FedAvgM/FedAdam/FedYogi/FedAdagrad by `server_optimizer`).

  Args:
    model: the model; its ``train_loss`` is the local objective.
    client_optimizer: the client's optax optimizer (``optax.sgd(client_lr)``).
    server_optimizer: from `server_optimizers.server_optimizer`; gets -H as
      its gradient.
    schedule: local epochs/steps and batch size.
    clients_per_round: clients sampled each round, uniformly without replacement.
    codec: uplink codec; identity by default.
    client_chunk: clients per vmapped block; default ``model.default_chunk``.
    mesh: optional mesh with a ``"clients"`` axis to shard the cohort over.
    reproducible: sum the clients' updates in a fixed order (`engine.layout`):
      the same round on any power-of-two device count, bit for bit, at a
      cost (WORKSPACE.md: ~1-4% for logistic/mlp, ~15-40% for chunk-1 models).
    prox_mu: FedProx's proximal weight (`algorithms.fed_prox`); 0 is FedAvg.
    name: the algorithm's name in results.

  Returns:
    A `base.FederatedAlgorithm` whose state is a `base.ServerState`.
  """
  codec = codec or codecs.identity()
  chunk = client_chunk or model.default_chunk(jax.default_backend())
  base.check_common(clients_per_round, chunk)
  client_update = make_client_update(model.train_loss, client_optimizer, schedule,
                                     structure=codec.structure, prox_mu=prox_mu)
  stateful, init_row = codec_row(codec, jax.eval_shape(model.init, jax.random.key(0)))

  def broadcast(state: base.ServerState):
    return state.params

  def client(params, data, row, key) -> base.ClientOutput:
    delta, metrics = client_update(params, data, key)
    codec_key = keys.stream(key, keys.Stream.CODEC)
    payload, codec_state = codec.encode(codec_key, delta, row if stateful else codec.init(delta))
    decoded = codec.decode(codec_key, payload)
    return base.ClientOutput(
        sums={"delta": base.Weighted(data.num_examples.astype(jnp.float32), decoded)},
        row=codec_state if stateful else (), train_loss=metrics.train_loss,
        num_steps=metrics.num_steps)

  def server(state: base.ServerState, sums: base.CohortSums, num_clients: int):
    del num_clients  # FedAvg's update does not depend on the population size
    mean_delta = base.weighted_mean(sums, "delta")
    params, opt_state, finite = base.server_step(state, mean_delta, server_optimizer)
    new = base.ServerState(params=params, opt_state=opt_state, round=state.round + 1,
                           seed_key=state.seed_key)
    return new, base.round_metrics(sums, mean_delta, finite)

  return base.FederatedAlgorithm(
      name=name, init=lambda seed: base.init_server_state(seed, model.init, server_optimizer),
      broadcast=broadcast, client=client, server=server, init_row=init_row,
      round=engine.make_round(broadcast, client, server, chunk=chunk, mesh=mesh,
                               exact=reproducible),
      clients_per_round=clients_per_round, client_chunk=chunk, reproducible=reproducible,
      uplink_bits=lambda params: codecs.uplink_bits(codec, params),
      downlink_bits=codecs.dense_bits, mesh=mesh)
