"""The main job end to end: outputs, bad input, non-finite stop, accuracy, and the CLI's errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedjax_comp.experiment import configs, federated, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = configs.FederatedConfig(
    data=configs.DataConfig(dataset="digits", partition="iid", num_clients=20),
    train=configs.TrainConfig(clients_per_round=5, rounds=3, local_epochs=1, batch_size=10,
                              client_lr=0.05, model="logistic"),
    run=configs.RunConfig(eval_every=2))


def run(cfg, out, **kw):
  federated.run(cfg, str(out), say=None, **kw)
  return results.read_result(out)


def test_writes_result_metrics_and_checkpoint(tmp_path):
  result = run(TINY, tmp_path)
  assert set(result) == {"name", "succeeded", "wall_time", "metrics", "extras"}
  assert result["succeeded"] is True
  m = result["metrics"]
  for key in ("final_test_accuracy", "rounds", "rounds_per_sec", "client_updates_per_sec",
              "compile_s", "sim_time_s", "compression_ratio"):
    assert m[key] is not None, key
  assert m["rounds"] == 3 and m["algorithm"] == "fedavg" and m["client_store"] == "device"
  assert m["uplink_bits_per_client_round"] == 32 * (64 * 10 + 10)
  assert m["total_uplink_bytes"] == 3 * 5 * m["uplink_bits_per_client_round"] / 8
  assert result["extras"]["seed"] == 0 and "jax_version" in result["extras"]
  assert result["extras"]["config"]["train"]["model"] == "logistic"
  lines = results.read_metrics(tmp_path)
  assert [line["round"] for line in lines] == [1, 2, 3]
  assert "test_accuracy" in lines[1] and "test_accuracy" in lines[2]
  assert all(line["sim_round_s"] > 0 for line in lines)
  assert (tmp_path / "checkpoint.msgpack").exists()


@pytest.mark.parametrize("change,message", [
    ({"clients_per_round": 21}, r"--clients_per_round must be in \[1, num_clients=20\]"),
    ({"rounds": 0}, r"--rounds must be an integer >= 1, got 0"),
    ({"client_lr": 0.0}, "--client_lr must be a finite number > 0"),
    ({"server_lr": -1.0}, "--server_lr must be a finite number > 0"),
    ({"batch_size": 0}, r"--batch_size must be an integer >= 1 \(or unset\)"),
    ({"dataset": "imagenet"}, "unknown --dataset 'imagenet'; valid: .*mnist1d"),
    ({"model": "resnet"}, "unknown model 'resnet'; valid models: .*2nn"),
    ({"server_optimizer": "sgd"}, "unknown --server_optimizer 'sgd'; valid: .*fedadam"),
    ({"algorithm": "fedfoo"}, "unknown --algorithm 'fedfoo'; valid: fedavg, fedprox, scaffold"),
    ({"algorithm": "fedprox", "fedprox_mu": -1.0}, "--fedprox_mu must be a finite number >= 0"),
    ({"fedprox_mu": 0.1}, "--fedprox_mu applies to --algorithm=fedprox only"),
    ({"seed": -1}, r"--seed must be an integer in \[0, 2\*\*32\), got -1"),
    ({"client_store": "disk"}, "unknown --client_store 'disk'; valid: auto, device, host"),
    ({"codec": "low_rank(rank=1000)"}, "--codec='low_rank\\(rank=1000\\)' does not fit model "
     "'logistic': low_rank: rank must be in 1..min"),
    ({"partition": "shards", "shards_per_client": 100}, "impossible partition"),
])
def test_bad_input_raises_value_error_naming_it(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    run(TINY.replace(**change), tmp_path)


def test_device_store_over_its_budget_is_refused_with_the_size(tmp_path, monkeypatch):
  monkeypatch.setattr(federated, "memory_budget", lambda mesh=None: 1000)
  with pytest.raises(ValueError, match=r"--client_store=device: .* need 0.00 GiB per device, "
                     r"over the device store's budget .*use --client_store=host"):
    run(TINY.replace(client_store="device"), tmp_path)
  result = run(TINY, tmp_path)  # auto falls back to the host store
  assert result["metrics"]["client_store"] == "host"


def test_host_store_run_equals_device_store_run(tmp_path):
  a = run(TINY.replace(eval_every=1), tmp_path / "device")
  b = run(TINY.replace(eval_every=1, client_store="host"), tmp_path / "host")
  host_records = results.read_metrics(tmp_path / "host")
  assert all(r["data_wait_s"] >= 0 for r in host_records)  # the host store's wait per round
  assert results.read_metrics(tmp_path / "device") == [
      {k: v for k, v in r.items() if k != "data_wait_s"} for r in host_records]
  assert a["metrics"]["final_test_accuracy"] == b["metrics"]["final_test_accuracy"]
  assert b["metrics"]["client_store"] == "host"


def test_non_finite_stops_naming_the_round_and_keeps_results(tmp_path):
  result = run(TINY.replace(client_lr=1e30, rounds=5, local_epochs=3), tmp_path)
  assert result["succeeded"] is False
  assert "non-finite" in result["metrics"]["error"] and "round 1" in result["metrics"]["error"]
  lines = results.read_metrics(tmp_path)
  assert lines and "error" in lines[-1]


def test_fedavg_on_pathological_digits_reaches_90_percent(tmp_path):
  cfg = TINY.replace(partition="shards", num_clients=50, clients_per_round=10, rounds=100,
                     local_epochs=5, model="mlp", client_lr=0.1, eval_every=10, network="none")
  run(cfg, tmp_path)
  accuracies = [line["test_accuracy"] for line in results.read_metrics(tmp_path)
                if "test_accuracy" in line]
  assert max(accuracies) >= 0.90, accuracies


def _cli(*args, **env):
  return subprocess.run([sys.executable, "-m", "benchmarks.fedavg", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "FEDJAX_COMP_CPU_DEVICES": "1", **env})


@pytest.mark.parametrize("args,message", [
    (["--seed=-1"], r"--seed must be an integer in \[0, 2\*\*32\), got -1"),
    (["--resume", "false"], "unexpected positional arguments: false"),
    (["--batch_size=ten"], "--batch_size must be a positive integer or 'inf', got 'ten'"),
    (["--codec=warp(speed=9)"], "--codec: unknown codec 'warp'"),
])
def test_cli_usage_errors_are_one_line_and_exit_1(tmp_path, args, message):
  out = _cli(f"--output_dir={tmp_path / 'run'}", *args)
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("fedavg: error: "), out.stderr
  assert __import__("re").search(message, lines[0]), lines[0]


def test_cli_checks_output_dir_before_any_work(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  for path, message in [(blocker, "is a file, not a directory"),
                        (blocker / "sub", "is a file, not a directory")]:
    out = _cli(f"--output_dir={path}", "--dataset=mnist1d")
    assert out.returncode == 1 and message in out.stderr, out.stderr
  (tmp_path / "held").mkdir()
  (tmp_path / "held" / "metrics.jsonl").write_text('{"round": 1}\n')
  out = _cli(f"--output_dir={tmp_path / 'held'}")
  assert out.returncode == 1 and "already holds a run" in out.stderr
  assert (tmp_path / "held" / "metrics.jsonl").read_text() == '{"round": 1}\n'  # untouched


def test_cli_help_lists_every_flag():
  out = _cli("--help")
  for flag in ("--algorithm", "--fedprox_mu", "--client_store", "--network", "--uplink_mbps",
               "--target_accuracy", "--output_dir", "--[no]resume", "--[no]overwrite",
               "--codec"):
    assert flag in out.stdout, flag
