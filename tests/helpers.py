"""Small fixtures shared by the tests."""

from __future__ import annotations

import jax.numpy as jnp
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
  return ClientArrays(features={"x": x, "y": y}, num_examples=sizes)


def mlp(shape=(6,), num_classes=3) -> fc.Model:
  return fc.get_model("mlp", shape, num_classes)


def client_update(model, lr=0.1, **schedule):
  """The plain FedAvg client update of `model` with SGD at `lr`."""
  return fc.make_client_update(model.train_loss, optax.sgd(lr), fc.LocalSchedule(**schedule))


def fed_avg(model, lr=0.1, server="fedavg", server_lr=1.0, clients_per_round=4, chunk=2,
            **kw):
  schedule = {k: kw.pop(k) for k in ("epochs", "batch_size", "steps") if k in kw}
  return fc.fed_avg(model, optax.sgd(lr), fc.server_optimizer(server, server_lr),
                    fc.LocalSchedule(**schedule), clients_per_round=clients_per_round,
                    client_chunk=chunk, **kw)


def cohort(data: ClientArrays, ids, rows=()) -> fc.Cohort:
  """The device-store cohort of `ids` (data and rows are the whole population)."""
  return fc.Cohort(ids=jnp.asarray(ids, jnp.int32), data=data, rows=rows,
                   num_clients=data.num_clients)
