"""Paired A/B: flax's nn.RNN(OptimizedLSTMCell) against models.layers.LSTM (input projection hoisted).

For Shakespeare's LSTM (embedding 8, 2 x 256, 80 steps) and StackOverflow's
LSTM layer (embedding 96, 670, 20 steps), the jitted, vmapped gradient of
10 clients of batch 10 alternates between the two implementations (the
same parameters: the trees are identical), 8 pairs; prints each median and
the median and quartiles of new/old::

  .venv/bin/python scripts/ab_hoisted_lstm.py
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_comp.models import published
from fedjax_comp.models.base import next_token
from fedjax_comp.models.lstm import CharLSTM


class FlaxLSTM(nn.Module):
  """`models.lstm.CharLSTM` as it was: flax's RNN over its optimized LSTM cell."""

  vocab_size: int
  embed: int
  hidden: int
  layers: int

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.embed)(tokens)
    for _ in range(self.layers):
      x = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(x)
    return published.Dense(self.vocab_size)(x)


def vmapped_grad(module):
  loss, _ = next_token(lambda p, x: module.apply(p, x), pad=0)
  one = jax.grad(lambda p, x: loss(p, {"x": x, "y": x}, jnp.ones(x.shape[0], bool)))
  return jax.jit(jax.vmap(one))


def main() -> None:
  for vocab, embed, hidden, layers, steps in ((90, 8, 256, 2, 80), (10_004, 96, 670, 1, 20)):
    old = FlaxLSTM(vocab, embed, hidden, layers)
    new = CharLSTM(vocab, embed, hidden, layers)
    tokens = jax.random.randint(jax.random.key(0), (10, 10, steps), 3, vocab)
    params = new.init(jax.random.key(1), tokens[0])
    assert jax.tree.structure(params) == jax.tree.structure(old.init(jax.random.key(1),
                                                                     tokens[0]))
    stacked = jax.tree.map(lambda a: jnp.stack([a] * 10), params)
    g_old, g_new = vmapped_grad(old), vmapped_grad(new)
    jax.block_until_ready(g_old(stacked, tokens))
    jax.block_until_ready(g_new(stacked, tokens))
    pairs = []
    for _ in range(8):
      t = time.perf_counter()
      jax.block_until_ready(g_old(stacked, tokens))
      a = time.perf_counter() - t
      t = time.perf_counter()
      jax.block_until_ready(g_new(stacked, tokens))
      pairs.append((a, time.perf_counter() - t))
    r = np.array(pairs)
    q = r[:, 1] / r[:, 0]
    print(f"hidden {hidden}, {steps} steps: old {np.median(r[:, 0]) * 1e3:.0f} ms, new "
          f"{np.median(r[:, 1]) * 1e3:.0f} ms; new/old {np.median(q):.3f} "
          f"({np.quantile(q, 0.25):.3f}-{np.quantile(q, 0.75):.3f})")


if __name__ == "__main__":
  main()
