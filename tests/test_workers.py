"""Worker-based training (sync SGD, local SGD, DGA) against references built apart."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_comp as fc
from fedjax_comp import algorithms, keys
from fedjax_comp.batching import minibatch
from fedjax_comp.data.federated import ClientArrays
from tests import helpers


def quadratic_loss(params, batch, mask):
  """Mean over the masked examples of 0.5 * ||w - x||^2: the gradient is w - mean(x)."""
  m = mask.astype(jnp.float32)
  per_example = 0.5 * jnp.sum((params["w"][None] - batch["x"]) ** 2, axis=-1)
  return jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0)


def zeros_init(dim):
  return lambda key: {"w": jnp.zeros((dim,), jnp.float32)}


def point_shards(points):
  """One example per worker at `points[i]`."""
  x = np.asarray(points, np.float32)[:, None, :]
  n = len(points)
  return ClientArrays(features={"x": x, "y": np.zeros((n, 1), np.int32)},
                      num_examples=np.ones(n, np.int32))


def test_dga_hand_computed_two_workers():
  # w_0 pulls to 0, w_1 to 4, lr 0.5, K = 1, D = 1 (worked out in the docstring
  # order: local step, send, then the average sent D steps ago arrives):
  #   step 1: w = (0, 2)  sent (0, 2), mean 1
  #   step 2: local w = (0, 3), sent (0, 1); arrival of step 1: w = (0 - 0 + 1, 3 - 2 + 1)
  #   step 3: local w = (0.5, 3), sent (-0.5, 1); arrival of step 2 (mean 0.5):
  #           w = (0.5 - 0 + 0.5, 3 - 1 + 0.5)
  alg = algorithms.periodic_averaging(zeros_init(1), quadratic_loss, optax.sgd(0.5),
                                       period=1, delay=1, batch_size=1)
  shards = point_shards([[0.0], [4.0]])
  state = alg.init(0, 2)
  assert isinstance(state, algorithms.PeriodicState)
  seen = []
  for _ in range(3):
    state, _ = alg.run(state, shards, 1)
    seen.append(np.asarray(state.params["w"])[:, 0].tolist())
  assert seen == [[0.0, 2.0], [1.0, 2.0], [1.0, 2.5]]
  # One scan of 3 steps is the same computation.
  state3, metrics = alg.run(alg.init(0, 2), shards, 3)
  np.testing.assert_array_equal(state3.params["w"], state.params["w"])
  assert metrics.loss.shape == (3,) and bool(metrics.finite)


def reference_dga(points, lr, period, delay, steps):
  """Numpy simulation of DGA on the quadratic loss, with an explicit message queue."""
  points = np.asarray(points, np.float64)
  w = np.zeros_like(points)
  pending = np.zeros_like(points)
  queue = []  # (arrival step, own updates, mean)
  for t1 in range(1, steps + 1):
    u = -lr * (w - points)
    w, pending = w + u, pending + u
    if t1 % period == 0:
      queue.append((t1 + delay, pending.copy(), pending.mean(axis=0)))
      pending[:] = 0
    while queue and queue[0][0] == t1:
      _, own, mean = queue.pop(0)
      w = w - own + mean
  return w


@pytest.mark.parametrize("period,delay", [(1, 0), (3, 0), (2, 3), (3, 7), (4, 2)])
def test_periodic_averaging_matches_reference_queue(period, delay):
  rng = np.random.default_rng(period * 10 + delay)
  points = rng.standard_normal((4, 3))
  alg = algorithms.periodic_averaging(zeros_init(3), quadratic_loss, optax.sgd(0.3),
                                       period=period, delay=delay, batch_size=1)
  state, _ = alg.run(alg.init(0, 4), point_shards(points), 17)
  np.testing.assert_allclose(state.params["w"], reference_dga(points, 0.3, period, delay, 17),
                             atol=1e-5)


def test_delay_zero_is_synchronous_averaging_of_an_mlp():
  """D = 0 equals: every worker runs K local steps, then all take the plain mean."""
  shards = helpers.random_clients([7, 5, 9, 6], max_examples=9)
  model = fc.get_model("mlp", (6,), 3)
  loss = model.train_loss
  K, periods, lr, batch = 3, 3, 0.2, 4
  alg = algorithms.periodic_averaging(model.init, loss, optax.sgd(lr), period=K, delay=0,
                                       batch_size=batch)
  state = alg.init(5, 4)
  state, _ = alg.run(state, shards, K * periods)

  # Reference: a Python loop of single-worker SGD steps and an explicit mean.
  seed_key = keys.seed_key(5)
  w = jax.jit(model.init)(keys.init_key(seed_key))
  grad = jax.jit(jax.grad(loss))
  data_keys = [keys.stream(keys.client_key(keys.round_key(seed_key, 0), i),
                           keys.Stream.DATA_ORDER) for i in range(4)]
  t = 0
  for _ in range(periods):
    locals_ = []
    for i in range(4):
      wi = w
      for s in range(t, t + K):
        idx, valid = minibatch(data_keys[i], jnp.int32(s), shards.num_examples[i], 9, batch)
        g = grad(wi, {k: v[i][idx] for k, v in shards.features.items()}, valid)
        wi = jax.tree.map(lambda p, gp: p - lr * gp, wi, g)
      locals_.append(wi)
    w = jax.tree.map(lambda *ps: sum(ps) / 4, *locals_)
    t += K
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(w)):
    for worker in range(4):  # every worker holds the average
      np.testing.assert_allclose(a[worker], b, atol=2e-6)
  for a, b in zip(jax.tree.leaves(alg.model(state)), jax.tree.leaves(w)):
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_sync_sgd_step_equals_large_batch_step_on_the_union():
  shards = helpers.random_clients([5, 5, 5], max_examples=5)
  model = fc.get_model("mlp", (6,), 3)
  loss = model.train_loss
  alg = algorithms.sync_sgd(model.init, loss, optax.sgd(0.3), batch_size=None)
  state = alg.init(1, 3)
  assert isinstance(state, algorithms.SyncState)
  w0 = state.params
  state, metrics = alg.run(state, shards, 1)
  union = {"x": shards.features["x"].reshape(15, 6), "y": shards.features["y"].reshape(15)}
  union_loss, g = jax.value_and_grad(loss)(w0, union, jnp.ones(15, bool))
  expected = jax.tree.map(lambda p, gp: p - 0.3 * gp, w0, g)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(metrics.loss[0], union_loss, rtol=1e-6)


def test_sync_sgd_equals_local_sgd_with_period_one():
  shards = helpers.random_clients([6, 4, 8, 5], max_examples=8)
  model = fc.get_model("logistic", (6,), 3)
  loss = model.train_loss
  sync = algorithms.sync_sgd(model.init, loss, optax.sgd(0.1), batch_size=3)
  local = algorithms.periodic_averaging(model.init, loss, optax.sgd(0.1), period=1,
                                         batch_size=3)
  a, ma = sync.run(sync.init(2, 4), shards, 6)
  b, mb = local.run(local.init(2, 4), shards, 6)
  for p, q in zip(jax.tree.leaves(a.params), jax.tree.leaves(local.model(b))):
    np.testing.assert_allclose(p, q, atol=1e-6)
  np.testing.assert_allclose(ma.loss, mb.loss, rtol=1e-5)


def test_codec_uploads_keep_workers_in_agreement_and_are_deterministic():
  shards = helpers.random_clients([6, 4, 8, 5], max_examples=8)
  model = fc.get_model("logistic", (6,), 3)  # compiles fast; the averaging is model-agnostic
  loss = model.train_loss
  codec = fc.codecs.parse("quantize(bits=2)")
  local = algorithms.periodic_averaging(model.init, loss, optax.sgd(0.1), period=2,
                                         batch_size=3, codec=codec)
  s, _ = local.run(local.init(0, 4), shards, 6)
  for leaf in jax.tree.leaves(s.params):  # raw own update subtracted: all agree, bit for bit
    np.testing.assert_array_equal(leaf, jnp.broadcast_to(leaf[0], leaf.shape))
  plain = algorithms.periodic_averaging(model.init, loss, optax.sgd(0.1), period=2,
                                         batch_size=3)
  p, _ = plain.run(plain.init(0, 4), shards, 6)
  diff = max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(p.params)))
  assert 0 < diff < 0.5  # the codec is lossy, but close
  rotated = fc.codecs.parse("hadamard(flatten=true),quantize(bits=2)")
  dga = algorithms.periodic_averaging(model.init, loss, optax.sgd(0.1), period=2, delay=3,
                                       batch_size=3, codec=rotated)
  r1, m1 = dga.run(dga.init(0, 4), shards, 8)
  r2, _ = dga.run(dga.init(0, 4), shards, 8)
  assert bool(m1.finite)
  for a, b in zip(jax.tree.leaves(r1.replace(seed_key=None)),
                  jax.tree.leaves(r2.replace(seed_key=None))):
    np.testing.assert_array_equal(a, b)
  sync = algorithms.sync_sgd(model.init, loss, optax.sgd(0.1), batch_size=3, codec=codec)
  q, mq = sync.run(sync.init(0, 4), shards, 3)
  assert bool(mq.finite)
  exact = algorithms.sync_sgd(model.init, loss, optax.sgd(0.1), batch_size=3)
  e, _ = exact.run(exact.init(0, 4), shards, 3)
  diff = max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(q.params), jax.tree.leaves(e.params)))
  assert 0 < diff < 0.5  # the gradients went through the codec


@pytest.mark.parametrize("kwargs,message", [
    (dict(period=0), "period K must be an integer >= 1"),
    (dict(period=2, delay=-1), "delay D must be an integer >= 0"),
    (dict(period=1, batch_size=0), "batch_size must be >= 1"),
    (dict(period=1, codec=fc.codecs.parse("low_rank(rank=2)")), "structured codecs"),
])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    algorithms.periodic_averaging(zeros_init(2), quadratic_loss, optax.sgd(0.1), **kwargs)


def test_a_one_device_mesh_is_the_plain_program():
  alg = algorithms.periodic_averaging(zeros_init(1), quadratic_loss, optax.sgd(0.5), period=1,
                                       delay=1, batch_size=1, mesh=fc.clients_mesh(1))
  state, _ = alg.run(alg.init(0, 2), point_shards([[0.0], [4.0]]), 3)
  assert np.asarray(state.params["w"])[:, 0].tolist() == [1.0, 2.5]  # the hand-computed case


def test_empty_worker_and_wrong_worker_count_are_refused():
  alg = algorithms.periodic_averaging(zeros_init(2), quadratic_loss, optax.sgd(0.1), period=1)
  shards = helpers.random_clients([3, 0, 2], shape=(2,))
  with pytest.raises(ValueError, match=r"workers \[1\] have no example"):
    alg.run(alg.init(0, 3), shards, 1)
  with pytest.raises(ValueError, match="state has 2 workers"):
    alg.run(alg.init(0, 2), helpers.random_clients([3, 1, 2], shape=(2,)), 1)
  with pytest.raises(ValueError, match="num_workers must be >= 1"):
    alg.init(0, 0)


MESH_SCRIPT = textwrap.dedent("""
    import jax, numpy as np, optax
    assert jax.device_count() == 8, jax.devices()
    import fedjax_comp as fc
    from fedjax_comp import algorithms
    from tests import helpers
    shards = helpers.random_clients([5, 8, 3, 3, 8, 6, 2, 7, 4, 1, 8, 5, 3, 6, 2, 4],
                                    max_examples=8)
    model = fc.get_model("logistic", (6,), 3)
    loss = model.train_loss
    codec = fc.codecs.parse("quantize(bits=4)")
    builders = {
        "dga": lambda mesh: algorithms.periodic_averaging(
            model.init, loss, optax.sgd(0.1), period=2, delay=3, batch_size=3, codec=codec,
            mesh=mesh),
        "sync": lambda mesh: algorithms.sync_sgd(model.init, loss, optax.sgd(0.1),
                                                  batch_size=3, mesh=mesh),
    }
    for name, build in builders.items():
      out = []
      for mesh in (None, fc.clients_mesh(8)):
        alg = build(mesh)
        state, metrics = alg.run(alg.init(0, 16), fc.replicate(shards, None), 9)
        out.append((jax.device_get(alg.model(state)), np.asarray(metrics.loss)))
      for a, b in zip(jax.tree.leaves(out[0][0]), jax.tree.leaves(out[1][0])):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
      np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-5)
    try:
      bad = builders["sync"](fc.clients_mesh(8))
      bad.run(bad.init(0, 12), helpers.random_clients([3] * 12), 1)
    except ValueError as e:
      assert "multiple of the mesh's 8 devices" in str(e), e
    else:
      raise AssertionError("12 workers on 8 devices must be refused")
    print("OK")
""")


def test_mesh_equals_single_device_on_eight_cpu_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT], env=env, cwd=root,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
