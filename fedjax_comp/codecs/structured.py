"""Structured updates: ``low_rank`` and ``random_mask`` change local training.

A structured codec carries a `Structure`: the client trains a small
variable z instead of the full delta, and z is the upload; decode expands z
back to a params-shaped delta. Only the first stage of a `chain` may be
structured.

* ``low_rank(rank=k)``: each weight-matrix update is H = A B, with A (d1 x k)
  regenerated from the key and only B (k x d2) trained from zero. Conv
  kernels ``[h, w, in, out]`` are ``(h w in) x out`` matrices. Variants:
  ``train=b`` (default), ``train=a`` (B fixed, A trained from 0) and
  ``train=both`` (A starts random, both trained and sent). Biases and other
  vectors are trained and sent in full (``vectors=full``) or frozen
  (``vectors=frozen``).
* ``random_mask(p=...)``: a seeded subset of each leaf's coordinates
  (stratified, as ``subsample``); only those are trained, and only their
  values are sent.

References:
  Konečný et al., "Federated Learning: Strategies for Improving
  Communication Efficiency", 2016 (arXiv:1610.05492), section 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from fedjax_comp import kernels
from fedjax_comp.codecs.base import Codec, Structure, check_float, map_leaves, static_field
from fedjax_comp.codecs.subsampling import check_fraction, kept_count


@flax.struct.dataclass
class LowRank:
  """One matrix's trainable factors; only the non-None ones are trained and sent."""

  a: jax.Array | None  # [d1, k] (train=a or both)
  b: jax.Array | None  # [k, d2] (train=b or both)
  shape: tuple = static_field()
  dtype: str = static_field()


@flax.struct.dataclass
class Frozen:
  """A leaf that is neither trained nor sent (no data)."""

  shape: tuple = static_field()
  dtype: str = static_field()


@flax.struct.dataclass
class Masked:
  values: jax.Array  # [k] the trained coordinates
  shape: tuple = static_field()
  dtype: str = static_field()


_STRUCT_NODES = (LowRank, Frozen, Masked)


def _is_struct_node(node) -> bool:
  return isinstance(node, _STRUCT_NODES)


def _structured_codec(name: str, init_leaf: Callable[[jax.Array, jax.Array], Any],
                      expand_leaf: Callable[[jax.Array, Any], jax.Array]) -> Codec:
  """A structured stage: the upload is z itself; decode expands it to a delta."""

  def init(key, params):
    return map_leaves(init_leaf, key, params)

  def expand(key, z):
    return map_leaves(expand_leaf, key, z, _is_struct_node)

  def encode(key, z, state):
    for node in jax.tree.leaves(z, is_leaf=_is_struct_node):
      if not _is_struct_node(node) and jnp.ndim(node) >= 2:
        raise ValueError(
            f"codec {name!r} trains a structured update, but got a plain params-shaped "
            "delta: build the client update with "
            "make_client_update(..., structure=codec.structure)")
      if not _is_struct_node(node):
        check_float(node, name)
    return z, state

  return Codec(init=lambda x: (), encode=encode, decode=expand,
               structure=Structure(init=init, expand=expand))


def low_rank(rank: int = 1, train: str = "b", vectors: str = "full") -> Codec:
  """Low-rank structured updates H = A B of every weight matrix (rank `rank`).

  Args:
    rank: k, with 1 <= k <= min(d1, d2) for every matrix of the model.
    train: "b" (A fixed from the key, B trained from zero; the paper's
      choice), "a" (B fixed, A trained from zero) or "both" (A starts random,
      both trained and sent).
    vectors: "full" (biases and other non-matrix leaves trained and sent in
      full) or "frozen" (left at the server's value, nothing sent).

  Returns:
    A `Codec` whose `structure` the client update trains through.

  Examples:
    >>> codec = low_rank(rank=2)      # or codecs.parse("low_rank(rank=2)")
  """
  if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
    raise ValueError(f"low_rank: rank must be an integer >= 1, got {rank!r}")
  if train not in ("a", "b", "both"):
    raise ValueError(f"low_rank: train must be one of a, b, both; got {train!r}")
  if vectors not in ("full", "frozen"):
    raise ValueError(f"low_rank: vectors must be one of full, frozen; got {vectors!r}")

  def dims(shape):
    return math.prod(shape[:-1]), shape[-1]

  def factors(key, shape):
    d1, d2 = dims(shape)
    ka, kb = jax.random.split(key)
    # Var 1/d1 (1/d2): A^T A ~ I, so A A^T G is G projected onto a random
    # k-dimensional subspace, at the client's learning rate.
    a = jax.random.normal(ka, (d1, rank), jnp.float32) / math.sqrt(d1)
    b = jax.random.normal(kb, (rank, d2), jnp.float32) / math.sqrt(d2)
    return a, b

  def init_leaf(key, x):
    check_float(x, "low_rank")
    shape, dt = tuple(x.shape), jnp.dtype(x.dtype).name
    if x.ndim < 2:
      return x * 0 if vectors == "full" else Frozen(shape=shape, dtype=dt)
    d1, d2 = dims(shape)
    if rank > min(d1, d2):
      raise ValueError(f"low_rank: rank must be in 1..min(d1, d2) = 1..{min(d1, d2)} for a "
                       f"weight of shape {shape} (as a {d1}x{d2} matrix); got rank={rank}")
    a, _ = factors(key, shape)
    za = jnp.zeros((d1, rank), x.dtype) if train == "a" else (
        a.astype(x.dtype) if train == "both" else None)
    zb = jnp.zeros((rank, d2), x.dtype) if train in ("b", "both") else None
    return LowRank(a=za, b=zb, shape=shape, dtype=dt)

  def expand_leaf(key, z):
    if isinstance(z, Frozen):
      return jnp.zeros(z.shape, jnp.dtype(z.dtype))
    if not isinstance(z, LowRank):
      return z  # a vector sent in full
    fa, fb = factors(key, z.shape)
    a = z.a.astype(jnp.float32) if z.a is not None else fa
    b = z.b.astype(jnp.float32) if z.b is not None else fb
    # For train=both the update is A' B' - A0 B0, and B0 = 0.
    return (a @ b).reshape(z.shape).astype(jnp.dtype(z.dtype))

  return _structured_codec("low_rank", init_leaf, expand_leaf)


def random_mask(p: float = 0.25) -> Codec:
  """Trains and sends only a seeded fraction `p` of each leaf's coordinates.

  Args:
    p: the fraction trained, in (0, 1]; a leaf of n coordinates trains
      `kept_count(n, p)` of them, at `mask_indices(key_i, shape, p)`.

  Returns:
    A `Codec` whose `structure` the client update trains through.

  Examples:
    >>> codec = random_mask(p=0.25)   # or codecs.parse("random_mask(p=1/4)")
  """
  check_fraction(p, "random_mask")

  def init_leaf(key, x):
    check_float(x, "random_mask")
    n = math.prod(x.shape)
    return Masked(values=jnp.zeros((kept_count(n, p),), x.dtype), shape=tuple(x.shape),
                  dtype=jnp.dtype(x.dtype).name)

  def expand_leaf(key, z):
    n = math.prod(z.shape)
    k = z.values.shape[0]
    if k == 0:
      return jnp.zeros(z.shape, jnp.dtype(z.dtype))
    idx, _ = kernels.stratified_indices(key, n, k)
    return kernels.scatter_ascending(idx, z.values, n).reshape(z.shape).astype(
        jnp.dtype(z.dtype))

  return _structured_codec("random_mask", init_leaf, expand_leaf)


def mask_indices(key: jax.Array, shape: tuple[int, ...], p: float) -> jax.Array:
  """The flat indices `random_mask(p)` trains for a leaf of `shape` under `key` (for tests/analysis)."""
  n = math.prod(shape)
  return kernels.stratified_indices(key, n, kept_count(n, p))[0]
