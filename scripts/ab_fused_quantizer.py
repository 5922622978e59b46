#!/usr/bin/env python
r"""Paired A/B of the fused quantizers: `quantize`, `terngrad` and `qsgd`, native against XLA's.

::

  .venv/bin/python scripts/ab_fused_quantizer.py
  .venv/bin/python scripts/ab_fused_quantizer.py --bits=1,8 --shapes=10x65536,4x262144

For each ``quantize(bits=b)``, ``terngrad`` (unless
``--no_terngrad``), each ``--qsgd`` spec and each ``CLIENTS x N`` shape,
every client's update is encoded, decoded and summed (a ones-row product)
in one jitted vmap, once with the native quantizers
(`kernels.quantize_pack` / `kernels.unpack_dequantize`,
`native.ternary_pack` / `ternary_unpack`, `native.qsgd_pack` /
`qsgd_unpack`) on their native path (`fedjax_comp.native`, forced at every
length) and once on XLA's (quantize + pack, unpack + dequantize); the two
are timed alternately (`benchmarks._timing.Pair`) and the median of their
per-pair quotients printed. The keys are arguments of the jitted function
(closed over, they would be constants whose draws XLA folds at compile
time). Both sides compute the same codes bit for bit, QSGD's but where a
code's t lands within float32 rounding of its dither (its norms are double
sums natively); the printed max |difference| of the two sums says how far.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _cpu  # noqa: E402,F401  (first: XLA device flags)

from benchmarks import _ab  # noqa: E402
from fedjax_comp import kernels, native  # noqa: E402
from fedjax_comp.codecs import norm_levels  # noqa: E402


def patches(use_native: bool) -> dict:
  """The native quantizers forced on at every length, or off."""
  return {(kernels, "native_quantizer"):
              (lambda n: native.available()) if use_native else (lambda n: False),
          (norm_levels, "NATIVE_MIN_LENGTH"): 1 if use_native else float("inf")}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--bits", default="1,2,3,4,6,8")
  parser.add_argument("--shapes", default="10x4096,10x8192,10x15210,10x65536,1x1048576")
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--no_terngrad", action="store_true")
  parser.add_argument("--qsgd", default="qsgd(levels=4,bucket=512);qsgd(levels=1)",
                      help="';'-separated QSGD specs ('' for none)")
  args = parser.parse_args(argv)
  if not native.available():
    print("the native kernels are not built: nothing to compare")
    return 1
  shapes = _ab.cohort_shapes(parser, args.shapes)
  specs = [f"quantize(bits={int(b)})" for b in args.bits.split(",")]
  specs += ([] if args.no_terngrad else ["terngrad"]) + [q for q in args.qsgd.split(";") if q]
  _ab.compare_cohorts(specs, shapes, (patches(True), patches(False)), ("native", "XLA"),
                      args.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
