"""``top_k`` and ``rand_k``: keep k coordinates of the whole update.

Both flatten the client's update into one vector of d coordinates.

top_k keeps the k largest |x_j| (biased; pair it with error feedback,
``ef(top_k(...))``). The server must learn *which* coordinates, so the
payload carries the k values (float32) and an index list, coded whichever
way is smaller for (k, d), both known in advance (`index_coding`):

* ``positions``: each index in ceil(log2 d) bits, bit-packed
  (`pack_fields`): ``32 * ceil(k ceil(log2 d) / 32)`` bits;
* ``bitmap``: one bit per coordinate: ``32 * ceil(d / 32)`` bits, the values
  in index order.

The k largest magnitudes are selected exactly, ties keeping the lowest
indices: on a CPU by a native radix select (`native.top_k_indices`, two
passes over the row; 6-26x faster than `lax.top_k`, which XLA:CPU runs as a
sort), elsewhere by `lax.top_k`. `benchmarks.topk_selection` also times a
counting bisection over the float's bits (exact, slower still),
`lax.approx_max_k` (no faster on a CPU) and a threshold from a 1% sample's
quantile (about a copy's time, but its count misses k by up to +220%, so a
fixed-size payload would need an exact second pass); see
docs/performance.md.

rand_k keeps k coordinates drawn from the client's codec key, one per
stratum of about d/k (`kernels.stratified_indices`), and rescales each by
its stratum size (exactly d/k when k divides d): unbiased. The server
regenerates the indices from the key, so only the k values are sent.

A NaN or Inf anywhere makes every sent value NaN.

References:
  Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS 2018
  (arXiv 1809.07599): top-k and rand-k, with error feedback.
  Aji and Heafield, "Sparse Communication for Distributed Gradient
  Descent", EMNLP 2017 (arXiv 1704.05021).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from fedjax_comp import kernels, native
from fedjax_comp.codecs.bits import payload_bits
from fedjax_comp.codecs.base import (Codec, FlatMeta, flatten_update, poison_unless_finite,
                                     static_field, unflatten_update)
from fedjax_comp.sampling import kth_largest

MAX_D = 2**31 - 1  # indices are int32


@flax.struct.dataclass
class Sparse:
  values: jax.Array  # float32 [k]: the kept values, in increasing index order
  index: jax.Array  # uint32 words: packed positions, or the bitmap (see index_coding)
  meta: FlatMeta  # the update's tree (static, 0 bits)
  k: int = static_field()
  coding: str = static_field()  # "positions" or "bitmap"


@flax.struct.dataclass
class RandK:
  values: jax.Array  # float32 [k]: the kept values, unscaled
  meta: FlatMeta  # the update's tree (static, 0 bits)


def index_width(d: int) -> int:
  """Bits of one index into d coordinates: ceil(log2 d), at least 1."""
  return max(1, math.ceil(math.log2(d))) if d > 1 else 1


def index_coding(k: int, d: int) -> tuple[str, int]:
  """``(coding, bits)``: the smaller of k packed positions and a d-bit bitmap (ties: positions)."""
  positions = 32 * (-(-k * index_width(d) // 32))
  bitmap = 32 * (-(-d // 32))
  return ("positions", positions) if positions <= bitmap else ("bitmap", bitmap)


def index_bits(payload) -> dict[str, int]:
  """Bits of a payload's index lists by their coding, e.g. ``{"bitmap": 32768}``: summed over its
  `Sparse` nodes (top-k's, inside any composition); empty for a payload without one. Works on
  concrete arrays or on `jax.ShapeDtypeStruct`s (`bits.abstract_payload`)."""
  out: dict[str, int] = {}
  for node in jax.tree.leaves(payload, is_leaf=lambda n: isinstance(n, Sparse)):
    if isinstance(node, Sparse):
      out[node.coding] = out.get(node.coding, 0) + payload_bits(node.index)
  return out


def pack_fields(values: jax.Array, width: int) -> jax.Array:
  """Packs uint32 `values` [k] (each < 2^width, width <= 32) end to end into ceil(k w / 32) words."""
  k = values.shape[0]
  words = -(-k * width // 32)
  offset = jnp.arange(k, dtype=jnp.uint32) * jnp.uint32(width)
  word, shift = (offset >> 5).astype(jnp.int32), offset & 31
  values = values.astype(jnp.uint32)
  lo = values << shift
  spills = shift + width > 32
  hi = jnp.where(spills, values >> jnp.where(spills, 32 - shift, 0), 0)
  out = jnp.zeros((words + 1,), jnp.uint32)
  out = out.at[word].add(lo).at[word + 1].add(hi)  # disjoint bits: add is or
  return out[:words]


def unpack_fields(words: jax.Array, width: int, k: int) -> jax.Array:
  """Inverse of `pack_fields`: uint32 [k]."""
  offset = jnp.arange(k, dtype=jnp.uint32) * jnp.uint32(width)
  word, shift = (offset >> 5).astype(jnp.int32), offset & 31
  padded = jnp.concatenate([words, jnp.zeros((1,), jnp.uint32)])
  lo = padded[word] >> shift
  spills = shift + width > 32
  hi = jnp.where(spills, padded[word + 1] << jnp.where(spills, 32 - shift, 0), 0)
  mask = jnp.uint32(0xFFFFFFFF) if width == 32 else jnp.uint32((1 << width) - 1)
  return (lo | hi) & mask


def top_k_mask(x: jax.Array, k: int) -> jax.Array:
  """bool [d]: exactly k coordinates of the largest |x| (ties at the threshold: lowest indices).

  `lax.top_k` (stable: equal values keep index order); `benchmarks.topk_selection`
  measured it 2-5x faster than a counting bisection on the float's bits.
  """
  _, idx = lax.top_k(jnp.abs(x), k)
  return jnp.zeros(x.shape, bool).at[idx].set(True)


def top_k_indices(x: jax.Array, k: int) -> jax.Array:
  """int32 [k]: the indices, ascending, of `top_k_mask(x, k)`.

  On a CPU, float32, the native radix select (`native.top_k_indices`, the
  same selection, ties included: `tests/test_codecs_sota.py`); elsewhere the
  mask from `lax.top_k`, compacted.
  """
  def from_mask(v):
    keep = top_k_mask(v, k)
    slot = jnp.where(keep, jnp.cumsum(keep, dtype=jnp.int32) - 1, k)
    return jnp.zeros((k,), jnp.int32).at[slot].set(jnp.arange(v.shape[0], dtype=jnp.int32),
                                                   mode="drop")
  if x.dtype == jnp.float32 and native.active():
    # stop_gradient: the FFI call has no derivative rule; indices need none.
    return lax.platform_dependent(lax.stop_gradient(x),
                                  cpu=lambda v: native.top_k_indices(v, k), default=from_mask)
  return from_mask(x)


def top_k_mask_bisection(x: jax.Array, k: int) -> jax.Array:
  """`top_k_mask` by the exact k-th largest |x| from a counting bisection over the float's
  32 bits (`sampling.kth_largest`: 32 vectorized passes, no sort); the alternative
  `benchmarks.topk_selection` times."""
  mag = lax.bitcast_convert_type(jnp.abs(x), jnp.uint32)  # order-preserving for |x| >= 0
  t = kth_largest(mag, k)
  above = mag > t
  at = mag == t
  need = k - jnp.sum(above, dtype=jnp.int32)
  return above | (at & (jnp.cumsum(at, dtype=jnp.int32) <= need))


def _kept_count(d: int, p: float, k: int, codec: str) -> int:
  if d > MAX_D:
    raise ValueError(f"{codec} indexes coordinates with int32: an update may hold at most "
                     f"{MAX_D:,} coordinates, got {d:,}")
  if d == 0:
    return 0
  if k:
    if not 1 <= k <= d:
      raise ValueError(f"{codec}: k must be in 1..d = 1..{d} for this update, got {k}")
    return k
  return min(d, max(1, math.ceil(p * d - 1e-9)))


def _check(p, k, codec: str) -> None:
  if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p <= 1):
    raise ValueError(f"{codec}: p must be a number in (0, 1], got {p!r}")
  if not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
    raise ValueError(f"{codec}: k must be an integer >= 1 (or 0: use p), got {k!r}")


def top_k(p: float = 0.01, k: int = 0) -> Codec:
  """Keeps the k largest-magnitude coordinates of the update, with their indices (module docstring).

  Args:
    p: the fraction kept, in (0, 1]: k = ceil(p d).
    k: the count kept, in 1..d; overrides `p` when set.

  Returns:
    A stateless `Codec`: ``32 k`` bits of values plus `index_coding(k, d)`'s bits.

  Examples:
    >>> codec = top_k(p=0.01)         # or codecs.parse("top_k(p=0.01)")
    >>> codec = parse("ef(top_k(p=0.01))")   # with error feedback
  """
  _check(p, k, "top_k")

  def encode(key, x, state):
    del key
    vec, meta = flatten_update(x, "top_k")
    d = vec.shape[0]
    kk = _kept_count(d, p, k, "top_k")
    coding, _ = index_coding(kk, d) if d else ("positions", 0)
    if kk == 0:
      return Sparse(values=vec, index=jnp.zeros((0,), jnp.uint32), meta=meta, k=0,
                    coding=coding), state
    idx = top_k_indices(vec, kk)
    values = poison_unless_finite(vec[idx], vec)
    if coding == "bitmap":
      keep = jnp.zeros((d,), jnp.uint32).at[idx].set(1)
      index = kernels.pack(keep, 1).reshape(-1)
    else:
      index = pack_fields(idx.astype(jnp.uint32), index_width(d))
    return Sparse(values=values, index=index, meta=meta, k=kk, coding=coding), state

  def decode(key, s):
    del key
    d = s.meta.size
    if s.k == 0:
      return unflatten_update(jnp.zeros((d,), jnp.float32), s.meta)
    if s.coding == "bitmap":
      keep = kernels.unpack(s.index.reshape(1, -1), 1, d).astype(bool)
      slot = jnp.cumsum(keep, dtype=jnp.int32) - 1
      vec = jnp.where(keep, s.values[jnp.clip(slot, 0, s.k - 1)], 0.0)
    else:
      idx = unpack_fields(s.index, index_width(d), s.k).astype(jnp.int32)
      vec = kernels.scatter_ascending(idx, s.values, d)  # the encoder's indices ascend
    return unflatten_update(vec, s.meta)

  return Codec(init=lambda x: (), encode=encode, decode=decode)


def rand_k(p: float = 0.01, k: int = 0) -> Codec:
  """Keeps k coordinates drawn from the shared key, rescaled to stay unbiased (module docstring).

  Args:
    p: the fraction kept, in (0, 1]: k = ceil(p d).
    k: the count kept, in 1..d; overrides `p` when set.

  Returns:
    A stateless `Codec`: ``32 k`` bits (the indices are regenerated, not sent).
  """
  _check(p, k, "rand_k")

  def encode(key, x, state):
    vec, meta = flatten_update(x, "rand_k")
    kk = _kept_count(vec.shape[0], p, k, "rand_k")
    if kk == 0:
      return RandK(values=vec, meta=meta), state
    idx, _ = kernels.stratified_indices(key, vec.shape[0], kk)
    return RandK(values=poison_unless_finite(vec[idx], vec), meta=meta), state

  def decode(key, r):
    d = r.meta.size
    if r.values.shape[0]:
      idx, sizes = kernels.stratified_indices(key, d, r.values.shape[0])
      vec = kernels.scatter_ascending(idx, r.values * sizes, d)
    else:
      vec = jnp.zeros((d,), jnp.float32)
    return unflatten_update(vec, r.meta)

  return Codec(init=lambda x: (), encode=encode, decode=decode)
