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
alternately (`benchmarks._ab.compare_cohorts`); the median of the per-pair
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


from benchmarks import _ab  # noqa: E402
from fedjax_comp import native  # noqa: E402

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
  shapes = _ab.cohort_shapes(parser, args.shapes)
  with tempfile.TemporaryDirectory() as tmp:
    patches = _ab.build_native_revision(args.rev, tmp)
  _ab.compare_cohorts(args.codecs.split(";"), shapes, ({}, patches), ("this tree", args.rev),
                      args.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
