"""``subsample``: keep a fraction p of each leaf's coordinates (a sketched update).

Stratified: one coordinate per stratum of about 1/p, drawn from the key
(`kernels.stratified_indices`), so the server regenerates the indices and
only the kept values are sent. Each kept value is rescaled by its stratum
size on decode, which makes the estimate exactly unbiased.

References:
  Konečný et al., "Federated Learning: Strategies for Improving
  Communication Efficiency", 2016 (arXiv:1610.05492), section 3.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from fedjax_comp import kernels
from fedjax_comp.codecs.base import Codec, per_leaf, static_field


@flax.struct.dataclass
class Subsampled:
  values: jax.Array  # [k] the kept coordinates, unscaled, in the leaf's dtype
  shape: tuple = static_field()
  dtype: str = static_field()


def check_fraction(p: float, codec: str) -> None:
  """Raises ValueError naming `codec` unless `p` is a number in (0, 1]."""
  if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p <= 1):
    raise ValueError(f"{codec}: p must be a number in (0, 1], got {p!r}")


MAX_LEAF = 2**31 - 1  # coordinates are indexed with int32


def kept_count(n: int, p: float) -> int:
  """Coordinates `subsample`/`random_mask` keep out of n: ceil(p n), at least 1 if n > 0.

  Raises ValueError for a leaf of more than 2**31 - 1 coordinates (indices are int32).
  """
  if n > MAX_LEAF:
    raise ValueError(f"subsample/random_mask index a leaf's coordinates with int32: a leaf may "
                     f"hold at most {MAX_LEAF:,} coordinates, got {n:,}")
  return min(n, max(1 if n else 0, math.ceil(p * n - 1e-9)))


def subsample(p: float = 0.25) -> Codec:
  """Keeps a fraction `p` of each leaf's coordinates, rescaled so the estimate is unbiased.

  A NaN or Inf anywhere in a leaf makes all its kept values NaN, so a
  non-finite update never decodes to a finite one.

  Args:
    p: the fraction kept, in (0, 1]; a leaf of n coordinates sends
      `kept_count(n, p)` values.

  Returns:
    A stateless `Codec`.

  Examples:
    >>> codec = subsample(p=1 / 16)   # or codecs.parse("subsample(p=1/16)")
  """
  check_fraction(p, "subsample")

  def encode_leaf(key, x):
    flat = x.reshape(-1)
    n = flat.shape[0]
    k = kept_count(n, p)
    if k == 0:
      return Subsampled(values=flat, shape=tuple(x.shape), dtype=jnp.dtype(x.dtype).name)
    idx, _ = kernels.stratified_indices(key, n, k)
    # A NaN/Inf anywhere poisons the kept values (it must not vanish unseen).
    values = jnp.where(kernels.all_finite(flat), flat[idx], jnp.nan)
    return Subsampled(values=values.astype(x.dtype), shape=tuple(x.shape),
                      dtype=jnp.dtype(x.dtype).name)

  def decode_leaf(key, s):
    n = math.prod(s.shape)
    k = s.values.shape[0]
    if k == 0:
      return jnp.zeros(s.shape, jnp.dtype(s.dtype))
    idx, sizes = kernels.stratified_indices(key, n, k)
    vals = s.values.astype(jnp.float32) * sizes
    return kernels.scatter_ascending(idx, vals, n).astype(jnp.dtype(s.dtype)).reshape(s.shape)

  return per_leaf(encode_leaf, decode_leaf, Subsampled, name="subsample")
