r"""Top-k selection: which algorithm `top_k` uses, and why (each timed against a copy).

::

  .venv/bin/python -m benchmarks.topk_selection --output_dir=results/topk_selection

For a batch of ``--batch`` vectors of d coordinates (each row selects its
own k, as a vmapped round does), times the selection of the k largest |x|
per row, returned as a mask:

* ``native_radix``: the native radix select (`native.top_k_indices`:
  exact, ties to the lowest index, two passes over the row), what `top_k`
  uses on a CPU (`codecs.sparsification.top_k_indices`), the fastest exact
  one measured; run when the native kernels are built;
* ``lax_top_k``: `jax.lax.top_k` (exact, stable), what `top_k` uses
  elsewhere (`codecs.sparsification.top_k_mask`);
* ``bisection``: the exact k-th largest |x| by a counting bisection over the
  float's 32 bits (`sampling.kth_largest`: 32 vectorized passes, no sort),
  ties broken by index (`codecs.sparsification.top_k_mask_bisection`);
* ``approx_max_k``: `jax.lax.approx_max_k` (recall target 0.95; exact
  count, approximate set);
* ``sampled_threshold``: the threshold estimated from a 1% random sample's
  quantile (Lin et al. 2018's "Deep Gradient Compression" trick): one pass,
  but the count it keeps is only about k, so a fixed-size payload would
  need a second exact step; reported with its count error.

and ``copy`` (``-x``) of the same array. Writes ``result.json`` with, per
(d, k, kernel): median seconds, ratio to the copy, recall of the exact set.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags

from benchmarks import _flags
from fedjax_comp import native
from fedjax_comp.codecs.sparsification import top_k_mask_bisection
from fedjax_comp.experiment import results

BATCH = LOG2_DIMS = FRACTIONS = None  # flags, defined when run (the names are common)


def kernels(k: int):
  def exact(x):
    _, idx = jax.lax.top_k(jnp.abs(x), k)
    return jnp.zeros(x.shape, bool).at[idx].set(True)

  def approx(x):
    _, idx = jax.lax.approx_max_k(jnp.abs(x), k, recall_target=0.95)
    return jnp.zeros(x.shape, bool).at[idx].set(True)

  def sampled(x):
    d = x.shape[0]
    m = max(d // 100, 1)
    sample = jnp.abs(x[jax.random.randint(jax.random.key(0), (m,), 0, d)])
    return jnp.abs(x) >= jnp.quantile(sample, 1 - k / d)

  def radix(x):
    return jnp.zeros(x.shape, bool).at[native.top_k_indices(x, k)].set(True)

  out = {"lax_top_k": exact}
  if native.active():
    out["native_radix"] = radix
  return {**out, "bisection": lambda x: top_k_mask_bisection(x, k), "approx_max_k": approx,
          "sampled_threshold": sampled}


def timed(fn, x, repeats=7) -> float:
  jax.block_until_ready(fn(x))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main() -> int:
  if BATCH.value < 1:
    raise ValueError(f"--batch must be an integer >= 1, got {BATCH.value}")
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/topk_selection",
                                overwrite=_flags.OVERWRITE.value)
  recorder = results.RunRecorder(out, "topk_selection")
  metrics = {}
  for log2 in (int(v) for v in LOG2_DIMS.value):
    d = 2**log2
    x = jax.random.normal(jax.random.key(1), (BATCH.value, d))
    copy = timed(jax.jit(lambda a: -a), x)
    for frac in (float(v) for v in FRACTIONS.value):
      k = max(1, round(frac * d))
      truth = None
      for name, fn in kernels(k).items():
        f = jax.jit(jax.vmap(fn))
        seconds = timed(f, x)
        mask = f(x)
        truth = mask if truth is None else truth  # lax_top_k first: the exact set
        recall = float(jnp.mean(jnp.sum(mask & truth, 1) / k))
        count = float(jnp.mean(jnp.sum(mask, 1)))
        m = metrics[f"{name}@d={d},k={k}"] = {"seconds": seconds, "ratio_to_copy": seconds / copy,
                                              "recall": recall, "mean_count": count}
        recorder.log({"kernel": name, "d": d, "k": k, **m})
        print(f"d=2^{log2} k={k:<6} {name:<18} {seconds * 1e3:9.3f} ms  {m['ratio_to_copy']:7.1f}x "
              f"copy  recall {recall:.3f}  count {count:.0f}")
  path = recorder.finish(succeeded=True, metrics=metrics,
                         extras={"batch": BATCH.value, **results.environment()})
  print(f"results: {path}")
  return 0


if __name__ == "__main__":
  BATCH = flags.DEFINE_integer("batch", 8, "Vectors selected at once (vmapped), >= 1.")
  LOG2_DIMS = flags.DEFINE_list("log2_dims", ["16", "20"], "d = 2^k for each k.")
  FRACTIONS = flags.DEFINE_list("fractions", ["0.01", "0.001"], "k / d for each k.")
  _flags.main(main)
