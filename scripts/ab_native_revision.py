#!/usr/bin/env python
r"""Paired A/B of this tree's native kernels against an earlier git revision's, in codecs.

::

  .venv/bin/python scripts/ab_native_revision.py --rev=HEAD
  .venv/bin/python scripts/ab_native_revision.py --rev=HEAD --codecs='drive;eden(bits=2)' \
      --shapes=1x1048576,10x65536

The revision's ``fedjax_comp/native/*.cc`` (with its headers) are compiled
with the library's flags into a scratch directory and registered under
other target names (`benchmarks._ab.build_native_revision`). For each codec
and each ``CLIENTS x N`` shape, every client's update is encoded, decoded
and summed in one jitted vmap (`benchmarks._ab.cohort`), once calling this
tree's kernels and once the revision's (the same Python around them), timed
alternately (`benchmarks._timing.Pair`); the median of the per-pair
quotients (this tree / the revision) is printed, with whether the two
results are identical bit for bit, or else their largest difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _cpu  # noqa: E402,F401  (first: XLA device flags)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _ab  # noqa: E402
from benchmarks._timing import Pair  # noqa: E402
from fedjax_comp import codecs, native  # noqa: E402

DEFAULT_CODECS = "drive;eden(bits=2);eden(bits=4);eden(bits=0.5)"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rev", required=True, help="the git revision to compare with")
  parser.add_argument("--codecs", default=DEFAULT_CODECS, help="';'-separated codec specs")
  # (10 x 15,210, the leaderboard model's size, is below the rotated and QSGD kernels' minimum
  # length: there both sides would run the same XLA code.)
  parser.add_argument("--shapes", default="1x1048576,10x65536,4x262144")
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args(argv)
  if not native.available():
    print("the native kernels are not built: nothing to compare")
    return 1
  shapes = _ab.parse_shapes(parser, args.shapes, 2, lambda c, n: c >= 1 and n >= 1,
                            "CLIENTSxN with both >= 1")
  with tempfile.TemporaryDirectory() as tmp:
    patches = _ab.build_native_revision(args.rev, tmp)
  for spec in args.codecs.split(";"):
    codec = codecs.parse(spec)
    for clients, n in shapes:
      x = jax.random.normal(jax.random.key(0), (clients, n))
      keys = jax.random.split(jax.random.key(1), clients)
      ours, out_ours = _ab.jit_patched(_ab.cohort(codec), {}, x, keys)
      theirs, out_theirs = _ab.jit_patched(_ab.cohort(codec), patches, x, keys)
      a, b = np.asarray(out_ours), np.asarray(out_theirs)
      same = "identical" if np.array_equal(a, b) else f"max |diff| {np.max(np.abs(a - b)):.3g}"
      pair = Pair(lambda: ours(x, keys), lambda: theirs(x, keys), repeats=args.repeats,
                  span_s=0.05)
      ratio = pair.ratio()
      print(f"{spec} {clients} x {n}: this tree {pair.medians[0] * 1e3:.3f} ms, {args.rev} "
            f"{pair.medians[1] * 1e3:.3f} ms, ratio {ratio:.2f}, {same}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
