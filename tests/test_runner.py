"""benchmarks.fedavg end to end: outputs, bad input, non-finite stop, and accuracy."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import fedavg as runner
from fedjax_comp import results

TINY = runner.Config(dataset="digits", partition="iid", num_clients=20, clients_per_round=5,
                     rounds=3, local_epochs=1, batch_size=10, client_lr=0.05, model="logistic",
                     eval_every=2)


def test_writes_result_metrics_and_plot(tmp_path):
  result = runner.run(TINY, str(tmp_path), verbose=False)
  on_disk = json.loads((tmp_path / "result.json").read_text())
  assert on_disk == result
  assert set(result) == {"name", "succeeded", "wall_time", "metrics", "extras"}
  assert result["succeeded"] is True
  for key in ("final_test_accuracy", "rounds", "rounds_per_sec", "client_updates_per_sec",
              "compile_s"):
    assert result["metrics"][key] is not None, key
  assert result["metrics"]["rounds"] == 3
  assert result["metrics"]["uplink_bits_per_client_round"] == 32 * (64 * 10 + 10)
  assert result["extras"]["seed"] == 0 and "jax_version" in result["extras"]
  assert result["extras"]["config"]["model"] == "logistic"
  lines = results.read_metrics(tmp_path)
  assert [line["round"] for line in lines] == [1, 2, 3]
  assert "test_accuracy" in lines[1] and "test_accuracy" in lines[2]
  assert (tmp_path / "accuracy.png").stat().st_size > 1000


@pytest.mark.parametrize("change,message", [
    ({"clients_per_round": 21}, r"--clients_per_round must be in \[1, num_clients=20\]"),
    ({"rounds": 0}, "--rounds must be >= 1"),
    ({"client_lr": 0.0}, "--client_lr must be > 0"),
    ({"server_lr": -1.0}, "--server_lr must be > 0"),
    ({"batch_size": 0}, "--batch_size must be >= 1 or 'inf'"),
    ({"dataset": "imagenet"}, "unknown --dataset 'imagenet'; valid: .*mnist1d"),
    ({"model": "resnet"}, "unknown --model 'resnet'; valid: .*2nn"),
    ({"server_optimizer": "sgd"}, "unknown --server_optimizer 'sgd'; valid: .*fedadam"),
    ({"partition": "shards", "shards_per_client": 100}, "impossible partition"),
])
def test_bad_input_raises_value_error_naming_it(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    runner.run(dataclasses.replace(TINY, **change), str(tmp_path), verbose=False)


def test_flag_parsers():
  assert runner.parse_batch_size("inf") is None and runner.parse_batch_size("32") == 32
  for bad in ("0", "-3", "ten"):
    with pytest.raises(ValueError, match="--batch_size"):
      runner.parse_batch_size(bad)
  assert runner.parse_chunk("auto") is None and runner.parse_chunk("4") == 4
  with pytest.raises(ValueError, match="--client_chunk"):
    runner.parse_chunk("0")


def test_non_finite_stops_naming_the_round_and_keeps_results(tmp_path):
  cfg = dataclasses.replace(TINY, client_lr=1e30, rounds=5, local_epochs=3)
  result = runner.run(cfg, str(tmp_path), verbose=False)
  assert result["succeeded"] is False
  assert "non-finite" in result["metrics"]["error"] and "round 1" in result["metrics"]["error"]
  lines = results.read_metrics(tmp_path)
  assert lines and "error" in lines[-1]
  assert json.loads((tmp_path / "result.json").read_text())["succeeded"] is False


def test_fedavg_on_pathological_digits_reaches_90_percent(tmp_path):
  cfg = runner.Config(dataset="digits", partition="shards", num_clients=50,
                      clients_per_round=10, rounds=100, local_epochs=5, batch_size=10,
                      client_lr=0.1, model="mlp", eval_every=10)
  runner.run(cfg, str(tmp_path), verbose=False)
  accuracies = [line["test_accuracy"] for line in results.read_metrics(tmp_path)
                if "test_accuracy" in line]
  assert max(accuracies) >= 0.90, accuracies
