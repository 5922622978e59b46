"""Aggregation rules: how the server turns the cohort's decoded updates into one update.

The engine reduces a cohort to sums, ``Σ_i w_i x_i`` and ``Σ_i w_i``, in
one collective; an `Aggregator` says what each client's weight w_i is and
how the server finishes the sum (optionally with server-side state)::

  w_i              = aggregator.weight(n_i)              # on the client
  update, state    = aggregator.finalize(state, Σ w_i x_i, Σ w_i, N)

so a rule that is a function of a sum (a mean, a majority vote, EF21's
running estimate) costs the round nothing extra. A codec names the rule its
payload needs (`Codec.aggregator`); None means `weighted_mean`. FedAvg
applies ``-update`` as the server optimizer's pseudo-gradient.

References:
  McMahan et al. 2017 (arXiv 1602.05629): the example-weighted mean.
  Bernstein et al. 2019, signSGD with Majority Vote is Communication
  Efficient and Fault Tolerant (arXiv 1810.05291).
  Fatkhullin et al. 2021, EF21 with Bells & Whistles (arXiv 2110.03294),
  EF21-PP: partial participation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

AggState = Any  # a pytree of arrays held by the server; () when the rule keeps none


class Aggregator(NamedTuple):
  """A server-side aggregation rule (see the module docstring)."""

  name: str
  init: Callable[[Any], AggState]  # params -> the rule's server state
  weight: Callable[[jax.Array], jax.Array]  # a client's example count -> its weight
  finalize: Callable[[AggState, Any, jax.Array, int], tuple[Any, AggState]]


def _safe_divide(total, weight):
  denom = jnp.maximum(weight, 1e-30)
  return jax.tree.map(lambda s: jnp.where(weight > 0, s / denom, 0.0), total)


def weighted_mean() -> Aggregator:
  """FedAvg's rule: ``Σ n_i x_i / Σ n_i`` (zero when no client had data)."""
  return Aggregator(
      name="weighted_mean", init=lambda params: (),
      weight=lambda n: n.astype(jnp.float32),
      finalize=lambda state, total, weight, num_clients: (_safe_divide(total, weight), state))


def majority_vote() -> Aggregator:
  """signSGD's rule: the elementwise sign of ``Σ_i sign_i`` (one vote per client; a tie is 0).

  The clients' decoded updates must be signs (the `sign` codec); the
  result is a vector of +-1 (and 0 on ties), so the server optimizer's
  learning rate is the step size (Bernstein et al. 2019, Algorithm 1).
  """

  def finalize(state, total, weight, num_clients):
    del weight, num_clients
    return jax.tree.map(jnp.sign, total), state

  return Aggregator(name="majority_vote", init=lambda params: (),
                    weight=lambda n: jnp.ones_like(n, jnp.float32), finalize=finalize)


def population_running_mean() -> Aggregator:
  """EF21-PP's rule: ``g <- g + (1/N) Σ_{i in cohort} c_i``, and the update is the new g.

  The server's g is the mean of all N clients' estimates g_i (unsampled
  clients keep theirs), and each sampled client sends the compressed change
  c_i of its own; so g moves by the cohort's changes divided by the
  population size N (Fatkhullin et al. 2021, EF21-PP). With full
  participation this is EF21's ``g <- g + mean_i c_i``.
  """

  def finalize(g, total, weight, num_clients):
    del weight
    g = jax.tree.map(lambda a, s: a + s / num_clients, g, total)
    return g, g

  return Aggregator(
      name="population_running_mean",
      init=lambda params: jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params),
      weight=lambda n: jnp.ones_like(n, jnp.float32), finalize=finalize)
