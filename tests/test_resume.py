"""Resumable runs: SIGKILL mid-run then --resume is bit-identical; damaged or mismatched files fail clearly."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import flax.serialization
import jax
import numpy as np
import pytest

from fedjax_comp.experiment import checkpoint, federated, loop, results
from tests.test_runner import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--dataset=digits", "--partition=iid", "--num_clients=20", "--clients_per_round=5",
         "--model=logistic", "--local_epochs=1", "--batch_size=10", "--client_lr=0.05",
         "--eval_every=50", "--checkpoint_every=25", "--rounds=800",
         "--codec=quantize(bits=4)", "--downlink_codec=quantize(bits=8)"]


def _runner(out, *extra):
  env = dict(os.environ, FEDJAX_COMP_CPU_DEVICES="1", JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "benchmarks.fedavg", *FLAGS,
                           f"--output_dir={out}", *extra], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _final_tree(out):
  """The last checkpoint's arrays (state and rows), as saved."""
  record = checkpoint._read(out / loop.CHECKPOINT)  # pylint: disable=protected-access
  return record["tree"]


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
  killed_at = results.read_metrics(killed, allow_truncated_tail=True)[-1]["round"]
  assert 0 < killed_at < 800, "the run must be killed mid-way"
  resumed = _runner(killed, "--resume")
  assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
  assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()

  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               _final_tree(full), _final_tree(killed))
  full_lines, resumed_lines = results.read_metrics(full), results.read_metrics(killed)
  assert [r["round"] for r in resumed_lines] == list(range(1, 801))  # none lost, none twice
  assert full_lines == resumed_lines  # same losses, bits, accuracies, bit for bit
  for key in ("total_uplink_bytes", "total_downlink_bytes"):  # the downlink: per-client catch-up
    assert results.read_result(killed)["metrics"][key] == results.read_result(full)["metrics"][key]


def _run(cfg, out, **kw):
  return federated.run(cfg, str(out), say=None, **kw)


def test_damaged_checkpoint_is_refused(tmp_path):
  cfg = TINY.replace(rounds=2, checkpoint_every=1)
  _run(cfg, tmp_path)
  path = tmp_path / loop.CHECKPOINT
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle] ^= 0x01  # two flipped bits inside the arrays
  data[middle + 7] ^= 0x80
  path.write_bytes(bytes(data))
  with pytest.raises(checkpoint.CheckpointError, match="damaged: its checksum does not match"):
    _run(cfg.replace(rounds=4), tmp_path, resume=True)
  path.write_bytes(bytes(data[: len(data) // 2]))
  with pytest.raises(checkpoint.CheckpointError, match="damaged"):
    _run(cfg.replace(rounds=4), tmp_path, resume=True)
  path.write_bytes(b"not a checkpoint at all")
  with pytest.raises(checkpoint.CheckpointError, match="not a fedjax_comp checkpoint"):
    _run(cfg.replace(rounds=4), tmp_path, resume=True)


def test_resume_with_another_config_names_only_the_keys_that_differ(tmp_path):
  _run(TINY.replace(rounds=2), tmp_path)
  with pytest.raises(ValueError) as e:
    _run(TINY.replace(client_lr=0.1, seed=3, rounds=3), tmp_path, resume=True)
  message = str(e.value)
  assert "these differ: client_lr (checkpoint 0.05, now 0.1), seed (checkpoint 0, now 3)" in (
      message), message
  assert "dataset" not in message


def test_resume_with_another_algorithm_is_refused(tmp_path):
  _run(TINY.replace(rounds=2), tmp_path)
  with pytest.raises(checkpoint.CheckpointError, match="checkpoint of algorithm 'fedavg', not "
                     "'scaffold'"):
    _run(TINY.replace(algorithm="scaffold", rounds=3), tmp_path, resume=True)


def test_resume_below_the_checkpoint_round_is_refused(tmp_path):
  _run(TINY.replace(rounds=4), tmp_path)
  with pytest.raises(ValueError, match="--rounds=2 is below the checkpoint's round 4"):
    _run(TINY.replace(rounds=2), tmp_path, resume=True)


def test_resume_with_a_gap_in_the_records_is_refused(tmp_path):
  _run(TINY.replace(rounds=6, checkpoint_every=3), tmp_path)
  path = tmp_path / "metrics.jsonl"
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[:1] + lines[3:]) + "\n")  # rounds 2 and 3 deleted
  with pytest.raises(results.ResultFileError, match="round 2 is missing"):
    _run(TINY.replace(rounds=8), tmp_path, resume=True)


def test_resume_extends_a_finished_run(tmp_path):
  _run(TINY.replace(rounds=2, eval_every=1), tmp_path)
  _, _, history = _run(TINY.replace(rounds=4, eval_every=1), tmp_path, resume=True)
  assert [r["round"] for r in results.read_metrics(tmp_path)] == [1, 2, 3, 4]
  assert history.rounds_done == 4
  assert [e["round"] for e in history.evals] == [1, 2, 3, 4]  # the resumed history too
  assert results.read_result(tmp_path)["metrics"]["rounds"] == 4


def test_ctrl_c_writes_a_failed_result(tmp_path, monkeypatch):
  exp = federated.setup(TINY.replace(rounds=5), say=None)
  step = exp.rounds.compile(exp.state)
  calls = []

  def interrupted(state):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return step(state)

  monkeypatch.setattr(exp.rounds, "compile", lambda state: interrupted)
  with pytest.raises(KeyboardInterrupt):
    loop.run_rounds(exp.algorithm, exp.state, exp.rounds, num_rounds=5, output_dir=str(tmp_path),
                    say=None)
  result = results.read_result(tmp_path)
  assert result["succeeded"] is False
  assert result["metrics"]["error"] == "interrupted (Ctrl-C) after round 2"
  assert [r["round"] for r in results.read_metrics(tmp_path)] == [1, 2]


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


def test_resume_of_a_checkpoint_without_the_downlink_ledger_is_refused(tmp_path):
  # A checkpoint from before the catch-up accounting: its downlink totals used another rule.
  cfg = TINY.replace(rounds=2, downlink_codec="quantize(bits=8)")
  _run(cfg, tmp_path)
  path = tmp_path / loop.CHECKPOINT
  record = checkpoint._read(path)  # pylint: disable=protected-access
  meta = record["meta_dict"]
  assert meta["bookkeeping"]["downlink_synced"]["rounds"]  # the ledger is saved ...
  del meta["bookkeeping"]["downlink_synced"]
  payload = flax.serialization.msgpack_serialize({"tree": record["tree"],
                                                  "meta": json.dumps(meta)})
  path.write_bytes(checkpoint.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
                   + payload)
  with pytest.raises(checkpoint.CheckpointError, match="predates the downlink catch-up"):
    _run(cfg.replace(rounds=3), tmp_path, resume=True)  # ... and required
