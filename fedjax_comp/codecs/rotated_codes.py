"""``drive`` and ``eden``: a random rotation, then each coordinate to b bits with one scale.

Both flatten the client's whole update into one vector x of d coordinates,
rotate it with the randomized Hadamard transform ``y = H D x`` (signs D from
the client's own codec key, so every client's rotation is independent; zero
padded to a power of two, or to a multiple of `block`), and send b bits per
rotated coordinate and one float32 scale S::

  z = y sqrt(n) / ||y||                  # about N(0, 1) per coordinate
  q = c(z)                               # the nearest Lloyd-Max centroid of N(0, 1)
  x_hat = D H (S q)                      # on the server, from the same key

The scale decides the estimator (EDEN, section 3; TurboQuant):

* ``unbiased``: ``S = ||y||^2 / <y, q>`` makes ``<x_hat, x> = ||x||^2``, which
  with a uniform random rotation gives ``E[x_hat] = x`` (see the note on
  the Hadamard rotation below); its vNMSE tends to
  ``1/(1 - D_b) - 1`` with ``D_b`` the Lloyd-Max distortion of N(0, 1)
  (b = 1: pi/2 - 1 = 0.571; b = 2: 0.133; b = 4: 0.0096).
* ``mse``: ``S = <y, q> / ||q||^2``, the least-squares scale (biased,
  vNMSE about ``D_b``).
* ``one``: ``S = ||y|| / sqrt(n)``, the centroids as they are (TurboQuant,
  arXiv 2504.19874; biased).

DRIVE (1 bit, sign of y, ``S = ||x||^2 / ||y||_1``) is EDEN's unbiased b = 1
case: the centroids are +-sqrt(2/pi) and the scale absorbs them.

Fractional b < 1 (``eden(bits=0.5)``): a random fraction b of the rotated
coordinates, one per stratum of about 1/b (`kernels.stratified_indices`,
drawn from the key, so the indices are not sent), is quantized to 1 bit
with the unbiased scale ``S = sum_j s_j y_j^2 / sum_j s_j q_j y_j`` over the
kept coordinates (s_j the stratum sizes), and each kept value is multiplied
by its stratum size on decode, so ``E <x_hat, x> = ||x||^2`` still holds.

With ``block``, the update is rotated in independent blocks, and each
block gets its own scale: one scale over blocks of unequal energy (the last
block is mostly padding) would bias the estimate, which the conformance
suite measured (a 10% shrinkage at block=64). For b < 1 the same kept
positions are used in every block (each block's rotation is independent).

Bits: ``32 * b * ceil(m / 32)`` packed codes for the m coordinates sent
(m = the padded length; for b < 1, one bit per kept coordinate,
``32 * ceil(m / 32)``) plus 32 per block for its S. The padding is counted: choose `block` to bound it.

The Hadamard rotation is not uniform, and the estimate is unbiased along x
exactly (``<E x_hat, x> = ||x||^2``) but carries a small bias orthogonal to
x that shrinks with the number of coordinates one rotation mixes. Measured
for DRIVE on N(0, 4) vectors with 20,000 trials (noise floor 0.0053): the
relative error of the mean was 0.0197 at d = 64, 0.0089 at 128, 0.0057 at
512 and 0.0053 (the floor) at 4096. A block that is mostly padding (263
coordinates in blocks of 256: 7 real ones in the second) shows it too, so
the conformance suite checks unbiasedness at block=0 only.

Overflow-safe: norms are taken of y / max|y|, so any input whose rotation
is finite gives a finite scale. A NaN or Inf anywhere makes S NaN, and the
whole update decodes to NaN.

References:
  Vargaftik et al., "DRIVE: One-bit Distributed Mean Estimation", NeurIPS
  2021 (arXiv 2105.08339).
  Vargaftik et al., "EDEN: Communication-Efficient and Robust Distributed
  Mean Estimation for Federated Learning", ICML 2022 (arXiv 2108.08842).
  Zandieh et al., "TurboQuant: Online Vector Quantization with Near-optimal
  Distortion Rate", 2025 (arXiv 2504.19874).
  Max, "Quantizing for minimum distortion", IRE Trans. Inf. Theory 1960.
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fedjax_comp import kernels, native
from fedjax_comp.codecs.base import (Codec, FlatMeta, flatten_update, static_field,
                                     unflatten_update)

SCALES = ("unbiased", "mse", "one")
WHOLE_BITS = (1, 2, 3, 4)


def _normal_pdf(t: float) -> float:
  return math.exp(-t * t / 2) / math.sqrt(2 * math.pi) if math.isfinite(t) else 0.0


def _normal_cdf(t: float) -> float:
  return 0.5 * math.erfc(-t / math.sqrt(2))


@functools.cache
def lloyd_max(bits: int) -> tuple[np.ndarray, np.ndarray]:
  """``(centroids [2^bits], boundaries [2^bits - 1])`` of N(0, 1)'s Lloyd-Max quantizer, float64.

  Lloyd's iteration (each centroid the conditional mean of its cell, each
  boundary the midpoint of its neighbours) run to a fixed point.
  """
  levels = 2**bits
  pdf, cdf = _normal_pdf, _normal_cdf
  c = np.array([(i + 0.5) / levels * 6 - 3 for i in range(levels)])
  for _ in range(100_000):
    edges = [-math.inf] + list((c[1:] + c[:-1]) / 2) + [math.inf]
    new = np.array([(pdf(a) - pdf(b)) / (cdf(b) - cdf(a)) for a, b in zip(edges, edges[1:])])
    if np.max(np.abs(new - c)) < 1e-15:
      c = new
      break
    c = new
  return c, (c[1:] + c[:-1]) / 2


def distortion(bits: int) -> float:
  """E[(Z - c(Z))^2] for Z ~ N(0, 1) and its Lloyd-Max quantizer: the `mse` scale's vNMSE limit."""
  c, b = lloyd_max(bits)
  edges = [-math.inf] + list(b) + [math.inf]
  cdf = _normal_cdf
  # E[Z^2] - sum_cells P(cell) c^2, since each c is its cell's conditional mean.
  return 1.0 - sum((cdf(hi) - cdf(lo)) * ci**2 for lo, hi, ci in zip(edges, edges[1:], c))


def unbiased_vnmse(bits: int) -> float:
  """The unbiased scale's asymptotic vNMSE, ``D / (1 - D)`` (EDEN, section 3)."""
  d = distortion(bits)
  return d / (1.0 - d)


@flax.struct.dataclass
class RotatedCodes:
  words: jax.Array  # uint32 [code_bits, ceil(m / 32)]: packed centroid indices
  scale: jax.Array  # float32 [blocks]: S of each rotation block
  meta: FlatMeta  # the update's tree (static, 0 bits)
  code_bits: int = static_field()
  kept: int = static_field()  # coordinates sent (the padded length unless b < 1)


# With equal strata of at most 8 (b = 1/2, 1/4, 1/8 on a power-of-two
# length), picking the kept coordinates is a chain of selects over the
# [blocks, k, stratum] view: the same values as the gather ``y[:, idx]``.
# Alone the two tie, but inside the encoder XLA:CPU fuses the rotation's
# output into the gather and runs it 5 ms for 2^21; EDEN b = 1/2 encodes a
# 2^20 vector in 5.6 ms instead of 10.7 (`scripts/ab_rotated_codecs.py`,
# section 6). Placing them back on decode stays a scatter (the selects were
# 1.3x slower there).
def _strata(length: int, idx: jax.Array):
  k = idx.shape[0]
  size = length // k
  if length % k or size > 8:
    return None
  return size, idx - jnp.arange(k, dtype=idx.dtype) * size  # each stratum's kept offset


def keep_coordinates(y: jax.Array, idx: jax.Array) -> jax.Array:
  """``y[:, idx]`` for `kernels.stratified_indices`' idx (one index per stratum)."""
  view = _strata(y.shape[1], idx)
  if view is None:
    return y[:, idx]
  size, offset = view
  y3 = y.reshape(y.shape[0], -1, size)
  kept = y3[..., 0]
  for t in range(1, size):
    kept = jnp.where(offset == t, y3[..., t], kept)
  return kept


# The native quantizer wins from here on: paired against XLA's (`python
# scripts/ab_rotated_codecs.py`, section 7, and vmapped cohorts) it took
# 0.83-0.96x the time for one 2^20 vector and 0.87-0.96x for cohorts of 2^16
# to 2^20 coordinates per client, but 0.91-1.12x for the leaderboard's 10 x
# 16,384, where XLA's fusions are cheap.
NATIVE_MIN_LENGTH = 1 << 16


def native_ok(length: int) -> bool:
  """Whether whole-bit codes of `length` rotated coordinates use the native quantizer."""
  return length >= NATIVE_MIN_LENGTH and native.active()


def check_bits(bits, codec: str) -> None:
  ok = isinstance(bits, (int, float)) and not isinstance(bits, bool) and (
      bits in WHOLE_BITS or 0 < bits < 1)
  if not ok:
    raise ValueError(f"{codec}: bits must be 1, 2, 3 or 4, or a fraction in (0, 1) "
                     f"(e.g. 0.5: 1 bit on half the coordinates), got {bits!r}")


def _rotated_codec(bits, scale: str, block: int, name: str) -> Codec:
  check_bits(bits, name)
  if scale not in SCALES:
    raise ValueError(f"{name}: scale must be one of {', '.join(SCALES)}, got {scale!r}")
  if not (isinstance(block, int) and not isinstance(block, bool)
          and (block == 0 or kernels.is_pow2(block))):
    raise ValueError(f"{name}: block must be 0 or a power of two, got {block!r}")
  fraction = bits if bits < 1 else None
  if fraction is not None and scale != "unbiased":
    raise ValueError(f"{name}: fractional bits ({bits}) need scale=unbiased: the kept "
                     "coordinates are rescaled by 1/b, which only the unbiased scale expects")
  code_bits = 1 if fraction is not None else int(bits)
  boundaries = [np.float32(b) for b in lloyd_max(code_bits)[1]]
  bounds = np.asarray(boundaries, np.float32)
  table = np.asarray(lloyd_max(code_bits)[0], np.float32)

  def centroid(codes):
    # A table lookup. A chain of selects (codes >= j) is 10-20% faster on a
    # materialized codes array, but XLA:CPU fuses `kernels.unpack` into each
    # select and recomputes it: 5-9 ms against 1.0-1.2 ms for 2^21 codes at
    # b = 1 and 2 (`python scripts/ab_rotated_codecs.py`).
    return jnp.take(table, codes, mode="clip")
  blk = block or None

  def rows(d: int) -> tuple[int, int]:
    """(blocks, block length) of the rotated update."""
    n = kernels.rotated_length(d, blk)
    length = min(n, blk or n)
    return n // length, length

  def kept_indices(key, length):
    k = min(length, max(1, math.ceil(fraction * length - 1e-9)))
    return kernels.stratified_indices(jax.random.fold_in(key, 1), length, k)

  def quantize_xla(y, weights, with_qq):
    """(words, top, sq, <unit, q>, <q, q> or None, norm) of rotated blocks y [nb, m], in XLA."""
    # Norms of y / max|y| per block: no overflow for any finite rotation. A NaN
    # or Inf in x reaches every rotated coordinate of its block (H is dense),
    # so a non-finite max anywhere stands for a non-finite update.
    m, dot_ = y.shape[1], kernels.row_dot
    top = jnp.max(jnp.abs(y), axis=1, keepdims=True)
    unit = y / jnp.where(top > 0, top, 1.0)
    energy = dot_(unit, unit)
    norm = jnp.sqrt(energy)
    z = unit * (math.sqrt(m) / jnp.where(norm > 0, norm, 1.0))
    # Elementwise from z (no [n, 2^b] reduce, no gather: XLA:CPU fuses the
    # comparisons into a gather's indices and runs it 5x slower).
    codes = sum((z > b).astype(jnp.uint32) for b in boundaries)
    q = jnp.full(z.shape, table[0])
    for j, b in enumerate(boundaries):
      q = jnp.where(z > b, table[j + 1], q)
    # The unbiased S = ||y||^2 / <y, q>; with b < 1, both weighted by the stratum sizes the
    # decode multiplies in, so that E <x_hat, x> = ||x||^2 holds exactly for unequal strata.
    if weights is None:
      dot, sq = dot_(unit, q), energy
    else:
      dot, sq = dot_(weights * unit, q), dot_(weights * unit, unit)
    qq = dot_(q, q) if with_qq else None
    return kernels.pack(codes.reshape(-1), code_bits), top, sq, dot, qq, norm

  def quantize_native(y, with_qq):
    """`quantize_xla` (whole bits) in one native kernel (fedjax_comp/native/rotated_codes.cc)."""
    words, stats = native.rotated_quantize(y, bounds, table, code_bits)
    top, sq, dot, qq = (stats[:, i:i + 1] for i in range(4))
    return words, top, sq, dot, qq if with_qq else None, jnp.sqrt(sq)

  def encode(key, x, state):
    vec, meta = flatten_update(x, name)
    if meta.size == 0:
      return RotatedCodes(words=kernels.pack(jnp.zeros((0,), jnp.uint32), code_bits),
                          scale=jnp.zeros((0,), jnp.float32), meta=meta, code_bits=code_bits,
                          kept=0), state
    nb, length = rows(meta.size)
    y = kernels.rotate(key, vec, blk).reshape(nb, length)
    weights = None
    if fraction is not None:
      idx, weights = kept_indices(key, length)
      y = keep_coordinates(y, idx)
      if length % idx.shape[0] == 0:
        # Equal strata: the sizes cancel in S = <w u, u> / <w u, q> (exactly, for the power-
        # of-two sizes of b = 1/2, 1/4, ...), so the unweighted (and native) quantizer serves.
        weights = None
    m = y.shape[1]
    if weights is None and native_ok(nb * m):
      words, top, sq, dot, qq, norm = lax.platform_dependent(
          y, cpu=functools.partial(quantize_native, with_qq=scale == "mse"),
          default=functools.partial(quantize_xla, weights=None, with_qq=scale == "mse"))
    else:
      words, top, sq, dot, qq, norm = quantize_xla(y, weights, scale == "mse")
    if scale == "unbiased":
      s = top * jnp.where(dot > 0, sq / jnp.where(dot > 0, dot, 1.0), 0.0)
    elif scale == "mse":
      s = top * dot / qq
    else:
      s = top * norm / math.sqrt(m)
    s = jnp.where(jnp.all(jnp.isfinite(top)), s[:, 0], jnp.nan).astype(jnp.float32)
    return RotatedCodes(words=words, scale=s, meta=meta,
                        code_bits=code_bits, kept=nb * m), state

  def decode(key, p):
    d = p.meta.size
    if d == 0:
      return unflatten_update(jnp.zeros((0,), jnp.float32), p.meta)
    nb, length = rows(d)

    def dequantize_xla(words, scale):
      codes = kernels.unpack(words, p.code_bits, p.kept).reshape(nb, -1)
      return centroid(codes) * scale[:, None]

    m = p.kept // nb  # codes per block: length, or the kept fraction of it
    # Kept fractions of short blocks stay in XLA, which fuses their decode into the scatter
    # (EDEN b = 1/4 in blocks of 1,024: 1.05-1.08x slower natively).
    if native_ok(p.kept) and (fraction is None or m >= kernels.NATIVE_SCATTER_MIN):
      y = lax.platform_dependent(
          p.words, p.scale, default=dequantize_xla,
          cpu=lambda w, s: native.rotated_dequantize(w, s, m, table, code_bits))
    else:
      y = dequantize_xla(p.words, p.scale)
    if fraction is not None:  # each block's kept values back in place (idx ascends)
      idx, sizes = kept_indices(key, length)
      y = jax.vmap(lambda v: kernels.scatter_ascending(idx, v, length))(y * sizes)
    return unflatten_update(kernels.unrotate(key, y.reshape(-1), d, blk), p.meta)

  return Codec(init=lambda x: (), encode=encode, decode=decode)


def eden(bits: float = 2, scale: str = "unbiased", block: int = 0) -> Codec:
  """EDEN: rotate, quantize to N(0, 1)'s Lloyd-Max centroids, one scale (module docstring).

  Args:
    bits: 1, 2, 3 or 4 bits per rotated coordinate, or a fraction in (0, 1):
      1 bit on that fraction of the rotated coordinates.
    scale: ``unbiased`` (EDEN), ``mse`` (least squares, biased) or ``one``
      (the centroids times ||x|| / sqrt(n): TurboQuant, biased).
    block: rotate in independent blocks of this power-of-two length, so the
      padding is to a multiple of `block`; 0 pads the whole update to a
      power of two.

  Returns:
    A stateless `Codec`; ``32 * b * ceil(m / 32) + 32 * blocks`` bits per client.

  Examples:
    >>> codec = eden(bits=2)          # or codecs.parse("eden(bits=2)")
    >>> codec = eden(bits=0.5)        # half a bit per coordinate
  """
  return _rotated_codec(bits, scale, block, "eden")


def drive(block: int = 0) -> Codec:
  """DRIVE: rotate, send the signs and ``S = ||x||^2 / ||H D x||_1`` (unbiased, vNMSE -> 0.571).

  Args:
    block: as for `eden`.

  Returns:
    A stateless `Codec`: ``32 * ceil(n / 32) + 32 * blocks`` bits for a padded length n.
  """
  return _rotated_codec(1, "unbiased", block, "drive")
