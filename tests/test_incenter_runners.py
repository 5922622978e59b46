"""benchmarks.latency and benchmarks.fl_vs_incenter end to end, on tiny configurations."""

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import _workers
from benchmarks import fl_vs_incenter, latency
from fedjax_comp import codecs, models
from fedjax_comp.experiment import clock, configs, federated, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("plot", os.path.join(ROOT, "scripts", "plot.py"))
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)
TINY_WORKERS = _workers.WorkerTask(num_workers=4, steps=24, batch_size=8, eval_every=12,
                                   lr=0.1, model="logistic")


def test_latency_runner_result_and_clock(tmp_path):
  net = clock.preset("cellular")
  sweep = latency.LatencyConfig(steps=24, eval_every_steps=12, period=3, delays="2,6",
                                latencies_ms="10,200")
  res = latency.run(TINY_WORKERS, sweep, net, 0.3, str(tmp_path), say=None)
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
    links = clock.sample_links(net.replace(latency_s=lat / 1e3), 4, TINY_WORKERS.seed)
    ids = np.arange(4)
    comm = clock.allreduce_time(links, ids, up_bits=res["extras"]["uplink_bits_per_worker"],
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
    (dict(period=0), "--period must be an integer >= 1"),
    (dict(steps=0), "--steps must be an integer >= 1"),
    (dict(delays="-1"), r"--delays values must be >= 0, got \[-1\]"),
    (dict(delays="5,x"), "--delays must be a comma-separated list of integers"),
    (dict(latencies_ms="-5"), "--latencies_ms must be a non-empty list"),
    (dict(latencies_ms=""), "--latencies_ms must be a non-empty list"),
    (dict(latencies_ms="nan"), "--latencies_ms must be a non-empty list"),
])
def test_latency_sweep_bad_input(kwargs, message):
  with pytest.raises(ValueError, match=message):
    latency.LatencyConfig(**kwargs)


def test_worker_task_is_checked():
  assert latency.LatencyConfig(delays="0, 5,20").delay_list() == [0, 5, 20]
  assert latency.LatencyConfig(latencies_ms="10, 0.5").latency_list() == [10.0, 0.5]
  with pytest.raises(ValueError, match="structured codecs"):
    _workers.WorkerTask(codec="random_mask(p=0.5)")
  with pytest.raises(ValueError, match="num_workers must be >= 1"):
    _workers.WorkerTask(num_workers=0)


@pytest.mark.parametrize("runner,argv,message", [
    ("latency", ["--latencies_ms=10,-5"], "--latencies_ms"),
    ("latency", ["--network=dialup"], "unknown --network 'dialup'"),
    ("latency", ["--period=0"], "--period"),
    ("latency", ["--rounds=3"], "--rounds: not a knob of benchmarks.latency"),
    ("latency", ["stray"], "unexpected positional arguments: stray"),
    ("fl_vs_incenter", ["--network=wifi"], "--network: benchmarks.fl_vs_incenter clocks"),
    ("fl_vs_incenter", ["--codecs=low_rank(rank=2)"], "structured codecs"),
    ("accuracy_vs_bits", ["--codecs=zip"], "--codecs: unknown codec 'zip'"),
])
def test_cli_rejects_bad_flags_in_one_line(runner, argv, message):
  proc = subprocess.run([sys.executable, "-m", f"benchmarks.{runner}", *argv], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.startswith(f"{runner}: error: ") and message in proc.stderr, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


TINY_FL = configs.FederatedConfig(
    data=configs.DataConfig(dataset="mnist1d", partition="iid", num_clients=20,
                            max_examples=20),
    train=configs.TrainConfig(model="logistic", clients_per_round=5, rounds=4, local_epochs=1,
                              batch_size=10),
    run=configs.RunConfig(eval_every=2, checkpoint_every=0),
    network=configs.NetworkConfig(target_accuracy=0.2))


def test_fl_vs_incenter_table_bytes_and_clocks(tmp_path):
  inc = fl_vs_incenter.IncenterConfig(workers=4, incenter_steps=20, incenter_batch=8,
                                      local_period=5, incenter_eval_every=10)
  res = fl_vs_incenter.run(TINY_FL, inc, ["none", "quantize(bits=4)"], str(tmp_path), say=None)
  assert res["succeeded"]
  m = res["metrics"]
  assert set(m) == {f"{a}/{c}" for a in ("fedavg", "local_sgd", "sync_sgd")
                    for c in ("none", "quantize(bits=4)")}
  dense_bytes = m["local_sgd/none"]["downlink_bytes"] / (4 * 4)  # 4 workers x 4 rounds
  assert dense_bytes == 32 * 410 / 8
  assert m["local_sgd/none"]["rounds"] == 4 and m["sync_sgd/none"]["rounds"] == 20
  assert m["local_sgd/none"]["uplink_bytes"] == dense_bytes * 4 * 4
  assert m["sync_sgd/none"]["uplink_bytes"] == dense_bytes * 4 * 20
  assert m["fedavg/none"]["downlink_bytes"] == dense_bytes * 5 * 4
  params = jax.eval_shape(models.get_model("logistic", (40,), 10).init, jax.random.key(0))
  q4 = codecs.uplink_bits(codecs.parse("quantize(bits=4)"), params)
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

  # The post-hoc FedAvg clock equals a live clock on the same run.
  _, _, live = federated.run(TINY_FL, None, say=None)
  assert live.sim_time_s == pytest.approx(m["fedavg/none"]["sim_time_s/cellular"], rel=1e-12)
  assert live.final_eval["accuracy"] == m["fedavg/none"]["final_test_accuracy"]
  assert (live.to_target("accuracy", 0.2, "sim_time_s")
          == m["fedavg/none"]["sim_time_to_target_s/cellular"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(presets="dialup"), "unknown network preset 'dialup'"),
    (dict(local_period=0), "--local_period must be >= 1"),
    (dict(workers=0), "--workers must be >= 1"),
    (dict(incenter_lr=0.0), "--incenter_lr must be > 0"),
])
def test_fl_vs_incenter_bad_input(kwargs, message):
  with pytest.raises(ValueError, match=message):
    fl_vs_incenter.IncenterConfig(**kwargs)


@pytest.mark.parametrize("specs,message", [
    (["none", "low_rank(rank=2)"], "--codecs: .*structured codecs"),
    ([], "--codecs: give at least one codec spec"),
])
def test_fl_vs_incenter_codecs_must_be_sketches(tmp_path, specs, message):
  with pytest.raises(ValueError, match=message):
    fl_vs_incenter.run(TINY_FL, fl_vs_incenter.IncenterConfig(), specs, str(tmp_path), say=None)
  assert not any(tmp_path.iterdir())  # refused before any work
