"""Resumable runs: SIGKILL mid-run, --resume, and the result is bit-identical; bad files fail clearly."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import serialization

from benchmarks import fedavg as runner
from fedjax_comp import checkpoint, results
from tests.test_runner import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--dataset=digits", "--partition=iid", "--num_clients=20", "--clients_per_round=5",
         "--model=logistic", "--local_epochs=1", "--batch_size=10", "--client_lr=0.05",
         "--eval_every=50", "--checkpoint_every=25", "--rounds=800",
         "--codec=quantize(bits=4)"]


def _runner(out, *extra):
  env = dict(os.environ, FEDJAX_COMP_CPU_DEVICES="1", JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "benchmarks.fedavg", *FLAGS,
                           f"--output_dir={out}", *extra], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _final_state(out):
  """The last checkpoint's raw arrays (params, optimizer state, round, key)."""
  return serialization.msgpack_restore((out / runner.CHECKPOINT).read_bytes())["state"]


def _lines(out):
  return results.read_metrics(out)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  uninterrupted = _runner(full)
  victim = _runner(killed)
  # Kill the second run somewhere in the middle, at whatever instruction it is at.
  deadline = time.time() + 120
  while time.time() < deadline:
    path = killed / "metrics.jsonl"
    if path.exists() and path.read_text().count("\n") >= 200:
      break
    time.sleep(0.01)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert victim.returncode == -signal.SIGKILL
  killed_at = _lines(killed)[-1]["round"] if (killed / "metrics.jsonl").exists() else 0
  assert 0 < killed_at < 800, "the run must be killed mid-way"
  resumed = _runner(killed, "--resume")
  assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
  assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()

  a, b = _final_state(full), _final_state(killed)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  full_lines, resumed_lines = _lines(full), _lines(killed)
  assert [r["round"] for r in resumed_lines] == list(range(1, 801))  # none lost, none twice
  assert full_lines == resumed_lines  # same losses, bits, accuracies, bit for bit
  assert results.read_result(killed)["metrics"]["total_uplink_bytes"] == \
      results.read_result(full)["metrics"]["total_uplink_bytes"]


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
  cfg = dataclasses.replace(TINY, rounds=2, checkpoint_every=1)
  runner.run(cfg, str(tmp_path), verbose=False)
  path = tmp_path / runner.CHECKPOINT
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
    runner.run(dataclasses.replace(cfg, rounds=4), str(tmp_path), verbose=False, resume=True)
  path.write_bytes(b"not a checkpoint at all")
  with pytest.raises(checkpoint.CheckpointError, match=str(path)):
    runner.run(dataclasses.replace(cfg, rounds=4), str(tmp_path), verbose=False, resume=True)


def test_resume_with_another_model_or_config_fails_clearly(tmp_path):
  cfg = dataclasses.replace(TINY, rounds=2)
  runner.run(cfg, str(tmp_path), verbose=False)
  with pytest.raises(ValueError, match="another configuration"):
    runner.run(dataclasses.replace(cfg, client_lr=0.1, rounds=3), str(tmp_path),
               verbose=False, resume=True)
  with pytest.raises(checkpoint.CheckpointError, match="does not match"):
    # Same config check bypassed: a checkpoint of another model restored into this one.
    from benchmarks.fedavg import fc
    model = fc.get_model("mlp", (64,), 10)
    algo = fc.fed_avg(model.init, None, fc.server_optimizer("fedavg", 1.0), clients_per_round=1)
    checkpoint.load(tmp_path / runner.CHECKPOINT, algo.init(0))


def test_resume_extends_a_finished_run(tmp_path):
  cfg = dataclasses.replace(TINY, rounds=2, eval_every=1)
  runner.run(cfg, str(tmp_path), verbose=False)
  result = runner.run(dataclasses.replace(cfg, rounds=4), str(tmp_path), verbose=False,
                      resume=True)
  assert [r["round"] for r in _lines(tmp_path)] == [1, 2, 3, 4]
  assert result["metrics"]["rounds"] == 4


def test_corrupt_result_and_metrics_files_give_clear_errors(tmp_path):
  (tmp_path / "result.json").write_text('{"name": "fedavg", "succ')
  with pytest.raises(results.ResultFileError, match="corrupt or was truncated"):
    results.read_result(tmp_path)
  (tmp_path / "result.json").write_text('{"name": "x"}')
  with pytest.raises(results.ResultFileError, match="missing succeeded, metrics, extras"):
    results.read_result(tmp_path)
  (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2\n{"round": 3}\n')
  with pytest.raises(results.ResultFileError, match="line 2 is not a JSON record"):
    results.read_metrics(tmp_path)
  (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2')
  assert results.read_metrics(tmp_path, allow_truncated_tail=True) == [{"round": 1}]
