"""benchmarks.throughput: its reference loop compiles once, and its ratios are what it says."""

import jax
import pytest

from benchmarks import throughput
from fedjax_comp import fedavg


def test_reference_loop_compiles_once():
  """A fresh codec per call would miss `loop_round_sums`' jit cache and time XLA, not clients."""
  su = throughput.setup("logistic", 6)
  loop = su.loop(3)
  jax.block_until_ready(loop())
  compiled = fedavg._jitted_single_client.cache_info().currsize
  jax.block_until_ready(loop())
  assert fedavg._jitted_single_client.cache_info().currsize == compiled


def test_measure_ratios():
  out = throughput.measure("logistic", [4, 8], examples=6, batch_size=3, local_steps=2,
                           chunk=None, loop_clients=3, repeats=1, seed=0, span_s=1e-3,
                           say=lambda *_: None)
  assert out["loop_clients"] == 3
  for m in (4, 8):
    e = out[f"clients_{m}"]
    # One sample per side: the median of quotients is the quotient of the rates.
    assert e["speedup_vs_loop"] == pytest.approx(
        e["vmap_client_updates_per_sec"] / e["loop_client_updates_per_sec"], rel=1e-9)
    assert e["vmap_client_updates_per_sec"] == pytest.approx(m / e["sec_per_round"])
    assert e["flop_efficiency"] == pytest.approx(
        out["useful_flops_per_client"] * e["vmap_client_updates_per_sec"] / 1e9
        / e["dense_matmul_gflops"])
  assert "cost_per_client_ratio" not in out  # only between rounds of 1,000 clients or more
