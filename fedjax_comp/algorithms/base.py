"""What a federated algorithm is: broadcast, a per-client function, a server update.

An algorithm is built from three pure functions (drjax's placement verbs,
FedJAX's `FederatedAlgorithm`)::

  b            = broadcast(state)                       # what every client receives
  out_i        = client(b, client_i, row_i, key_i)      # one client: train, encode, decode
  state, m     = server(state, sums, N)                 # sums over the cohort -> new state

and `build` puts them together into a jitted ``round(state, cohort)``: the
engine (`algorithms.engine`) maps `client` over the cohort in chunks and
reduces the weighted sums, then `server` applies them. A client's *row* is
its per-client state (a residual, a control variate, a codec's memory): the
cohort brings the rows in and the round returns the new ones, which the
client store writes back (`data.stores`). Stateless algorithms have ``()``
rows.

The round returns, with its metrics, the cohort's client ids and each
client's local step count (the simulated clock needs nothing else).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fedjax_comp.codecs.base import all_finite  # noqa: F401  (base.all_finite, for algorithms)
from fedjax_comp.data.federated import ClientArrays
from fedjax_comp.models import Params

Row = Any  # one client's state row (a pytree; () when the algorithm keeps none)
Broadcast = Any  # what the server sends every client of a round


@flax.struct.dataclass
class ServerState:
  """The state FedAvg-like algorithms keep on the server."""

  params: Params
  opt_state: optax.OptState
  round: jax.Array  # int32: rounds completed so far
  seed_key: jax.Array  # typed root key; every round's randomness derives from it
  aggregator: Any = ()  # the aggregation rule's server state (EF21's g; () for a mean)
  downlink: Params | tuple = ()  # the model the clients hold, with a downlink codec


@flax.struct.dataclass
class Cohort:
  """A round's clients: their ids, their examples and their state rows.

  With ``gathered=False`` (the device store), `data` and `rows` hold the
  whole population (leading axis `num_clients`) and the round gathers the
  ids' entries chunk by chunk. With ``gathered=True`` (the host store),
  they hold the cohort itself, entry j for ``ids[j]``, padded to any number
  of entries >= len(ids) (extra entries are ignored).
  """

  ids: jax.Array  # int32 [m]: the sampled client ids
  data: ClientArrays
  rows: Row
  num_clients: int = flax.struct.field(pytree_node=False)  # the population size N
  gathered: bool = flax.struct.field(pytree_node=False, default=False)


class Weighted(NamedTuple):
  """A client's contribution to one server sum: ``weight * value``."""

  weight: jax.Array  # float32 scalar; weight 0 (an empty client) is never summed
  value: Any  # a pytree


class ClientOutput(NamedTuple):
  """What `client` returns for one client."""

  sums: dict[str, Weighted]  # summed over the cohort, per key: Σ w_i v_i and Σ w_i
  row: Row  # the client's new state row (kept only if the client had data)
  train_loss: jax.Array  # mean local loss over its steps
  num_steps: jax.Array  # int32 local steps taken


class CohortSums(NamedTuple):
  """The engine's reduction over a cohort (and what `server` receives)."""

  sums: dict[str, Any]  # Σ_i w_i v_i per key of ClientOutput.sums
  weights: dict[str, jax.Array]  # Σ_i w_i per key
  num_examples: jax.Array  # float32: Σ_i n_i
  weighted_loss: jax.Array  # Σ_i n_i loss_i
  num_clients: jax.Array  # int32: clients with at least one example
  num_steps: jax.Array  # int32: local steps, all clients
  client_steps: jax.Array  # int32 [m]: client ids[j]'s local steps (0: empty client)
  rows: Row  # [m, ...]: client ids[j]'s new row (its old row if it had no data)


class RoundMetrics(NamedTuple):
  train_loss: jax.Array  # example-weighted mean of the clients' local losses
  num_examples: jax.Array  # examples held by this round's clients
  num_clients: jax.Array  # clients with at least one example
  num_steps: jax.Array  # local steps taken by all clients
  update_norm: jax.Array  # the global norm of the server's aggregate update
  finite: jax.Array  # False if the aggregate was NaN/Inf (and so not applied)


class RoundOutput(NamedTuple):
  metrics: RoundMetrics
  client_ids: jax.Array  # int32 [m]
  client_steps: jax.Array  # int32 [m]: local steps of each (0: no data, sent nothing)
  rows: Row  # [m, ...]: the new rows, for the store to write back


class FederatedAlgorithm(NamedTuple):
  """An algorithm's pieces and its jitted ``round(state, cohort) -> (state, RoundOutput)``.

  `round` is the engine's; the pieces are public so the reference loop
  (`algorithms.reference`) can run the same algorithm without the engine.
  """

  name: str
  init: Callable[[int], Any]  # seed -> server state
  broadcast: Callable[[Any], Broadcast]
  client: Callable[[Broadcast, ClientArrays, Row, jax.Array], ClientOutput]
  server: Callable[[Any, CohortSums, int], tuple[Any, RoundMetrics]]  # (state, sums, N)
  init_row: Callable[[Params], Row]  # one client's initial row, from the params
  round: Callable[[Any, Cohort], tuple[Any, RoundOutput]]
  clients_per_round: int
  client_chunk: int  # clients per vmapped block of the round
  reproducible: bool  # fixed-order sums (`engine.layout`)
  uplink_bits: Callable[[Params], int]  # exact bits one client with data sends per round
  downlink_bits: Callable[[Params], int]  # bits the server sends each client per round
  mesh: Mesh | None = None
  # With a downlink codec: the clients' copy's bits in float32. Then a client
  # downloads the broadcasts it missed since it last trained, or this copy if
  # smaller (`downlink.CatchUp`); None: every round's download is downlink_bits.
  downlink_copy_bits: Callable[[Params], int] | None = None


def check_common(clients_per_round: int, client_chunk: int) -> None:
  if not (isinstance(clients_per_round, int) and clients_per_round >= 1):
    raise ValueError(f"clients_per_round must be an integer >= 1, got {clients_per_round!r}")
  if not (isinstance(client_chunk, int) and client_chunk >= 1):
    raise ValueError(f"client_chunk must be an integer >= 1, got {client_chunk!r}")


def keep_if(finite: jax.Array, new, old):
  """`new` where `finite`, else `old`, leaf by leaf: a refused update changes nothing."""
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def weighted_mean(sums: CohortSums, key: str):
  """Σ w_i v_i / Σ w_i for one key of the sums; zero when no client had any weight."""
  weight = sums.weights[key]
  denom = jnp.maximum(weight, 1e-30)
  return jax.tree.map(lambda s: jnp.where(weight > 0, s / denom, 0.0), sums.sums[key])


def round_metrics(sums: CohortSums, update, finite) -> RoundMetrics:
  return RoundMetrics(
      train_loss=sums.weighted_loss / jnp.maximum(sums.num_examples, 1.0),
      num_examples=sums.num_examples, num_clients=sums.num_clients,
      num_steps=sums.num_steps, update_norm=optax.tree.norm(update), finite=finite)


def init_server_state(seed: int, init_params, server_optimizer) -> ServerState:
  from fedjax_comp import keys  # pylint: disable=g-import-not-at-top
  seed_key = keys.seed_key(seed)
  params = jax.jit(init_params)(keys.init_key(seed_key))  # eager init compiles op by op
  return ServerState(params=params, opt_state=server_optimizer.init(params),
                     round=jnp.int32(0), seed_key=seed_key)


def server_step(state, mean_update: Params, server_optimizer):
  """Applies the pseudo-gradient -mean_update with the server optimizer, if finite.

  Returns ``(params, opt_state, finite)``: the old ones when the aggregate
  or the new params hold a NaN/Inf.
  """
  updates, opt_state = server_optimizer.update(
      jax.tree.map(jnp.negative, mean_update), state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(optax.tree.norm(mean_update)) & all_finite(params)
  return (keep_if(finite, params, state.params), keep_if(finite, opt_state, state.opt_state),
          finite)
