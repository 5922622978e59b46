"""Small fixtures shared by the tests."""

from __future__ import annotations

import numpy as np
import optax

import fedjax_comp as fc
from fedjax_comp.data.federated import ClientArrays


def random_clients(sizes, max_examples=None, shape=(6,), num_classes=3, seed=0,
                   pad_value=0.0) -> ClientArrays:
  """Clients with the given example counts; padding filled with `pad_value`."""
  rng = np.random.default_rng(seed)
  sizes = np.asarray(sizes, np.int32)
  cap = int(max_examples or max(sizes.max(), 1))
  x = rng.standard_normal((len(sizes), cap, *shape)).astype(np.float32)
  y = rng.integers(0, num_classes, (len(sizes), cap)).astype(np.int32)
  pad = np.arange(cap)[None, :] >= sizes[:, None]
  x[pad] = pad_value
  y[pad] = 0
  return ClientArrays(x=x, y=y, num_examples=sizes)


def mlp_setup(shape=(6,), num_classes=3, lr=0.1, **client_kwargs):
  model = fc.get_model("mlp", shape, num_classes)
  update = fc.make_client_update(fc.masked_cross_entropy(model), optax.sgd(lr), **client_kwargs)
  return model, update
