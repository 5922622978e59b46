"""The reference round: a Python loop of one jitted client call per client.

This is how FedJAX's default backend runs a round (one client after
another, one dispatch each). It runs an algorithm's own pieces (`broadcast`,
`client`, `server`) without the engine, and shares no code with it on
purpose: it is the ground truth the conformance suite holds the vmapped,
chunked, sharded round to, and the baseline `benchmarks.throughput`
compares it with.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_comp import keys
from fedjax_comp.algorithms.base import Cohort, CohortSums, FederatedAlgorithm, RoundOutput


@functools.cache
def _one_client(client_fn):
  """Client i's weighted contributions, in one jit per client function."""

  @jax.jit
  def one(broadcast, client, row, round_key, cid):
    out = client_fn(broadcast, client, row, keys.client_key(round_key, cid))
    n = client.num_examples.astype(jnp.float32)
    live = n > 0
    weighted = {name: jax.tree.map(lambda v, w=jnp.where(live, c.weight, 0.0):
                                   jnp.where(live, w * v.astype(jnp.float32), 0.0), c.value)
                for name, c in out.sums.items()}
    weights = {name: jnp.where(live, c.weight, 0.0).astype(jnp.float32)
               for name, c in out.sums.items()}
    steps = jnp.where(live, out.num_steps, 0).astype(jnp.int32)
    loss = jnp.where(live, n * out.train_loss, 0.0)
    row = jax.tree.map(lambda new, old: jnp.where(live, new, old), out.row, row)
    return weighted, weights, n, loss, live.astype(jnp.int32), steps, row

  return one


@functools.cache
def _jitted_server(server_fn):
  return jax.jit(server_fn, static_argnums=2)


_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


def cohort_sums(algorithm: FederatedAlgorithm, state, cohort: Cohort) -> CohortSums:
  """The cohort's sums, one client at a time (what the engine returns for a round)."""
  round_key = keys.round_key(state.seed_key, state.round)
  broadcast = algorithm.broadcast(state)
  one = _one_client(algorithm.client)
  total, steps, rows = None, [], []
  for j, cid in enumerate(int(c) for c in np.asarray(cohort.ids)):
    at = j if cohort.gathered else cid
    client = jax.tree.map(lambda a: a[at], cohort.data)
    row = jax.tree.map(lambda a: a[at], cohort.rows)
    weighted, weights, n, loss, live, s, new_row = one(broadcast, client, row, round_key,
                                                       np.int32(cid))
    part = (weighted, weights, n, loss, live, s)
    total = part if total is None else _add(total, part)
    steps.append(s)
    rows.append(new_row)
  weighted, weights, n, loss, live, num_steps = total
  stack = lambda *xs: jnp.stack(xs)
  return CohortSums(sums=weighted, weights=weights, num_examples=n, weighted_loss=loss,
                    num_clients=live, num_steps=num_steps, client_steps=jnp.stack(steps),
                    rows=jax.tree.map(stack, *rows) if jax.tree.leaves(rows[0]) else ())


def reference_round(algorithm: FederatedAlgorithm, state, cohort: Cohort):
  """``(state, RoundOutput)`` of one round by the loop; equals ``algorithm.round``'s."""
  sums = cohort_sums(algorithm, state, cohort)
  new_state, metrics = _jitted_server(algorithm.server)(state, sums, cohort.num_clients)
  return new_state, RoundOutput(metrics=metrics, client_ids=jnp.asarray(cohort.ids),
                                client_steps=sums.client_steps, rows=sums.rows)
