"""Compression kernels: Hadamard rotation, stochastic quantization, bit packing, subsampling.

Every kernel is a pure function of arrays that works on a batch (leading
axes are batch axes; the kernel acts on the last axis), so the same code
serves one client inside `vmap`, a `[clients, d]` matrix, or the
`[1024, 16384]` grid of `benchmarks.kernels`.

Hadamard (`fwht`, `rotate`, `unrotate`)
  ``fwht`` is the orthonormal Walsh-Hadamard transform in Sylvester order,
  ``y = H_d x / sqrt(d)``, so it is its own inverse. On a CPU, for float32,
  it is the native kernel of `fedjax_comp.native` (an XLA FFI call, built on
  first use): one pass over memory for rows of up to 2^16 floats, two for
  longer ones, 4-12x faster than XLA's butterflies (docs/performance.md,
  "The native FWHT"). Elsewhere (GPU/TPU, float64, or no C++ compiler) it
  is `fwht_xla.fwht_xla`, XLA ops blocked for caches. The two paths agree
  to float32 rounding, not bit for bit. ``rotate`` is the randomized
  rotation ``H D x`` with Rademacher signs D drawn from a key (as bits,
  `rademacher_words`, which the native kernel reads directly); lengths
  that are not a power of two are zero-padded and ``unrotate`` crops them
  again.

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
  (to nearest) is an option. `quantize_pack` / `unpack_dequantize` fuse the
  stochastic quantizer with the packing; on a CPU, from `NATIVE_MIN_LENGTH`
  coordinates, they are one native pass each (`fedjax_comp.native`), the
  same codes bit for bit.

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

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fedjax_comp import native
from fedjax_comp.fwht_xla import fwht_xla, hadamard_matrix  # noqa: F401  (re-exported)


def is_pow2(n: int) -> bool:
  return n >= 1 and (n & (n - 1)) == 0


def next_pow2(n: int) -> int:
  """The smallest power of two >= n (1 for n <= 1)."""
  return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def fwht(x: jax.Array, *, pre: jax.Array | None = None, post: jax.Array | None = None,
         pre_signs: jax.Array | None = None, post_signs: jax.Array | None = None,
         impl: str = "auto") -> jax.Array:
  """Orthonormal fast Walsh-Hadamard transform over the last axis (an involution).

  Args:
    x: float array ``[..., d]`` with d a power of two. Computed in float32
      (float64 if `x` is float64), returned in x's dtype.
    pre, post: optional ``[d]`` vectors multiplied in before / after the
      transform, inside the same cache block (the rotation's signs), which
      saves a pass over memory.
    pre_signs, post_signs: the same for a vector of signs given as uint32
      words (`rademacher_words`; bit j of word j // 32 set: -1), instead of
      pre / post: the native kernel reads the bits, 32x less than floats.
    impl: ``auto`` (the native kernel of `fedjax_comp.native` on a CPU for
      float32 where it builds, XLA's butterflies elsewhere), ``xla`` or
      ``native`` (an error where it is not built). The two agree to float32
      rounding, not bit for bit.
  """
  d = x.shape[-1]
  if not is_pow2(d):
    raise ValueError(f"fwht needs a power-of-two last axis, got length {d}; "
                     "pad it (see rotate) first")
  if impl not in ("auto", "xla", "native"):
    raise ValueError(f"fwht: impl must be 'auto', 'xla' or 'native', got {impl!r}")
  if (pre is not None and pre_signs is not None) or (post is not None and post_signs is not None):
    raise ValueError("fwht: give pre or pre_signs (post or post_signs), not both")
  for name, m in (("pre", pre), ("post", post)):
    if m is not None and tuple(m.shape) != (d,):
      raise ValueError(f"fwht: {name} must have shape ({d},) (the last axis), got {tuple(m.shape)}")
  for name, m in (("pre_signs", pre_signs), ("post_signs", post_signs)):
    if m is not None and (m.dtype != jnp.uint32 or tuple(m.shape) != (-(-d // 32),)):
      raise ValueError(f"fwht: {name} must be uint32 words of shape ({-(-d // 32)},) "
                       f"(rademacher_words), got {m.dtype}{list(m.shape)}")
  _check_float(x, "fwht")
  dtype = x.dtype
  work = jnp.float64 if dtype == jnp.float64 else jnp.float32
  batch = x.shape[:-1]
  rows = math.prod(batch)
  if rows == 0:
    return x
  y = x.reshape(rows, d).astype(work)
  native_ok = (work == jnp.float32 and impl != "xla"
               and (impl == "native" or jax.default_backend() == "cpu")
               and native.available())
  if impl == "native" and not native_ok:
    raise RuntimeError("fwht: impl='native' needs float32 input and the native kernel "
                       "(fedjax_comp.native.available() is False: see the log)")

  def multiplier(values, words, for_native):
    if values is not None:
      return values.astype(work)
    if words is None:
      return None
    return words if for_native and d >= 32 else signs_from_words(words, d, work)

  xla = functools.partial(fwht_xla, pre=multiplier(pre, pre_signs, False),
                          post=multiplier(post, post_signs, False))
  if native_ok:
    on_cpu = functools.partial(native.fwht, pre=multiplier(pre, pre_signs, True),
                               post=multiplier(post, post_signs, True), scale=1.0 / math.sqrt(d))
    y = on_cpu(y) if impl == "native" else lax.platform_dependent(y, cpu=on_cpu, default=xla)
  else:
    y = xla(y)
  return y.reshape(batch + (d,)).astype(dtype)


def row_dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """``sum(a * b)`` over the last axis, keeping it (length 1), as a dot product.

  XLA:CPU (jax 0.10) runs ``jnp.sum(a * b, axis=-1)`` over a long axis as one
  YNNPACK reduction at a quarter of memory speed (3.2 ms for 2^21 floats);
  as a ``dot_general`` it takes 0.8 ms (`python scripts/ab_rotated_codecs.py`).
  The additions are grouped differently from `jnp.sum`, so the last bits
  differ.
  """
  return jnp.einsum("...i,...i->...", a, b, precision=lax.Precision.HIGHEST)[..., None]


def native_random_bits(key: jax.Array) -> bool:
  """Whether `random_bits` of `key` takes the native kernel: a CPU, a threefry2x32 key, and
  JAX's ``jax_threefry_partitionable`` counters (its default), whose bits the kernel equals."""
  return (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()
          and str(jax.random.key_impl(key)) == "threefry2x32"
          and jax.config.jax_threefry_partitionable and native.active())


def random_bits(key: jax.Array, n: int) -> jax.Array:
  """uint32 ``[n]``, equal to ``jax.random.bits(key, (n,), jnp.uint32)`` bit for bit.

  On a CPU, for a threefry2x32 key, the native kernel computes them
  (`native.threefry_bits`; `native_random_bits` says when); elsewhere JAX.
  """
  def xla(k):
    return jax.random.bits(k, (n,), jnp.uint32)

  if n == 0 or not native_random_bits(key):
    return xla(key)
  return lax.platform_dependent(
      key, cpu=lambda k: native.threefry_bits(jax.random.key_data(k), n), default=xla)


# From this many float32 elements on, `all_finite` takes the native kernel on
# a CPU (docs/performance.md, "Random draws, finiteness and the decoders' scatter").
NATIVE_FINITE_MIN = 2**14
# From this many outputs on, `scatter_ascending` takes the native kernel on a CPU.
NATIVE_SCATTER_MIN = 2**14


def all_finite(x: jax.Array) -> jax.Array:
  """bool ``[]``: whether `x` holds no NaN and no Inf, ``jnp.all(jnp.isfinite(x))``.

  XLA:CPU reduces that on one thread at about 9 GB/s when nothing else
  reads x in the same fusion; on a CPU, for float32 from
  `NATIVE_FINITE_MIN` elements, `native.all_finite` tests the exponent
  fields on 8-lane vectors over XLA's pool (3x faster for 2^20 floats).
  """
  x = jnp.asarray(x)
  if not (x.dtype == jnp.float32 and x.size >= NATIVE_FINITE_MIN and native.active()):
    return jnp.all(jnp.isfinite(x))
  # A boolean has no derivative; stop_gradient keeps a gradient through a
  # caller (poison_unless_finite) from reaching the FFI call, which has none.
  return lax.platform_dependent(lax.stop_gradient(x).reshape(-1), cpu=native.all_finite,
                                default=lambda v: jnp.all(jnp.isfinite(v)))


def scatter_ascending(index: jax.Array, values: jax.Array, n: int) -> jax.Array:
  """``jnp.zeros((n,), values.dtype).at[index].set(values)`` for `index` strictly ascending in
  [0, n).

  The decoders' scatter of kept values (rand_k, subsample, random_mask,
  top_k). On a CPU, for float32 from `NATIVE_SCATTER_MIN` outputs, the native
  kernel (`native.scatter_ascending`) writes each range of the output once,
  in parallel, where XLA:CPU zero-fills it and then scatters on one thread;
  the result is the same. The caller guarantees the order (stratified
  draws and top-k's indices are ascending); the kernel refuses a row that
  is not.
  """
  if index.ndim != 1 or values.dtype != jnp.float32 or n < NATIVE_SCATTER_MIN or (
      not native.active()):
    return _scatter_xla(index, values, n)
  return _scatter_ascending_native(index.astype(jnp.int32), values, n)


def _scatter_xla(index: jax.Array, values: jax.Array, n: int, unique: bool = False) -> jax.Array:
  # unique: JAX transposes a scatter (reverse mode) only when told its indices are unique.
  return jnp.zeros((n,), values.dtype).at[index].set(values, unique_indices=unique)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _scatter_ascending_native(index: jax.Array, values: jax.Array, n: int) -> jax.Array:
  """`scatter_ascending` by the native kernel on a CPU, XLA's elsewhere; differentiable in
  values (the decoders of structured codecs are trained through: random_mask's expand)."""
  return lax.platform_dependent(
      index, values, cpu=lambda i, v: native.scatter_ascending(i, v, n),
      default=lambda i, v: _scatter_xla(i, v, n))


@_scatter_ascending_native.defjvp
def _scatter_ascending_jvp(n, primals, tangents):
  index, values = primals
  # Linear in values: the tangent is the same scatter, in XLA ops (which JAX
  # can transpose for reverse mode; the FFI call cannot be).
  return (_scatter_ascending_native(index, values, n),
          _scatter_xla(index, tangents[1], n, unique=True))


def rademacher_words(key: jax.Array, n: int) -> jax.Array:
  """n independent signs packed as uint32 ``[ceil(n / 32)]``: bit j of word j // 32 set means -1.

  ``jax.random.bits``, not the native `random_bits`: the rotations read
  these words, and in a jitted encode + decode XLA:CPU runs its own draw
  beside the update's copy on its second thread, so the native draw, 4-5x
  faster alone, left DRIVE and EDEN at 0.95-1.05x on one 2^20 vector and
  made 10 x 65,536 cohorts 1.07-1.2x slower (`scripts/ab_draws_scatter.py`;
  docs/performance.md, "Random bits and finiteness").
  """
  return jax.random.bits(key, (-(-n // 32),), jnp.uint32)


def signs_from_words(words: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
  """The +-1 signs ``[..., n]`` of `rademacher_words` (``[..., ceil(n / 32)]``)."""
  bits = (words[..., :, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  return 1 - 2 * bits.reshape(words.shape[:-1] + (-1,))[..., :n].astype(dtype)


def rademacher(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """Independent +-1 signs, one bit of a threefry draw each (`rademacher_words`' bits, unpacked;
  drawn by `random_bits`)."""
  n = math.prod(shape)
  return signs_from_words(random_bits(key, -(-n // 32)), n, dtype).reshape(shape)


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
  y = y.reshape(y.shape[:-1] + (n // blk, blk))
  if n // blk == 1:  # the signs as bits, multiplied in by the FWHT
    y = fwht(y, pre_signs=rademacher_words(key, n))
  else:
    y = fwht(y * rademacher(key, (n // blk, blk)))
  return y.reshape(y.shape[:-2] + (n,))


def unrotate(key: jax.Array, y: jax.Array, d: int, block: int | None = None) -> jax.Array:
  """Inverse of `rotate`: ``D H y`` cropped to the first `d` coordinates (float32)."""
  n = y.shape[-1]
  if n != rotated_length(d, block):
    raise ValueError(f"unrotate: got length {n}, expected {rotated_length(d, block)} for d={d}")
  blk = min(n, block or n)
  x = y.astype(jnp.float32).reshape(y.shape[:-1] + (n // blk, blk))
  if n // blk == 1:
    x = fwht(x, post_signs=rademacher_words(key, n))
  else:
    x = fwht(x) * rademacher(key, (n // blk, blk))
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


# From this many coordinates per vector on, `quantize_pack` and
# `unpack_dequantize` run the native kernels on a CPU: paired, 10 clients x
# 15,210 took 0.39-0.56x XLA's time and one 2^20 vector 0.30-0.81x, but 10 x
# 4,096-8,192 took 1.01-1.10x (docs/performance.md, "The fused quantizer").
NATIVE_MIN_LENGTH = 10_000


def native_quantizer(n: int) -> bool:
  """Whether n-coordinate vectors take the native quantizers (a CPU, n >= NATIVE_MIN_LENGTH)."""
  return n >= NATIVE_MIN_LENGTH and native.active()


def quantize_pack(key: jax.Array, x: jax.Array, bits: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``pack(quantize(key, x, bits)[0], bits)`` with quantize's lo and hi (stochastic rounding).

  On a CPU the two are one native pass (`native.quantize_pack`, the same
  codes bit for bit: the same dither, step and rounding); elsewhere the
  XLA kernels in turn.
  """
  check_bits(bits)
  _check_float(x, "quantize_pack")

  def xla(k, v):
    codes, lo, hi = quantize(k, v, bits)
    return pack(codes, bits), lo, hi

  n, batch = x.shape[-1], x.shape[:-1]
  if not native_quantizer(n):
    return xla(key, x)
  x = x.astype(jnp.float32)
  seeds = jax.random.bits(key, batch + (1,), jnp.uint32)[..., 0]  # `dither`'s draw
  return lax.platform_dependent(
      key, x, cpu=lambda k, v: native.quantize_pack(v, seeds, bits), default=xla)


def unpack_dequantize(words: jax.Array, lo: jax.Array, hi: jax.Array, bits: int, n: int,
                      dtype=jnp.float32) -> jax.Array:
  """``dequantize(unpack(words, bits, n), lo, hi, bits, dtype)``, natively fused on a CPU."""
  def xla(w, l, h):
    return dequantize(unpack(w, bits, n), l, h, bits, jnp.float32)

  if not native_quantizer(n):
    return xla(words, lo, hi).astype(dtype)
  y = lax.platform_dependent(
      words, lo, hi, cpu=lambda w, l, h: native.unpack_dequantize(w, l, h, bits, n), default=xla)
  return y.astype(dtype)


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

  def xla(key):
    size, extra = divmod(n, k)  # the first `extra` strata hold size + 1
    j = jnp.arange(k, dtype=jnp.int32)
    start = j * size + jnp.minimum(j, extra)
    sizes = jnp.where(j < extra, size + 1, size) if extra else jnp.full((k,), size, jnp.int32)
    u = (jax.random.bits(key, (k,), jnp.uint32) >> 8).astype(jnp.float32) * (2.0**-24)
    offset = jnp.minimum((u * sizes).astype(jnp.int32), sizes - 1)
    return start + offset, sizes.astype(jnp.float32)

  if not native_random_bits(key):
    return xla(key)
  # The same draws and arithmetic in one native pass (`native.stratified_indices`).
  return lax.platform_dependent(
      key, cpu=lambda kk: native.stratified_indices(jax.random.key_data(kk), n, k), default=xla)
