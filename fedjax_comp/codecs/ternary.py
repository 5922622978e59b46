"""``terngrad`` (stochastic ternary) and ``sign`` (signSGD with a majority vote).

TernGrad, per leaf: ``s = max_j |x_j|``, ``b_j ~ Bernoulli(|x_j| / s)``, and
the client sends ``s sign(x_j) b_j``: a 2-bit code per coordinate
(-1, 0, +1; log2(3) = 1.58 bits would need an entropy coder) and s as a
float32. ``E[s sign(x_j) b_j] = x_j``: unbiased. The paper's optional
gradient clipping (to 2.5 standard deviations) is not applied: it changes
the estimate (biased) and is a training choice, not the codec.

signSGD with majority vote: the client sends one bit per coordinate of its
whole update (the sign; an exact 0 gets a fair coin from the client's key,
so an untouched coordinate, e.g. an unseen token's embedding, gets no
systematic vote), and the server's aggregate is the
elementwise sign of the sum of the cohort's signs (`aggregation.
majority_vote`), not their mean. One float32 per client carries the
non-finite policy (1.0, or NaN when the update held a NaN/Inf), so a
poisoned update decodes to NaN and the round refuses it: d + 32 bits.

References:
  Wen et al., "TernGrad: Ternary Gradients to Reduce Communication in
  Distributed Deep Learning", NeurIPS 2017 (arXiv 1705.07878).
  Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex
  Problems", ICML 2018 (arXiv 1802.04434); "signSGD with Majority Vote is
  Communication Efficient and Fault Tolerant", ICLR 2019 (arXiv 1810.05291).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from fedjax_comp import kernels, native
from fedjax_comp.codecs.aggregation import majority_vote
from fedjax_comp.codecs.base import (Codec, FlatMeta, flatten_update, per_leaf, static_field,
                                     unflatten_update)


@flax.struct.dataclass
class Ternary:
  words: jax.Array  # uint32 [2, ceil(n / 32)]: 0, 1, 2 for -1, 0, +1
  scale: jax.Array  # float32 []: max |x|
  shape: tuple = static_field()
  dtype: str = static_field()


def terngrad() -> Codec:
  """TernGrad: each leaf to ``max|x| * {-1, 0, +1}``, stochastically, unbiased (module docstring).

  Returns:
    A stateless `Codec`: ``64 * ceil(n / 32) + 32`` bits per leaf of n coordinates.
  """

  def encode_xla(key, flat):
    s = jnp.max(jnp.abs(flat), initial=0.0)
    s = jnp.where(jnp.all(jnp.isfinite(flat)), s, jnp.nan)
    p = jnp.abs(flat) / jnp.where(s > 0, s, 1.0)
    keep = p > kernels.dither(key, flat.shape) if flat.shape[0] else p > 0
    codes = jnp.where(keep, jnp.where(flat < 0, 0, 2), 1).astype(jnp.uint32)
    return kernels.pack(codes, 2), s

  def encode_leaf(key, x):
    flat = x.reshape(-1).astype(jnp.float32)
    if kernels.native_quantizer(flat.shape[0]):  # the same codes, one native pass
      seeds = jax.random.bits(key, (1,), jnp.uint32)[0]  # `kernels.dither`'s draw
      words, s = lax.platform_dependent(
          key, flat, cpu=lambda k, v: native.ternary_pack(v, seeds), default=encode_xla)
    else:
      words, s = encode_xla(key, flat)
    return Ternary(words=words, scale=s, shape=tuple(x.shape), dtype=jnp.dtype(x.dtype).name)

  def decode_xla(words, scale, n):
    return (kernels.unpack(words, 2, n).astype(jnp.float32) - 1.0) * scale

  def decode_leaf(key, t):
    del key
    n = math.prod(t.shape)
    if kernels.native_quantizer(n):
      y = lax.platform_dependent(t.words, t.scale, default=lambda w, s: decode_xla(w, s, n),
                                 cpu=lambda w, s: native.ternary_unpack(w, s, n))
    else:
      y = decode_xla(t.words, t.scale, n)
    return y.reshape(t.shape).astype(jnp.dtype(t.dtype))

  return per_leaf(encode_leaf, decode_leaf, Ternary, name="terngrad")


@flax.struct.dataclass
class Signs:
  words: jax.Array  # uint32 [1, ceil(d / 32)]: 1 where the coordinate is negative
  ok: jax.Array  # float32 []: 1.0, or NaN if the update held a NaN/Inf
  meta: FlatMeta  # the update's tree (static, 0 bits)


def sign() -> Codec:
  """signSGD with majority vote: one sign bit per coordinate; the server takes the majority.

  Returns:
    A stateless `Codec` whose `aggregator` is `aggregation.majority_vote`:
    ``32 * ceil(d / 32) + 32`` bits per client for an update of d
    coordinates. It must be a chain's last stage (the vote needs the signs).

  Examples:
    >>> codec = sign()                # or codecs.parse("sign")
  """

  def encode(key, x, state):
    vec, meta = flatten_update(x, "sign")
    ok = jnp.where(jnp.all(jnp.isfinite(vec)), 1.0, jnp.nan).astype(jnp.float32)
    # An exact zero gets a random sign (a fair coin from the key), so a
    # coordinate no client moves gets no systematic vote.
    coin = kernels.rademacher(key, vec.shape) < 0
    negative = (vec < 0) | ((vec == 0) & coin)
    return Signs(words=kernels.pack(negative.astype(jnp.uint32), 1), ok=ok, meta=meta), state

  def decode(key, s):
    del key
    negative = kernels.unpack(s.words, 1, s.meta.size)
    return unflatten_update((1.0 - 2.0 * negative.astype(jnp.float32)) * s.ok, s.meta)

  return Codec(init=lambda x: (), encode=encode, decode=decode, aggregator=majority_vote())
