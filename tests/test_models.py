"""Models: McMahan's parameter counts, shapes, and bad names."""

import jax
import jax.numpy as jnp
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


@pytest.mark.parametrize("name", fc.MODELS)
def test_logits_shape(name):
  shape = (32, 32, 3) if name == "cifar_cnn" else (28, 28)
  model = fc.get_model(name, shape, 7)
  logits = model.apply(model.init(jax.random.key(0)), jnp.zeros((5, *shape)))
  assert logits.shape == (5, 7)


def test_bad_model_inputs():
  with pytest.raises(ValueError, match="valid models: .*2nn"):
    fc.get_model("resnet", (28, 28), 10)
  with pytest.raises(ValueError, match="image inputs"):
    fc.get_model("cnn", (40,), 10)
  with pytest.raises(ValueError, match="num_classes"):
    fc.get_model("mlp", (40,), 1)


@pytest.mark.parametrize("kernel,channels", [((5, 5), 1), ((5, 5), 32), ((3, 3), 3)])
def test_patch_conv_equals_flax_conv(kernel, channels):
  """Same parameters, same outputs and same gradients as flax.linen.Conv("SAME")."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from fedjax_comp.models import PatchConv  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(0), (3, 9, 7, channels))
  reference = nn.Conv(8, kernel, padding="SAME")
  params = reference.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
  patch = PatchConv(8, kernel)
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
