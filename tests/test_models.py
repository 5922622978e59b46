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
