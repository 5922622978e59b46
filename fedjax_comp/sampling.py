"""Which clients take part in a round: a pure function of (seed, round).

`round_ids` is what every store and algorithm uses, on the device inside the
round or ahead of it (a host store prefetches round t+1's cohort while round
t runs), with the same bits either way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from fedjax_comp import keys


def kth_largest(scores: jax.Array, k: int) -> jax.Array:
  """The k-th largest of uint32 `scores` (jit-able), exactly ``jnp.sort(scores)[n - k]``.

  Bit by bit from the top: the largest t with at least k scores >= t. 32
  vectorized counting passes instead of a sort: 6.7 ms against 49 ms for a
  million scores on a CPU core (0.08 against 0.10 ms for 2,000).
  """

  def bit(i, t):
    candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(jnp.sum(scores >= candidate, dtype=jnp.int32) >= k, candidate, t)

  return lax.fori_loop(0, 32, bit, jnp.uint32(0))


@functools.partial(jax.jit, static_argnums=(1, 2))
def sample_clients(key: jax.Array, num_clients: int, clients_per_round: int) -> jax.Array:
  """`clients_per_round` distinct client ids, uniformly at random (jit-able).

  The ids whose i.i.d. random 32-bit scores are at least the
  `clients_per_round`-th largest score: a uniformly random subset, returned
  in increasing id order (a round's result does not depend on the order).
  Only ties at the threshold (probability below m * n / 2**32) would favour
  smaller ids. The threshold is found by `kth_largest` (a counting
  bisection, no sort); `jax.random.choice(..., replace=False)` and
  `lax.top_k` are index-carrying sorts, several times slower.
  """
  if not 1 <= clients_per_round <= num_clients:
    raise ValueError(
        f"clients_per_round must be in [1, num_clients={num_clients}], got {clients_per_round}")
  if clients_per_round == num_clients:
    return jnp.arange(num_clients, dtype=jnp.int32)
  scores = jax.random.bits(key, (num_clients,), jnp.uint32)
  threshold = kth_largest(scores, clients_per_round)
  (ids,) = jnp.nonzero(scores >= threshold, size=clients_per_round)
  return ids.astype(jnp.int32)


def round_ids(seed_key: jax.Array, round_num: ArrayLike, num_clients: int,
              clients_per_round: int) -> jax.Array:
  """The ids of the clients round `round_num` (0-based: rounds done so far) runs.

  Rebuilt by anyone from the seed key alone: the server's sampling stream of
  that round (`keys.Stream.CLIENT_SAMPLING`).
  """
  round_key = keys.round_key(seed_key, round_num)
  sampling_key = keys.stream(keys.server_key(round_key), keys.Stream.CLIENT_SAMPLING)
  return sample_clients(sampling_key, num_clients, clients_per_round)
