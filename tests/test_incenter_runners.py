"""benchmarks.latency and benchmarks.fl_vs_incenter end to end, on tiny configurations."""

import dataclasses
import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import fedjax_comp as fc

from benchmarks import _workers
from benchmarks import fedavg as fedavg_runner
from benchmarks import fl_vs_incenter, latency
from fedjax_comp import network, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("plot", os.path.join(ROOT, "scripts", "plot.py"))
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)
TINY_WORKERS = _workers.WorkerConfig(num_workers=4, steps=24, batch_size=8, eval_every=12,
                                     lr=0.1, model="logistic")


def test_latency_runner_result_and_clock(tmp_path):
  net = network.preset("cellular")
  res = latency.run(TINY_WORKERS, period=3, delays=[2, 6], latencies_ms=[10.0, 200.0], net=net,
                    target=0.3, output_dir=str(tmp_path), verbose=False)
  assert res["succeeded"]
  m = res["metrics"]
  assert set(m) == {"sync", "dga"}
  assert set(m["sync"]) == {"latency=10ms", "latency=200ms"}
  auto = res["extras"]["derived_delays"]
  for lat in (10, 200):
    assert f"latency={lat}ms,D=2" in m["dga"] and f"latency={lat}ms,D=6" in m["dga"]
    assert f"latency={lat}ms,D={auto[f'{lat}ms']}" in m["dga"]  # the delay that hides it
    for entry in [m["sync"][f"latency={lat}ms"]] + [
        e for k, e in m["dga"].items() if k.startswith(f"latency={lat}ms,")]:
      assert 0 <= entry["final_test_accuracy"] <= 1
      assert "sim_time_to_target_s" in entry and "rounds_to_target" in entry
    # The clock by hand: sync pays every averaging in full; DGA with the derived
    # delay never waits, so it takes exactly the steps' time.
    links = network.sample_links(net.replace(latency_s=lat / 1e3), 4, TINY_WORKERS.seed)
    ids = np.arange(4)
    comm = network.allreduce_time(links, ids, up_bits=res["extras"]["uplink_bits_per_worker"],
                                  down_bits=res["extras"]["downlink_bits_per_worker"])
    step = float(links.step_s.max())
    assert m["sync"][f"latency={lat}ms"]["sim_time_s"] == pytest.approx(24 * step + 8 * comm)
    d = auto[f"{lat}ms"]
    assert m["dga"][f"latency={lat}ms,D={d}"]["sim_time_s"] == pytest.approx(24 * step)
    assert m["dga"][f"latency={lat}ms,D={d}"]["waiting_s"] == pytest.approx(0, abs=1e-9)
  # The same training serves every latency: accuracy depends on D only.
  assert (m["dga"]["latency=10ms,D=2"]["final_test_accuracy"]
          == m["dga"]["latency=200ms,D=2"]["final_test_accuracy"])
  assert (tmp_path / "table.md").read_text().count("| sync |") == 2
  assert (tmp_path / "accuracy_vs_sim_time_10ms.png").stat().st_size > 1000
  lines = results.read_metrics(tmp_path)
  assert {r["delay"] for r in lines} >= {0, 2, 6}
  # scripts/plot.py redraws the figures from result.json alone.
  curve = res["extras"]["curves"]["200ms"]
  assert [s[0] for s in curve["series"]][:3] == ["sync", "dga D=2", "dga D=6"]
  assert plot.main([str(tmp_path), f"--out={tmp_path / 'redrawn'}"]) == 0
  assert {p.name for p in (tmp_path / "redrawn").iterdir()} == {
      "accuracy_vs_sim_time_10ms.png", "accuracy_vs_sim_time_200ms.png"}


@pytest.mark.parametrize("kwargs,message", [
    (dict(period=0), "--period"),
    (dict(delays=[-1]), "--delays"),
    (dict(latencies_ms=[-5.0]), "--latencies_ms"),
    (dict(latencies_ms=[]), "--latencies_ms"),
])
def test_latency_runner_bad_input(tmp_path, kwargs, message):
  args = dict(period=2, delays=[1], latencies_ms=[10.0], net=network.preset("wifi"),
              target=0.5, output_dir=str(tmp_path), verbose=False)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    latency.run(TINY_WORKERS, **args)


def test_worker_list_flags_are_checked():
  assert _workers.parse_int_list("0, 5,20", "delays", low=0) == [0, 5, 20]
  with pytest.raises(ValueError, match="--delays must be a comma-separated list of integers"):
    _workers.parse_int_list("5,x", "delays", low=0)
  with pytest.raises(ValueError, match=r"--delays values must be >= 0, got \[-2\]"):
    _workers.parse_int_list("-2", "delays", low=0)
  with pytest.raises(ValueError, match="--latencies_ms must be a non-empty list"):
    _workers.parse_float_list("nan", "latencies_ms", low=0.0)
  with pytest.raises(ValueError, match="structured codecs"):
    _workers.WorkerConfig(codec="random_mask(p=0.5)").validate()


def test_latency_cli_rejects_negative_latency_and_unknown_preset():
  for argv, message in [(["--latencies_ms=10,-5"], "--latencies_ms"),
                        (["--network=dialup"], "network"),
                        (["--period=0"], "--period")]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.latency", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode != 0 and message in proc.stderr + proc.stdout, proc.stderr[-2000:]


def test_fl_vs_incenter_table_bytes_and_clocks(tmp_path):
  fa = fedavg_runner.Config(num_clients=20, clients_per_round=5, rounds=4, eval_every=2,
                            local_epochs=1, model="logistic", max_examples=20, target_accuracy=0.2,
                            checkpoint_every=0)
  cfg = fl_vs_incenter.Config(fedavg=fa, codecs=("none", "quantize(bits=4)"), workers=4,
                              incenter_steps=20, incenter_batch=8, local_period=5,
                              incenter_eval_every=10)
  res = fl_vs_incenter.run(cfg, str(tmp_path), verbose=False)
  assert res["succeeded"]
  m = res["metrics"]
  assert set(m) == {f"{a}/{c}" for a in ("fedavg", "local_sgd", "sync_sgd")
                    for c in ("none", "quantize(bits=4)")}
  dense_bytes = m["local_sgd/none"]["downlink_bytes"] / (4 * 4)  # 4 workers x 4 rounds
  assert m["local_sgd/none"]["rounds"] == 4 and m["sync_sgd/none"]["rounds"] == 20
  assert m["local_sgd/none"]["uplink_bytes"] == dense_bytes * 4 * 4
  assert m["sync_sgd/none"]["uplink_bytes"] == dense_bytes * 4 * 20
  assert m["fedavg/none"]["downlink_bytes"] == dense_bytes * 5 * 4
  params = jax.eval_shape(fc.get_model("logistic", (40,), 10).init, jax.random.key(0))
  q4 = fc.uplink_bits(fc.codecs.parse("quantize(bits=4)"), params)
  # 4 words per 32 codes (400 -> 13 groups, 10 -> 1), plus a float32 min and max per leaf.
  assert q4 == 4 * 32 * (13 + 1) + 2 * 2 * 32 == 1920
  for method in ("fedavg", "local_sgd", "sync_sgd"):
    ratio = m[f"{method}/none"]["uplink_bytes"] / m[f"{method}/quantize(bits=4)"]["uplink_bytes"]
    assert ratio == pytest.approx(32 * 410 / q4)
    for p in ("datacenter", "cellular"):
      assert m[f"{method}/none"][f"sim_time_s/{p}"] > 0
    assert m[f"{method}/none"]["sim_time_s/cellular"] > m[f"{method}/none"]["sim_time_s/datacenter"]
  table = (tmp_path / "table.md").read_text()
  assert table.count("| fedavg |") == 2 and "A round is one exchange" in table
  assert (tmp_path / "accuracy_vs_sim_time_cellular.png").exists()
  assert plot.main([str(tmp_path), f"--out={tmp_path / 'redrawn'}"]) == 0
  assert {p.name for p in (tmp_path / "redrawn").iterdir()} == {
      "accuracy_vs_sim_time_datacenter.png", "accuracy_vs_sim_time_cellular.png"}

  # The post-hoc FedAvg clock equals the fedavg runner's own live clock.
  live = fedavg_runner.run(dataclasses.replace(fa, network="cellular"), str(tmp_path / "live"),
                           verbose=False)
  assert live["metrics"]["sim_time_s"] == pytest.approx(m["fedavg/none"]["sim_time_s/cellular"])
  assert live["metrics"]["final_test_accuracy"] == m["fedavg/none"]["final_test_accuracy"]


def test_fl_vs_incenter_bad_input():
  fa = fedavg_runner.Config(num_clients=20, clients_per_round=5)
  for kwargs, message in [(dict(presets=("dialup",)), "dialup"),
                          (dict(local_period=0), "--local_period"),
                          (dict(codecs=("low_rank(rank=2)",)), "structured codecs"),
                          (dict(codecs=()), "--codecs"),
                          (dict(workers=0), "--workers")]:
    with pytest.raises(ValueError, match=message):
      fl_vs_incenter.Config(fedavg=fa, **kwargs).validate()
