r"""CI throughput regression check: same-run ratios against a committed baseline.

::

  .venv/bin/python scripts/check_throughput.py                    # the check (.ci/run runs it)
  .venv/bin/python scripts/check_throughput.py --update_baseline  # after an intended perf change
  .venv/bin/python scripts/check_throughput.py --inject_slowdown=fwht:3   # watch it fail

It prints a table of figure, measured value, baseline, allowed bound and
PASS/FAIL, and exits 1 with a line ``REGRESSION: fwht_ratio_to_copy = 54.1 >
allowed 14 (baseline 9.32, tolerance +50%, lower_is_better)`` for each figure
that regressed past its tolerance (2 on a usage error or an unusable
baseline). About 45 s on a 2-core CPU, compiles included. How and why it
measures as it does: `benchmarks.throughput_check`; the baseline:
``benchmarks/baselines/README.md``.

This file only sets the process up before jax starts (one XLA CPU device,
then `throughput_check.quiet`) and hands over to `throughput_check.cli`.
"""

from __future__ import annotations

import os
import sys

# One XLA CPU device unless the environment says otherwise; this must come
# before benchmarks._cpu and jax are imported.
os.environ.setdefault("FEDJAX_COMP_CPU_DEVICES", "1")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from benchmarks import _cpu  # noqa: E402,F401  (first: XLA device flags)
from benchmarks.throughput_check import quiet  # noqa: E402  (imports no jax)

quiet.quiet_process()

from benchmarks.throughput_check import cli  # noqa: E402

if __name__ == "__main__":
  sys.exit(cli.main())
