"""``hadamard``: the randomized Hadamard rotation H D x (a sketched update).

Rotates each leaf, or (``flatten``) the whole update as one vector, with
Rademacher signs D drawn from the key; zero-padded to a power of two, or to
a multiple of ``block``. The rotation spreads a vector's energy evenly over
its coordinates, so a quantizer after it has a smaller range to cover.

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
from fedjax_comp.codecs.base import (Codec, FlatMeta, flatten_update, per_leaf, static_field,
                                     unflatten_update)


@flax.struct.dataclass
class Rotated:
  data: jax.Array  # [rotated_length(n, block)] in the leaf's dtype
  shape: tuple = static_field()
  dtype: str = static_field()


@flax.struct.dataclass
class FlatRotated:
  data: jax.Array  # float32 [rotated_length(total, block)]
  meta: FlatMeta  # the tree's structure, shapes and dtypes (static, 0 bits)


def hadamard(flatten: bool = False, block: int = 0) -> Codec:
  """Randomized Hadamard rotation H D x (signs from the key), zero-padded.

  Args:
    flatten: rotate the whole update as one vector instead of each leaf.
    block: rotate in independent blocks of this power-of-two length, so
      padding is to a multiple of `block` rather than to a power of two;
      0 means one block per vector.

  Returns:
    A stateless `Codec`; the payload is the rotated (padded) vector(s).

  Examples:
    >>> codec = hadamard(flatten=True, block=1024)
  """
  if not isinstance(flatten, bool):
    raise ValueError(f"hadamard: flatten must be true or false, got {flatten!r}")
  if not (isinstance(block, int) and (block == 0 or kernels.is_pow2(block))):
    raise ValueError(f"hadamard: block must be 0 or a power of two, got {block!r}")
  blk = block or None

  def encode_leaf(key, x):
    y = kernels.rotate(key, x.reshape(-1), blk)
    dt = x.dtype if x.dtype != jnp.float64 else jnp.float32
    return Rotated(data=y.astype(dt), shape=tuple(x.shape), dtype=jnp.dtype(x.dtype).name)

  def decode_leaf(key, r):
    x = kernels.unrotate(key, r.data, math.prod(r.shape), blk)
    return x.astype(jnp.dtype(r.dtype)).reshape(r.shape)

  def encode_flat(key, x):
    vec, meta = flatten_update(x, "hadamard")
    return FlatRotated(data=kernels.rotate(key, vec, blk), meta=meta)

  def decode_flat(key, r):
    return unflatten_update(kernels.unrotate(key, r.data, r.meta.size, blk), r.meta)

  if flatten:
    return Codec(init=lambda x: (), encode=lambda key, x, state: (encode_flat(key, x), state),
                 decode=decode_flat)
  return per_leaf(encode_leaf, decode_leaf, Rotated, name="hadamard")
