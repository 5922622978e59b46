"""The algorithm conformance suite (every registered algorithm), SCAFFOLD and FedProx by hand.

Registering an algorithm (`fedjax_comp.algorithms.register`) enrolls it here:
each of its example settings must compile its round once, give the same
result for any chunk size, bit-identical rounds from the device and the host
store, the reference loop's result, refuse a non-finite aggregate without
touching any row, ignore an empty client, and resume bit-identically.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_comp as fc
from fedjax_comp.algorithms import engine, reference
from fedjax_comp.data.host_store import HostStore, RaggedClients
from tests import helpers

SIZES = [5, 7, 0, 8, 6, 2, 4]
CASES = [(name, hp) for name, info in fc.algorithms.REGISTRY.items() for hp in info.examples]


def _build(name, hparams, *, chunk=2, m=3, model=None, **kw):
  model = model or fc.get_model("logistic", (6,), 3)
  return fc.algorithms.build(name, model, client_lr=0.1,
                             server_optimizer=fc.server_optimizer("fedavg", 1.0),
                             schedule=fc.LocalSchedule(epochs=2, batch_size=4),
                             clients_per_round=m, client_chunk=chunk, **kw, **hparams)


def _data(**kw):
  return helpers.random_clients(SIZES, max_examples=8, **kw)


def _rounds(alg, data, n, store="device", state=None):
  state = state if state is not None else alg.init(0)
  if store == "device":
    bound = fc.DeviceStore(data).bind(alg, state.params)
  else:
    bound = HostStore(RaggedClients.from_client_arrays(data), min_bucket=4).bind(
        alg, state.params)
  outs = []
  for _ in range(n):
    state, out = bound.step(state)
    outs.append(out)
  return state, outs, bound


def _host(tree):
  """`tree` on the host, typed PRNG keys as their key data (comparable arrays)."""
  is_key = lambda x: hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
  return jax.device_get(jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree))


def _equal(a, b):
  chex.assert_trees_all_equal(_host(a), _host(b))


def _close(a, b, atol=1e-6, rtol=0.0):
  chex.assert_trees_all_close(_host(a), _host(b), atol=atol, rtol=rtol)


@pytest.mark.parametrize("name,hparams", CASES)
def test_round_compiles_once(name, hparams):
  chex.clear_trace_counter()  # counters are per function code: fedavg's and fedprox's share one
  alg = _build(name, hparams)
  traced = chex.assert_max_traces(alg.broadcast, n=1)
  alg = alg._replace(round=engine.make_round(traced, alg.client, alg.server, chunk=2))
  state, _, _ = _rounds(alg, _data(), 4)
  assert int(state.round) == 4


@pytest.mark.parametrize("name,hparams", CASES)
def test_chunk_size_does_not_matter(name, hparams):
  a, _, ra = _rounds(_build(name, hparams, chunk=1), _data(), 3)
  b, _, rb = _rounds(_build(name, hparams, chunk=3), _data(), 3)
  _close(a, b)
  _close(ra.get_rows(), rb.get_rows())


@pytest.mark.parametrize("name,hparams", CASES)
def test_device_store_equals_host_store_bit_for_bit(name, hparams):
  alg = _build(name, hparams)
  a, outs_a, ra = _rounds(alg, _data(), 3, "device")
  b, outs_b, rb = _rounds(alg, _data(), 3, "host")
  _equal(a, b)
  for oa, ob in zip(outs_a, outs_b):
    _equal((oa.metrics, oa.client_ids, oa.client_steps), (ob.metrics, ob.client_ids,
                                                          ob.client_steps))
  table = rb.get_rows()  # the host store holds rows of the sampled clients only
  if len(table["ids"]):
    full = ra.get_rows()["rows"]
    _equal(jax.tree.map(lambda r: np.asarray(r)[table["ids"]], full), table["rows"])


@pytest.mark.parametrize("name,hparams", CASES)
def test_vmapped_round_equals_reference_loop(name, hparams):
  alg = _build(name, hparams)
  data = _data()
  state = alg.init(0)
  bound = fc.DeviceStore(data).bind(alg, state.params)
  for _ in range(2):  # the second round starts from non-trivial rows and state
    ids = fc.sampling.round_ids(state.seed_key, state.round, len(SIZES), 3)
    rows = jax.tree.map(lambda r: r, bound.rows)
    cohort = helpers.cohort(data, ids, rows)
    want, want_out = reference.reference_round(alg, state, cohort)
    state, out = bound.step(state)
    _close(state, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(out.client_ids, want_out.client_ids)
    np.testing.assert_array_equal(out.client_steps, want_out.client_steps)
    if jax.tree.leaves(bound.rows):
      chex.assert_trees_all_close(jax.tree.map(lambda r: np.asarray(r)[np.asarray(ids)],
                                               bound.get_rows()["rows"]),
                                  jax.device_get(want_out.rows), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,hparams", CASES)
def test_non_finite_aggregate_is_refused_and_writes_no_row(name, hparams):
  data = _data()
  x = np.array(data.features["x"])
  x[:, 0] = np.nan  # every client's first example
  data = data.replace(features={**data.features, "x": x})
  alg = _build(name, hparams)
  state0 = alg.init(0)
  state, outs, bound = _rounds(alg, data, 1, state=state0)
  assert not bool(outs[0].metrics.finite)
  _equal(state.params, state0.params)
  rows0 = fc.DeviceStore(data).bind(alg, state0.params).get_rows()
  _equal(bound.get_rows(), rows0)


@pytest.mark.parametrize("name,hparams", CASES)
def test_empty_client_changes_nothing(name, hparams):
  alg = _build(name, hparams, m=3)
  data = _data()
  state = alg.init(0)
  rows = fc.DeviceStore(data).bind(alg, state.params).rows  # everyone's initial row
  new_a, out_a = alg.round(state, helpers.cohort(data, [0, 2, 3], rows))  # 2 has no example
  new_b, out_b = _build(name, hparams, m=2).round(state, helpers.cohort(data, [0, 3], rows))
  _close(new_a, new_b)
  _close(jax.tree.map(lambda r: r[np.array([0, 2])], out_a.rows), out_b.rows)
  _equal(jax.tree.map(lambda r: r[1], out_a.rows), jax.tree.map(lambda r: r[2], rows))
  np.testing.assert_array_equal(out_a.client_steps[1], 0)


@pytest.mark.parametrize("name,hparams", CASES)
def test_resume_from_a_checkpoint_is_bit_identical(name, hparams, tmp_path):
  data = _data()

  def run(out, rounds, resume):
    alg = _build(name, hparams)
    state = alg.init(0)
    bound = fc.DeviceStore(data).bind(alg, state.params)
    return fc.run_rounds(alg, state, bound, num_rounds=rounds, output_dir=str(out),
                         checkpoint_every=2, resume=resume, config={"case": name},
                         say=None), bound

  (full, _), bound_full = run(tmp_path / "full", 5, False)
  run(tmp_path / "part", 3, False)  # stops after round 3 (checkpointed)
  (resumed, history), bound_resumed = run(tmp_path / "part", 5, True)
  _equal(full, resumed)
  _equal(bound_full.get_rows(), bound_resumed.get_rows())
  assert [r["round"] for r in fc.experiment.results.read_metrics(tmp_path / "part")] == [
      1, 2, 3, 4, 5]
  assert history.rounds_done == 5


# ---------------------------------------------------------------- SCAFFOLD by hand


def _softmax_grads(w, b, x, y, classes):
  logits = x @ w + b
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  err = (p - np.eye(classes)[y]) / len(y)
  return x.T @ err, err.sum(axis=0)


def test_scaffold_two_rounds_equal_a_numpy_reference():
  """Option II on multinomial logistic regression, full-batch local GD, K = 3 steps."""
  sizes, classes, lr, lr_g, k_steps, n_clients = [3, 5, 4, 6], 3, 0.3, 0.7, 3, 4
  data = helpers.random_clients(sizes, max_examples=6, num_classes=classes, seed=5)
  model = fc.get_model("logistic", (6,), classes)
  alg = fc.scaffold(model, lr, fc.server_optimizer("fedavg", lr_g),
                    fc.LocalSchedule(batch_size=None, steps=k_steps), clients_per_round=2,
                    client_chunk=1)
  state = alg.init(3)
  bound = fc.DeviceStore(data).bind(alg, state.params)
  p0 = jax.device_get(state.params)["Dense_0"]
  w, b = np.asarray(p0["kernel"], np.float64), np.asarray(p0["bias"], np.float64)
  c = (np.zeros_like(w), np.zeros_like(b))
  ci = {i: (np.zeros_like(w), np.zeros_like(b)) for i in range(n_clients)}
  for _ in range(2):
    state, out = bound.step(state)
    dys, dcs = [], []
    for i in np.asarray(out.client_ids):
      x = np.asarray(data.features["x"][i, :sizes[i]], np.float64)
      y = np.asarray(data.features["y"][i, :sizes[i]])
      yw, yb = w.copy(), b.copy()
      for _ in range(k_steps):
        gw, gb = _softmax_grads(yw, yb, x, y, classes)
        yw -= lr * (gw - ci[i][0] + c[0])
        yb -= lr * (gb - ci[i][1] + c[1])
      new = (ci[i][0] - c[0] + (w - yw) / (k_steps * lr), ci[i][1] - c[1] + (b - yb) / (k_steps * lr))
      dys.append((yw - w, yb - b))
      dcs.append((new[0] - ci[i][0], new[1] - ci[i][1]))
      ci[i] = new
    w = w + lr_g * np.mean([d[0] for d in dys], axis=0)
    b = b + lr_g * np.mean([d[1] for d in dys], axis=0)
    c = (c[0] + sum(d[0] for d in dcs) / n_clients, c[1] + sum(d[1] for d in dcs) / n_clients)
  got = jax.device_get(state)
  np.testing.assert_allclose(got.params["Dense_0"]["kernel"], w, atol=2e-5)
  np.testing.assert_allclose(got.params["Dense_0"]["bias"], b, atol=2e-5)
  np.testing.assert_allclose(got.control["Dense_0"]["kernel"], c[0], atol=2e-5)
  np.testing.assert_allclose(got.control["Dense_0"]["bias"], c[1], atol=2e-5)
  rows = bound.get_rows()["rows"]["Dense_0"]
  for i in range(n_clients):  # sampled clients hold their c_i, the others still 0
    np.testing.assert_allclose(rows["kernel"][i], ci[i][0], atol=2e-5)
    np.testing.assert_allclose(rows["bias"][i], ci[i][1], atol=2e-5)
  assert alg.uplink_bits(got.params) == 2 * fc.codecs.dense_bits(got.params)


def test_unsampled_clients_keep_their_initial_rows_exactly():
  alg = _build("scaffold", {}, m=2)
  state, outs, bound = _rounds(alg, _data(), 2)
  sampled = set(np.concatenate([np.asarray(o.client_ids) for o in outs]).tolist())
  rows = bound.get_rows()["rows"]
  for i in range(len(SIZES)):
    leaves = [np.asarray(r[i]) for r in jax.tree.leaves(rows)]
    if i in sampled and SIZES[i] > 0:
      assert any(np.any(leaf != 0) for leaf in leaves)
    else:
      assert all(np.all(leaf == 0) for leaf in leaves), f"client {i}'s row changed"


# ---------------------------------------------------------------- FedProx


def test_fedprox_with_mu_zero_equals_fedavg():
  a, _, _ = _rounds(_build("fedprox", {"mu": 0.0}), _data(), 2)
  b, _, _ = _rounds(_build("fedavg", {}), _data(), 2)
  _equal(a, b)


def test_fedprox_local_steps_follow_the_proximal_gradient():
  """Two full-batch steps: w2 = w1 - lr (g(w1) + mu (w1 - w0)); the first is plain GD."""
  lr, mu = 0.2, 0.5
  model = fc.get_model("logistic", (6,), 3)
  data = helpers.random_clients([6], max_examples=6, num_classes=3)
  client = jax.tree.map(lambda a: jnp.asarray(a[0]), data)
  update = fc.make_client_update(model.train_loss, optax.sgd(lr),
                                 fc.LocalSchedule(batch_size=None, steps=2), prox_mu=mu)
  w0 = model.init(jax.random.key(0))
  delta, _ = update(w0, client, jax.random.key(1))
  grad = jax.grad(lambda p: model.train_loss(p, client.features, jnp.ones(6, bool)))
  w1 = jax.tree.map(lambda w, g: w - lr * g, w0, grad(w0))
  w2 = jax.tree.map(lambda w, g, a: w - lr * (g + mu * (w - a)), w1, grad(w1), w0)
  chex.assert_trees_all_close(delta, jax.tree.map(jnp.subtract, w2, w0), atol=1e-6)


def test_bad_algorithm_inputs_name_the_argument():
  model = fc.get_model("logistic", (6,), 3)
  with pytest.raises(ValueError, match="unknown algorithm 'fedfoo'; valid algorithms: fedavg"):
    _build("fedfoo", {})
  with pytest.raises(ValueError, match="fedprox_mu must be a finite number >= 0, got -0.1"):
    _build("fedprox", {"mu": -0.1})
  with pytest.raises(ValueError, match="takes no mu"):
    _build("fedavg", {"mu": 0.1})
  with pytest.raises(ValueError, match="structured codecs"):
    fc.scaffold(model, 0.1, fc.server_optimizer("fedavg", 1.0), clients_per_round=2,
                codec=fc.codecs.parse("low_rank(rank=1)"))


def test_register_enrolls_an_algorithm():
  info = fc.algorithms.REGISTRY["fedavg"]
  fc.algorithms.register("fedavg_again", info)
  try:
    assert "fedavg_again" in fc.algorithms.REGISTRY
    a, _, _ = _rounds(_build("fedavg_again", {}), _data(), 1)
    b, _, _ = _rounds(_build("fedavg", {}), _data(), 1)
    _equal(a, b)
    with pytest.raises(ValueError, match="already registered"):
      fc.algorithms.register("fedavg_again", info)
    with pytest.raises(ValueError, match="name must be"):
      fc.algorithms.register("bad name", info)
  finally:
    del fc.algorithms.REGISTRY["fedavg_again"]
