"""The codec seam: how a client's update is encoded for the uplink and decoded.

A codec is a factory returning a `Codec` of pure functions, written for one
client and `vmap`ped over clients by the round (optax style)::

  state            = codec.init(delta_like)
  payload, state   = codec.encode(key, delta, state)     # on the client
  delta_hat        = codec.decode(key, payload)          # on the server

`key` is the client's codec stream (``keys.stream(client_key,
Stream.CODEC)``), which the server rebuilds from (seed, round, client id), so
shared randomness (rotation signs, masks) never travels. The payload is a
pytree of arrays; its uplink cost is read from the arrays themselves by
`payload_bits`. The round currently gives each client a fresh `init` state
every round (no per-client memory across rounds).

Only the identity codec lives here so far; quantization, rotation,
subsampling and structured updates plug into the same three functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from fedjax_comp.models import Params

Payload = object  # any pytree of arrays
CodecState = object  # any pytree of arrays (often empty)


class Codec(NamedTuple):
  init: Callable[[Params], CodecState]
  encode: Callable[[jax.Array, Params, CodecState], tuple[Payload, CodecState]]
  decode: Callable[[jax.Array, Payload], Params]


def identity() -> Codec:
  """Sends the update as it is: 32 bits per float32 parameter."""
  return Codec(
      init=lambda params: (),
      encode=lambda key, delta, state: (delta, state),
      decode=lambda key, payload: payload,
  )


def uplink_bits(codec: Codec, params: Params) -> int:
  """Exact bits one client uploads with `codec` for a model shaped like `params`.

  Traces `codec.encode` abstractly (`jax.eval_shape`), so nothing runs; the
  payload's static shapes and dtypes give the count.
  """
  key = jax.eval_shape(lambda: jax.random.key(0))
  payload, _ = jax.eval_shape(codec.encode, key, params, codec.init(params))
  return payload_bits(payload)


def payload_bits(payload: Payload) -> int:
  """Exact bits of one client's payload, from its arrays' sizes and dtypes.

  Works on concrete arrays or on `jax.ShapeDtypeStruct`s (from
  `jax.eval_shape`), and counts in Python ints, never in float32.
  """
  return sum(int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize * 8
             for leaf in jax.tree.leaves(payload))
