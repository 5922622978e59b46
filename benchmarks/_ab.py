"""Helpers of the paired A/B scripts (`scripts/ab_*.py`): shapes, patched jits, codec cohorts.

Each script times one implementation against another with
`benchmarks._timing.Pair`; what they share lives here: parsing a
``--shapes`` list of ``AxB[xC]`` integers, jitting a fresh function while
some module attributes are patched (jax.jit caches by function identity, so
a fresh lambda is what makes the patch count), and the codec cohort they
time (every client's update encoded, decoded and summed in one jitted vmap).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp


def parse_shapes(parser: argparse.ArgumentParser, text: str, fields: int,
                 check, what: str) -> list[tuple[int, ...]]:
  """``"AxB,CxD"`` -> [(A, B), (C, D)]: `fields` integers each, `check(*shape)` true for each,
  else ``parser.error`` naming ``--shapes`` and `what` (the expected form)."""
  shapes = []
  for item in text.split(","):
    try:
      shape = tuple(int(v) for v in item.lower().split("x"))
    except ValueError:
      shape = ()
    if len(shape) != fields or not check(*shape):
      parser.error(f"--shapes: {what}, got {item!r}")
    shapes.append(shape)
  return shapes


def jit_patched(fn, patches: dict, *example):
  """`fn` jitted as a fresh function and run on `example` while ``setattr(obj, name, value)``
  holds for each ``(obj, name): value`` of `patches` (restored after); returns (jitted, output).

  The trace happens inside, so the patched attributes decide the compiled
  program. Pass keys as arguments: a key closed over is a constant, and XLA
  folds its draws at compile time.
  """
  saved = {target: getattr(*target) for target in patches}
  for (obj, name), value in patches.items():
    setattr(obj, name, value)
  try:
    jitted = jax.jit(lambda *a: fn(*a))
    out = jax.block_until_ready(jitted(*example))
  finally:
    for (obj, name), value in saved.items():
      setattr(obj, name, value)
  return jitted, out


def cohort(codec):
  """``(xs [clients, n], keys [clients]) -> [1, n]``: each client's update encoded and decoded
  with its key, the decodes summed by a ones-row product (as the server sums them)."""
  def run(xs, keys):
    ys = jax.vmap(lambda k, v: codec.decode(k, codec.encode(k, v, codec.init(v))[0]))(keys, xs)
    return jnp.ones((1, ys.shape[0])) @ ys
  return run
