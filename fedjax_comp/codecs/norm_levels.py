"""``qsgd``: s levels of |x_j| / ||x||_2 with signs (Alistarh et al. 2017), fixed or Elias coded.

Per leaf, in buckets of `bucket` coordinates (0: the whole leaf is one
bucket), each coordinate is sent as sign(x_j) * l_j with the level
``l_j = floor(s |x_j| / ||x|| + u_j)``, u_j uniform, so
``E[||x|| sign(x_j) l_j / s] = x_j`` (unbiased), plus one float32 norm per
bucket. Variance: at most ``min(d / s^2, sqrt(d) / s) ||x||^2`` (Lemma 3.1).

What is sent (`payload_bits`) is fixed-length: each coordinate's signed
level, ``l + s`` in 0..2s, as a ``ceil(log2(2s + 1))``-bit code, bit-packed,
plus 32 bits per bucket. The paper counts bits with its variable-length
code instead (section 3.1): the norm, then for each nonzero coordinate the
gap to it from the previous nonzero, its sign bit and its level, gaps and
levels in an Elias code. `Codec.coded_bits(payload)` returns exactly that
length for the payload at hand (``elias="gamma"``: |gamma(k)| =
2 floor(log2 k) + 1; ``"omega"``: Elias's recursive code, which the paper
uses). The two counts are reported side by side by `benchmarks.dme`.

A NaN or Inf in a bucket makes its norm NaN, and the bucket decodes to NaN
(so the update is non-finite and the round refuses it); so does a bucket
whose norm exceeds float32's range (norm inf).

On a CPU, leaves of `NATIVE_MIN_LENGTH` coordinates or more encode and
decode in one native pass each (`native.qsgd_pack`, `qsgd_unpack`): the
bucket statistics, then every code computed and packed in registers, where
XLA:CPU materializes the unit vector, the levels and the codes. The norm is
a double sum there, so norms agree with the XLA path to float32 rounding
and a code can differ only where t lands within rounding of its dither.

References:
  Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient
  Quantization and Encoding", NeurIPS 2017 (arXiv 1610.02132).
  Elias, "Universal codeword sets and representations of the integers",
  IEEE Trans. Inf. Theory 1975.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from jax import lax

from fedjax_comp import kernels, native
from fedjax_comp.codecs.base import Codec, check_float, map_leaves, static_field

# From this many coordinates per leaf, a CPU runs the native encoder and decoder
# (docs/performance.md, "QSGD in one native pass": paired, 0.33-0.90x XLA's
# time from 32,768 coordinates, but 1.0-1.14x for 10 x 16,384, where XLA
# packs a power-of-two width well). Smaller leaves, such as the leaderboard
# MLP's (at most 10,000), keep the XLA path bit for bit.
NATIVE_MIN_LENGTH = 2**15
MAX_LEVELS = 127  # 2s + 1 signed levels fit the 8-bit codes `kernels.pack` takes
ELIAS = ("gamma", "omega")


@flax.struct.dataclass
class QSGDLeaf:
  words: jax.Array  # uint32 [code_bits, ceil(n / 32)]: l + s per coordinate
  norms: jax.Array  # float32 [buckets]
  shape: tuple = static_field()
  dtype: str = static_field()


def code_bits(levels: int) -> int:
  """Bits of one fixed-length signed level: ceil(log2(2 levels + 1))."""
  return math.ceil(math.log2(2 * levels + 1))


def _floor_log2(k: jax.Array) -> jax.Array:
  """floor(log2 k) for int32 k >= 1."""
  return 31 - jax.lax.clz(k.astype(jnp.uint32)).astype(jnp.int32)


def gamma_length(k: jax.Array) -> jax.Array:
  """Bits of Elias gamma's code for integers k >= 1: 2 floor(log2 k) + 1."""
  return 2 * _floor_log2(k) + 1


def omega_length(k: jax.Array) -> jax.Array:
  """Bits of Elias omega's (recursive) code for integers k >= 1 (k < 2^31)."""
  total = jnp.ones_like(k)  # the final 0
  for _ in range(5):  # k -> floor(log2 k) reaches 1 within 5 steps below 2^31
    more = k > 1
    total = total + jnp.where(more, _floor_log2(jnp.maximum(k, 1)) + 1, 0)
    k = jnp.where(more, _floor_log2(jnp.maximum(k, 1)), k)
  return total


def qsgd(levels: int = 4, bucket: int = 0, elias: str = "gamma") -> Codec:
  """QSGD: `levels` stochastic levels of |x_j| / ||x|| per bucket, with signs (module docstring).

  Args:
    levels: s, the number of nonzero levels, 1..127 (s = 1 sends a
      ternary sign pattern scaled by the norm).
    bucket: coordinates per norm; 0 makes each leaf one bucket.
    elias: the variable-length code `coded_bits` counts: ``gamma`` or
      ``omega`` (the paper's recursive code).

  Returns:
    A stateless `Codec` with `coded_bits`. Fixed-length bits per leaf of n
    coordinates: ``32 * code_bits(s) * ceil(n / 32) + 32 * ceil(n / bucket)``.

  Examples:
    >>> codec = qsgd(levels=4, bucket=512)   # or codecs.parse("qsgd(levels=4,bucket=512)")
  """
  if not (isinstance(levels, int) and not isinstance(levels, bool)
          and 1 <= levels <= MAX_LEVELS):
    raise ValueError(f"qsgd: levels must be an integer in 1..{MAX_LEVELS}, got {levels!r}")
  if not (isinstance(bucket, int) and not isinstance(bucket, bool) and bucket >= 0):
    raise ValueError(f"qsgd: bucket must be an integer >= 0 (0: one bucket per leaf), "
                     f"got {bucket!r}")
  if elias not in ELIAS:
    raise ValueError(f"qsgd: elias must be one of {', '.join(ELIAS)}, got {elias!r}")
  width = code_bits(levels)

  def buckets(n: int) -> tuple[int, int]:
    size = bucket or max(n, 1)
    return -(-n // size), size

  def encode_leaf(key, x):
    check_float(x, "qsgd")
    flat = x.reshape(-1).astype(jnp.float32)
    n = flat.shape[0]
    nb, size = buckets(n)

    def native_encode(k, f):
      seeds = kernels.random_bits(k, nb)  # `kernels.dither`'s draw for the [nb, size] view
      return native.qsgd_pack(f, seeds, levels, size, width)

    if n >= NATIVE_MIN_LENGTH and native.active():
      words, norms = lax.platform_dependent(key, flat, cpu=native_encode, default=xla_encode)
    else:
      words, norms = xla_encode(key, flat)
    return QSGDLeaf(words=words, norms=norms, shape=tuple(x.shape), dtype=jnp.dtype(x.dtype).name)

  def xla_encode(key, flat):
    n = flat.shape[0]
    nb, size = buckets(n)
    v = jnp.pad(flat, (0, nb * size - n)).reshape(nb, size)
    top = jnp.max(jnp.abs(v), axis=1, keepdims=True, initial=0.0)
    # Norms of v / max|v|: no overflow. XLA:CPU divides by multiplying by the
    # reciprocal, flushed to zero for max|v| > 2^126: a power of two brings
    # such a bucket down first (exact; a no-op for every other bucket).
    pre = jnp.where(top > 2.0**64, 2.0**-64, 1.0)
    unit = (v * pre) / jnp.where(top > 0, top * pre, 1.0)
    unit_norm = jnp.sqrt(jnp.sum(unit * unit, axis=1, keepdims=True))
    t = jnp.abs(unit) / jnp.where(unit_norm > 0, unit_norm, 1.0) * levels
    floor = jnp.floor(t)
    level = jnp.minimum(floor + (t - floor > kernels.dither(key, t.shape)), levels)
    signed = jnp.where(v < 0, -level, level) + levels
    norms = (top * unit_norm)[:, 0]
    finite = jnp.all(jnp.isfinite(v), axis=1)
    codes = signed.astype(jnp.uint32).reshape(-1)[:n]
    return kernels.pack(codes, width), jnp.where(finite, norms, jnp.nan)

  def signed_levels(q: QSGDLeaf) -> jax.Array:
    n = math.prod(q.shape)
    return kernels.unpack(q.words, width, n).astype(jnp.int32) - levels

  def decode_leaf(key, q):
    del key
    n = math.prod(q.shape)
    nb, size = buckets(n)

    def xla_decode(words, norms):
      signed = (kernels.unpack(words, width, n).astype(jnp.int32) - levels).astype(jnp.float32)
      signed = jnp.pad(signed, (0, nb * size - n)).reshape(nb, size)
      return (signed * (norms[:, None] / levels)).reshape(-1)[:n]

    if n >= NATIVE_MIN_LENGTH and native.active():
      x = lax.platform_dependent(
          q.words, q.norms, default=xla_decode,
          cpu=lambda w, m: native.qsgd_unpack(w, m, levels, size, width, n))
    else:
      x = xla_decode(q.words, q.norms)
    return x.reshape(q.shape).astype(jnp.dtype(q.dtype))

  def coded_bits(payload) -> jax.Array:
    """The paper's variable-length code: 32 per norm; per nonzero, Elias(gap) + 1 + Elias(|l|)."""
    length = gamma_length if elias == "gamma" else omega_length
    total = jnp.int32(0)
    for q in jax.tree.leaves(payload, is_leaf=lambda node: isinstance(node, QSGDLeaf)):
      signed = signed_levels(q)
      nonzero = signed != 0
      pos = jnp.arange(signed.shape[0], dtype=jnp.int32)
      last = jax.lax.cummax(jnp.where(nonzero, pos, -1))  # the latest nonzero at or before j
      prev = jnp.concatenate([jnp.full((1,), -1, jnp.int32), last[:-1]])
      gap = pos - prev  # >= 1: from the previous nonzero (or the start) to j
      per = length(gap) + 1 + length(jnp.maximum(jnp.abs(signed), 1))
      total = total + jnp.sum(jnp.where(nonzero, per, 0)) + 32 * q.norms.shape[0]
    return total

  return Codec(init=lambda x: (),
               encode=lambda key, x, state: (map_leaves(encode_leaf, key, x), state),
               decode=lambda key, p: map_leaves(decode_leaf, key, p,
                                                lambda node: isinstance(node, QSGDLeaf)),
               coded_bits=coded_bits)
