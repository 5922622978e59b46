"""Example-weighted aggregation of many clients' updates, in chunks, on one or many devices.

`sum_client_updates` is the engine of a round. For the sampled client ids it
runs, chunk by chunk (a `lax.scan` over blocks of `chunk` clients)::

  vmap(client_update) -> vmap(codec.encode) -> vmap(codec.decode) -> weighted sum

and carries only the running sums, so 10,000 clients never hold 10,000 model
copies at once. A client's weight is its example count; an empty client (or
a padding slot) has weight 0 and its decoded update is zeroed before the sum,
so it can never inject a NaN.

Why chunks: on a CPU, a wide `vmap` of per-client weights turns every matmul
into many small batched ones that spill the cache; a scan over narrow vmapped
chunks keeps each client's weights hot. On a GPU, wide chunks win.

With a `mesh` (axis ``"clients"``), the ids are split across devices by
`jax.shard_map`, each device scans its own chunks, and the sums meet in one
`psum`. A client's randomness depends only on (round key, client id), so the
result does not depend on the chunk size or the device count, up to float
summation order.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from fedjax_comp import keys
from fedjax_comp.clients import ClientUpdateFn
from fedjax_comp.codecs import Codec
from fedjax_comp.data.federated import ClientArrays
from fedjax_comp.models import Params

CLIENTS_AXIS = "clients"


class ClientSums(NamedTuple):
  """Running sums over the clients of a round."""

  weighted_delta: Params  # sum_i n_i * decoded delta_i
  weight: jax.Array  # sum_i n_i (float32)
  weighted_loss: jax.Array  # sum_i n_i * train_loss_i
  num_clients: jax.Array  # clients with at least one example (int32)
  num_steps: jax.Array  # local steps taken, all clients (int32)


def encode_decode(codec: Codec, codec_keys: jax.Array, updates: Params) -> Params:
  """What the server decodes from a batch of uploads (leading axis: clients or workers).

  Client side: ``codec.encode`` with a fresh codec state. Server side:
  ``codec.decode`` with the same keys, which it rebuilds itself.
  """
  payloads, _ = jax.vmap(codec.encode)(codec_keys, updates, jax.vmap(codec.init)(updates))
  return jax.vmap(codec.decode)(codec_keys, payloads)


def _chunk_sums(client_update: ClientUpdateFn, codec: Codec, params: Params,
                data: ClientArrays, ids: jax.Array, client_keys: jax.Array) -> ClientSums:
  """Sums over one chunk of client ids and their keys; id -1 is a padding slot."""
  real = ids >= 0
  clients = data.select(jnp.where(real, ids, 0))
  clients = clients.replace(num_examples=jnp.where(real, clients.num_examples, 0))
  deltas, metrics = jax.vmap(client_update, in_axes=(None, 0, 0))(params, clients, client_keys)
  codec_keys = jax.vmap(keys.stream, in_axes=(0, None))(client_keys, keys.Stream.CODEC)
  decoded = encode_decode(codec, codec_keys, deltas)
  weight = clients.num_examples.astype(jnp.float32)
  live = weight > 0

  def weighted_sum(d):
    # A [1, chunk] x [chunk, size] product over the chunk's updates, zeroed
    # first where a client is empty (0 * NaN would still be NaN). On a CPU it
    # beat an elementwise multiply + reduce by 10% for the MLP's chunk of 25
    # (and tied for the 2NN's chunk of 1); HIGHEST keeps a GPU from rounding
    # the sum's inputs to TF32.
    flat = jnp.where(live[:, None], d.reshape(d.shape[0], -1).astype(jnp.float32), 0.0)
    total = jnp.matmul(weight[None, :], flat, precision=lax.Precision.HIGHEST)
    return total.reshape(d.shape[1:])

  return ClientSums(
      weighted_delta=jax.tree.map(weighted_sum, decoded),
      weight=jnp.sum(weight),
      weighted_loss=jnp.sum(weight * jnp.where(live, metrics.train_loss, 0.0)),
      num_clients=jnp.sum(live).astype(jnp.int32),
      num_steps=jnp.sum(metrics.num_steps).astype(jnp.int32))


def _scan_chunks(client_update, codec, params, data, round_key, ids, chunk):
  chunks = ids.reshape(-1, chunk)
  # Every client's key at once: one threefry call over all of this device's
  # ids instead of one small one per chunk (MLP round -2%, bit-identical).
  client_keys = jax.vmap(keys.client_key, in_axes=(None, 0))(round_key, jnp.maximum(ids, 0))
  zeros = ClientSums(
      weighted_delta=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
      weight=jnp.float32(0), weighted_loss=jnp.float32(0), num_clients=jnp.int32(0),
      num_steps=jnp.int32(0))

  def body(acc, chunk_ids_and_keys):
    sums = _chunk_sums(client_update, codec, params, data, *chunk_ids_and_keys)
    return jax.tree.map(jnp.add, acc, sums), None

  acc, _ = lax.scan(body, zeros, (chunks, client_keys.reshape(chunks.shape)))
  return acc


def padded_num_clients(num_clients: int, chunk: int, num_devices: int = 1) -> int:
  """Slots after padding `num_clients` ids to whole chunks on every device."""
  block = chunk * num_devices
  return -(-num_clients // block) * block


def sum_client_updates(client_update: ClientUpdateFn, codec: Codec, params: Params,
                       data: ClientArrays, client_ids: jax.Array, round_key: jax.Array, *,
                       chunk: int, mesh: Mesh | None = None) -> ClientSums:
  """Runs and sums the updates of `client_ids`, `chunk` clients at a time.

  Args:
    client_update: the pure single-client update.
    codec: the uplink codec (encode on the client, decode on the server).
    params: the server model, broadcast to every client.
    data: all clients' arrays (replicated on every device of `mesh`).
    client_ids: int32 ``[m]`` ids of this round's clients.
    round_key: the round's key; client i's key is ``fold_in(round_key, i)``.
    chunk: clients per vmapped block (>= 1).
    mesh: optional mesh with a ``"clients"`` axis to shard the ids over.

  Returns:
    `ClientSums` over the round's clients (replicated across `mesh`).
  """
  if chunk < 1:
    raise ValueError(f"client_chunk must be >= 1, got {chunk}")
  m = client_ids.shape[0]
  num_devices = 1 if mesh is None else mesh.shape[CLIENTS_AXIS]
  chunk = min(chunk, -(-m // num_devices))
  slots = padded_num_clients(m, chunk, num_devices)
  ids = jnp.concatenate([client_ids.astype(jnp.int32), jnp.full((slots - m,), -1, jnp.int32)])
  if mesh is None or num_devices == 1:
    return _scan_chunks(client_update, codec, params, data, round_key, ids, chunk)

  def per_device(params, data, round_key, local_ids):
    sums = _scan_chunks(client_update, codec, params, data, round_key, local_ids, chunk)
    return lax.psum(sums, CLIENTS_AXIS)

  # check_vma=False: client code (scans over replicated params whose carries
  # become per-device) is written for one device and should not need pcasts.
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(), P(CLIENTS_AXIS)),
                       out_specs=P(), check_vma=False)(params, data, round_key, ids)


def weighted_mean(sums: ClientSums) -> Params:
  """sum_i n_i delta_i / sum_i n_i; zero when no client had any example."""
  denom = jnp.maximum(sums.weight, 1.0)
  return jax.tree.map(lambda s: jnp.where(sums.weight > 0, s / denom, 0.0), sums.weighted_delta)


# CPU: measured with benchmarks/throughput.py (20 examples, batch 10, 2
# steps) on a 2-core CPU: narrow chunks keep per-client weights in cache.
# GPU: the fastest chunk of scripts/device_bench.py's sweep at 10,000 clients
# on one H200 (docs/measurements/device_bench_h200_2026-11-29.json); wide
# chunks fill the device, and logistic/mlp were fastest with the whole round
# in one vmap. A chunk larger than a device's share of the round is cut to it.
# cifar_cnn's GPU entry is not measured yet (the sweep did not include it).
_DEFAULT_CHUNK = {
    "cpu": {"logistic": 64, "mlp": 25, "2nn": 1, "cnn": 1, "cifar_cnn": 1},
    "gpu": {"logistic": 10000, "mlp": 10000, "2nn": 1024, "cnn": 256, "cifar_cnn": 64},
}


def default_chunk(model_name: str, backend: str) -> int:
  """A good `client_chunk` for a model on a backend ("cpu", "gpu", "tpu")."""
  table = _DEFAULT_CHUNK["cpu" if backend == "cpu" else "gpu"]
  return table.get(model_name, 1 if backend == "cpu" else 64)
