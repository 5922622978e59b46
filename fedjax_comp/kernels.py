"""Compression kernels: Hadamard rotation, stochastic quantization, bit packing, subsampling.

Every kernel is a pure function of arrays that works on a batch (leading
axes are batch axes; the kernel acts on the last axis), so the same code
serves one client inside `vmap`, a `[clients, d]` matrix, or the
`[1024, 16384]` grid of `benchmarks.kernels`.

Hadamard (`fwht`, `rotate`, `unrotate`)
  ``fwht`` is the orthonormal Walsh-Hadamard transform in Sylvester order,
  ``y = H_d x / sqrt(d)``, so it is its own inverse. It is written for CPU
  caches: the first butterfly stages are one small dense matmul, the
  rest radix-4 butterflies, and long batches are processed in blocks of
  about 2^20 floats (`lax.map`) so all log2(d) stages of a block run while it
  sits in cache instead of streaming the whole batch through memory once per
  stage. (The first five stages are one ``[32, 32]`` matmul, in fact: 32
  measured faster than 16 or 64.) Rows longer than 2^16 are split as
  H_(d/b) kron H_b so that the H_b part still runs in cache blocks. ``rotate`` is the randomized rotation ``H D x`` with Rademacher
  signs D drawn from a key; lengths that are not a power of two are
  zero-padded and ``unrotate`` crops them again.

Quantization (`quantize`, `dequantize`)
  Unbiased stochastic quantization (Suresh et al. 2017) of each vector (the
  last axis) to ``2^bits`` levels evenly spaced between its min and max:
  x maps to t = (x - min) / step, and rounds up with probability t - floor(t).
  The random numbers are the cost to beat (threefry `jax.random.uniform` on
  16M floats is ~9x a copy on a 2-core CPU), so each coordinate's dither is
  a 24-bit uniform from a counter-based hash (murmur3's 32-bit finalizer of
  the coordinate index, keyed by one threefry draw per vector), computed
  inside the quantization loop. Using 24 of its 32 bits, centred, makes
  P(round up) differ from t - floor(t) by at most 2^-25: the bias is at most
  2^-25 of a quantization step, far below the 1/256 budget. A vector with
  max == min sends code 0 and decodes to min exactly. Deterministic rounding
  (to nearest) is an option.

  Overflow-safe: the step is computed from halves, and decode interpolates
  ``(1 - w) min + w max``, so vectors of +-3e38 stay finite.

Bit packing (`pack`, `unpack`)
  b-bit codes (1 <= b <= 8) are packed densely: every 32 codes take exactly b
  uint32 words, so n codes cost ``32 * b * ceil(n / 32)`` bits (only the last
  group is padded). The layout is strided for SIMD: with G = ceil(n / 32),
  code ``i = r * G + g`` (r < 32) is group g's r-th code. A code's b bits are
  split into power-of-two-wide fields (b = 7 is 1 + 2 + 4 bits; b = 2 is one
  2-bit field); a w-bit field fills w words of the group, 32/w fields per
  word, code r in word ``r // (32/w)`` at bit ``(r % (32/w)) * w``. The
  fields' words stack into the ``[b, G]`` result. Every step is a
  whole-array shift, mask or sum: it vectorizes, costs about one operation
  per code and field, and compiles in a fraction of a second.

Subsampling (`stratified_indices`)
  Keeps k of n coordinates, one drawn uniformly from each of k contiguous
  strata of size floor(n/k) or ceil(n/k). Coordinate i is kept with
  probability 1/|stratum(i)| (exactly k/n when k divides n), so scaling a
  kept value by its stratum size is exactly unbiased. It needs k random
  draws and no sort, and the indices are distinct.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Floats per `lax.map` block in `fwht`: a block stays in the CPU's cache
# across all butterfly stages (measured best at 2^20 on a 2-core EPYC).
_FWHT_BLOCK_ELEMS = 2**20
# Rows longer than this are split as H_d = H_(d/b) (x) H_b: the H_b part runs
# in cache blocks, and only the last log2(d/b) stages stream the whole row.
_FWHT_SPLIT_LEN = 2**16
_FWHT_SPLIT_INNER = 2**14


def is_pow2(n: int) -> bool:
  return n >= 1 and (n & (n - 1)) == 0


def next_pow2(n: int) -> int:
  """The smallest power of two >= n (1 for n <= 1)."""
  return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def hadamard_matrix(d: int, dtype=np.float64) -> np.ndarray:
  """The dense Sylvester Hadamard matrix H_d (entries +-1, unnormalized)."""
  if not is_pow2(d):
    raise ValueError(f"d must be a power of two, got {d}")
  h = np.ones((1, 1), dtype)
  while h.shape[0] < d:
    h = np.block([[h, h], [h, -h]])
  return h


def _butterflies(y: jax.Array, start: int) -> jax.Array:
  """Unnormalized Hadamard stages of stride start, 2*start, ... on [rows, d]."""
  rows, d = y.shape
  h = start
  while h < d:
    if 4 * h <= d:  # radix 4: two stages in one pass
      y = y.reshape(rows, -1, 4, h)
      a, b, c, e = y[:, :, 0], y[:, :, 1], y[:, :, 2], y[:, :, 3]
      s1, d1, s2, d2 = a + b, a - b, c + e, c - e
      y = jnp.stack([s1 + s2, d1 + d2, s1 - s2, d1 - d2], axis=2)
      h *= 4
    else:
      y = y.reshape(rows, -1, 2, h)
      a, b = y[:, :, 0], y[:, :, 1]
      y = jnp.stack([a + b, a - b], axis=2)
      h *= 2
  return y.reshape(rows, d)


def _fwht_rows(y: jax.Array, pre=None, post=None, normalize=True) -> jax.Array:
  rows, d = y.shape
  if pre is not None:
    y = y * pre
  if d >= 16:
    m = 32 if d >= 32 else 16  # 32: measured best on a 2-core EPYC (vs 16 and 64)
    hm = jnp.asarray(hadamard_matrix(m), y.dtype)
    # Full precision: ±1 entries, but a GPU's default matmul precision is reduced.
    y = jnp.matmul(y.reshape(-1, m), hm, precision=lax.Precision.HIGHEST).reshape(rows, d)
    y = _butterflies(y, m)
  else:
    y = _butterflies(y, 1)
  if not normalize:
    return y
  scale = jnp.asarray(1.0 / math.sqrt(d), y.dtype)
  return y * (scale if post is None else post * scale)


def _fwht_blocked(y: jax.Array, pre=None, post=None, normalize=True) -> jax.Array:
  """`_fwht_rows` over [rows, d] in `lax.map` blocks of about _FWHT_BLOCK_ELEMS floats."""
  rows, d = y.shape
  block_rows = max(1, _FWHT_BLOCK_ELEMS // d)
  if rows <= block_rows:
    return _fwht_rows(y, pre, post, normalize)
  nblocks = -(-rows // block_rows)
  pad = nblocks * block_rows - rows
  if pad:
    y = jnp.concatenate([y, jnp.zeros((pad, d), y.dtype)])
  y = lax.map(lambda b: _fwht_rows(b, pre, post, normalize), y.reshape(nblocks, block_rows, d))
  return y.reshape(-1, d)[:rows]


def fwht(x: jax.Array, *, pre: jax.Array | None = None,
         post: jax.Array | None = None) -> jax.Array:
  """Orthonormal fast Walsh-Hadamard transform over the last axis (an involution).

  Args:
    x: float array ``[..., d]`` with d a power of two. Computed in float32
      (float64 if `x` is float64), returned in x's dtype.
    pre, post: optional ``[d]`` vectors multiplied in before / after the
      transform, inside the same cache block (the rotation's signs), which
      saves a pass over memory.
  """
  d = x.shape[-1]
  if not is_pow2(d):
    raise ValueError(f"fwht needs a power-of-two last axis, got length {d}; "
                     "pad it (see rotate) first")
  _check_float(x, "fwht")
  dtype = x.dtype
  work = jnp.float64 if dtype == jnp.float64 else jnp.float32
  batch = x.shape[:-1]
  rows = math.prod(batch)
  if rows == 0:
    return x
  y = x.reshape(rows, d).astype(work)
  pre = None if pre is None else pre.astype(work)
  post = None if post is None else post.astype(work)
  if d > _FWHT_SPLIT_LEN:
    inner = _FWHT_SPLIT_INNER
    if pre is not None:
      y = y * pre
    y = _fwht_blocked(y.reshape(-1, inner), normalize=False).reshape(rows, d)
    y = _butterflies(y, inner) * jnp.asarray(1.0 / math.sqrt(d), work)
    if post is not None:
      y = y * post
  else:
    y = _fwht_blocked(y, pre, post)
  return y.reshape(batch + (d,)).astype(dtype)


def rademacher(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """Independent +-1 signs, one bit of a threefry draw each."""
  n = math.prod(shape)
  words = jax.random.bits(key, (-(-n // 32),), jnp.uint32)
  bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  return (1 - 2 * bits.reshape(-1)[:n].astype(dtype)).reshape(shape)


def rotate(key: jax.Array, x: jax.Array, block: int | None = None) -> jax.Array:
  """Randomized Hadamard rotation ``H D x`` of the last axis, zero-padded.

  Args:
    key: the shared key; the server regenerates the signs D from it.
    x: float ``[..., d]``.
    block: rotate in independent blocks of this power-of-two length (the
      padding is then to a multiple of `block` instead of to a power of
      two); None means one block of ``next_pow2(d)``.

  Returns:
    ``[..., d_pad]`` float32, where d_pad is `rotated_length(d, block)`.
  """
  d = x.shape[-1]
  n = rotated_length(d, block)
  blk = min(n, block or n)
  y = x.astype(jnp.float32)
  if n > d:
    y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, n - d)])
  signs = rademacher(key, (n // blk, blk))
  y = y.reshape(y.shape[:-1] + (n // blk, blk))
  if n // blk == 1:
    y = fwht(y, pre=signs[0])
  else:
    y = fwht(y * signs)
  return y.reshape(y.shape[:-2] + (n,))


def unrotate(key: jax.Array, y: jax.Array, d: int, block: int | None = None) -> jax.Array:
  """Inverse of `rotate`: ``D H y`` cropped to the first `d` coordinates (float32)."""
  n = y.shape[-1]
  if n != rotated_length(d, block):
    raise ValueError(f"unrotate: got length {n}, expected {rotated_length(d, block)} for d={d}")
  blk = min(n, block or n)
  signs = rademacher(key, (n // blk, blk))
  x = y.astype(jnp.float32).reshape(y.shape[:-1] + (n // blk, blk))
  x = fwht(x, post=signs[0]) if n // blk == 1 else fwht(x) * signs
  return x.reshape(x.shape[:-2] + (n,))[..., :d]


def rotated_length(d: int, block: int | None = None) -> int:
  """Length after padding for `rotate`: next_pow2(d), or a multiple of `block`."""
  if block is not None and not is_pow2(block):
    raise ValueError(f"block must be a power of two, got {block}")
  p = next_pow2(d)
  if block is None or block >= p:
    return p
  return -(-d // block) * block


def _check_float(x, who: str):
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{who} needs a floating-point array, got dtype {x.dtype}")


def check_bits(bits: int) -> None:
  """Raises ValueError unless `bits` is an integer in 1..8 (the code widths `pack` supports)."""
  if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 8):
    raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")


def _fmix32(h: jax.Array) -> jax.Array:
  """murmur3's 32-bit finalizer: a bijective avalanche mix of uint32."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def dither(key: jax.Array, shape) -> jax.Array:
  """Uniform float32 in (0, 1) on a 2^-24 grid, centred, one per element of `shape`.

  One threefry draw per vector (the last axis) keys a counter hash over the
  coordinate index; see the module docstring for the bias this implies.
  """
  batch, d = tuple(shape[:-1]), shape[-1]
  seeds = jax.random.bits(key, batch + (1,), jnp.uint32)
  idx = lax.broadcasted_iota(jnp.uint32, batch + (d,), len(batch))
  h = _fmix32(idx * jnp.uint32(0x9E3779B9) + seeds)
  return (h >> 8).astype(jnp.float32) * (2.0**-24) + 2.0**-25


def quantize(key: jax.Array | None, x: jax.Array, bits: int, *, stochastic: bool = True
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Quantizes each vector (last axis) to `bits`-bit codes between its min and max.

  Args:
    key: dither key (unused, may be None, when `stochastic` is False).
    x: float ``[..., d]``.
    bits: 1..8.
    stochastic: unbiased stochastic rounding (default) or round-to-nearest.

  Returns:
    ``(codes uint32 [..., d], lo float32 [...], hi float32 [...])``. A NaN
    anywhere in a vector makes its lo/hi NaN, so it decodes to all-NaN
    (never to finite garbage); an infinite value makes the step infinite,
    with the same effect.
  """
  check_bits(bits)
  _check_float(x, "quantize")
  levels = 2**bits - 1
  x = x.astype(jnp.float32)
  lo = jnp.min(x, axis=-1, initial=jnp.inf)
  hi = jnp.max(x, axis=-1, initial=-jnp.inf)
  lo, hi = jnp.minimum(lo, hi), jnp.maximum(lo, hi)  # empty vectors: inf, -inf -> ordered
  # XLA:CPU's vectorized min/max reductions can drop a NaN: check explicitly.
  finite = jnp.all(jnp.isfinite(x), axis=-1)
  lo, hi = jnp.where(finite, lo, jnp.nan), jnp.where(finite, hi, jnp.nan)
  half_range = 0.5 * hi - 0.5 * lo  # never overflows
  # XLA's CPU division multiplies by the reciprocal, which flushes to zero
  # for ranges above ~1e38: rescale huge ranges by an exact power of two.
  scale = jnp.where(half_range > 2.0**100, 2.0**-100, 1.0)
  denom = jnp.where(half_range > 0, half_range * scale, 1.0)[..., None]
  t = (0.5 * x - 0.5 * lo[..., None]) * scale[..., None] / denom * levels
  if stochastic:
    floor = jnp.floor(t)
    codes = floor + (t - floor > dither(key, x.shape))
  else:
    codes = jnp.round(t)
  codes = jnp.clip(codes, 0, levels).astype(jnp.uint32)
  return codes, lo, hi


def dequantize(codes: jax.Array, lo: jax.Array, hi: jax.Array, bits: int,
               dtype=jnp.float32) -> jax.Array:
  """Inverse of `quantize`: ``(1 - w) lo + w hi`` with ``w = code / (2^bits - 1)``."""
  check_bits(bits)
  w = codes.astype(jnp.float32) * (1.0 / (2**bits - 1))
  lo, hi = lo[..., None], hi[..., None]
  x = (1.0 - w) * lo + w * hi
  # An infinite lo/hi would give inf * 0 = NaN only where w hits 0 or 1;
  # make a non-finite vector uniformly NaN so no coordinate looks valid.
  bad = ~(jnp.isfinite(lo) & jnp.isfinite(hi))
  return jnp.where(bad, jnp.nan, x).astype(dtype)


def packed_words(n: int, bits: int) -> int:
  """uint32 words `pack` uses for n codes of `bits` bits."""
  return bits * (-(-n // 32))


def _fields(bits: int) -> list[tuple[int, int]]:
  """(bit offset, width) of the power-of-two-wide fields a `bits`-bit code splits into."""
  out, offset = [], 0
  for width in (1, 2, 4, 8):
    if bits & width:
      out.append((offset, width))
      offset += width
  return out


def pack(codes: jax.Array, bits: int) -> jax.Array:
  """Packs `bits`-bit codes ``[..., n]`` (uint32 < 2^bits) into uint32 ``[..., bits, ceil(n/32)]``."""
  check_bits(bits)
  n = codes.shape[-1]
  groups = -(-n // 32)
  codes = codes.astype(jnp.uint32)
  if groups * 32 != n:
    codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, groups * 32 - n)])
  batch = codes.shape[:-1]
  words = []
  for offset, width in _fields(bits):
    field = (codes >> offset) & jnp.uint32(2**width - 1) if bits != width else codes
    per_word = 32 // width
    rows = field.reshape(batch + (width, per_word, groups))  # code r*G+g at [r // per_word, r % per_word, g]
    shifts = (jnp.arange(per_word, dtype=jnp.uint32) * width)[:, None]
    words.append(jnp.sum(rows << shifts, axis=-2, dtype=jnp.uint32))  # disjoint bits: sum == or
  return jnp.concatenate(words, axis=-2) if len(words) > 1 else words[0]


def unpack(words: jax.Array, bits: int, n: int) -> jax.Array:
  """Inverse of `pack`: uint32 ``[..., bits, G]`` -> codes uint32 ``[..., n]``."""
  check_bits(bits)
  groups = words.shape[-1]
  if words.shape[-2] != bits or groups * 32 < n:
    raise ValueError(f"unpack: words of shape {words.shape} cannot hold {n} {bits}-bit codes")
  batch = words.shape[:-2]
  codes, row = None, 0
  for offset, width in _fields(bits):
    per_word = 32 // width
    w = words[..., row:row + width, None, :]  # [..., width, 1, G]
    shifts = (jnp.arange(per_word, dtype=jnp.uint32) * width)[:, None]
    field = ((w >> shifts) & jnp.uint32(2**width - 1)).reshape(batch + (32 * groups,))
    part = field << offset if offset else field
    codes = part if codes is None else codes | part
    row += width
  return codes[..., :n]


def stratified_indices(key: jax.Array, n: int, k: int) -> tuple[jax.Array, jax.Array]:
  """k distinct indices in [0, n), one uniform draw from each of k contiguous strata.

  Returns:
    ``(indices int32 [k], stratum_sizes float32 [k])``: index j is kept with
    probability 1/stratum_sizes[j], so ``value * stratum_size`` is unbiased.
  """
  if not 1 <= k <= n:
    raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
  size, extra = divmod(n, k)  # the first `extra` strata hold size + 1
  j = jnp.arange(k, dtype=jnp.int32)
  start = j * size + jnp.minimum(j, extra)
  sizes = jnp.where(j < extra, size + 1, size)
  u = (jax.random.bits(key, (k,), jnp.uint32) >> 8).astype(jnp.float32) * (2.0**-24)
  offset = jnp.minimum((u * sizes).astype(jnp.int32), sizes - 1)
  return start + offset, sizes.astype(jnp.float32)
