"""`kernels.fwht` in XLA ops: the path for GPU/TPU, float64, and CPUs without the native kernel.

Written for CPU caches: the first butterfly stages are one small dense
matmul, the rest radix-4 butterflies, and long batches are processed in
blocks of about 2^20 floats (`lax.map`) so all log2(d) stages of a block run
while it sits in cache instead of streaming the whole batch through memory
once per stage. (The first five stages are one ``[32, 32]`` matmul: 32
measured faster than 16 or 64.) Rows longer than 2^16 are split as
H_(d/b) kron H_b so that the H_b part still runs in cache blocks.
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


def hadamard_matrix(d: int, dtype=np.float64) -> np.ndarray:
  """The dense Sylvester Hadamard matrix H_d (entries +-1, unnormalized)."""
  if d < 1 or d & (d - 1):
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


def fwht_xla(y: jax.Array, pre: jax.Array | None, post: jax.Array | None) -> jax.Array:
  """`fwht` of ``[rows, d]`` in XLA ops: butterflies in cache blocks (module docstring)."""
  rows, d = y.shape
  if d > _FWHT_SPLIT_LEN:
    inner = _FWHT_SPLIT_INNER
    if pre is not None:
      y = y * pre
    y = _fwht_blocked(y.reshape(-1, inner), normalize=False).reshape(rows, d)
    y = _butterflies(y, inner) * jnp.asarray(1.0 / math.sqrt(d), y.dtype)
    if post is not None:
      y = y * post
    return y
  return _fwht_blocked(y, pre, post)
