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
