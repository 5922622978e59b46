"""Bit accounting: exact uplink bits, counted from the payload's arrays.

A payload's arrays (packed words, scales, kept values) are all that is
counted; its static fields (shapes, dtypes, tree structure) are protocol,
known to both sides, and shared randomness is regenerated from the key, so
both cost 0 bits. Counts are Python ints, never float32 sums.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from fedjax_comp.codecs.base import Codec, Payload
from fedjax_comp.models import Params


def codec_input(codec: Codec, params: Params, key: jax.Array | None = None) -> Any:
  """What a client passes to `codec.encode` for a model like `params`: the
  delta itself, or a structured codec's trainable variable z (abstract if
  `key` is None)."""
  if codec.structure is None:
    return params
  if key is None:
    return jax.eval_shape(lambda p: codec.structure.init(jax.random.key(0), p), params)
  return codec.structure.init(key, params)


def uplink_bits(codec: Codec, params: Params) -> int:
  """Exact bits one client uploads with `codec` for a model shaped like `params`.

  Traces the encoder abstractly (`jax.eval_shape`), so nothing runs; the
  payload's static shapes and dtypes give the count: packed words, scales
  and padding included.
  """
  return payload_bits(abstract_payload(codec, params))


def abstract_payload(codec: Codec, params: Params) -> Payload:
  """One client's payload for a model like `params`, as `jax.ShapeDtypeStruct`s (nothing runs)."""
  x = codec_input(codec, params)

  def run(x):
    return codec.encode(jax.random.key(0), x, codec.init(x))[0]

  return jax.eval_shape(run, x)


def payload_bits(payload: Payload) -> int:
  """Exact bits of one client's payload, from its arrays' sizes and dtypes.

  Works on concrete arrays or on `jax.ShapeDtypeStruct`s (from
  `jax.eval_shape`), and counts in Python ints, never in float32. Static
  fields (shapes, dtypes, tree structure) are protocol, not payload.
  """
  return sum(int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize * 8
             for leaf in jax.tree.leaves(payload))


def dense_bits(params: Params) -> int:
  """Bits of `params` as 32-bit floats: the uncompressed reference."""
  return 32 * sum(int(np.prod(np.shape(l), dtype=np.int64)) for l in jax.tree.leaves(params))


def matched_random_mask(spec: str, params: Params) -> str:
  """The ``random_mask(p=...)`` spec whose upload for `params` is closest above `spec`'s.

  Konečný et al.'s equal-upload comparison: bits are monotone in p, so a
  bisection on p finds it (p printed to 4 significant digits).
  """
  from fedjax_comp.codecs.spec import parse  # pylint: disable=g-import-not-at-top
  from fedjax_comp.codecs.structured import random_mask  # pylint: disable=g-import-not-at-top
  target = uplink_bits(parse(spec), params)
  lo, hi = 1e-6, 1.0
  for _ in range(60):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if uplink_bits(random_mask(p=mid), params) < target else (lo, mid)
  return f"random_mask(p={float(f'{hi:.4g}')})"
