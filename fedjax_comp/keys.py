"""Key derivation: every random number in a run comes from one seed by `fold_in`.

The derivation (house style, see WORKSPACE.md)::

  seed_key   = jax.random.key(seed, impl="threefry2x32")
  round_key  = fold_in(seed_key, round)
  client_key = fold_in(round_key, client_id)
  use_key    = fold_in(client_key, Stream.X)          # one named stream per use

Server-side randomness of a round (client sampling) comes from the reserved
id ``SERVER`` in place of a client id, and model initialisation from the
reserved round ``SERVER`` in place of a round number, so that no stream can
collide with a client's or a round's. Because a client's key depends only on
(seed, round, client id), results do not depend on how clients are chunked or
sharded over devices, and the server can rebuild any randomness a client used
(a codec's rotation signs, say) without it ever being sent.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

# Random streams change when JAX defaults change (REFERENCES.md, pitfall 8):
# pin both the implementation (in `seed_key`) and the bit-generation scheme.
PRNG_IMPL = "threefry2x32"
jax.config.update("jax_threefry_partitionable", True)

# A reserved 32-bit id that is neither a client id nor a round number.
SERVER = 2**32 - 1


class Stream(enum.IntEnum):
  """Named random streams, folded into a client or server key."""

  CLIENT_SAMPLING = 1  # server: which clients take part in a round
  DATA_ORDER = 2  # client: the order of its examples in each epoch
  CODEC = 3  # client and server: a codec's shared randomness
  MODEL_INIT = 4  # server: initial model parameters
  DROPOUT = 5  # client: stochastic layers, if a model has any
  DOWNLINK = 6  # server and clients: the downlink codec's shared randomness


def seed_key(seed: int) -> jax.Array:
  """The typed root key of a run."""
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  return jax.random.key(seed, impl=PRNG_IMPL)


def round_key(seed_key: jax.Array, round_num: ArrayLike) -> jax.Array:
  return jax.random.fold_in(seed_key, round_num)


def client_key(round_key: jax.Array, client_id: ArrayLike) -> jax.Array:
  return jax.random.fold_in(round_key, client_id)


def server_key(round_key: jax.Array) -> jax.Array:
  """The key of the server's own randomness in a round."""
  return jax.random.fold_in(round_key, jnp.uint32(SERVER))


def init_key(seed_key: jax.Array) -> jax.Array:
  """The key for model initialisation (a reserved round, before round 0)."""
  return stream(jax.random.fold_in(seed_key, jnp.uint32(SERVER)), Stream.MODEL_INIT)


def stream(key: jax.Array, which: Stream) -> jax.Array:
  return jax.random.fold_in(key, int(which))
