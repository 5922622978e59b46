"""Models: McMahan's parameter counts, shapes, and bad names."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_comp as fc


@pytest.mark.parametrize("name,shape,count", [
    ("2nn", (28, 28), 199_210),  # McMahan et al. 2017
    ("cnn", (28, 28), 1_663_370),  # McMahan et al. 2017
    ("cnn", (28, 28, 1), 1_663_370),
    ("logistic", (60,), 610),
    ("mlp", (40,), 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10),
])
def test_parameter_counts(name, shape, count):
  model = fc.get_model(name, shape, 10)
  assert fc.num_params(model.init(jax.random.key(0))) == count


@pytest.mark.parametrize("name", [m for m in fc.MODELS if "lstm" not in m
                                  and "transformer" not in m])
def test_logits_shape(name):
  shape = (32, 32, 3) if name.startswith("cifar") else (28, 28)
  model = fc.get_model(name, shape, 7)
  # Shapes only: traced, not compiled (the ResNet would take ~10 s to compile).
  params = jax.eval_shape(model.init, jax.random.key(0))
  logits = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((5, *shape), jnp.float32))
  assert logits.shape == (5, 7)


def test_bad_model_inputs():
  with pytest.raises(ValueError, match="valid models: .*2nn"):
    fc.get_model("resnet", (28, 28), 10)
  with pytest.raises(ValueError, match="image inputs"):
    fc.get_model("cnn", (40,), 10)
  with pytest.raises(ValueError, match="num_classes"):
    fc.get_model("mlp", (40,), 1)


@pytest.mark.parametrize("kernel,channels,padding", [((5, 5), 1, "SAME"), ((5, 5), 32, "SAME"),
                                                     ((3, 3), 3, "SAME"), ((3, 3), 2, "VALID")])
def test_patch_conv_equals_flax_conv(kernel, channels, padding):
  """Same parameters, same outputs and same gradients as flax.linen.Conv (SAME or VALID)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from fedjax_comp.models import PatchConv  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(0), (3, 9, 7, channels))
  reference = nn.Conv(8, kernel, padding=padding)
  params = reference.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
  patch = PatchConv(8, kernel, padding=padding)
  out_ref, out = reference.apply(params, x), patch.apply(params, x)
  assert out.shape == out_ref.shape
  assert float(jnp.abs(out - out_ref).max()) < 1e-5 * float(jnp.abs(out_ref).max())
  loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply(p, x)))
  g_ref, g = jax.grad(loss(reference))(params), jax.grad(loss(patch))(params)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)):
    assert float(jnp.abs(a - b).max()) < 1e-4 * (1 + float(jnp.abs(a).max()))


def test_dense_equals_flax_dense_and_autodiff():
  """`models.Dense`: flax Dense's parameters bit for bit, its outputs, and autodiff's gradients."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from fedjax_comp.models import Dense, dense  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(0), (6, 5))
  params = nn.Dense(3).init(jax.random.key(1), x)
  mine = Dense(3).init(jax.random.key(1), x)
  assert jax.tree.structure(mine) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(params)):
    assert bool((a == b).all())
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
  assert float(jnp.abs(Dense(3).apply(params, x) - nn.Dense(3).apply(params, x)).max()) < 1e-6
  # Leading axes are flattened and restored like flax's.
  x3 = x.reshape(2, 3, 5)
  assert float(jnp.abs(Dense(3).apply(params, x3) - nn.Dense(3).apply(params, x3)).max()) < 1e-6

  k, b = params["params"]["kernel"], params["params"]["bias"]
  loss = lambda f: lambda x, k, b: jnp.sum(jnp.sin(f(x, k, b)) * jnp.arange(3.0))
  plain = lambda x, k, b: x @ k + b
  want = jax.grad(loss(plain), argnums=(0, 1, 2))(x, k, b)
  got = jax.grad(loss(dense), argnums=(0, 1, 2))(x, k, b)
  for w, g in zip(want, got):
    assert g.shape == w.shape
    assert float(jnp.abs(w - g).max()) < 1e-5
  # Under vmap with a shared kernel (the first local step of a round's clients).
  xs = jax.random.normal(jax.random.key(2), (4, 6, 5))
  per_client = lambda f: jax.vmap(jax.grad(loss(f), argnums=(0, 1)), in_axes=(0, None, None))
  for w, g in zip(per_client(plain)(xs, k, b), per_client(dense)(xs, k, b)):
    assert g.shape == w.shape
    assert float(jnp.abs(w - g).max()) < 1e-5


@pytest.mark.parametrize("shape", [(2, 6, 4, 3), (1, 7, 5, 2)])
def test_max_pool_2x2_equals_flax(shape):
  """Values of nn.max_pool((2, 2), strides 2, VALID), odd sizes included, and its gradient."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from fedjax_comp.models import max_pool_2x2  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(0), shape)  # no ties
  want = nn.max_pool(x, (2, 2), strides=(2, 2))
  got = max_pool_2x2(x)
  assert got.shape == want.shape
  assert bool((got == want).all())
  loss = lambda pool: lambda x: jnp.sum(jnp.sin(pool(x)))
  g_want = jax.grad(loss(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))))(x)
  g_got = jax.grad(loss(max_pool_2x2))(x)
  assert float(jnp.abs(g_want - g_got).max()) < 1e-6
  assert int((g_got != 0).sum()) == want.size  # one winner per window


def test_classification_loss_and_metrics_by_hand():
  """Mean cross-entropy over the valid examples; padded ones count in nothing."""
  table = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])  # logits of input 0 and input 1
  apply = lambda params, x: table[x]
  train_loss, eval_metrics = fc.models.classification(apply)
  batch = {"x": jnp.array([0, 1, 1, 0]), "y": jnp.array([0, 2, 1, 2])}
  mask = jnp.array([True, True, True, False])
  lse = lambda row: np.log(np.exp(np.asarray(row)).sum())
  ce = [lse(table[0]) - 2.0, lse(table[1]) - 3.0, lse(table[1]) - 1.0]
  np.testing.assert_allclose(train_loss(None, batch, mask), np.mean(ce), rtol=1e-6)
  sums = eval_metrics(None, batch, mask)
  assert [int(v) for v in sums["accuracy"]] == [2, 3]  # examples 0 and 1 right, 2 wrong
  np.testing.assert_allclose(sums["loss"][0], np.sum(ce), rtol=1e-6)


def test_next_token_loss_ignores_padding_and_specials_by_hand():
  """Per-token cross-entropy over non-pad targets; accuracy also skips special tokens."""
  from fedjax_comp.models import lstm  # pylint: disable=g-import-not-at-top
  vocab = 6
  table = jnp.asarray(np.random.default_rng(0).normal(size=(vocab, vocab)), jnp.float32)
  apply = lambda params, x: table[x]  # logits depend on the current token only
  train_loss, eval_metrics = fc.models.next_token(
      apply, pad=lstm.PAD, excluded=(lstm.BOS, lstm.EOS, lstm.OOV))
  x = jnp.array([[1, 4, 5, 2, 0], [1, 5, 4, 4, 2], [1, 4, 4, 4, 4]])
  y = jnp.array([[4, 5, 2, 0, 0], [5, 4, 4, 2, 0], [4, 4, 4, 4, 4]])
  mask = jnp.array([True, True, False])  # the third example is padding
  logits = np.asarray(table)[np.asarray(x)]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  counted = [(b, t) for b in range(2) for t in range(5) if int(y[b, t]) != lstm.PAD]
  ce = [-logp[b, t, int(y[b, t])] for b, t in counted]
  np.testing.assert_allclose(train_loss(None, {"x": x, "y": y}, mask), np.mean(ce), rtol=1e-5)
  scored = [(b, t) for b, t in counted if int(y[b, t]) not in (1, 2, 3)]
  correct = sum(int(np.argmax(logits[b, t]) == int(y[b, t])) for b, t in scored)
  sums = eval_metrics(None, {"x": x, "y": y}, mask)
  assert (int(sums["accuracy"][0]), int(sums["accuracy"][1])) == (correct, len(scored))
  assert int(sums["loss"][1]) == len(counted) == 7


def test_char_lstm_loss_ignores_what_padding_holds():
  from fedjax_comp.data import sources  # pylint: disable=g-import-not-at-top
  src = sources.char_text(num_clients=2, seed=0, seq_len=12, sentences=4)
  model = fc.get_model("char_lstm", (12,), src.num_classes)
  params = model.init(jax.random.key(0))
  x, y = np.array(src.train.x[:3]), np.array(src.train.y[:3])
  mask = np.array([True, True, False])
  base = float(model.train_loss(params, {"x": x, "y": y}, mask))
  noisy_x, noisy_y = x.copy(), y.copy()
  rng = np.random.default_rng(1)
  after = y == sources.PAD  # positions past the end of a sentence
  noisy_x[after] = rng.integers(4, src.num_classes, after.sum())  # inputs there do not matter
  noisy_x[2] = rng.integers(0, src.num_classes, 12)  # nor anything in a padded example
  noisy_y[2] = rng.integers(0, src.num_classes, 12)
  assert float(model.train_loss(params, {"x": noisy_x, "y": noisy_y}, mask)) == base
  logits = np.asarray(model.apply(params, x))
  assert logits.shape == (3, 12, src.num_classes)


def test_char_lstm_trains_federated():
  data = fc.load_federated("char_text", "natural", num_clients=6, seed=0)
  model = fc.get_model("char_lstm", data.input_shape, data.num_classes)
  alg = fc.fed_avg(model, optax.sgd(1.0), fc.server_optimizer("fedavg", 1.0),
                   fc.LocalSchedule(epochs=1, batch_size=8), clients_per_round=3)
  state = alg.init(0)
  batches = fc.batch_for_eval(data.test)
  before = fc.evaluate(model, state.params, batches)
  bound = fc.DeviceStore(data.clients).bind(alg, state.params)
  for _ in range(8):
    state, out = bound.step(state)
  after = fc.evaluate(model, state.params, batches)
  assert bool(out.metrics.finite)
  assert float(after["loss"]) < float(before["loss"]) - 0.3
