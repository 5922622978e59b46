"""A codec with per-client state, written in one file and registered from outside the library.

`ef_sign` is the example WORKSPACE.md walks through: error feedback around a
scaled-sign compressor (Karimireddy et al. 2019). Each client keeps its
residual e_i as codec state; the engine carries it as the client's row
between rounds, so unsampled clients keep theirs untouched.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_comp as fc
from fedjax_comp import codecs
from fedjax_comp.algorithms import reference
from fedjax_comp.data.host_store import HostStore
from fedjax_comp.data.ragged import RaggedClients
from tests import helpers


@flax.struct.dataclass
class Signs:
  negative: jax.Array  # bool [n]: one bit per coordinate
  scale: jax.Array  # float32 []: mean |p|
  shape: tuple = codecs.static_field()


def ef_sign() -> codecs.Codec:
  """Error-feedback scaled sign: sends sign(x + e) * mean|x + e| per leaf, keeps the rest in e."""

  def leaf(x, e):
    p = x.astype(jnp.float32) + e
    scale = jnp.mean(jnp.abs(p))
    payload = Signs(negative=(p < 0).reshape(-1), scale=scale, shape=tuple(x.shape))
    return payload, p - decode_leaf(payload)

  def decode_leaf(s):
    return jnp.where(s.negative, -s.scale, s.scale).reshape(s.shape)

  def encode(key, x, state):
    del key  # deterministic: no shared randomness
    out = jax.tree.map(leaf, x, state)
    is_pair = lambda n: isinstance(n, tuple) and len(n) == 2 and isinstance(n[0], Signs)
    return (jax.tree.map(lambda n: n[0], out, is_leaf=is_pair),
            jax.tree.map(lambda n: n[1], out, is_leaf=is_pair))

  return codecs.Codec(
      init=lambda x: jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), x),
      encode=encode,
      decode=lambda key, p: jax.tree.map(decode_leaf, p, is_leaf=lambda n: isinstance(n, Signs)))


@pytest.fixture
def registered():
  codecs.register("ef_sign", ef_sign, examples=("ef_sign",), unbiased=False)
  yield
  del codecs.REGISTRY["ef_sign"]


def test_error_feedback_telescopes_over_rounds():
  """sum_t decode(encode(x_t)) + e_T == sum_t x_t: nothing is lost, only delayed."""
  codec = ef_sign()
  xs = [{"w": jax.random.normal(jax.random.key(t), (5, 3))} for t in range(6)]
  state = codec.init(xs[0])
  sent = jnp.zeros((5, 3))
  for x in xs:
    payload, state = codec.encode(None, x, state)
    sent = sent + codec.decode(None, payload)["w"]
  np.testing.assert_allclose(sent + state["w"], sum(x["w"] for x in xs), atol=1e-5)
  assert codecs.payload_bits(payload) == 15 * 8 + 32  # numpy bools are bytes; one scale


def _algorithm(**kw):
  return helpers.fed_avg(fc.get_model("logistic", (6,), 3), codec=codecs.parse("ef_sign"),
                         clients_per_round=3, batch_size=4, **kw)


def test_residuals_ride_as_rows_through_the_round(registered):
  del registered
  data = helpers.random_clients([5, 7, 0, 8, 6, 2, 4], max_examples=8)
  alg = _algorithm()
  state = alg.init(0)
  bound = fc.DeviceStore(data).bind(alg, state.params)
  assert bound.stateful
  seen = set()
  for _ in range(3):
    ids = np.asarray(fc.sampling.round_ids(state.seed_key, state.round, 7, 3))
    cohort = helpers.cohort(data, ids, jax.tree.map(lambda r: r, bound.rows))
    want_state, want = reference.reference_round(alg, state, cohort)
    state, out = bound.step(state)
    seen |= {int(i) for i in ids if [5, 7, 0, 8, 6, 2, 4][i] > 0}
    rows = bound.get_rows()["rows"]
    for got, expected in zip(jax.tree.leaves(rows), jax.tree.leaves(want.rows)):
      np.testing.assert_allclose(np.asarray(got)[ids], expected, atol=1e-5)
  for i in range(7):
    residual = [np.asarray(r[i]) for r in jax.tree.leaves(rows)]
    assert any(np.any(r != 0) for r in residual) == (i in seen), i
  # The host store holds the same rows, bit for bit.
  state_h = alg.init(0)
  host = HostStore(RaggedClients.from_client_arrays(data), min_bucket=4, say=None).bind(
      alg, state_h.params)
  for _ in range(3):
    state_h, _ = host.step(state_h)
  table = host.get_rows()
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a)[table["ids"]], b),
               rows, table["rows"])


@pytest.mark.parametrize("spec", ["ef(top_k(p=0.2))", "ef21(top_k(p=0.2))", "powersgd(rank=1)"])
def test_a_non_finite_residual_is_refused_like_a_non_finite_update(spec):
  """A NaN in one client's state (residual, running estimate, warm start) never decodes to a
  finite update, so the round refuses the aggregate and writes no row; the other clients'
  rows and the model are unchanged (device and host stores alike)."""
  data = helpers.random_clients([5, 7, 3, 8, 6, 2, 4], max_examples=8)
  alg = helpers.fed_avg(fc.get_model("logistic", (6,), 3), codec=codecs.parse(spec),
                        clients_per_round=7, batch_size=4)
  for store in (fc.DeviceStore(data), HostStore(RaggedClients.from_client_arrays(data),
                                                min_bucket=4, say=None)):
    state = alg.init(0)
    bound = store.bind(alg, state.params)
    state, out = bound.step(state)  # every client now holds a finite row
    assert bool(out.metrics.finite)
    table = bound.get_rows()
    poisoned = jax.tree.map(np.array, table)
    leaf = next(a for a in jax.tree.leaves(poisoned["rows"]) if a.dtype == np.float32)
    leaf[np.flatnonzero(poisoned["ids"] == 3)[0]].flat[0] = np.nan
    bound.set_rows(poisoned)
    before = bound.get_rows()
    new_state, out = bound.step(state)
    assert not bool(out.metrics.finite), spec
    jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, bound.get_rows(), before)  # no row written
