"""Client stores: ragged clients, cohort buckets, caps, memory refusal, memory-mapped files."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import fedjax_comp as fc
from fedjax_comp.data import stores
from fedjax_comp.data.host_store import HostStore, next_pow2
from fedjax_comp.data.ragged import RaggedClients
from tests import helpers


def test_ragged_round_trips_padded_clients_and_gathers_capped_cohorts():
  padded = helpers.random_clients([3, 0, 5, 1], max_examples=5)
  ragged = RaggedClients.from_client_arrays(padded)
  np.testing.assert_array_equal(ragged.sizes(), [3, 0, 5, 1])
  assert ragged.features["x"].shape == (9, 6)  # no padding kept
  got = ragged.gather(np.array([2, 0, 1]), bucket=4)
  x = padded.features["x"]
  np.testing.assert_array_equal(got["x"][0], x[2, :4])  # capped at the bucket: first 4 kept
  np.testing.assert_array_equal(got["x"][1, :3], x[0, :3])
  assert not got["x"][1, 3:].any() and not got["x"][2].any()  # zero padding


def test_memory_mapped_ragged_clients(tmp_path):
  ragged = RaggedClients.from_client_arrays(helpers.random_clients([4, 2, 7], max_examples=7))
  ragged.save(tmp_path)
  loaded = RaggedClients.load(tmp_path)
  assert isinstance(loaded.features["x"], np.memmap)
  for a, b in zip(ragged.gather(np.array([2, 1]), 8).values(),
                  loaded.gather(np.array([2, 1]), 8).values()):
    np.testing.assert_array_equal(a, b)


def test_cohort_bucket_is_the_next_power_of_two_within_bounds():
  ragged = RaggedClients.from_client_arrays(helpers.random_clients([3, 9, 40, 17, 2]))
  store = HostStore(ragged, min_bucket=4, say=None)
  assert store.bucket(np.array([0, 4])) == 4  # largest 3 -> 4
  assert store.bucket(np.array([1, 0])) == 16  # 9 -> 16
  assert store.bucket(np.array([2])) == 40  # 40 -> 64, cut to the population's largest
  capped = HostStore(ragged, max_examples=10, min_bucket=4, say=None)
  assert capped.bucket(np.array([2, 3])) == 10
  assert [next_pow2(n) for n in (1, 2, 3, 16, 17)] == [1, 2, 4, 16, 32]


def test_capping_is_announced_naming_what_is_kept():
  said = []
  ragged = RaggedClients.from_client_arrays(helpers.random_clients([3, 9, 40]))
  HostStore(ragged, max_examples=8, say=said.append)
  assert said == ["host store: 2 of 3 clients hold more than max_examples=8 examples "
                  "(largest 40); each keeps its first 8 in stored order"]


def test_device_store_refuses_a_population_over_its_budget():
  data = helpers.random_clients([4, 4, 4], max_examples=4)
  with pytest.raises(ValueError, match=r"client_store=device: the population needs 0.00 GiB "
                     r"per device, over the device store's memory budget .*client_store=host"):
    stores.DeviceStore(data, memory_budget_bytes=100)
  alg = helpers.fed_avg(helpers.mlp(), clients_per_round=2)
  params = alg.init(0).params
  store = stores.DeviceStore(data, memory_budget_bytes=stores.tree_bytes(data) + 10)
  store.bind(alg, params)  # stateless: the population alone fits
  scaffold = fc.scaffold(helpers.mlp(), 0.1, fc.server_optimizer("fedavg", 1.0),
                         clients_per_round=2)
  with pytest.raises(ValueError, match="with its per-client state rows"):
    store.bind(scaffold, params)  # 3 rows of the MLP's size do not fit in 10 bytes


def test_host_store_prefetches_the_next_cohort_and_reports_its_wait():
  data = helpers.random_clients([5, 7, 3, 8, 6, 2], max_examples=8)
  alg = helpers.fed_avg(helpers.mlp(), clients_per_round=3, batch_size=4)
  state = alg.init(0)
  bound = HostStore(RaggedClients.from_client_arrays(data), min_bucket=4, say=None).bind(
      alg, state.params)
  step = bound.compile(state)
  for r in range(3):
    state, out = step(state)
    assert bound._next is not None and bound._next[0] == r + 1  # pylint: disable=protected-access
    assert bound.data_wait_s >= 0.0
  want = [np.asarray(fc.sampling.round_ids(state.seed_key, r, 6, 3)) for r in range(3)]
  np.testing.assert_array_equal(out.client_ids, want[-1])
  assert set(bound.buckets_compiled) <= {4, 8}


def test_host_store_refuses_more_clients_per_round_than_it_holds():
  data = helpers.random_clients([5, 7], max_examples=8)
  alg = helpers.fed_avg(helpers.mlp(), clients_per_round=3)
  with pytest.raises(ValueError, match=r"clients_per_round must be in \[1, num_clients=2\]"):
    HostStore(RaggedClients.from_client_arrays(data), say=None).bind(alg, alg.init(0).params)


def test_rows_table_round_trips_between_stores():
  data = helpers.random_clients([5, 7, 3, 8], max_examples=8)
  alg = fc.scaffold(helpers.mlp(), 0.1, fc.server_optimizer("fedavg", 1.0),
                    fc.LocalSchedule(batch_size=4), clients_per_round=2, client_chunk=1)
  state = alg.init(0)
  device = fc.DeviceStore(data).bind(alg, state.params)
  for _ in range(2):
    state, _ = device.step(state)
  host = HostStore(RaggedClients.from_client_arrays(data), say=None).bind(alg, state.params)
  host.set_rows(device.get_rows())
  back = fc.DeviceStore(data).bind(alg, state.params)
  back.set_rows(host.get_rows())
  jax.tree.map(np.testing.assert_array_equal, back.get_rows(), device.get_rows())


def test_rows_of_another_shape_are_refused():
  data = helpers.random_clients([5, 7, 3], max_examples=8)
  alg = fc.scaffold(helpers.mlp(), 0.1, fc.server_optimizer("fedavg", 1.0),
                    clients_per_round=2, client_chunk=1)
  other = fc.scaffold(fc.get_model("logistic", (6,), 3), 0.1,
                      fc.server_optimizer("fedavg", 1.0), clients_per_round=2, client_chunk=1)
  table = fc.DeviceStore(data).bind(other, other.init(0).params).get_rows()
  params = alg.init(0).params
  for bound in (fc.DeviceStore(data).bind(alg, params),
                HostStore(RaggedClients.from_client_arrays(data), say=None).bind(alg, params)):
    with pytest.raises(ValueError, match="state rows: the table's structure"):
      bound.set_rows(table)
  mlp_table = fc.DeviceStore(data).bind(alg, params).get_rows()
  bad = {"ids": mlp_table["ids"], "rows": jax.tree.map(lambda r: r[:, :1], mlp_table["rows"])}
  with pytest.raises(ValueError, match=r"state rows: an array of shape \(3, 1"):
    fc.DeviceStore(data).bind(alg, params).set_rows(bad)


def test_host_store_follows_a_state_it_did_not_return():
  """Running from another state (a restart, a checkpoint) samples that state's round."""
  data = helpers.random_clients([5, 7, 3, 8, 6, 2], max_examples=8)
  alg = helpers.fed_avg(helpers.mlp(), clients_per_round=3, batch_size=4)
  state0 = alg.init(0)
  bound = HostStore(RaggedClients.from_client_arrays(data), min_bucket=4, say=None).bind(
      alg, state0.params)
  step = bound.compile(state0)
  outs = []
  for _ in range(2):  # the same two rounds twice, from the initial state
    state = state0
    for _ in range(2):
      state, out = step(state)
      outs.append(np.asarray(out.client_ids))
  np.testing.assert_array_equal(outs[0], outs[2])
  np.testing.assert_array_equal(outs[1], outs[3])
  np.testing.assert_array_equal(outs[1], fc.sampling.round_ids(state0.seed_key, 1, 6, 3))
