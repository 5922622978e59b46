#!/usr/bin/env python
r"""Paired A/B of the native top-k select against its version at an earlier git revision.

::

  .venv/bin/python scripts/ab_top_k_select.py --rev=c67f55e
  .venv/bin/python scripts/ab_top_k_select.py --rev=c67f55e --shapes=1x1048576x32768

The revision's ``fedjax_comp/native/top_k.cc`` (with the headers of that
revision) is compiled with the library's flags into a scratch directory,
its handler registered under another target name
(`benchmarks._ab.build_native_revision`), and for each
``ROWS x D x K`` both select the same batch (vmapped rows) in one jitted
call each, timed alternately (`benchmarks._timing.Pair`); the median of
the per-pair quotients (this tree / the revision) is printed. The two
must select the same indices, which the script checks first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _cpu  # noqa: E402,F401  (first: XLA device flags)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _ab  # noqa: E402
from benchmarks._timing import Pair  # noqa: E402
from fedjax_comp import native  # noqa: E402

DEFAULT_SHAPES = ("1x1048576x32768,1x1048576x10486,1x1048576x1049,1x262144x8192,"
                  "2x524288x16384,8x1048576x32768,10x65536x655,10x15210x476")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rev", required=True, help="the git revision to compare with")
  parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="ROWSxDxK, comma-separated")
  parser.add_argument("--repeats", type=int, default=11)
  args = parser.parse_args(argv)
  if not native.available():
    print("the native kernels are not built: nothing to compare")
    return 1
  shapes = _ab.parse_shapes(parser, args.shapes, 3, lambda rows, d, k: rows >= 1 and 1 <= k <= d,
                            "ROWSxDxK with rows >= 1 and 1 <= k <= d")
  with tempfile.TemporaryDirectory() as tmp:
    target = _ab.build_native_revision(args.rev, tmp, sources=["top_k.cc"])[
        (native, "TOP_K_TARGET")]
  for rows, d, k in shapes:
    x = jax.random.normal(jax.random.key(0), (rows, d))
    ours = jax.jit(lambda v, k=k: native.top_k_indices(v, k))
    theirs = jax.jit(lambda v, k=k: jax.ffi.ffi_call(
        target, jax.ShapeDtypeStruct(v.shape[:-1] + (k,), jnp.int32),
        vmap_method="broadcast_all")(v))
    if not np.array_equal(ours(x), theirs(x)):
      print(f"{rows} x {d}, k = {k}: the two select different indices")
      return 1
    pair = Pair(lambda: ours(x), lambda: theirs(x), repeats=args.repeats, span_s=0.05)
    ratio = pair.ratio()
    print(f"{rows} x {d}, k = {k}: this tree {pair.medians[0] * 1e3:.3f} ms, {args.rev} "
          f"{pair.medians[1] * 1e3:.3f} ms, ratio {ratio:.2f}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
