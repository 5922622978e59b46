"""Same-moment timing: two computations sampled alternately, compared by ratio.

This machine (and a CI machine) is noisy: a dense matmul read 75-153 GFLOP/s
across runs, and a Python loop of jitted calls swings by a third. An absolute
time says little, a ratio of two timings taken moments apart says more:
`Pair` alternates samples of a subject and a reference and returns the median
over pairs of their quotient, so whatever state the machine is in at one
moment slows both sides alike and cancels. `benchmarks.throughput` and
`scripts/check_throughput.py` both measure with it.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import jax


def seconds(fn: Callable[[], object], calls: int = 1) -> float:
  """Wall seconds of `calls` calls of `fn`, each waited for."""
  t = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(fn())
  return time.perf_counter() - t


class Pair:
  """A subject and a reference timed alternately: the two sides of one ratio.

  The constructor warms both up (compiling them) and picks, per side, how
  many back-to-back calls make a sample span about `span_s` seconds.
  `ratio()` takes ``repeats`` samples of each side, alternating, and returns
  the median over i of (subject sample i) / (reference sample i), per call:
  two samples taken one right after the other see the same machine, so each
  quotient cancels whatever state the machine was in at that moment. After
  it, `medians` holds each side's median seconds per call.
  """

  def __init__(self, subject, reference, repeats: int, span_s: float, say=None):
    self.fns, self.repeats, self.say = (subject, reference), repeats, say
    self.calls = []
    self.medians = (float("nan"), float("nan"))
    for fn in self.fns:
      seconds(fn)  # compiles
      one = seconds(fn)
      if one < span_s:  # a slow side (a 30 s round) is not timed again just to count calls
        one = min(one, *(seconds(fn) for _ in range(2)))
      self.calls.append(max(1, round(span_s / max(one, 1e-6))))

  def ratio(self) -> float:
    samples = ([], [])
    gc.collect()
    gc.disable()  # as timeit does: a collection would land in one side's sample only
    try:
      for _ in range(self.repeats):
        for fn, calls, out in zip(self.fns, self.calls, samples):
          out.append(seconds(fn, calls) / calls)
    finally:
      gc.enable()
    ratio = statistics.median(s / r for s, r in zip(*samples))
    self.medians = tuple(statistics.median(s) for s in samples)
    if self.say:
      sides = [f"{side} {statistics.median(s) * 1e3:.3g} ms x{calls} calls "
               f"(samples {min(s) * 1e3:.3g}-{max(s) * 1e3:.3g})"
               for side, calls, s in zip(("subject", "reference"), self.calls, samples)]
      self.say(f"    {'; '.join(sides)}; ratio {ratio:.3g}")
    return ratio
