"""The benchmark models: published parameter counts, dropout keyed per step, special tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_comp import models
from fedjax_comp.client_update import LocalSchedule, make_client_update
from fedjax_comp.data import text
from fedjax_comp.data.federated import ClientArrays


def _count(name, shape, classes):
  model = models.get_model(name, shape, classes)
  return models.num_params(jax.eval_shape(model.init, jax.random.key(0)))


def test_parameter_counts_match_the_published_ones():
  # FedJAX's model tests and google-research/federated's Keras models.
  assert _count("emnist_cr", (28, 28, 1), 62) == 1_206_590
  assert _count("emnist_dense", (28, 28, 1), 62) == 209_662
  assert _count("logistic", (28, 28, 1), 62) == 48_670
  assert _count("shakespeare_lstm", (80,), 90) == 820_522
  assert _count("stackoverflow_lstm", (20,), 10_004) == 4_050_748
  # Computed from pfl-research's PyTorch transformer and the Keras ResNet-18 (GN).
  assert _count("stackoverflow_transformer", (20,), 10_004) == 1_962_912
  assert _count("cifar100_resnet18", (32, 32, 3), 100) == 11_227_812


def test_dropout_is_keyed_per_step_and_off_without_a_key():
  model = models.get_model("emnist_cr", (28, 28, 1), 10)
  params = model.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.random((4, 28, 28, 1), np.float32)),
           "y": jnp.asarray(rng.integers(0, 10, 4))}
  mask = jnp.ones(4, bool)
  plain = model.train_loss(params, batch, mask)
  # No key: the evaluation's deterministic network.
  ref, _ = models.classification(model.apply)
  np.testing.assert_allclose(plain, ref(params, batch, mask), rtol=1e-6)
  k1 = model.train_loss(params, {**batch, "rng": jax.random.key(1)}, mask)
  k1b = model.train_loss(params, {**batch, "rng": jax.random.key(1)}, mask)
  k2 = model.train_loss(params, {**batch, "rng": jax.random.key(2)}, mask)
  assert float(k1) == float(k1b) and float(k1) != float(k2) and float(k1) != float(plain)
  # Through the client update: steps draw different masks, the same key repeats exactly.
  client = ClientArrays(features={k: v[None] for k, v in batch.items()},
                        num_examples=jnp.array([4], jnp.int32))
  client = jax.tree.map(lambda a: a[0], client)
  upd = jax.jit(make_client_update(model.train_loss, optax.sgd(0.1),
                                   LocalSchedule(epochs=2, batch_size=2), dropout=True))
  d1, _ = upd(params, client, jax.random.key(3))
  d2, _ = upd(params, client, jax.random.key(3))
  d3, _ = upd(params, client, jax.random.key(4))
  flat = lambda d: np.concatenate([np.ravel(a) for a in jax.tree.leaves(d)])
  np.testing.assert_array_equal(flat(d1), flat(d2))
  assert not np.array_equal(flat(d1), flat(d3))


def test_shakespeare_accuracy_ignores_pad_bos_eos_but_counts_oov():
  model = models.get_model("shakespeare_lstm", (4,), 90)
  params = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0)))
  # Zero weights: every logit is 0, argmax picks id 0 everywhere, so nothing is right.
  y = jnp.array([[5, text.BOS, text.EOS, text.PAD], [text.SHAKESPEARE_OOV, 7, 0, 0]])
  sums = model.eval_metrics(params, {"x": jnp.zeros_like(y), "y": y}, jnp.ones(2, bool))
  total, count = sums["accuracy"]
  assert int(total) == 0 and int(count) == 3  # 5, OOV and 7
  assert int(sums["loss"][1]) == 5  # the loss counts every non-padding target


def test_cifar_crops_central_and_random_with_flips():
  from fedjax_comp.models.published import cifar_crops  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  got = np.asarray(cifar_crops(jnp.asarray(images)))
  # tf.image.per_image_standardization of the central 24x24 crop, by hand.
  c = images[:, 4:28, 4:28].astype(np.float64)
  mean = c.mean(axis=(1, 2, 3), keepdims=True)
  std = np.maximum(c.std(axis=(1, 2, 3), keepdims=True), 1 / np.sqrt(24 * 24 * 3))
  np.testing.assert_allclose(got, (c - mean) / std, atol=1e-5)
  # Random crops: each is some 24x24 window, maybe flipped, standardized.
  seen = set()
  for k in range(6):
    out = np.asarray(cifar_crops(jnp.asarray(images), jax.random.key(k)))
    for img, crop in zip(images.astype(np.float64), out):
      found = None
      for oy in range(9):
        for ox in range(9):
          for flip in (False, True):
            w = img[oy:oy + 24, ox:ox + 24]
            w = w[:, ::-1] if flip else w
            w = (w - w.mean()) / max(w.std(), 1 / np.sqrt(w.size))
            if np.allclose(w, crop, atol=1e-4):
              found = (oy, ox, flip)
      assert found is not None
      seen.add(found)
  assert len(seen) > 10 and {f for _, _, f in seen} == {False, True}


def test_hoisted_lstm_equals_flax_lstm_parameters_outputs_and_gradients():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from fedjax_comp.models.layers import LSTM  # pylint: disable=import-outside-toplevel

  class Flax(nn.Module):
    @nn.compact
    def __call__(self, x):
      for _ in range(2):
        x = nn.RNN(nn.OptimizedLSTMCell(6))(x)
      return x

  class Mine(nn.Module):
    @nn.compact
    def __call__(self, x):
      for layer in range(2):
        x = LSTM(6, name=f"OptimizedLSTMCell_{layer}")(x)
      return x

  x = jax.random.normal(jax.random.key(0), (3, 5, 4))
  ref, mine = Flax().init(jax.random.key(1), x), Mine().init(jax.random.key(1), x)
  assert jax.tree.structure(ref) == jax.tree.structure(mine)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(mine)):
    np.testing.assert_array_equal(a, b)  # the same initial parameters, bit for bit
  np.testing.assert_allclose(Mine().apply(ref, x), Flax().apply(ref, x), atol=1e-6)
  loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply(p, x)))
  for a, b in zip(jax.tree.leaves(jax.grad(loss(Flax()))(ref)),
                  jax.tree.leaves(jax.grad(loss(Mine()))(ref))):
    np.testing.assert_allclose(a, b, atol=1e-5)
