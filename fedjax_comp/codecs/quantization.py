"""``quantize``: each leaf to b-bit codes between its min and max (a sketched update).

Unbiased stochastic quantization of each leaf to ``2^bits`` levels evenly
spaced between the leaf's min and max; the codes are bit-packed
(`kernels.pack`), so a leaf of n coordinates costs
``32 * bits * ceil(n / 32)`` bits plus two float32 scales.

References:
  Konečný et al., "Federated Learning: Strategies for Improving
  Communication Efficiency", 2016 (arXiv:1610.05492), section 3.
  Suresh et al., "Distributed Mean Estimation with Limited Communication",
  ICML 2017.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from fedjax_comp import kernels
from fedjax_comp.codecs.base import Codec, per_leaf, static_field


@flax.struct.dataclass
class Quantized:
  words: jax.Array  # uint32 [bits, ceil(n / 32)], see kernels.pack
  lo: jax.Array  # float32 [], the leaf's min
  hi: jax.Array  # float32 [], the leaf's max
  shape: tuple = static_field()
  dtype: str = static_field()


def quantize(bits: int = 8, stochastic: bool = True) -> Codec:
  """Each leaf to `bits`-bit codes between its min and max (unbiased if `stochastic`).

  Payload per leaf: ``32 * bits * ceil(n / 32)`` bits of packed codes plus
  two float32 scales. A leaf holding NaN or Inf decodes to all NaN.

  Args:
    bits: code width, 1..8.
    stochastic: unbiased stochastic rounding (default) or round-to-nearest.

  Returns:
    A stateless `Codec`.

  Examples:
    >>> codec = quantize(bits=2)      # or codecs.parse("quantize(bits=2)")
  """
  kernels.check_bits(bits)
  if not isinstance(stochastic, bool):
    raise ValueError(f"quantize: stochastic must be true or false, got {stochastic!r}")

  def encode_leaf(key, x):
    if stochastic:
      words, lo, hi = kernels.quantize_pack(key, x.reshape(-1), bits)
    else:
      codes, lo, hi = kernels.quantize(key, x.reshape(-1), bits, stochastic=False)
      words = kernels.pack(codes, bits)
    return Quantized(words=words, lo=lo, hi=hi, shape=tuple(x.shape),
                     dtype=jnp.dtype(x.dtype).name)

  def decode_leaf(key, q):
    n = math.prod(q.shape)
    return kernels.unpack_dequantize(q.words, q.lo, q.hi, bits, n,
                                     jnp.dtype(q.dtype)).reshape(q.shape)

  return per_leaf(encode_leaf, decode_leaf, Quantized, name="quantize")
