"""FedAvg with the new seams: a codec's aggregation rule, ageing client state, a downlink codec."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_comp as fc
from fedjax_comp import codecs, keys
from fedjax_comp.algorithms import downlink, reference
from fedjax_comp.algorithms.fed_avg import Broadcast
from fedjax_comp.experiment import clock, federated, loop
from tests import helpers
from tests.test_network_runner import TINY

SIZES = [5, 7, 0, 8, 6, 2, 4]


def _model():
  return fc.get_model("logistic", (6,), 3)


def _data():
  return helpers.random_clients(SIZES, max_examples=8)


def _ids(state, n=3):
  return np.asarray(fc.sampling.round_ids(state.seed_key, state.round, len(SIZES), n))


def test_majority_vote_round_equals_a_vote_by_hand():
  """The server applies server_lr * sign(sum_i sign(delta_i)), one vote per client with data."""
  model, data = _model(), _data()
  alg = helpers.fed_avg(model, codec=codecs.parse("sign"), clients_per_round=5, batch_size=4,
                        server_lr=0.01)
  state = alg.init(0)
  ids = _ids(state, 5)
  new, out = alg.round(state, helpers.cohort(data, ids))
  update = helpers.client_update(model, batch_size=4)
  round_key = keys.round_key(state.seed_key, state.round)
  votes = jax.tree.map(jnp.zeros_like, state.params)
  voters = 0
  for i in ids:
    if SIZES[i] == 0:
      continue
    client = jax.tree.map(lambda a: a[i], data)
    delta, _ = update(state.params, client, keys.client_key(round_key, int(i)))
    votes = jax.tree.map(lambda v, d: v + jnp.where(d < 0, -1.0, 1.0), votes, delta)
    voters += 1
  want = jax.tree.map(lambda p, v: p + 0.01 * jnp.sign(v), state.params, votes)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), new.params, want)
  assert int(out.metrics.num_clients) == voters


def _run(alg, data, rounds):
  state = alg.init(0)
  bound = fc.DeviceStore(data).bind(alg, state.params)
  history = []
  for _ in range(rounds):
    ids = _ids(state)
    cohort = helpers.cohort(data, ids, jax.tree.map(lambda r: r, bound.rows))
    want_state, want = reference.reference_round(alg, state, cohort)
    state, out = bound.step(state)
    history.append(ids)
    rows = bound.get_rows()["rows"]
    for got, expected in zip(jax.tree.leaves(rows), jax.tree.leaves(want.rows)):
      np.testing.assert_allclose(np.asarray(got)[ids], expected, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state.params,
                 want_state.params)
  return state, bound.get_rows()["rows"], history


@pytest.mark.parametrize("spec", ["ef(top_k(p=0.2))", "powersgd(rank=1)",
                                  "ef(rand_k(p=0.3),decay=0.5)"])
def test_stateful_codec_rows_ride_through_rounds_as_the_reference_says(spec):
  alg = helpers.fed_avg(_model(), codec=codecs.parse(spec), clients_per_round=3, batch_size=4)
  _, rows, history = _run(alg, _data(), 4)
  sampled = {int(i) for ids in history for i in ids if SIZES[i] > 0}
  state_rows = rows["codec"] if isinstance(rows, dict) and "last" in rows else rows
  for i in range(len(SIZES)):
    moved = any(np.any(np.asarray(r[i]) != np.asarray(r0))
                for r, r0 in zip(jax.tree.leaves(state_rows),
                                 jax.tree.leaves(alg.init_row(alg.init(0).params))))
    assert moved == (i in sampled), (spec, i)
  if isinstance(rows, dict) and "last" in rows:  # an ageing codec records each client's last round
    last = np.asarray(rows["last"])
    for i in range(len(SIZES)):
      rounds = [t for t, ids in enumerate(history) if i in ids and SIZES[i] > 0]
      assert last[i] == (rounds[-1] if rounds else -1), i


def test_ef21_server_estimate_is_the_mean_of_all_clients_estimates():
  """EF21-PP's invariant: g = (1/N) sum over all N clients of g_i, unsampled ones included."""
  alg = helpers.fed_avg(_model(), codec=codecs.parse("ef21(top_k(p=0.3))"), clients_per_round=3,
                        batch_size=4)
  state, rows, _ = _run(alg, _data(), 5)
  mean = jax.tree.map(lambda r: np.asarray(r).mean(0), rows)
  jax.tree.map(lambda g, m: np.testing.assert_allclose(g, m, atol=1e-6), state.aggregator, mean)


def test_an_aged_client_uses_its_decayed_residual():
  model, data = _model(), _data()
  codec = codecs.parse("ef(top_k(p=0.2),decay=0.5)")
  alg = helpers.fed_avg(model, codec=codec, clients_per_round=3, batch_size=4)
  params = alg.init(0).params
  row = alg.init_row(params)
  e = jax.tree.map(lambda a: jnp.full(a.shape, 0.8), row["codec"])
  client = jax.tree.map(lambda a: a[0], data)
  key = jax.random.key(3)
  out = alg.client(Broadcast(params=params, round=jnp.int32(7)), client,
                   {"codec": e, "last": jnp.int32(4)}, key)  # missed rounds 5 and 6
  fresh = alg.client(Broadcast(params=params, round=jnp.int32(7)), client,
                     {"codec": jax.tree.map(lambda a: a * 0.25, e), "last": jnp.int32(6)}, key)
  jax.tree.map(np.testing.assert_array_equal, out.sums["delta"].value, fresh.sums["delta"].value)
  assert int(out.row["last"]) == 7


DOWN = "hadamard(flatten=true),quantize(bits=2)"


@pytest.mark.parametrize("feedback", [True, False])
def test_clients_train_from_exactly_the_decoded_broadcast(feedback):
  model, data = _model(), _data()
  down = codecs.parse(DOWN)
  alg = helpers.fed_avg(model, clients_per_round=4, batch_size=4, downlink_codec=down,
                        downlink_feedback=feedback)
  state = alg.init(0)
  jax.tree.map(np.testing.assert_array_equal, state.downlink, state.params)  # from the seed
  plain = helpers.fed_avg(model, clients_per_round=4, batch_size=4)
  for _ in range(3):
    ids = _ids(state, 4)
    old = state
    state, _ = alg.round(state, helpers.cohort(data, ids))
    # The clients' copy: W_hat + C(W_new - ref), ref = W_hat (feedback) or W_old, keyed by round.
    key = downlink.downlink_key(old.seed_key, old.round)
    assert not any(np.array_equal(jax.random.key_data(key), jax.random.key_data(
        keys.client_key(keys.round_key(old.seed_key, old.round), c))) for c in range(16))
    ref = old.downlink if feedback else old.params
    target = jax.tree.map(lambda w, r: w - r, state.params, ref)
    change = down.decode(key, down.encode(key, target, down.init(target))[0])
    jax.tree.map(lambda h, a, c: np.testing.assert_allclose(h, a + c, atol=1e-6),
                 state.downlink, old.downlink, change)
    # The round's sums are those of plain FedAvg clients training from W_hat.
    sums = reference.cohort_sums(alg, old, helpers.cohort(data, ids))
    want = reference.cohort_sums(plain, old.replace(params=old.downlink),
                                 helpers.cohort(data, ids))
    jax.tree.map(np.testing.assert_array_equal, sums.sums, want.sums)
  params = state.params
  assert alg.downlink_bits(params) == codecs.uplink_bits(down, params) < codecs.dense_bits(params)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.downlink),
                                                      jax.tree.leaves(state.params)))


def test_algorithms_that_cannot_honour_a_codec_refuse_it():
  model = _model()
  with pytest.raises(ValueError, match="aggregation rule"):
    fc.scaffold(model, 0.1, fc.server_optimizer("fedavg", 1.0), clients_per_round=2,
                codec=codecs.parse("sign"))
  for spec in ("sign", "ef(top_k)", "powersgd"):
    with pytest.raises(ValueError, match="needs fed_avg"):
      fc.algorithms.sync_sgd(model.init, model.train_loss, optax.sgd(0.1),
                             codec=codecs.parse(spec))


@pytest.mark.parametrize("spec,match", [
    ("low_rank(rank=1)", "structured codec .* cannot compress a broadcast"),
    ("ef(top_k)", "stateful codec"),
    ("sign", "aggregation rule for uploads"),
])
def test_bad_downlink_codecs_are_refused(spec, match):
  with pytest.raises(ValueError, match=match):
    helpers.fed_avg(_model(), downlink_codec=codecs.parse(spec))


def test_a_returning_client_downloads_the_broadcasts_it_missed_or_the_copy():
  """bits = min((r - s) * payload, copy): s the round of the client's copy (1: the seed's)."""
  ledger = downlink.CatchUp(payload_bits=100, copy_bits=350)
  # Round 1: every copy is the initial model (0 bits); client 2 has no data (no download).
  assert ledger.round(1, [0, 1, 2], [3, 3, 0]).tolist() == [0, 0, 0]
  assert ledger.round(2, [0, 3], [2, 2]).tolist() == [100, 100]  # 3 holds round 1's (the seed)
  assert ledger.round(4, [2, 3], [1, 1]).tolist() == [300, 200]
  later = downlink.CatchUp(100, 350, synced=ledger.state())  # as a resumed run continues
  for book in (ledger, later):
    assert book.round(6, [1, 0, 3], [1, 1, 1]).tolist() == [350, 350, 200]  # 5 or 4 missed
    assert book.round(7, [0], [5]).tolist() == [100]
  assert ledger.state() == later.state() == {"ids": [0, 1, 2, 3], "rounds": [7, 6, 4, 6]}
  with pytest.raises(ValueError, match="later than round 5"):
    ledger.round(5, [0], [1])


def test_a_run_charges_each_client_its_catch_up_on_the_traffic_and_the_clock():
  # 20 clients, 5 a round: the records' downlink and the clock follow the ledger, not
  # one payload per client.
  cfg = dataclasses.replace(TINY, train=dataclasses.replace(
      TINY.train, rounds=8, downlink_codec="quantize(bits=8)"))
  exp = federated.setup(cfg, say=None)
  params = jax.device_get(exp.state.params)
  payload, dense = exp.algorithm.downlink_bits(params), codecs.dense_bits(params)
  assert exp.algorithm.downlink_copy_bits(params) == dense and payload < dense
  _, history = loop.run_rounds(exp.algorithm, exp.state, exp.rounds, num_rounds=8,
                               clock=exp.clock, keep_cohorts=True, say=None)
  synced, total, sim = {}, 0, 0.0
  links = clock.RoundClock(clock.preset("cellular"), 20, seed=0).links
  for r, (cohort, record) in enumerate(zip(history.cohorts, history.records), 1):
    want = [min((r - synced.get(i, 1)) * payload, dense) for i in cohort.ids.tolist()]
    synced.update((i, r) for i in cohort.ids.tolist())
    assert cohort.down_bits.tolist() == want and record["downlink_bits"] == sum(want)
    total += sum(want)
    sim += clock.sync_round_time(links, cohort.ids, up_bits=32 * 650, down_bits=cohort.down_bits,
                                 num_steps=cohort.steps)
    assert record["sim_time_s"] == pytest.approx(sim, rel=1e-12)
  assert history.total_downlink_bits == total
  assert total != payload * 5 * 8  # not one payload per client and round
  summary = federated.summary(exp, history)
  assert summary["downlink_compression_ratio"] == dense / payload  # one broadcast
  assert summary["downlink_realised_ratio"] == dense * 5 * 8 / total
  assert any(b == dense for c in history.cohorts for b in c.down_bits.tolist())
