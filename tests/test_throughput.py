"""benchmarks.throughput: its reference loop compiles once, its ratios are what it says, and
bad flags get one line naming the flag."""

import os
import subprocess
import sys

import jax
import jax.monitoring
import numpy as np
import pytest

from benchmarks import _throughput_setup as subjects
from benchmarks import throughput

_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"  # jax records one per trace
_DEFAULTS = {"model": "mlp", "clients_per_round": "10,100", "examples_per_client": "20",
             "batch_size": "10", "local_steps": "2", "client_chunk": "auto",
             "loop_clients": "200", "repeats": "5", "span_ms": "200", "seed": "0",
             "compile_only": False}


def test_reference_loop_compiles_once():
  """A fresh algorithm per call would miss the loop's jit cache and time XLA, not clients."""
  su = subjects.setup("logistic", 6, examples=4)
  loop = su.loop(3)
  jax.block_until_ready(loop())
  traces = []
  listener = lambda event, _secs, **_: traces.append(event) if event == _TRACE_EVENT else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    jax.block_until_ready(loop())
    jax.block_until_ready(su.loop(3)())  # a second loop of the same setup shares the jit
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert traces == []


def test_loop_and_round_train_the_same_clients():
  """The loop's sums over clients 0..n-1 are the round's when the round's cohort is all n."""
  su = subjects.setup("logistic", 5, examples=6, batch_size=3, local_steps=2)
  _, state, rounds = su.fed_avg(5)  # every client: the sampled cohort is 0..4
  new_state, out = rounds.step(state)
  loop_sums = su.loop(5)()
  np.testing.assert_array_equal(out.client_ids, np.arange(5))
  assert int(loop_sums.num_clients) == int(out.metrics.num_clients) == 5
  assert int(loop_sums.num_steps) == int(out.metrics.num_steps) == 5 * 2
  mean = jax.tree.map(lambda s: s / loop_sums.weights["delta"], loop_sums.sums["delta"])
  moved = jax.tree.map(lambda a, b: a - b, new_state.params, state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), moved, mean)


def test_measure_ratios():
  out = subjects.measure_throughput("logistic", [4, 8], examples=6, batch_size=3,
                                    local_steps=2, chunk=None, loop_clients=3, repeats=1,
                                    seed=0, span_s=1e-3, say=lambda *_: None)
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
    assert e["xla_memory_mb_per_device"] > 0
  assert "cost_per_client_ratio" not in out  # only between rounds of 1,000 clients or more


def test_flags_parse_into_the_config():
  cfg = throughput.config_from_flags({**_DEFAULTS, "clients_per_round": "100, 10,10",
                                      "client_chunk": "8", "seed": "4294967295"})
  assert cfg.clients_per_round == (10, 100) and cfg.client_chunk == 8 and cfg.seed == 2**32 - 1
  assert throughput.config_from_flags(_DEFAULTS).client_chunk is None


@pytest.mark.parametrize("flag,value,message", [
    ("clients_per_round", "abc", "--clients_per_round must be comma-separated integers >= 1, "
                                 "got 'abc'"),
    ("clients_per_round", "10,0", "--clients_per_round must be comma-separated integers >= 1"),
    ("clients_per_round", "", "--clients_per_round must be comma-separated integers >= 1"),
    ("client_chunk", "0", "--client_chunk must be an integer >= 1 or 'auto', got '0'"),
    ("model", "char_lstm", "unknown --model 'char_lstm'; valid: logistic, mlp, 2nn, cnn"),
    ("examples_per_client", "2.5", "--examples_per_client must be an integer >= 1, got '2.5'"),
    ("batch_size", "0", "--batch_size must be an integer >= 1, got '0'"),
    ("local_steps", "-1", "--local_steps must be an integer >= 1"),
    ("loop_clients", "x", "--loop_clients must be an integer >= 1"),
    ("repeats", "0", "--repeats must be an integer >= 1"),
    ("span_ms", "", "--span_ms must be an integer >= 1"),
    ("seed", "4294967296", r"--seed must be an integer in \[0, 4294967295\]"),
])
def test_bad_flags_raise_naming_the_flag_and_range(flag, value, message):
  with pytest.raises(ValueError, match=message):
    throughput.config_from_flags({**_DEFAULTS, flag: value})


def test_population_over_the_budget_is_refused_with_its_bytes():
  cfg = throughput.Config(model="2nn", clients_per_round=(10, 1000), examples_per_client=20)
  need = subjects.population_bytes(1000, 20, (28, 28))
  assert need == 1000 * (20 * (28 * 28 * 4 + 4) + 4)
  cfg.check_memory(need)  # exactly the budget fits
  with pytest.raises(ValueError, match=r"--clients_per_round=1000 with --examples_per_client=20 "
                                       r"needs 0\.06 GiB .* over the budget of 0\.06 GiB"):
    cfg.check_memory(need - 1)


def test_command_line_error_is_one_line_exit_1(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "benchmarks.throughput",
                        "--clients_per_round=abc", f"--output_dir={tmp_path}"],
                       capture_output=True, text=True, env=env, timeout=300, check=False,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 1, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
      "throughput: error: --clients_per_round must be comma-separated integers >= 1, got 'abc'"]
  assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_matmul_flops_counts_loop_bodies_per_iteration():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from benchmarks._throughput_setup import matmul_flops  # pylint: disable=import-outside-toplevel
  a, b = jnp.ones((2, 3)), jnp.ones((3, 4))
  assert matmul_flops(lambda a, b: a @ b, a, b) == 2 * 2 * 4 * 3
  # Five iterations of the same product (XLA's cost_analysis would count one).
  looped = lambda a, b: jax.lax.scan(lambda c, _: (c + a @ b, None), jnp.zeros((2, 4)), None,
                                     length=5)[0]
  assert matmul_flops(looped, a, b) == 5 * 2 * 2 * 4 * 3
  # A 3x3 convolution, 2 -> 8 channels, on a 6x6 "valid" window: 4x4 outputs.
  x, k = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 8))
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert matmul_flops(conv, x, k) == 2 * (4 * 4 * 8) * (3 * 3 * 2)
  # A cond runs one branch: the costlier one is counted, not both.
  branchy = lambda p, a, b: jax.lax.cond(p, lambda: a @ b, lambda: jnp.zeros((2, 4)))
  assert matmul_flops(branchy, True, a, b) == 2 * 2 * 4 * 3
