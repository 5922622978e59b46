#!/usr/bin/env python
r"""Paired A/B of the native random draws, finiteness test and scatter against XLA's, in codecs.

::

  .venv/bin/python scripts/ab_draws_scatter.py
  .venv/bin/python scripts/ab_draws_scatter.py --codecs='drive;rand_k(p=1/32)' --shapes=1x1048576

For each codec and each ``CLIENTS x N`` shape, every client's update is
encoded, decoded and summed (a ones-row product) in one jitted vmap, once
with `kernels.random_bits`, `kernels.stratified_indices`,
`kernels.all_finite` and `kernels.scatter_ascending` on their native path
(`native.threefry_bits`, `native.stratified_indices`, `native.all_finite`,
`native.scatter_ascending`) and once on XLA's (``jax.random.bits`` and its
arithmetic, ``jnp.all(jnp.isfinite(x))``, ``zeros(n).at[idx].set(v)``);
the two are timed alternately (`benchmarks._timing.Pair`) and the median
of their per-pair quotients printed. The other native kernels (the FWHT,
the quantizers) serve both sides. Both sides compute the same result bit
for bit, which the script checks.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _cpu  # noqa: E402,F401  (first: XLA device flags)

from benchmarks import _ab  # noqa: E402
from fedjax_comp import kernels, native  # noqa: E402

DEFAULT_CODECS = "eden(bits=0.5);rand_k(p=1/32);subsample(p=0.25);sign;top_k(p=1/32)"


def patches(use_native: bool) -> dict:
  """The native draws, finiteness test and scatter on (no patch) or off."""
  off = float("inf")
  return {} if use_native else {(kernels, "native_random_bits"): lambda key: False,
                                (kernels, "NATIVE_FINITE_MIN"): off,
                                (kernels, "NATIVE_SCATTER_MIN"): off}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--codecs", default=DEFAULT_CODECS, help="';'-separated codec specs")
  parser.add_argument("--shapes", default="1x1048576,10x65536,10x15210")
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args(argv)
  if not native.available():
    print("the native kernels are not built: nothing to compare")
    return 1
  _ab.compare_cohorts(args.codecs.split(";"), _ab.cohort_shapes(parser, args.shapes),
                      (patches(True), patches(False)), ("native", "XLA"), args.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
