"""The simulated network clock of a federated run end to end, and the network flag group."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from benchmarks import _flags
from fedjax_comp import keys, sampling
from fedjax_comp.data import load_federated
from fedjax_comp.experiment import clock, configs, federated, loop, results

TINY = configs.FederatedConfig(
    data=configs.DataConfig(dataset="digits", partition="iid", num_clients=20),
    train=configs.TrainConfig(model="logistic", clients_per_round=5, rounds=3, local_epochs=1,
                              batch_size=10, client_lr=0.05),
    run=configs.RunConfig(eval_every=1, checkpoint_every=0))  # cellular by default


def _net(**knobs) -> configs.NetworkConfig:
  return configs.NetworkConfig(**knobs)


def test_a_run_reports_the_simulated_clock(tmp_path):
  cfg = dataclasses.replace(TINY, network=_net(target_accuracy=0.0))
  _, _, history = federated.run(cfg, str(tmp_path), say=None)
  m = results.read_result(tmp_path)["metrics"]
  lines = results.read_metrics(tmp_path)
  # The total is the running sum of the rounds, in order (so exactly equal).
  assert [line["sim_time_s"] for line in lines] == list(np.cumsum(
      [line["sim_round_s"] for line in lines]))
  assert m["sim_time_s"] == sum(line["sim_round_s"] for line in lines) == history.sim_time_s > 0
  assert all(line["sim_round_s"] > 0 for line in lines)
  # Target 0: reached at the first evaluation (round 1), at round 1's clock.
  assert m["target_accuracy"] == 0.0 and m["rounds_to_target"] == 1
  assert m["sim_time_to_target_s"] == lines[0]["sim_time_s"] == history.evals[0]["sim_time_s"]
  assert m["network"]["preset"] == "cellular"
  assert m["network"]["model"] == dataclasses.asdict(clock.preset("cellular"))
  links = clock.sample_links(clock.preset("cellular"), 20, seed=0)
  assert m["network"]["realised_medians"] == pytest.approx(links.medians())
  assert m["downlink_bits_per_client_round"] == 32 * (64 * 10 + 10)

  # Each round recomputed by hand: the round's ids from the seed alone; digits
  # iid over 20 clients gives each 71 or 72 examples, so 1 epoch of B = 10 is
  # 8 local steps for everyone; 650 float32 parameters up and down.
  sizes = load_federated("digits", "iid", num_clients=20, seed=0).sizes()
  assert set(sizes.tolist()) <= {71, 72}
  bits = 32 * 650
  for r, line in enumerate(lines, start=1):
    ids = np.asarray(sampling.round_ids(keys.seed_key(0), r - 1, 20, 5))
    assert line["num_steps"] == 8 * len(ids)  # the round's own step count
    times = [(links.latency_s[i] + bits / links.downlink_bps[i]) + 8 * links.step_s[i]
             + (links.latency_s[i] + bits / links.uplink_bps[i]) for i in ids]
    assert line["sim_round_s"] == pytest.approx(max(times), rel=1e-12)
    assert line["sim_round_s"] == clock.sync_round_time(links, ids, up_bits=bits,
                                                        down_bits=bits, num_steps=8)


def test_the_rounds_cohorts_clock_the_run_again_afterwards():
  """keep_cohorts: each round's ids and step counts re-clock the run exactly."""
  exp = federated.setup(TINY, say=None)
  _, history = loop.run_rounds(
      exp.algorithm, exp.state, exp.rounds, num_rounds=3, clock=exp.clock, keep_cohorts=True,
      say=None)
  assert len(history.cohorts) == 3
  again = clock.RoundClock(clock.preset("cellular"), 20, seed=0)
  for r, ((ids, steps, down), record) in enumerate(zip(history.cohorts, history.records)):
    np.testing.assert_array_equal(ids, sampling.round_ids(keys.seed_key(0), r, 20, 5))
    assert steps.tolist() == [8] * 5 and record["num_steps"] == 40 and down == 32 * 650
    assert again.add_round(ids, steps, up_bits=32 * 650, down_bits=32 * 650) == (
        record["sim_round_s"], record["sim_time_s"])


def test_datacenter_clock_is_exact_and_overridable(tmp_path):
  # Datacenter: no spread, so every round is 2 latencies + 2 transfers + 8 steps exactly,
  # with 650 float32 parameters down and the codec's payload up.
  dense = 32 * 650
  cfg = dataclasses.replace(TINY, network=_net(network="datacenter"))
  _, _, fast = federated.run(cfg, None, say=None)
  one = 10e-6 + dense / 100e9 + 8 * 1e-3 + 10e-6 + dense / 100e9
  assert fast.sim_time_s == pytest.approx(3 * one, rel=1e-12)
  # A 2-bit codec sends fewer bits up; a slower step (overridden) costs 8 of them a round.
  cfg = dataclasses.replace(TINY.replace(codec="quantize(bits=2)"),
                            network=_net(network="datacenter", step_ms=500.0, uplink_mbps=1.0))
  federated.run(cfg, str(tmp_path), say=None)
  m = results.read_result(tmp_path)["metrics"]
  up = m["uplink_bits_per_client_round"]
  assert up < dense
  one = (10e-6 + dense / 100e9) + 8 * 0.5 + (10e-6 + up / 1e6)
  assert m["sim_time_s"] == pytest.approx(3 * one, rel=1e-12)
  assert m["network"]["model"]["step_s"] == 0.5 and m["network"]["model"]["uplink_bps"] == 1e6


def test_network_none_turns_the_clock_off(tmp_path):
  cfg = dataclasses.replace(TINY, network=_net(network="none"))
  exp, _, history = federated.run(cfg, str(tmp_path), say=None)
  m = results.read_result(tmp_path)["metrics"]
  assert exp.clock is None and history.sim_time_s is None
  assert m["sim_time_s"] is None and m["sim_time_to_target_s"] is None
  assert m["network"] == {"preset": "none"}
  assert m["rounds_to_target"] in (None, 1, 2, 3)  # still reported: it needs no clock
  assert all("sim_round_s" not in line and "sim_time_s" not in line
             for line in results.read_metrics(tmp_path))


def test_resume_continues_the_clock(tmp_path):
  full = TINY.replace(rounds=4)
  federated.run(full, str(tmp_path / "full"), say=None)
  federated.run(TINY.replace(rounds=2), str(tmp_path / "split"), say=None)
  federated.run(full.replace(target_accuracy=0.3), str(tmp_path / "split"), resume=True,
                say=None)
  assert results.read_metrics(tmp_path / "full") == results.read_metrics(tmp_path / "split")
  assert (results.read_result(tmp_path / "split")["metrics"]["sim_time_s"]
          == results.read_result(tmp_path / "full")["metrics"]["sim_time_s"])
  with pytest.raises(ValueError, match="another configuration"):
    federated.run(TINY.replace(rounds=5, network="wifi"), str(tmp_path / "split"),
                  resume=True, say=None)


@pytest.mark.parametrize("change,message", [
    ({"network": "lte"}, "unknown --network 'lte'; valid: none, datacenter, wifi, cellular"),
    ({"network": "none", "uplink_mbps": 1.0}, "--network=none takes no link overrides, got "
     "--uplink_mbps"),
    ({"uplink_mbps": -1.0}, "--uplink_mbps must be a finite number > 0"),
    ({"downlink_mbps": 0.0}, "--downlink_mbps must be a finite number > 0"),
    ({"latency_ms": -100.0}, "--latency_ms must be a finite number >= 0"),
    ({"step_ms": math.nan}, "--step_ms must be a finite number >= 0"),
    ({"straggler_sigma": -1.0}, "--straggler_sigma must be"),
    ({"target_accuracy": 1.5}, r"--target_accuracy must be in \[0, 1\], got 1.5"),
    ({"target_accuracy": math.nan}, r"--target_accuracy must be in \[0, 1\]"),
])
def test_bad_network_config_raises_naming_the_flag(change, message):
  with pytest.raises(ValueError, match=message):
    _net(**change)


@pytest.fixture
def parsed_flags():
  group = _flags.define(configs.NetworkConfig)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return group


def test_network_flags(parsed_flags):
  group = parsed_flags
  with flagsaver.flagsaver(network="wifi", uplink_mbps=10.0, latency_ms=100.0):
    cfg = group.config()
    assert cfg.model() == clock.NetworkModel(10e6, 100e6, 0.1, 5e-3, 0.3)
    assert cfg.overrides() == {"uplink_bps": 10e6, "latency_s": 0.1}
  with flagsaver.flagsaver(network="cellular"):
    cfg = group.config()
    assert cfg.model() == clock.preset("cellular") and cfg.target_accuracy == 0.55
  with flagsaver.flagsaver(network="none"):
    assert group.config().model() is None
  for bad, message in [({"uplink_mbps": -1.0}, "--uplink_mbps must be a finite number > 0"),
                       ({"network": "none", "step_ms": 1.0}, "--network=none takes no link "
                        "overrides, got --step_ms"),
                       ({"target_accuracy": 2.0}, "--target_accuracy")]:
    with flagsaver.flagsaver(**bad), pytest.raises(ValueError, match=message):
      group.config()
