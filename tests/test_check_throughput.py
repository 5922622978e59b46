"""The CI throughput check (scripts/check_throughput.py over benchmarks.throughput_check):
the pass/fail rule, the committed baseline, a real slowdown.

The check itself runs in CI (`.ci/run`) at full size; these tests keep to
what can be shown quickly and without flakiness: the comparison on hand-made
numbers, the committed baseline against itself and against a 2x slowdown,
and one real measurement at a small size in which a 6x slower FWHT fails
the check with a message naming the figure, the baseline and the tolerance.
"""

from __future__ import annotations

import json

import jax  # first: importing the check leaves this process's XLA client alone
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _throughput_setup as subjects
from benchmarks.throughput_check import baseline as baseline_file
from benchmarks.throughput_check import cli, figures, quiet, slowdown, verdict
from fedjax_comp import kernels

HIGHER, LOWER = verdict.HIGHER, verdict.LOWER


def _committed():
  return baseline_file.load_baseline(baseline_file.DEFAULT_BASELINE)


# ----------------------------------------------------------------- the rule, by hand


def test_bounds_in_both_directions_and_at_the_edge():
  assert verdict.allowed_bound(10.0, LOWER, 0.5) == 15.0
  assert verdict.within(15.0, 10.0, LOWER, 0.5)  # the bound itself passes
  assert not verdict.within(15.0 + 1e-9, 10.0, LOWER, 0.5)
  assert verdict.within(3.0, 10.0, LOWER, 0.5)  # faster than the baseline is fine
  assert verdict.allowed_bound(10.0, HIGHER, 0.35) == pytest.approx(6.5)
  assert verdict.within(verdict.allowed_bound(10.0, HIGHER, 0.35), 10.0, HIGHER, 0.35)
  assert not verdict.within(6.5 - 1e-9, 10.0, HIGHER, 0.35)
  assert verdict.within(100.0, 10.0, HIGHER, 0.35)
  assert verdict.within(10.0, 10.0, HIGHER, 0.0) and verdict.within(10.0, 10.0, LOWER, 0.0)
  for direction in (HIGHER, LOWER):
    assert not verdict.within(float("nan"), 10.0, direction, 0.5)
  assert not verdict.within(float("inf"), 10.0, HIGHER, 0.5)
  with pytest.raises(ValueError, match="direction must be"):
    verdict.allowed_bound(1.0, "sideways", 0.1)
  assert verdict.better(2.0, 3.0, HIGHER) == 3.0 and verdict.better(2.0, 3.0, LOWER) == 2.0


def test_rows_table_and_messages_name_figure_baseline_and_tolerance():
  baseline = {"figures": {
      "fwht_ratio_to_copy": {"value": 3.0, "direction": LOWER, "tolerance": 0.5},
      "mlp_vmap_speedup_vs_loop": {"value": 6.0, "direction": HIGHER, "tolerance": 0.35}}}
  rows = verdict.compare({"fwht_ratio_to_copy": 5.9, "mlp_vmap_speedup_vs_loop": 2.1,
                     "logistic_vmap_speedup_vs_loop": 9.0}, baseline,
                    {"mlp_vmap_speedup_vs_loop": 3})
  assert [r.passed for r in rows] == [False, False, False]
  assert rows[0].message() == ("REGRESSION: fwht_ratio_to_copy = 5.9 > allowed 4.5 "
                               "(baseline 3, tolerance +50%, lower_is_better)")
  assert rows[1].message() == ("REGRESSION: mlp_vmap_speedup_vs_loop = 2.1 < allowed 3.9 "
                               "(baseline 6, tolerance -35%, higher_is_better; "
                               "best of 3 measurements)")
  assert "has no baseline" in rows[2].message()
  table = verdict.format_table(rows)
  assert "<=      4.5  FAIL" in table and ">=      3.9  FAIL (best of 3)" in table
  assert "FAIL (no baseline)" in table
  ok = verdict.compare({"fwht_ratio_to_copy": 4.5}, baseline)
  assert ok[0].passed and "PASS" in verdict.format_table(ok)


# ----------------------------------------------------------------- the committed baseline


def test_committed_baseline_passes_itself_and_fails_a_2x_slowdown_of_every_figure():
  baseline = _committed()
  entries = baseline["figures"]
  assert set(entries) == set(figures.FIGURES)
  for name, entry in entries.items():
    assert entry["direction"] == figures.FIGURES[name].direction, name
    assert entry["value"] > 0, name
  same = verdict.compare({n: e["value"] for n, e in entries.items()}, baseline)
  assert all(r.passed for r in same)
  # Twice the time for a kernel, half the speedup for a round: every figure must trip.
  slower = {n: e["value"] * 2 if e["direction"] == LOWER else e["value"] / 2
            for n, e in entries.items()}
  assert not any(r.passed for r in verdict.compare(slower, baseline))
  figures.Config.from_dict(baseline["config"])
  meta = baseline["metadata"]
  for key in ("date", "machine", "jax_version", "command", "execution"):
    assert meta[key], key
  assert "check_throughput.py" in meta["command"]


def test_main_passes_when_measured_equals_the_committed_baseline(monkeypatch, capsys, tmp_path):
  baseline = _committed()
  # This test process runs XLA as the pytest workers set it up, not as CI does.
  monkeypatch.setattr(figures, "execution", lambda: baseline["metadata"]["execution"])
  made = []

  def fake_figure(name, cfg, slowed=1, say=None):
    made.append((name, cfg, slowed))
    return lambda: baseline["figures"][name]["value"]

  monkeypatch.setattr(figures, "make_figure", fake_figure)
  out = tmp_path / "measured.json"
  assert cli.main(["--output", str(out)]) == 0
  text = capsys.readouterr().out
  assert f"OK: {len(figures.FIGURES)}/{len(figures.FIGURES)} figures" in text
  assert "FAIL" not in text and "REGRESSION" not in text
  assert [m[0] for m in made] == list(figures.FIGURES)
  assert all(cfg == figures.Config.from_dict(baseline["config"]) and s == 1 for _, cfg, s in made)
  written = json.loads(out.read_text())
  assert written["passed"] is True and set(written["figures"]) == set(figures.FIGURES)


def test_a_baseline_from_another_execution_set_up_is_refused(monkeypatch, capsys):
  baseline = _committed()
  monkeypatch.setattr(figures, "execution", lambda: {**baseline["metadata"]["execution"],
                                                     "num_devices": 7})
  assert cli.main([]) == 2
  assert "not comparable" in capsys.readouterr().err


def test_update_keeps_tolerances_and_unmeasured_figures(monkeypatch, tmp_path):
  path = tmp_path / "b.json"
  path.write_text(json.dumps({"config": {"kernel_batch": 8}, "figures": {
      "fwht_ratio_to_copy": {"value": 1.0, "direction": LOWER, "tolerance": 0.7},
      "mlp_vmap_speedup_vs_loop": {"value": 5.0, "direction": HIGHER, "tolerance": 0.2}}}))
  values = iter([3.0, 2.0, 4.0])
  monkeypatch.setattr(figures, "make_figure", lambda *a, **k: lambda: next(values))
  assert cli.main(["--baseline", str(path), "--update_baseline", "--update_processes=0",
                   "--update_runs=3", "--figures=fwht_ratio_to_copy"]) == 0
  new = json.loads(path.read_text())
  fwht = new["figures"]["fwht_ratio_to_copy"]
  assert fwht["value"] == 3.0 and fwht["runs"] == [3.0, 2.0, 4.0] and fwht["tolerance"] == 0.7
  assert new["figures"]["mlp_vmap_speedup_vs_loop"]["value"] == 5.0
  assert new["config"]["kernel_batch"] == 8
  assert "--update_baseline" in new["metadata"]["command"]


@pytest.mark.parametrize("argv,message", [
    (["--inject_slowdown=fwht"], "KERNEL:N"),
    (["--inject_slowdown=fwht:0"], "KERNEL:N"),
    (["--inject_slowdown=nope:3"], "KERNEL:N"),
    (["--figures=fwht"], "--figures: unknown"),
    (["--baseline=/nonexistent/b.json"], "no baseline at"),
    (["--retries=-1"], "--retries"),
    (["--update_baseline", "--inject_slowdown=fwht:2"], "not for --update_baseline"),
    (["--update_processes=-1"], "--update_processes"),
])
def test_bad_usage_exits_2_naming_it(capsys, argv, message):
  assert cli.main(argv) == 2
  assert message in capsys.readouterr().err


# ----------------------------------------------------------------- a real slowdown


def test_quiet_process_leaves_a_started_jax_alone():
  assert quiet.quiet_process() is False and quiet.ONE_THREAD is False  # jax came first here


def test_round_figure_times_the_benchmarks_round_against_the_loop():
  cfg = figures.Config(clients_per_round=8, loop_clients=4, examples_per_client=4, repeats=1,
                       span_ms=1)
  for slowed in (1, 2):  # 2: two rounds back to back, each on the last one's state
    speedup = figures.make_figure("logistic_vmap_speedup_vs_loop", cfg, slowed)()
    assert np.isfinite(speedup) and speedup > 0
  assert figures.FIGURES["logistic_vmap_speedup_vs_loop"].subject == "logistic_round"
  assert subjects.INPUT_SHAPES["logistic"] == (40,)


def test_repeated_chains_the_passes():
  x = jax.random.normal(jax.random.key(0), (4, 64))
  twice = jax.jit(slowdown.repeated(kernels.fwht, 2, lambda args, out: (out,)))
  thrice = jax.jit(slowdown.repeated(kernels.fwht, 3, lambda args, out: (out,)))
  np.testing.assert_allclose(twice(x), x, atol=1e-5)  # the FWHT is an involution
  np.testing.assert_allclose(thrice(x), kernels.fwht(x), atol=1e-5)
  assert "while" in twice.lower(x).as_text()
  assert slowdown.repeated(jnp.sin, 1, None) is jnp.sin
  assert cli.parse_slowdown("fwht:6, mlp_round:2") == {"fwht": 6, "mlp_round": 2}


def test_injected_fwht_slowdown_fails_the_check(tmp_path, capsys):
  """Real timings of a real kernel doing 6x its work, against a baseline measured just before."""
  path = tmp_path / "tiny.json"
  path.write_text(json.dumps({"config": {"kernel_batch": 32, "kernel_dim": 4096, "repeats": 5,
                                         "span_ms": 20}}))
  figure = "--figures=fwht_ratio_to_copy"
  assert cli.main(["--baseline", str(path), "--update_baseline", figure, "--update_processes=0",
                   "--update_runs=1"]) == 0
  base = json.loads(path.read_text())["figures"]["fwht_ratio_to_copy"]
  capsys.readouterr()
  out = tmp_path / "slowed.json"
  # One retry: it runs in a fresh process, with the same injected slowdown.
  assert cli.main(["--baseline", str(path), figure, "--inject_slowdown=fwht:6", "--retries=1",
                   "--output", str(out)]) == 1
  text = capsys.readouterr().out
  result = json.loads(out.read_text())["figures"]["fwht_ratio_to_copy"]
  measured = result["measured"]
  assert len(result["trials"]) == 2 and measured == min(result["trials"])
  assert measured > 2.5 * base["value"], (measured, base)  # the slowdown is real, not faked
  assert "INJECTED SLOWDOWN: {'fwht': 6}" in text
  tol = base["tolerance"]
  assert tol == figures.FIGURES["fwht_ratio_to_copy"].tolerance
  assert (f"REGRESSION: fwht_ratio_to_copy = {measured:.3g} > allowed "
          f"{base['value'] * (1 + tol):.3g} (baseline {base['value']:.3g}, "
          f"tolerance +{tol:.0%}, lower_is_better; best of 2 measurements)") in text
  assert "FAILED: 0/1 figures" in text


def test_update_measures_in_fresh_processes_set_up_as_ci_runs(tmp_path):
  path = tmp_path / "tiny.json"
  path.write_text(json.dumps({"config": {"kernel_batch": 8, "kernel_dim": 1024, "repeats": 3,
                                         "span_ms": 5}}))
  assert cli.main(["--baseline", str(path), "--update_baseline", "--update_processes=1",
                   "--update_runs=2", "--figures=unpack_dequantize_ratio_to_copy/2"]) == 0
  new = json.loads(path.read_text())
  assert new["metadata"]["execution"] == {"backend": "cpu", "num_devices": 1,
                                          "one_thread": True}
  entry = new["figures"]["unpack_dequantize_ratio_to_copy/2"]
  assert len(entry["runs"]) == 2 and entry["value"] > 0
  assert entry["tolerance"] == figures.FIGURES["unpack_dequantize_ratio_to_copy/2"].tolerance
  assert new["config"]["kernel_dim"] == 1024
