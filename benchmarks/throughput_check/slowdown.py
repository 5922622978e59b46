"""A genuine injected slowdown: a function doing its work n times within one call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def repeated(fn, n: int, feedback):
  """`fn` done n times in sequence within one call: an injected, genuine slowdown.

  `feedback(args, out)` builds each pass's arguments from the previous pass's
  output, so XLA can neither merge the passes nor drop any of them.
  """
  if n == 1:
    return fn

  def slowed(*args):
    def body(_, carry):
      args, out = carry
      args = feedback(args, out)
      return args, fn(*args)

    return lax.fori_loop(1, n, body, (args, fn(*args)))[1]

  return slowed


def after_all_of(out, arg):
  """`arg`, unchanged, in a way that needs every element of `out` (XLA cannot prove that
  the sum is never NaN): a feedback for `repeated`. Anything less and XLA computes only
  what the next pass reads (a slice of a decode, the min and max of a quantization)."""
  total = sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in jax.tree.leaves(out))
  return jnp.where(jnp.isnan(total), jnp.zeros_like(arg), arg)
