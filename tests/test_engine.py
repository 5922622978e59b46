"""The round engine: equivalence with the loop, weighting, empties, chunking, padding, refusal."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_comp as fc
from fedjax_comp.algorithms import base, engine, reference
from tests import helpers


def _sums(alg, data, ids, chunk, seed=3, state=None):
  state = state or alg.init(0)
  run = jax.jit(lambda b, c, k: engine.run_cohort(alg.client, b, c, k, chunk=chunk))
  return run(alg.broadcast(state), helpers.cohort(data, ids), jax.random.key(seed))


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_vmapped_cohort_equals_per_client_loop(chunk):
  data = helpers.random_clients([5, 12, 0, 7, 9, 3, 12, 1], max_examples=12)
  alg = helpers.fed_avg(helpers.mlp(), batch_size=4, epochs=2)
  state = alg.init(0)
  ids = [6, 0, 2, 5, 1, 7, 3]
  vmapped = _sums(alg, data, ids, chunk, state=state)
  state = state.replace(round=jnp.int32(0))
  loop = reference.cohort_sums(alg, state, helpers.cohort(data, ids))
  # The engine keys clients by fold_in(round_key, id); so does the loop, from the state.
  vmapped = jax.jit(lambda b, c: engine.run_cohort(
      alg.client, b, c, fc.keys.round_key(state.seed_key, state.round), chunk=chunk))(
          alg.broadcast(state), helpers.cohort(data, ids))
  chex.assert_trees_all_close(vmapped.sums, loop.sums, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(vmapped.weighted_loss, loop.weighted_loss, rtol=1e-5)
  assert float(vmapped.num_examples) == float(loop.num_examples) == 12 + 5 + 0 + 3 + 12 + 1 + 7
  assert int(vmapped.num_clients) == int(loop.num_clients) == 6
  assert int(vmapped.num_steps) == int(loop.num_steps)
  # Per-client outputs come back in the cohort's id order.
  np.testing.assert_array_equal(vmapped.client_steps, loop.client_steps)
  sizes = np.array([5, 12, 0, 7, 9, 3, 12, 1])[ids]
  np.testing.assert_array_equal(vmapped.client_steps, 2 * -(-sizes // 4))


def _constant_client(constants, sizes):
  """Client i's delta is the constant c_i (NaN for an empty client, on purpose)."""

  def client(params, data, row, key):
    del key
    cid = jnp.argmax(jnp.asarray(sizes) == data.num_examples)  # sizes are unique
    c = jnp.where(data.num_examples > 0, jnp.asarray(constants)[cid], jnp.nan)
    delta = jax.tree.map(lambda p: jnp.full(p.shape, c), params)
    return base.ClientOutput(sums={"delta": base.Weighted(data.num_examples.astype(jnp.float32),
                                                          delta)},
                             row=row, train_loss=c, num_steps=jnp.int32(1))

  return client


def test_weighting_by_example_counts_is_exact():
  sizes = [1, 3, 0, 4]
  data = helpers.random_clients(sizes, max_examples=4)
  params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
  sums = engine.run_cohort(_constant_client([1.0, 5.0, 1e9, -2.0], sizes), params,
                           helpers.cohort(data, [0, 1, 2, 3]), jax.random.key(0), chunk=2)
  mean = base.weighted_mean(sums, "delta")
  expected = (1 * 1.0 + 3 * 5.0 + 4 * -2.0) / 8  # the empty client (NaN, n=0) has no effect
  chex.assert_trees_all_close(mean, {"w": jnp.full((2, 3), expected), "b": jnp.full(3, expected)},
                              atol=0, rtol=1e-7)
  assert float(sums.num_examples) == 8.0 and int(sums.num_clients) == 3
  np.testing.assert_array_equal(sums.client_steps, [1, 1, 0, 1])  # the empty one trained nothing


def test_empty_client_changes_nothing():
  data = helpers.random_clients([6, 0, 4], max_examples=6)
  alg = helpers.fed_avg(helpers.mlp(), batch_size=3)
  with_empty = _sums(alg, data, [0, 1, 2], chunk=2)
  without = _sums(alg, data, [0, 2], chunk=2)
  chex.assert_trees_all_close(with_empty.sums, without.sums, atol=1e-6)
  assert float(with_empty.num_examples) == float(without.num_examples)
  model = helpers.mlp()
  update = helpers.client_update(model, batch_size=3)
  delta, metrics = update(model.init(jax.random.key(1)), jax.tree.map(lambda a: a[1], data),
                          jax.random.key(0))
  assert all(float(jnp.abs(d).max()) == 0.0 for d in jax.tree.leaves(delta))
  assert int(metrics.num_steps) == 0


def test_all_clients_empty_gives_zero_update_not_nan():
  data = helpers.random_clients([0, 0], max_examples=3)
  alg = helpers.fed_avg(helpers.mlp())
  mean = base.weighted_mean(_sums(alg, data, [0, 1], chunk=1), "delta")
  assert all(float(jnp.abs(m).max()) == 0.0 for m in jax.tree.leaves(mean))


def test_result_does_not_depend_on_chunk_size():
  data = helpers.random_clients([4, 8, 2, 6, 8], max_examples=8)
  alg = helpers.fed_avg(helpers.mlp(), batch_size=3)
  a = _sums(alg, data, [4, 3, 2, 1, 0], chunk=1)
  b = _sums(alg, data, [4, 3, 2, 1, 0], chunk=5)
  chex.assert_trees_all_close(a, b, atol=1e-6)


def _run(seed, rounds=3, server="fedavg", lr=1.0):
  data = helpers.random_clients([5, 7, 3, 8, 6, 2], max_examples=8)
  alg = helpers.fed_avg(helpers.mlp(), server=server, server_lr=lr, batch_size=4)
  state = alg.init(seed)
  bound = fc.DeviceStore(data).bind(alg, state.params)
  for _ in range(rounds):
    state, out = bound.step(state)
  return state, out


def test_same_seed_is_bit_identical_and_other_seed_differs():
  a, _ = _run(seed=7)
  b, _ = _run(seed=7)
  c, _ = _run(seed=8)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert any(not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


@pytest.mark.parametrize("name", fc.SERVER_OPTIMIZERS)
def test_every_server_optimizer_runs_a_finite_round(name):
  state, out = _run(seed=0, rounds=2, server=name, lr=0.1)
  assert bool(out.metrics.finite) and int(state.round) == 2
  assert all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(state.params))


def test_server_update_is_w_plus_server_lr_times_mean_delta():
  """FedAvg's server step is W + eta * H: with H = 1, W moves by eta."""
  opt = fc.server_optimizer("fedavg", 0.25)
  params = {"w": jnp.full((3,), 2.0)}
  state = fc.ServerState(params=params, opt_state=opt.init(params), round=jnp.int32(0),
                         seed_key=fc.keys.seed_key(0))
  new, _, finite = base.server_step(state, {"w": jnp.ones(3)}, opt)
  np.testing.assert_allclose(new["w"], 2.25)
  assert bool(finite)


def test_fedsgd_one_client_full_batch_is_one_gradient_step():
  data = helpers.random_clients([9], max_examples=9)
  model = helpers.mlp()
  update = helpers.client_update(model, lr=0.3, batch_size=None, epochs=1)
  params = model.init(jax.random.key(4))
  client = jax.tree.map(lambda a: a[0], data)
  delta, metrics = update(params, client, jax.random.key(0))
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(p, client.features["x"]), client.features["y"]).mean()
  grads = jax.grad(loss)(params)
  chex.assert_trees_all_close(delta, jax.tree.map(lambda g: -0.3 * g, grads), atol=1e-6)
  assert int(metrics.num_steps) == 1


def test_padding_is_masked_out():
  """The same client padded with garbage to 16 slots trains exactly as unpadded."""
  tight = helpers.random_clients([7], max_examples=7)
  padded = tight.replace(features={
      "x": np.concatenate([tight.features["x"], np.full((1, 9, 6), 1e6, np.float32)], axis=1),
      "y": np.concatenate([tight.features["y"], np.full((1, 9), 2, np.int32)], axis=1)})
  model = helpers.mlp()
  update = helpers.client_update(model, batch_size=3, epochs=2)
  params = model.init(jax.random.key(5))
  d1, m1 = update(params, jax.tree.map(lambda a: a[0], tight), jax.random.key(9))
  d2, m2 = update(params, jax.tree.map(lambda a: a[0], padded), jax.random.key(9))
  chex.assert_trees_all_close(d1, d2, atol=0, rtol=0)  # bit-identical: padding is inert
  assert int(m1.num_steps) == int(m2.num_steps) == 2 * 3  # E * ceil(7 / 3)
  assert float(m1.train_loss) == float(m2.train_loss)


def test_local_steps_mode_takes_exactly_k_steps():
  data = helpers.random_clients([2, 9], max_examples=9)
  model = helpers.mlp()
  update = helpers.client_update(model, batch_size=4, steps=5)
  params = model.init(jax.random.key(0))
  for i in range(2):
    _, m = update(params, jax.tree.map(lambda a: a[i], data), jax.random.key(0))
    assert int(m.num_steps) == 5


def test_non_finite_aggregate_is_not_applied():
  data = helpers.random_clients([3, 3], max_examples=3)
  alg = helpers.fed_avg(helpers.mlp(), server="fedadam", server_lr=0.1, clients_per_round=2)

  def nan_client(params, client, row, key):
    out = alg.client(params, client, row, key)
    poisoned = jax.tree.map(lambda v: v * jnp.nan, out.sums["delta"].value)
    return out._replace(sums={"delta": out.sums["delta"]._replace(value=poisoned)})

  round_fn = engine.make_round(alg.broadcast, nan_client, alg.server, chunk=1)
  state0 = alg.init(0)
  state, out = round_fn(state0, helpers.cohort(data, [0, 1]))
  assert not bool(out.metrics.finite)
  chex.assert_trees_all_equal(state.params, state0.params)
  chex.assert_trees_all_equal(state.opt_state, state0.opt_state)
  assert int(state.round) == 1  # the round happened; its update was refused


def test_round_compiles_once():
  data = helpers.random_clients([3, 4, 5], max_examples=5)
  chex.clear_trace_counter()
  alg = helpers.fed_avg(helpers.mlp(), batch_size=2, clients_per_round=2)
  traced = chex.assert_max_traces(alg.broadcast, n=1)  # called once per trace of the round
  alg = alg._replace(round=engine.make_round(traced, alg.client, alg.server, chunk=2))
  state = alg.init(0)
  bound = fc.DeviceStore(data).bind(alg, state.params)
  for _ in range(4):
    state, _ = bound.step(state)
  assert int(state.round) == 4


def test_large_buckets_loop_only_over_a_clients_own_batches():
  """A client with 30 examples trains the same, bit for bit, padded to 15 or 100 batches
  (the scan path and the dynamic-loop path), next to a larger client in its chunk."""
  tight = helpers.random_clients([30, 34], max_examples=34, seed=3)
  padded = tight.replace(features={
      "x": np.concatenate([tight.features["x"], np.zeros((2, 166, 6), np.float32)], axis=1),
      "y": np.concatenate([tight.features["y"], np.zeros((2, 166), np.int32)], axis=1)})
  model = helpers.mlp()
  update = jax.jit(jax.vmap(helpers.client_update(model, batch_size=2, epochs=2),
                            in_axes=(None, 0, None)))
  params = model.init(jax.random.key(5))
  d1, m1 = update(params, tight, jax.random.key(9))  # 17 batches: dynamic loop
  d2, m2 = update(params, padded, jax.random.key(9))  # 100 batches: dynamic loop
  single = helpers.client_update(model, batch_size=2, epochs=2)
  first = fc.ClientArrays(features={k: v[0, :30] for k, v in tight.features.items()},
                          num_examples=tight.num_examples[0])
  d3, m3 = jax.jit(single)(params, first, jax.random.key(9))  # 15 batches: the scan
  chex.assert_trees_all_close(d1, d2, atol=0, rtol=0)
  # Unbatched, the same steps (a vmapped matmul of another width rounds differently).
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], d1), d3, atol=1e-6)
  np.testing.assert_array_equal(m1.num_steps, [30, 34])
  assert int(m3.num_steps) == 30
  np.testing.assert_allclose(m3.train_loss, m1.train_loss[0], rtol=1e-6)
