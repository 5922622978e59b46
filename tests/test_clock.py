"""experiment.clock, the simulated clock: hand-computed cases, sampling, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedjax_comp.experiment import clock

# Two clients with round numbers.
#   client 0: uplink 1 Mb/s, downlink 4 Mb/s, latency 0.1 s, step 0.01 s
#   client 1: uplink 2 Mb/s, downlink 8 Mb/s, latency 0.3 s, step 0.02 s
TWO = clock.Links(uplink_bps=np.array([1e6, 2e6]), downlink_bps=np.array([4e6, 8e6]),
                    latency_s=np.array([0.1, 0.3]), step_s=np.array([0.01, 0.02]))


def _model(**changes):
  base = dict(uplink_bps=1e6, downlink_bps=2e6, latency_s=0.1, step_s=0.01,
              straggler_sigma=0.0)
  return clock.NetworkModel(**{**base, **changes})


# ----------------------------------------------------------------------------- round time


def test_client_times_by_hand():
  # 8e6 bits up, 16e6 down, 10 local steps:
  #   client 0: (0.1 + 16e6/4e6) + 10 * 0.01 + (0.1 + 8e6/1e6) = 4.1 + 0.1 + 8.1 = 12.3
  #   client 1: (0.3 + 16e6/8e6) + 10 * 0.02 + (0.3 + 8e6/2e6) = 2.3 + 0.2 + 4.3 = 6.8
  times = clock.client_times(TWO, [0, 1], up_bits=8e6, down_bits=16e6, num_steps=10)
  np.testing.assert_allclose(times, [12.3, 6.8], rtol=1e-12)
  # The round waits for the slowest: client 0, despite its lower latency.
  assert clock.sync_round_time(TWO, [0, 1], up_bits=8e6, down_bits=16e6,
                                 num_steps=10) == pytest.approx(12.3, rel=1e-12)
  # Only client 1 selected: its own time.
  assert clock.sync_round_time(TWO, [1], up_bits=8e6, down_bits=16e6,
                                 num_steps=10) == pytest.approx(6.8, rel=1e-12)


def test_straggler_max_follows_the_slowest_client():
  # No bits, no steps: only the two latencies count, 2 * 0.1 vs 2 * 0.3: client 1.
  assert clock.sync_round_time(TWO, [0, 1], up_bits=0, down_bits=0,
                                 num_steps=0) == pytest.approx(0.6, rel=1e-12)
  # Per-client bits and steps: client 0 sends nothing and takes 0 steps
  # (0.1 + 1 + 0 + 0.1 = 1.2); client 1 sends 8e6 bits in 100 steps
  # (0.3 + 0.5 + 100 * 0.02 + 0.3 + 4 = 7.1).
  times = clock.client_times(TWO, np.array([0, 1]), up_bits=np.array([0, 8e6]),
                               down_bits=4e6, num_steps=np.array([0, 100]))
  np.testing.assert_allclose(times, [1.2, 7.1], rtol=1e-12)
  # Compute-bound: 1000 steps, client 1's step is twice client 0's.
  #   client 0: 0.1 + 0 + 10 + 0.1 = 10.2;  client 1: 0.3 + 20 + 0.3 = 20.6
  assert clock.sync_round_time(TWO, [0, 1], up_bits=0, down_bits=0,
                                 num_steps=1000) == pytest.approx(20.6, rel=1e-12)
  assert clock.sync_round_time(TWO, [], up_bits=8e6, down_bits=16e6, num_steps=10) == 0.0


def test_allreduce_time_by_hand():
  # Upload: max(0.1 + 8e6/1e6, 0.3 + 8e6/2e6) = max(8.1, 4.3) = 8.1
  # Download: max(0.1 + 16e6/4e6, 0.3 + 16e6/8e6) = max(4.1, 2.3) = 4.1
  assert clock.allreduce_time(TWO, [0, 1], up_bits=8e6,
                                down_bits=16e6) == pytest.approx(12.2, rel=1e-12)
  # Client 1 alone: 4.3 + 2.3.
  assert clock.allreduce_time(TWO, [1], up_bits=8e6,
                                down_bits=16e6) == pytest.approx(6.6, rel=1e-12)
  assert clock.allreduce_time(TWO, [], up_bits=8e6, down_bits=16e6) == 0.0


def test_delay_steps_by_hand():
  # 12.2 s of allreduce over the slowest step, 0.02 s: 610.
  assert clock.delay_steps(TWO, [0, 1], up_bits=8e6, down_bits=16e6) == 610
  # 0.1 s up (latency only) + (0.1 + 1e5 / 1e6) s down = 0.30000000000000004 s
  # in floating point, over 0.1 s steps: 3, not ceil(3.0000000000000004) = 4.
  one = clock.Links(uplink_bps=[1e6], downlink_bps=[1e6], latency_s=[0.1], step_s=[0.1])
  assert clock.allreduce_time(one, [0], up_bits=0, down_bits=1e5) == 0.1 + 0.2
  assert clock.delay_steps(one, [0], up_bits=0, down_bits=1e5) == 3
  slow = clock.Links(uplink_bps=TWO.uplink_bps, downlink_bps=TWO.downlink_bps,
                       latency_s=TWO.latency_s, step_s=np.array([0.01, 0.03]))
  assert clock.delay_steps(slow, [0, 1], up_bits=8e6, down_bits=16e6) == 407  # 406.67
  # Client 0 alone: (8.1 + 4.1) / 0.01 = 1220.
  assert clock.delay_steps(TWO, [0], up_bits=8e6, down_bits=16e6) == 1220
  free = clock.Links(uplink_bps=[1.0], downlink_bps=[1.0], latency_s=[0.0], step_s=[0.0])
  assert clock.delay_steps(free, [0], up_bits=0, down_bits=0) == 0
  with pytest.raises(ValueError, match="every step_s is 0"):
    clock.delay_steps(free, [0], up_bits=8, down_bits=0)


# ----------------------------------------------------------------------------- periodic clock


def test_periodic_times_synchronous_adds_comm_at_every_sync():
  # K = 2, D = 0, step 1 s, comm 3 s: steps 2 and 4 each wait the full 3 s.
  np.testing.assert_array_equal(clock.periodic_times(4, 2, 0, 1.0, 3.0), [1, 5, 6, 10])
  # Synchronous SGD (K = 1, D = 0): every step costs step + comm.
  np.testing.assert_array_equal(clock.periodic_times(3, 1, 0, 0.5, 0.25), [0.75, 1.5, 2.25])


def test_periodic_times_hidden_when_delay_covers_comm():
  # K = 2, D = 3, comm 2 s <= D * step: the update sent after step 2 (t = 2 s)
  # arrives at 4 s, needed after step 5 (5 s): no stall. Later ones are due
  # after the last step. The clock is just num_steps * step_s.
  np.testing.assert_array_equal(clock.periodic_times(6, 2, 3, 1.0, 2.0), np.arange(1, 7))
  # The boundary D * step == comm: arrives exactly when needed.
  np.testing.assert_array_equal(clock.periodic_times(6, 2, 2, 1.0, 2.0), np.arange(1, 7))
  np.testing.assert_array_equal(clock.periodic_times(0, 2, 2, 1.0, 2.0), [])


def test_periodic_times_stall_by_hand():
  # K = 2, D = 1, step 1 s, comm 2.5 s:
  #   step 1: 1;  step 2: 2, sends (arrives 4.5, needed after step 3)
  #   step 3: max(3, 4.5) = 4.5;  step 4: 5.5, sends (arrives 8, needed after step 5)
  #   step 5: max(6.5, 8) = 8;  step 6: 9
  np.testing.assert_array_equal(clock.periodic_times(6, 2, 1, 1.0, 2.5),
                                [1, 2, 4.5, 5.5, 8, 9])
  # D a multiple of K: step 4 both waits for step 2's update and sends its own,
  # which departs when step 4's compute ends (4 s), not after the stall:
  #   1, 2 (sends, arrives 5), 3, max(4, 5) = 5 (sends at 4, arrives 7), 6, max(7, 7) = 7
  np.testing.assert_array_equal(clock.periodic_times(6, 2, 2, 1.0, 3.0),
                                [1, 2, 3, 5, 6, 7])


@pytest.mark.parametrize("args,message", [
    ((4, 0, 0, 1.0, 1.0), r"K \(period\) must be an integer >= 1"),
    ((4, 2, -1, 1.0, 1.0), r"D \(delay\) must be an integer >= 0"),
    ((-1, 2, 0, 1.0, 1.0), "num_steps must be an integer >= 0"),
    ((4, 2, 0, -1.0, 1.0), "step_s must be a finite number >= 0"),
    ((4, 2, 0, 1.0, math.nan), "comm_s must be a finite number >= 0"),
    ((4, 2.0, 0, 1.0, 1.0), r"K \(period\) must be an integer"),
])
def test_periodic_times_bad_input(args, message):
  with pytest.raises(ValueError, match=message):
    clock.periodic_times(*args)


# ----------------------------------------------------------------------------- models and presets


def test_presets_values_and_overrides():
  assert set(clock.PRESETS) == {"datacenter", "wifi", "cellular"}
  dc = clock.preset("datacenter")
  assert (dc.uplink_bps, dc.downlink_bps, dc.latency_s, dc.step_s) == (100e9, 100e9, 10e-6, 1e-3)
  cell = clock.preset("cellular")
  assert (cell.uplink_bps, cell.downlink_bps, cell.latency_s, cell.straggler_sigma) == (
      5e6, 20e6, 0.1, 0.5)
  wifi = clock.preset("wifi")
  assert cell.uplink_bps < wifi.uplink_bps < dc.uplink_bps
  assert dc.latency_s < wifi.latency_s < cell.latency_s
  # None overrides are ignored (unset flags); others replace just their field.
  assert clock.preset("wifi", uplink_bps=None, latency_s=None) == wifi
  slow = clock.preset("cellular", uplink_bps=1e6, straggler_sigma=None)
  assert slow == clock.NetworkModel(1e6, 20e6, 0.1, 5e-3, 0.5)
  assert "uplink 5 Mb/s" in cell.describe() and "latency 100 ms" in cell.describe()


@pytest.mark.parametrize("change,message", [
    ({"latency_s": -0.1}, r"latency_s must be a finite number >= 0 \(s\), got -0.1"),
    ({"uplink_bps": 0.0}, r"uplink_bps must be a finite number > 0 \(bits/s\), got 0.0"),
    ({"uplink_bps": -5.0}, "uplink_bps must be a finite number > 0"),
    ({"downlink_bps": 0}, "downlink_bps must be a finite number > 0"),
    ({"downlink_bps": math.nan}, "downlink_bps must be a finite number > 0"),
    ({"uplink_bps": math.inf}, "uplink_bps must be a finite number > 0"),
    ({"latency_s": math.nan}, "latency_s must be a finite number >= 0"),
    ({"step_s": -1e-3}, "step_s must be a finite number >= 0"),
    ({"straggler_sigma": -0.5}, "straggler_sigma must be a finite number >= 0"),
    ({"latency_s": "fast"}, "latency_s must be a finite number"),
])
def test_bad_network_model_raises_naming_the_field(change, message):
  with pytest.raises(ValueError, match=message):
    _model(**change)
  with pytest.raises(ValueError, match=message):
    clock.preset("wifi", **change)


def test_unknown_preset_and_field():
  with pytest.raises(ValueError, match="unknown network preset 'lte'; valid: cellular, "
                     "datacenter, wifi"):
    clock.preset("lte")
  with pytest.raises(ValueError, match="unknown NetworkModel field.*bandwidth.*valid: uplink_bps"):
    clock.preset("wifi", bandwidth=1e6)


# ----------------------------------------------------------------------------- sampling


def test_sigma_zero_gives_exactly_the_medians():
  net = clock.preset("datacenter")
  links = clock.sample_links(net, 7, seed=3)
  for name, value in [("uplink_bps", 100e9), ("downlink_bps", 100e9), ("latency_s", 10e-6),
                      ("step_s", 1e-3)]:
    got = getattr(links, name)
    assert got.dtype == np.float64 and got.shape == (7,)
    np.testing.assert_array_equal(got, np.full(7, value))
  assert links.medians()["latency_s"] == 10e-6
  assert clock.sample_links(net, 0, seed=0).num_clients == 0


def test_sampling_is_seeded():
  net = clock.preset("cellular")
  a, b = clock.sample_links(net, 100, seed=5), clock.sample_links(net, 100, seed=5)
  c = clock.sample_links(net, 100, seed=6)
  for name in ("uplink_bps", "downlink_bps", "latency_s", "step_s"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(getattr(a, name), getattr(c, name))


def test_lognormal_spread_around_the_medians():
  n, sigma = 20_000, 0.5
  net = clock.preset("cellular", straggler_sigma=sigma)
  links = clock.sample_links(net, n, seed=0)
  # log x = log(median) +- sigma * z: the sample mean of log x is within
  # 5 standard errors (sigma / sqrt(n)) of log(median), its std near sigma.
  bound = 5 * sigma / math.sqrt(n)
  for name in ("uplink_bps", "downlink_bps", "latency_s", "step_s"):
    logs = np.log(getattr(links, name))
    assert abs(logs.mean() - math.log(getattr(net, name))) < bound, name
    assert abs(logs.std() - sigma) < 0.02, name
  # One connection factor: a slow uplink is a slow downlink and a long latency...
  np.testing.assert_allclose(links.downlink_bps / links.uplink_bps, 4.0, rtol=1e-12)
  np.testing.assert_allclose(links.uplink_bps * links.latency_s, 5e6 * 0.1, rtol=1e-12)
  # ...and an independent device factor for the step time.
  r = np.corrcoef(np.log(links.step_s), np.log(links.latency_s))[0, 1]
  assert abs(r) < 0.05
  assert links.uplink_bps.max() / links.uplink_bps.min() > 10  # real stragglers


def test_links_and_ids_are_checked():
  with pytest.raises(ValueError, match="Links.downlink_bps must be a 1-D array"):
    clock.Links(uplink_bps=[1.0, 2.0], downlink_bps=[1.0], latency_s=[0.0, 0.0],
                  step_s=[0.0, 0.0])
  with pytest.raises(ValueError, match="Links.uplink_bps must be finite and > 0"):
    clock.Links(uplink_bps=[0.0], downlink_bps=[1.0], latency_s=[0.0], step_s=[0.0])
  with pytest.raises(ValueError, match="Links.latency_s must be finite and >= 0"):
    clock.Links(uplink_bps=[1.0], downlink_bps=[1.0], latency_s=[-1.0], step_s=[0.0])
  with pytest.raises(ValueError, match=r"ids must be in \[0, num_clients=2\)"):
    clock.client_times(TWO, [0, 2], up_bits=1, down_bits=1, num_steps=1)
  with pytest.raises(ValueError, match="up_bits must be finite and >= 0"):
    clock.sync_round_time(TWO, [0], up_bits=-8, down_bits=1, num_steps=1)
  with pytest.raises(ValueError, match=r"num_steps must be a scalar or one value per id \(2\)"):
    clock.client_times(TWO, [0, 1], up_bits=1, down_bits=1, num_steps=[1, 2, 3])
  with pytest.raises(ValueError, match="num_clients must be an integer >= 0"):
    clock.sample_links(clock.preset("wifi"), -1, seed=0)
  with pytest.raises(ValueError, match="seed must be an integer >= 0"):
    clock.sample_links(clock.preset("wifi"), 3, seed=-1)


# ----------------------------------------------------------------------------- clock and target


def test_clock_running_total():
  total = clock.Clock()
  assert total.add(1.5) == 1.5 and total.add(0.25) == 1.75 and total.total_s == 1.75
  assert clock.Clock(10.0).add(2.0) == 12.0
  with pytest.raises(ValueError, match="seconds must be a finite number >= 0"):
    total.add(-1.0)
  with pytest.raises(ValueError, match="seconds must be a finite number >= 0"):
    total.add(math.nan)


def test_round_clock_charges_the_round_from_its_ids_and_steps():
  net = clock.preset("cellular")
  rc = clock.RoundClock(net, 6, seed=4)
  links = clock.sample_links(net, 6, seed=4)  # the same draw: the run's seed
  for name in ("uplink_bps", "downlink_bps", "latency_s", "step_s"):
    np.testing.assert_array_equal(getattr(rc.links, name), getattr(links, name))
  ids, steps = np.array([0, 2, 3, 5]), np.array([4, 0, 7, 1])
  # Client 2 has no data (0 steps): it sends nothing, and the round does not wait for it.
  expected = clock.sync_round_time(links, [0, 3, 5], up_bits=1e6, down_bits=2e6,
                                   num_steps=[4, 7, 1])
  seconds = rc.round_seconds(ids, steps, up_bits=1e6, down_bits=2e6)
  assert seconds == expected > 0
  slowest = clock.client_times(links, ids, up_bits=1e6, down_bits=2e6, num_steps=steps)
  assert seconds == max(slowest[[0, 2, 3]])
  assert rc.add_round(ids, steps, up_bits=1e6, down_bits=2e6) == (seconds, seconds)
  assert rc.add_round(ids, steps, up_bits=1e6, down_bits=2e6) == (seconds, 2 * seconds)
  # A round whose clients are all empty costs nothing.
  assert rc.round_seconds([1, 4], [0, 0], up_bits=1e6, down_bits=2e6) == 0.0


def test_time_to_target():
  times, accs = [10.0, 20.0, 30.0], [0.1, 0.6, 0.7]
  assert clock.time_to_target(times, accs, 0.55) == 20.0
  assert clock.time_to_target(times, accs, 0.6) == 20.0  # >=, not >
  assert clock.time_to_target(times, accs, 0.8) is None
  assert clock.time_to_target([1, 2, 3], [math.nan, 0.5, 0.9], 0.5) == 2  # rounds too
  assert clock.time_to_target(np.array([5, 6]), np.array([0.9, 1.0]), 0.5) == 5
  assert clock.time_to_target([], [], 0.5) is None
  with pytest.raises(ValueError, match="same length"):
    clock.time_to_target([1, 2], [0.5], 0.5)


def test_readable_unit():
  assert clock.readable_unit(90) == ("s", 1.0)
  assert clock.readable_unit(600) == ("min", 60.0)
  assert clock.readable_unit(5 * 3600) == ("h", 3600.0)


def test_round_clock_takes_per_client_bits_and_names_a_misfit():
  rc = clock.RoundClock(clock.preset("cellular"), 10, seed=0)
  ids, steps = np.array([3, 5, 7]), np.array([2, 0, 4])  # client 5 has no data: left out
  got = rc.round_seconds(ids, steps, up_bits=100, down_bits=np.array([10, 99999, 30]))
  assert got == clock.sync_round_time(rc.links, np.array([3, 7]), up_bits=100,
                                      down_bits=np.array([10, 30]), num_steps=np.array([2, 4]))
  with pytest.raises(ValueError, match=r"down_bits must be a scalar or one value per client id "
                                       r"\(3\), got shape \(2,\)"):
    rc.round_seconds(ids, steps, up_bits=100, down_bits=np.array([10, 30]))
