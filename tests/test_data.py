"""Sources, partitioners and padded client arrays."""

from __future__ import annotations

import collections
import threading

import jax
import numpy as np
import pytest

from fedjax_comp import data as data_lib
from fedjax_comp import sampling
from fedjax_comp.data import partition, sources
from fedjax_comp.data.examples import Examples


def _labels(n=1000, classes=10, seed=0):
  return np.random.default_rng(seed).integers(0, classes, n)


def _assert_disjoint_cover(parts, n, exact=True):
  flat = np.concatenate(parts)
  assert len(flat) == len(set(flat.tolist()))
  if exact:
    assert sorted(flat.tolist()) == list(range(n))


def test_iid_is_a_balanced_disjoint_cover():
  parts = partition.iid(1003, 10, seed=0)
  _assert_disjoint_cover(parts, 1003)
  assert {len(p) for p in parts} == {100, 101}


def test_dirichlet_equal_sizes_and_label_skew_grows_as_alpha_shrinks():
  labels = _labels(5000)
  skewed = partition.dirichlet(labels, 50, alpha=0.05, seed=0)
  mild = partition.dirichlet(labels, 50, alpha=100.0, seed=0)
  for parts in (skewed, mild):
    _assert_disjoint_cover(parts, 5000)
    assert {len(p) for p in parts} == {100}

  def mean_top_class_share(parts):
    return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])

  assert mean_top_class_share(skewed) > 0.6  # most of a client is one class
  assert mean_top_class_share(mild) < 0.25  # close to 1/10


def test_shards_are_pathological_two_label_clients():
  labels = np.repeat(np.arange(10), 60)  # 600 examples, 60 per label
  parts = partition.shards(labels, 20, seed=0, shards_per_client=2)  # 40 shards of 15
  _assert_disjoint_cover(parts, 600)
  for p in parts:
    assert len(p) == 30
    assert len(np.unique(labels[p])) <= 2


def test_impossible_shards_raise():
  with pytest.raises(ValueError, match="impossible partition.*shards"):
    partition.shards(np.zeros(10, int), 6, seed=0, shards_per_client=2)


def test_natural_partition_groups_by_owner():
  groups = np.array([3, 1, 3, 2, 1, 3])
  parts = partition.natural(groups)
  assert [sorted(p.tolist()) for p in parts] == [[1, 4], [3], [0, 2, 5]]
  with pytest.raises(ValueError, match="num_clients"):
    partition.natural(groups, num_clients=5)
  with pytest.raises(ValueError, match="natural clients"):
    partition.natural(None)


def test_to_client_arrays_pads_and_masks():
  ex = Examples(x=np.arange(10, dtype=np.float32)[:, None], y=np.arange(10, dtype=np.int32))
  arrays = data_lib.to_client_arrays(ex, [np.array([4, 2]), np.array([], int), np.array([9, 8, 7])])
  assert arrays.features['x'].shape == (3, 3, 1)
  np.testing.assert_array_equal(arrays.num_examples, [2, 0, 3])
  np.testing.assert_array_equal(arrays.features['y'], [[4, 2, 0], [0, 0, 0], [9, 8, 7]])
  np.testing.assert_array_equal(np.asarray(arrays.mask()),
                                [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
  capped = data_lib.to_client_arrays(ex, [np.array([1, 2, 3])], max_examples=2)
  np.testing.assert_array_equal(capped.features['y'], [[1, 2]])


def test_empty_dataset_raises():
  empty = Examples(x=np.zeros((0, 4), np.float32), y=np.zeros((0,), np.int32))
  source = data_lib.SourceData(train=empty, test=empty, num_classes=10)
  with pytest.raises(ValueError, match="empty dataset"):
    data_lib.partition_source(source, "iid", num_clients=2, seed=0)


def test_unknown_names_raise_listing_valid_ones():
  with pytest.raises(ValueError, match="valid datasets: .*mnist1d"):
    data_lib.load_federated("imagenet", "iid", num_clients=2)
  with pytest.raises(ValueError, match="valid partitions: .*dirichlet"):
    data_lib.load_federated("digits", "by_magic", num_clients=2)


def test_synthetic_ten_thousand_clients():
  d = data_lib.load_federated("synthetic", "natural", num_clients=10_000, seed=1)
  assert d.num_clients == 10_000
  assert d.clients.features['x'].shape[2:] == (60,) and d.num_classes == 10
  n = np.asarray(d.clients.num_examples)
  assert n.min() >= 8 and n.max() <= 250  # 80% of [10, 250] stays in train
  assert len(d.test.y) > 0
  # Heterogeneous: clients' label distributions differ far more than IID ones would.
  skew = np.mean([np.bincount(d.clients.features['y'][i, :n[i]], minlength=10).max() / n[i]
                  for i in range(200)])
  assert skew > 0.5


def test_synthetic_is_seeded():
  a = sources.synthetic(0.5, 0.5, num_clients=20, seed=3)
  b = sources.synthetic(0.5, 0.5, num_clients=20, seed=3)
  np.testing.assert_array_equal(a.train.x, b.train.x)
  np.testing.assert_array_equal(a.test.y, b.test.y)


def test_mnist1d_generated_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("FEDJAX_COMP_CACHE", str(tmp_path))
  state = np.random.get_state()
  a = sources.mnist1d(num_samples=200)
  assert np.random.get_state()[1].tolist() == state[1].tolist()  # global RNG untouched
  assert a.train.x.shape == (160, 40) and a.test.x.shape == (40, 40)
  assert len(list(tmp_path.glob("mnist1d_*.npz"))) == 1
  b = sources.mnist1d(num_samples=200)
  np.testing.assert_array_equal(a.train.x, b.train.x)


def test_mnist1d_generation_waits_for_a_process_already_generating_it(tmp_path, monkeypatch):
  # Parallel test workers or runners generate MNIST-1D (half a minute) once between them:
  # a caller that finds the lock held waits, then reads the holder's file.
  monkeypatch.setenv("FEDJAX_COMP_CACHE", str(tmp_path))
  sources.mnist1d(num_samples=200)
  path = next(tmp_path.glob("mnist1d_*.npz"))
  path.unlink()
  got = {}
  with sources._generation_lock(path):  # pylint: disable=protected-access
    waiter = threading.Thread(target=lambda: got.update(d=sources.mnist1d(num_samples=200)))
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive()  # blocked on the lock, not generating
    zeros = {"x": np.zeros((3, 40)), "y": np.zeros(3), "x_test": np.zeros((2, 40)),
             "y_test": np.zeros(2)}
    np.savez(path, **zeros)  # what "the other process" wrote
  waiter.join(timeout=60)
  assert got["d"].train.x.shape == (3, 40) and not got["d"].train.x.any()  # read, not made


def test_digits_source():
  d = data_lib.load_federated("digits", "shards", num_clients=50, seed=0)
  assert d.input_shape == (8, 8) and d.num_classes == 10
  assert int(np.asarray(d.clients.num_examples).sum()) + len(d.test.y) <= 1797
  assert 0.0 <= d.clients.features['x'].min() and d.clients.features['x'].max() <= 1.0


def test_sample_clients_uniform_without_replacement():
  counts = collections.Counter()
  trials = 3000
  for t in range(trials):
    ids = np.asarray(sampling.sample_clients(jax.random.key(t), 10, 3))
    assert len(set(ids.tolist())) == 3 and ids.min() >= 0 and ids.max() < 10
    counts.update(ids.tolist())
  # Each id appears with probability 0.3; binomial std over 3000 trials is 25.
  for c in range(10):
    assert abs(counts[c] - 900) < 5 * 25
  with pytest.raises(ValueError, match="clients_per_round must be in"):
    sampling.sample_clients(jax.random.key(0), 5, 6)


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (1000, 100), (1000, 1000), (5000, 1)])
def test_kth_largest_equals_the_sorted_value_with_ties(n, k):
  rng = np.random.default_rng(n + k)
  for scores in (rng.integers(0, 2**32, n, dtype=np.uint32),
                 rng.choice(np.array([0, 5, 2**31, 2**32 - 1], np.uint32), n)):  # many ties
    got = int(jax.jit(sampling.kth_largest, static_argnums=1)(scores, k))
    assert got == int(np.sort(scores)[n - k])
