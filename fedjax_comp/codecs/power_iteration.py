"""``powersgd``: a rank-r power-iteration sketch of each matrix, warm-started, with error feedback.

For each leaf with two or more axes, viewed as a matrix M of shape
[prod(shape[:-1]), shape[-1]] (all kernel axes grouped with the input
features; flax keeps output features last), one power iteration per round
(Vogels et al. 2019, Algorithm 1)::

  M = delta + e              # e: the client's residual (error feedback)
  P = orthonormalize(M Q)    # Q: the client's Q from its last round (warm start)
  Q = M^T P                  # sent: P [n, r] and Q [m, r], float32
  e = M - P Q^T              # kept; the server decodes P Q^T

with r = min(rank, n, m). Leaves with fewer than two axes (biases) are
sent in full, as in the paper. The residuals and the Qs are the client's
state, which the algorithm keeps as its row between rounds.

Partial participation: a client's Q and residual are its own, so a client
that was not sampled for many rounds resumes from the Q and residual of its
last round, computed against a model that has since moved. With
``decay < 1`` its residual is multiplied by ``decay`` per round missed
(`Codec.age`); its Q is kept either way (a stale warm start only costs
accuracy of the first power iteration, never correctness). Every client's
first Q is the same i.i.d. N(0, 1) draw from a fixed key (the paper's
shared seed).

Orthonormalization is a QR decomposition (Householder), which leaves a
zero matrix's P finite, so a zero update sends zeros.

References:
  Vogels, Karimireddy, Jaggi, "PowerSGD: Practical Low-Rank Gradient
  Compression for Distributed Optimization", NeurIPS 2019
  (arXiv 1905.13727).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from fedjax_comp.codecs.base import Codec, check_float, static_field


@flax.struct.dataclass
class Factors:
  p: jax.Array  # float32 [n, r]
  q: jax.Array  # float32 [m, r]
  shape: tuple = static_field()
  dtype: str = static_field()


@flax.struct.dataclass
class Dense:
  data: jax.Array  # float32 [...]: a vector leaf, sent in full
  dtype: str = static_field()


def _matrix_shape(shape) -> tuple[int, int] | None:
  if len(shape) < 2:
    return None
  return math.prod(shape[:-1]), shape[-1]


def _is_node(node) -> bool:
  return isinstance(node, (Factors, Dense))


def check_decay(decay, codec: str) -> None:
  if not (isinstance(decay, (int, float)) and not isinstance(decay, bool) and 0 <= decay <= 1):
    raise ValueError(f"{codec}: decay must be a number in [0, 1] (1 keeps a stale residual, "
                     f"0 drops it), got {decay!r}")


def powersgd(rank: int = 2, decay: float = 1.0) -> Codec:
  """PowerSGD: rank-`rank` factors of each matrix, warm start and error feedback (module docstring).

  Args:
    rank: r >= 1; each [n, m] matrix sends ``32 r_eff (n + m)`` bits with
      ``r_eff = min(r, n, m)``.
    decay: the residual's factor per round a client is not sampled, in
      [0, 1]; 1 keeps it.

  Returns:
    A stateful `Codec`.

  Examples:
    >>> codec = powersgd(rank=2)      # or codecs.parse("powersgd(rank=2)")
  """
  if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
    raise ValueError(f"powersgd: rank must be an integer >= 1, got {rank!r}")
  check_decay(decay, "powersgd")

  def init(x):
    def leaf(i, a):
      mshape = _matrix_shape(a.shape)
      e = jnp.zeros(a.shape, jnp.float32)
      if mshape is None:
        return {"e": e}
      q = jax.random.normal(jax.random.fold_in(jax.random.key(0), i),
                            (mshape[1], min(rank, *mshape)), jnp.float32)
      return {"e": e, "q": q}

    leaves, treedef = jax.tree.flatten(x)
    return jax.tree.unflatten(treedef, [leaf(i, a) for i, a in enumerate(leaves)])

  def encode_leaf(x, s):
    check_float(x, "powersgd")
    m = x.astype(jnp.float32) + s["e"]
    mshape = _matrix_shape(x.shape)
    if mshape is None:
      return Dense(data=m, dtype=jnp.dtype(x.dtype).name), {"e": jnp.zeros_like(s["e"])}
    mat = m.reshape(mshape)
    p, _ = jnp.linalg.qr(mat @ s["q"])
    q = mat.T @ p
    sent = Factors(p=p, q=q, shape=tuple(x.shape), dtype=jnp.dtype(x.dtype).name)
    return sent, {"e": m - (p @ q.T).reshape(x.shape), "q": q}

  def encode(key, x, state):
    del key
    leaves, treedef = jax.tree.flatten(x)
    states = treedef.flatten_up_to(state)
    out = [encode_leaf(a, s) for a, s in zip(leaves, states)]
    return (jax.tree.unflatten(treedef, [o[0] for o in out]),
            jax.tree.unflatten(treedef, [o[1] for o in out]))

  def decode_node(node):
    if isinstance(node, Dense):
      return node.data.astype(jnp.dtype(node.dtype))
    return (node.p @ node.q.T).reshape(node.shape).astype(jnp.dtype(node.dtype))

  def age(state, missed):
    factor = jnp.asarray(decay, jnp.float32) ** missed.astype(jnp.float32)
    is_slot = lambda n: isinstance(n, dict) and "e" in n
    return jax.tree.map(lambda s: {**s, "e": s["e"] * factor}, state, is_leaf=is_slot)

  return Codec(init=init, encode=encode,
               decode=lambda key, p: jax.tree.map(decode_node, p, is_leaf=_is_node),
               stateful=True, age=None if decay == 1 else age)
