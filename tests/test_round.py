"""The vmapped, chunked round: equivalence with the loop, weighting, empties, determinism."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_comp as fc
from fedjax_comp import aggregation, clients, codecs
from tests import helpers


def _sums(update, params, data, ids, chunk, seed=3):
  ids = jnp.asarray(ids, jnp.int32)
  return jax.jit(lambda p, d, i: aggregation.sum_client_updates(
      update, CODEC, p, d, i, jax.random.key(seed), chunk=chunk))(params, data, ids)


CODEC = codecs.identity()


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_vmapped_round_equals_per_client_loop(chunk):
  data = helpers.random_clients([5, 12, 0, 7, 9, 3, 12, 1], max_examples=12)
  model, update = helpers.mlp_setup(batch_size=4, local_epochs=2)
  params = model.init(jax.random.key(0))
  ids = [6, 0, 2, 5, 1, 7, 3]
  vmapped = _sums(update, params, data, ids, chunk)
  loop = fc.loop_round_sums(update, CODEC, params, data, ids, jax.random.key(3))
  chex.assert_trees_all_close(vmapped.weighted_delta, loop.weighted_delta, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(vmapped.weighted_loss, loop.weighted_loss, rtol=1e-5)
  assert float(vmapped.weight) == float(loop.weight) == 12 + 5 + 0 + 3 + 12 + 1 + 7
  assert int(vmapped.num_clients) == int(loop.num_clients) == 6
  assert int(vmapped.num_steps) == int(loop.num_steps)


def test_weighting_by_example_counts_is_exact():
  """Client i's delta is the constant c_i; the mean must be sum n_i c_i / sum n_i."""
  data = helpers.random_clients([1, 3, 0, 4], max_examples=4)
  constants = jnp.array([1.0, 5.0, 1e9, -2.0])

  def constant_update(params, client, key):
    del key
    cid = jnp.argmax(jnp.array([1, 3, 0, 4]) == client.num_examples)  # sizes are unique
    c = jnp.where(client.num_examples > 0, constants[cid], jnp.nan)  # empty: NaN on purpose
    delta = jax.tree.map(lambda p: jnp.full(p.shape, c), params)
    return delta, clients.ClientMetrics(train_loss=c, num_steps=jnp.int32(1))

  params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
  sums = _sums(constant_update, params, data, [0, 1, 2, 3], chunk=2)
  mean = aggregation.weighted_mean(sums)
  expected = (1 * 1.0 + 3 * 5.0 + 4 * -2.0) / 8  # the empty client (NaN, n=0) has no effect
  chex.assert_trees_all_close(mean, {"w": jnp.full((2, 3), expected), "b": jnp.full(3, expected)},
                              atol=0, rtol=1e-7)
  assert float(sums.weight) == 8.0 and int(sums.num_clients) == 3


def test_empty_client_changes_nothing():
  data = helpers.random_clients([6, 0, 4], max_examples=6)
  model, update = helpers.mlp_setup(batch_size=3)
  params = model.init(jax.random.key(1))
  with_empty = _sums(update, params, data, [0, 1, 2], chunk=2)
  without = _sums(update, params, data, [0, 2], chunk=2)
  chex.assert_trees_all_close(with_empty, without, atol=1e-6)
  # And the empty client's own update is exactly zero.
  delta, metrics = update(params, jax.tree.map(lambda a: a[1], data), jax.random.key(0))
  assert all(float(jnp.abs(d).max()) == 0.0 for d in jax.tree.leaves(delta))
  assert int(metrics.num_steps) == 0


def test_all_clients_empty_gives_zero_update_not_nan():
  data = helpers.random_clients([0, 0], max_examples=3)
  model, update = helpers.mlp_setup()
  params = model.init(jax.random.key(1))
  mean = aggregation.weighted_mean(_sums(update, params, data, [0, 1], chunk=1))
  assert all(float(jnp.abs(m).max()) == 0.0 for m in jax.tree.leaves(mean))


def test_result_does_not_depend_on_chunk_size():
  data = helpers.random_clients([4, 8, 2, 6, 8], max_examples=8)
  model, update = helpers.mlp_setup(batch_size=3)
  params = model.init(jax.random.key(2))
  a = _sums(update, params, data, [4, 3, 2, 1, 0], chunk=1)
  b = _sums(update, params, data, [4, 3, 2, 1, 0], chunk=5)
  chex.assert_trees_all_close(a, b, atol=1e-6)


def _run_fedavg(seed, rounds=3, server="fedavg", lr=1.0):
  data = helpers.random_clients([5, 7, 3, 8, 6, 2], max_examples=8)
  model, update = helpers.mlp_setup(batch_size=4)
  alg = fc.fed_avg(model.init, update, fc.server_optimizer(server, lr), clients_per_round=4,
                   client_chunk=2)
  state = alg.init(seed)
  for _ in range(rounds):
    state, metrics = alg.round(state, data)
  return state, metrics


def test_same_seed_is_bit_identical_and_other_seed_differs():
  a, _ = _run_fedavg(seed=7)
  b, _ = _run_fedavg(seed=7)
  c, _ = _run_fedavg(seed=8)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert any(not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


@pytest.mark.parametrize("name", fc.SERVER_OPTIMIZERS)
def test_every_server_optimizer_runs_a_finite_round(name):
  state, metrics = _run_fedavg(seed=0, rounds=2, server=name, lr=0.1)
  assert bool(metrics.finite) and int(state.round) == 2
  assert all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(state.params))


def test_server_update_is_w_plus_server_lr_times_mean_delta():
  """FedAvg's server step is W + eta * H: with constant deltas, W moves by eta * c."""
  data = helpers.random_clients([2, 2, 2], max_examples=2)

  def plus_one(params, client, key):
    return (jax.tree.map(jnp.ones_like, params),
            clients.ClientMetrics(train_loss=jnp.float32(0), num_steps=jnp.int32(1)))

  init = lambda key: {"w": jnp.full((3,), 2.0)}
  alg = fc.fed_avg(init, plus_one, fc.server_optimizer("fedavg", 0.25), clients_per_round=2)
  state, _ = alg.round(alg.init(0), data)
  np.testing.assert_allclose(state.params["w"], 2.25)


def test_fedsgd_one_client_full_batch_is_one_gradient_step():
  data = helpers.random_clients([9], max_examples=9)
  model, update = helpers.mlp_setup(lr=0.3, batch_size=None, local_epochs=1)
  params = model.init(jax.random.key(4))
  client = jax.tree.map(lambda a: a[0], data)
  delta, metrics = update(params, client, jax.random.key(0))
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(p, client.x), client.y).mean()
  grads = jax.grad(loss)(params)
  chex.assert_trees_all_close(delta, jax.tree.map(lambda g: -0.3 * g, grads), atol=1e-6)
  assert int(metrics.num_steps) == 1


def test_padding_is_masked_out():
  """The same client padded with garbage to 16 slots trains exactly as unpadded."""
  tight = helpers.random_clients([7], max_examples=7)
  padded = jax.tree.map(lambda a: a, tight)
  padded = padded.replace(
      x=np.concatenate([tight.x, np.full((1, 9, 6), 1e6, np.float32)], axis=1),
      y=np.concatenate([tight.y, np.full((1, 9), 2, np.int32)], axis=1))
  model, update = helpers.mlp_setup(batch_size=3, local_epochs=2)
  params = model.init(jax.random.key(5))
  d1, m1 = update(params, jax.tree.map(lambda a: a[0], tight), jax.random.key(9))
  d2, m2 = update(params, jax.tree.map(lambda a: a[0], padded), jax.random.key(9))
  chex.assert_trees_all_close(d1, d2, atol=1e-6)
  assert int(m1.num_steps) == int(m2.num_steps) == 2 * 3  # E * ceil(7 / 3)


def test_local_steps_mode_takes_exactly_k_steps():
  data = helpers.random_clients([2, 9], max_examples=9)
  _, update = helpers.mlp_setup(batch_size=4, local_steps=5)
  model = fc.get_model("mlp", (6,), 3)
  params = model.init(jax.random.key(0))
  for i in range(2):
    _, m = update(params, jax.tree.map(lambda a: a[i], data), jax.random.key(0))
    assert int(m.num_steps) == 5


def test_non_finite_aggregate_is_not_applied():
  data = helpers.random_clients([3, 3], max_examples=3)

  def nan_update(params, client, key):
    return (jax.tree.map(lambda p: jnp.full(p.shape, jnp.nan), params),
            clients.ClientMetrics(train_loss=jnp.float32(jnp.nan), num_steps=jnp.int32(1)))

  init = lambda key: {"w": jnp.ones((4,))}
  alg = fc.fed_avg(init, nan_update, fc.server_optimizer("fedadam", 0.1), clients_per_round=2)
  state0 = alg.init(0)
  state, metrics = alg.round(state0, data)
  assert not bool(metrics.finite)
  np.testing.assert_array_equal(state.params["w"], state0.params["w"])


def test_round_does_not_retrace():
  data = helpers.random_clients([3, 4, 5], max_examples=5)
  model, update = helpers.mlp_setup(batch_size=2)
  alg = fc.fed_avg(model.init, update, fc.server_optimizer("fedavg", 1.0), clients_per_round=2)
  state = alg.init(0)
  state, _ = alg.round(state, data)
  traced = alg.round._cache_size()  # pylint: disable=protected-access
  for _ in range(3):
    state, _ = alg.round(state, data)
  assert alg.round._cache_size() == traced == 1  # pylint: disable=protected-access
