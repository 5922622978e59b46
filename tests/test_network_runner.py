"""benchmarks.fedavg's simulated network clock end to end, and the shared network flags."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from benchmarks import _network
from benchmarks import fedavg as runner
from fedjax_comp import keys, network, results
from fedjax_comp.fedavg import ServerState, round_client_ids
from tests.test_runner import TINY

CLOCKED = dataclasses.replace(TINY, rounds=3, eval_every=1)  # cellular by default


def _ids_of_round(r: int, cfg: runner.Config) -> np.ndarray:
  """The clients round r (1-based) ran, rebuilt from the seed alone."""
  state = ServerState(params=None, opt_state=None, round=jnp.int32(r - 1),
                      seed_key=keys.seed_key(cfg.seed))
  return np.asarray(round_client_ids(state, cfg.num_clients, cfg.clients_per_round))


def test_fedavg_reports_the_simulated_clock(tmp_path):
  result = runner.run(dataclasses.replace(CLOCKED, target_accuracy=0.0), str(tmp_path),
                      verbose=False)
  m = result["metrics"]
  lines = results.read_metrics(tmp_path)
  # The total is the running sum of the rounds, in order (so exactly equal).
  assert [line["sim_time_s"] for line in lines] == list(np.cumsum(
      [line["sim_round_s"] for line in lines]))
  assert m["sim_time_s"] == sum(line["sim_round_s"] for line in lines) > 0
  assert all(line["sim_round_s"] > 0 for line in lines)
  # Target 0: reached at the first evaluation (round 1), at round 1's clock.
  assert m["target_accuracy"] == 0.0 and m["rounds_to_target"] == 1
  assert m["sim_time_to_target_s"] == lines[0]["sim_time_s"]
  assert m["network"]["preset"] == "cellular"
  assert m["network"]["model"] == dataclasses.asdict(network.preset("cellular"))
  links = network.sample_links(network.preset("cellular"), TINY.num_clients, seed=TINY.seed)
  assert m["network"]["realised_medians"] == pytest.approx(links.medians())
  assert m["downlink_bits_per_client_round"] == 32 * (64 * 10 + 10)
  assert (tmp_path / "accuracy_vs_sim_time.png").stat().st_size > 1000

  # Each round recomputed by hand: the round's ids from the seed; digits iid
  # over 20 clients gives each 71 or 72 examples, so 1 epoch of B = 10 is 8
  # local steps for everyone; 650 float32 parameters up and down.
  num_examples = np.asarray(runner.fc.load_federated(
      "digits", "iid", num_clients=20, seed=0).clients.num_examples)
  assert set(num_examples.tolist()) <= {71, 72}
  bits = 32 * 650
  for r, line in enumerate(lines, start=1):
    ids = _ids_of_round(r, CLOCKED)
    assert line["num_steps"] == 8 * len(ids)  # the runner's step count matches the round's
    times = [(links.latency_s[i] + bits / links.downlink_bps[i]) + 8 * links.step_s[i]
             + (links.latency_s[i] + bits / links.uplink_bps[i]) for i in ids]
    assert line["sim_round_s"] == pytest.approx(max(times), rel=1e-12)
    assert line["sim_round_s"] == network.sync_round_time(links, ids, up_bits=bits,
                                                          down_bits=bits, num_steps=8)


def test_datacenter_clock_is_exact_and_overridable(tmp_path):
  # Datacenter: no spread, so every round is 2 latencies + 2 transfers + 8 steps exactly,
  # with 650 float32 parameters down and the codec's payload up.
  dense = 32 * 650
  fast = runner.run(dataclasses.replace(CLOCKED, network="datacenter"), str(tmp_path / "a"),
                    verbose=False)["metrics"]
  one = 10e-6 + dense / 100e9 + 8 * 1e-3 + 10e-6 + dense / 100e9
  assert fast["sim_time_s"] == pytest.approx(3 * one, rel=1e-12)
  # A 2-bit codec sends fewer bits up; a slower step (overridden) costs 8 of them a round.
  cfg = dataclasses.replace(CLOCKED, network="datacenter", codec="quantize(bits=2)",
                            network_overrides={"step_s": 0.5, "uplink_bps": 1e6})
  m = runner.run(cfg, str(tmp_path / "b"), verbose=False)["metrics"]
  up = m["uplink_bits_per_client_round"]
  assert up < dense
  one = (10e-6 + dense / 100e9) + 8 * 0.5 + (10e-6 + up / 1e6)
  assert m["sim_time_s"] == pytest.approx(3 * one, rel=1e-12)
  assert m["network"]["model"]["step_s"] == 0.5 and m["network"]["model"]["uplink_bps"] == 1e6


def test_network_none_turns_the_clock_off(tmp_path):
  m = runner.run(dataclasses.replace(CLOCKED, network="none"), str(tmp_path),
                 verbose=False)["metrics"]
  assert m["sim_time_s"] is None and m["sim_time_to_target_s"] is None
  assert m["network"] == {"preset": "none"}
  assert m["rounds_to_target"] in (None, 1, 2, 3)  # still reported: it needs no clock
  assert all("sim_round_s" not in line and "sim_time_s" not in line
             for line in results.read_metrics(tmp_path))
  assert not (tmp_path / "accuracy_vs_sim_time.png").exists()


def test_resume_continues_the_clock(tmp_path):
  full = runner.run(dataclasses.replace(CLOCKED, rounds=4), str(tmp_path / "full"),
                    verbose=False)
  runner.run(dataclasses.replace(CLOCKED, rounds=2), str(tmp_path / "split"), verbose=False)
  resumed = runner.run(dataclasses.replace(CLOCKED, rounds=4, target_accuracy=0.3),
                       str(tmp_path / "split"), verbose=False, resume=True)
  assert results.read_metrics(tmp_path / "full") == results.read_metrics(tmp_path / "split")
  assert resumed["metrics"]["sim_time_s"] == full["metrics"]["sim_time_s"]
  with pytest.raises(ValueError, match="another configuration"):
    runner.run(dataclasses.replace(CLOCKED, rounds=5, network="wifi"), str(tmp_path / "split"),
               verbose=False, resume=True)


def test_host_step_counts_and_empty_clients():
  n = np.array([0, 5, 10, 11])
  np.testing.assert_array_equal(runner.local_step_counts(n, local_epochs=2, batch_size=5,
                                                         local_steps=None), [0, 2, 4, 6])
  np.testing.assert_array_equal(runner.local_step_counts(n, local_epochs=2, batch_size=None,
                                                         local_steps=None), [0, 2, 2, 2])
  np.testing.assert_array_equal(runner.local_step_counts(n, local_epochs=2, batch_size=5,
                                                         local_steps=3), [0, 3, 3, 3])
  # Client 1 is by far the slowest but has no data: the round does not wait for it.
  links = network.Links(uplink_bps=[1e6, 1.0, 2e6], downlink_bps=[1e6, 1.0, 2e6],
                        latency_s=[0.1, 100.0, 0.2], step_s=[0.01, 1.0, 0.01])
  steps = np.array([4, 0, 2])
  # client 0: 0.1 + 1 + 4 * 0.01 + 0.1 + 1 = 2.24;  client 2: 0.2 + 0.5 + 0.02 + 0.2 + 0.5 = 1.42
  assert runner.sim_round_time(links, np.array([0, 1, 2]), steps, up_bits=1e6,
                               down_bits=1e6) == pytest.approx(2.24, rel=1e-12)
  assert runner.sim_round_time(links, np.array([1, 2]), steps, up_bits=1e6,
                               down_bits=1e6) == pytest.approx(1.42, rel=1e-12)
  assert runner.sim_round_time(links, np.array([1]), steps, up_bits=1e6, down_bits=1e6) == 0.0


@pytest.mark.parametrize("change,message", [
    ({"network": "lte"}, "unknown --network 'lte'; valid: none, datacenter, wifi, cellular"),
    ({"network": "none", "network_overrides": {"uplink_bps": 1e6}},
     "--network=none takes no link overrides"),
    ({"network_overrides": {"uplink_bps": -1.0}},
     "--network=cellular: uplink_bps must be a finite number > 0"),
    ({"network_overrides": {"latency_s": -0.1}},
     "--network=cellular: latency_s must be a finite number >= 0"),
    ({"network_overrides": {"bandwidth": 1.0}}, "unknown NetworkModel field"),
    ({"target_accuracy": 1.5}, r"--target_accuracy must be in \[0, 1\], got 1.5"),
    ({"target_accuracy": math.nan}, r"--target_accuracy must be in \[0, 1\]"),
])
def test_bad_network_config_raises_naming_it(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    runner.run(dataclasses.replace(TINY, **change), str(tmp_path), verbose=False)


@pytest.fixture
def parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def test_network_flags(parsed_flags):
  del parsed_flags
  with flagsaver.flagsaver(network="wifi", uplink_mbps=10.0, latency_ms=100.0):
    assert _network.network_from_flags() == network.NetworkModel(10e6, 100e6, 0.1, 5e-3, 0.3)
    assert _network.overrides_from_flags() == {"uplink_bps": 10e6, "latency_s": 0.1}
    cfg = runner.config_from_flags()
    assert cfg.network == "wifi" and cfg.network_overrides == {"uplink_bps": 10e6,
                                                               "latency_s": 0.1}
  with flagsaver.flagsaver(network="cellular"):
    assert _network.network_from_flags() == network.preset("cellular")
    assert _network.TARGET.value == 0.55 and _network.target_from_flags() == 0.55
  with flagsaver.flagsaver(network="none"):
    assert _network.network_from_flags() is None
  for bad, message in [({"uplink_mbps": -1.0}, "--uplink_mbps must be a finite number > 0"),
                       ({"downlink_mbps": 0.0}, "--downlink_mbps must be a finite number > 0"),
                       ({"latency_ms": -5.0}, "--latency_ms must be a finite number >= 0"),
                       ({"step_ms": math.nan}, "--step_ms must be a finite number >= 0"),
                       ({"straggler_sigma": -1.0}, "--straggler_sigma must be"),
                       ({"network": "none", "step_ms": 1.0}, "--network=none takes no link "
                        "overrides, got --step_ms")]:
    with flagsaver.flagsaver(**bad), pytest.raises(ValueError, match=message):
      _network.network_from_flags()
  with flagsaver.flagsaver(target_accuracy=2.0), pytest.raises(ValueError,
                                                                match="--target_accuracy"):
    _network.target_from_flags()
