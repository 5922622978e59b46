"""SCAFFOLD: stochastic controlled averaging, option II (Karimireddy et al. 2019).

The server keeps a control variate c, every client i its own c_i (a
per-client state row, 0 until the client is first sampled). Client i
starts from the server model x and takes K local SGD steps corrected for
client drift::

  y <- y - lr (g_i(y) - c_i + c)
  c_i+ = c_i - c + (x - y) / (K lr)            # option II
  sends  Δy_i = y - x  and  Δc_i = c_i+ - c_i

and the server, over the sampled set S of N clients::

  x <- x + lr_g mean_{i in S} Δy_i     (the server optimizer on -mean Δy)
  c <- c + (1/N) sum_{i in S} Δc_i     (so c stays the mean of all c_i)

Both means are uniform over the sampled clients with data, as in the
paper's Algorithm 1 (FedAvg here weighs by example counts; on clients of
equal size the two agree). K is the client's own number of local steps. A
client with no data trains nothing, sends nothing and keeps its c_i. The
uplink carries Δy and Δc: twice FedAvg's, both through the codec (Δc with
the codec key folded with 1). Local training is plain SGD at `client_lr`
(option II's c_i+ is defined for it); structured and stateful codecs are
refused.

References:
  Karimireddy et al. 2019, SCAFFOLD: Stochastic Controlled Averaging for
  Federated Learning (arXiv 1910.06378), Algorithm 1.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fedjax_comp import codecs, keys
from fedjax_comp.algorithms import base, engine
from fedjax_comp.algorithms.fed_avg import codec_row
from fedjax_comp.client_update import LocalSchedule, make_client_update
from fedjax_comp.models import Model, Params


@flax.struct.dataclass
class ScaffoldState:
  params: Params  # x
  opt_state: optax.OptState
  control: Params  # c, the mean of every client's c_i
  round: jax.Array  # int32: rounds completed so far
  seed_key: jax.Array


def scaffold(model: Model, client_lr: float, server_optimizer: optax.GradientTransformation,
             schedule: LocalSchedule = LocalSchedule(), *, clients_per_round: int,
             codec: codecs.Codec | None = None, client_chunk: int | None = None,
             mesh: Mesh | None = None, reproducible: bool = False) -> base.FederatedAlgorithm:
  """Builds SCAFFOLD (option II) with local SGD at `client_lr`.

  Args:
    model: the model; its ``train_loss`` is the local objective.
    client_lr: the local SGD learning rate (> 0).
    server_optimizer: applied to -mean Δy (``sgd(lr_g)`` is the paper's).
    schedule: local epochs/steps and batch size.
    clients_per_round: clients sampled each round.
    codec: applied to Δy and Δc; stateless and unstructured codecs only.
    client_chunk: clients per vmapped block; default ``model.default_chunk``.
    mesh: optional mesh with a ``"clients"`` axis.
    reproducible: fixed-order sums, as in `fed_avg`.
  """
  if not (isinstance(client_lr, (int, float)) and math.isfinite(client_lr) and client_lr > 0):
    raise ValueError(f"client_lr must be a finite number > 0, got {client_lr!r}")
  codec = codec or codecs.identity()
  if codec.structure is not None:
    raise ValueError("scaffold trains the full model (its control variates are params-shaped); "
                     "structured codecs (low_rank, random_mask) are not supported")
  abstract = jax.eval_shape(model.init, jax.random.key(0))
  if codec_row(codec, abstract)[0]:
    raise ValueError("scaffold does not support codecs with per-client state")
  if codec.aggregator is not None:
    raise ValueError(f"scaffold averages Δy and Δc; a codec with its own aggregation rule "
                     f"({codec.aggregator.name}) is not supported")
  chunk = client_chunk or model.default_chunk(jax.default_backend())
  base.check_common(clients_per_round, chunk)
  client_update = make_client_update(model.train_loss, optax.sgd(client_lr), schedule,
                                     dropout=model.stochastic)

  def init(seed: int) -> ScaffoldState:
    s = base.init_server_state(seed, model.init, server_optimizer)
    return ScaffoldState(params=s.params, opt_state=s.opt_state,
                         control=jax.tree.map(jnp.zeros_like, s.params), round=s.round,
                         seed_key=s.seed_key)

  def init_row(params):
    return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

  def broadcast(state: ScaffoldState):
    return state.params, state.control

  def client(server, data, c_i, key) -> base.ClientOutput:
    params, c = server
    correction = jax.tree.map(jnp.subtract, c, c_i)  # g - c_i + c
    delta, metrics = client_update(params, data, key, correction)
    k_lr = jnp.maximum(metrics.num_steps, 1).astype(jnp.float32) * client_lr
    new_c_i = jax.tree.map(lambda ci, cc, d: ci - cc - d / k_lr, c_i, c, delta)
    delta_c = jax.tree.map(jnp.subtract, new_c_i, c_i)
    codec_key = keys.stream(key, keys.Stream.CODEC)

    def send(k, x):
      payload, _ = codec.encode(k, x, codec.init(x))
      return codec.decode(k, payload)

    one = jnp.float32(1.0)
    return base.ClientOutput(
        sums={"delta": base.Weighted(one, send(codec_key, delta)),
              "control": base.Weighted(one, send(jax.random.fold_in(codec_key, 1), delta_c))},
        row=new_c_i, train_loss=metrics.train_loss, num_steps=metrics.num_steps)

  def server(state: ScaffoldState, sums: base.CohortSums, num_clients: int):
    mean_delta = base.weighted_mean(sums, "delta")
    params, opt_state, finite = base.server_step(state, mean_delta, server_optimizer)
    control = jax.tree.map(lambda c, s: c + s / num_clients, state.control,
                           sums.sums["control"])
    finite = finite & base.all_finite(control)
    new = ScaffoldState(params=params, opt_state=opt_state,
                        control=base.keep_if(finite, control, state.control),
                        round=state.round + 1, seed_key=state.seed_key)
    return new, base.round_metrics(sums, mean_delta, finite)

  two_way = lambda params: 2 * codecs.uplink_bits(codec, params)
  return base.FederatedAlgorithm(
      name="scaffold", init=init, broadcast=broadcast, client=client, server=server,
      init_row=init_row,
      round=engine.make_round(broadcast, client, server, chunk=chunk, mesh=mesh,
                               exact=reproducible),
      clients_per_round=clients_per_round, client_chunk=chunk, reproducible=reproducible,
      uplink_bits=two_way,
      downlink_bits=lambda params: 2 * codecs.dense_bits(params), mesh=mesh)
