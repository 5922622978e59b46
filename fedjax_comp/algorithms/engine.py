"""The round engine: one algorithm's client function over a cohort, in chunks, on one or many devices.

`run_cohort` maps ``client(broadcast, client_i, row_i, key_i)`` over the
cohort's clients, a `lax.scan` over blocks of `chunk` vmapped clients, and
carries only the running weighted sums, so 10,000 clients never hold 10,000
model copies at once. Per client it also returns the local step count and
the new state row (stacked in the cohort's id order) for the store to write
back. A client's key is ``fold_in(round_key, id)``, so results do not
depend on the chunk size or the device count, up to float summation order.

Weights: each sum's weight is the client's own (`Weighted.weight`, e.g. its
example count); an empty client (no examples) or a padding slot gets weight
0, its values are zeroed *before* the sum (so a NaN from it cannot leak),
and it keeps its old row.

Why chunks: on a CPU, a wide `vmap` of per-client weights turns every matmul
into many small batched ones that spill the cache; a scan over narrow vmapped
chunks keeps each client's weights hot. On a GPU, wide chunks win (the
model's `default_chunk`).

With a `mesh` (axis `sharding.CLIENTS_AXIS`), the cohort's slots are split
across devices by `jax.shard_map`, each device scans its own chunks, and the
sums meet in one `psum`; per-client outputs come back in slot order.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from fedjax_comp import keys
from fedjax_comp.algorithms.base import ClientOutput, Cohort, CohortSums, RoundOutput
from fedjax_comp import sharding
from fedjax_comp.sharding import CLIENTS_AXIS

ClientFn = Callable[..., ClientOutput]


def padded_num_clients(num_clients: int, chunk: int, num_devices: int = 1) -> int:
  """Slots after padding `num_clients` ids to whole chunks on every device."""
  block = chunk * num_devices
  return -(-num_clients // block) * block


def _pow2_floor(n: int) -> int:
  return 1 << (max(int(n), 1).bit_length() - 1)


def layout(num_clients: int, chunk: int, num_devices: int = 1, exact: bool = False
           ) -> tuple[int, int]:
  """``(chunk, slots)`` a round of `num_clients` runs with: the chunk actually used (cut to a
  device's share; a power of two with `exact`) and the slots after padding.

  With `exact`, every device holds a power-of-two number of chunks, so the
  sums form one balanced tree over all slots whatever the chunk size and the
  (power-of-two) device count.
  """
  share = -(-num_clients // num_devices)
  if not exact:
    chunk = min(chunk, share)
    return chunk, padded_num_clients(num_clients, chunk, num_devices)
  if num_devices & (num_devices - 1):
    raise ValueError(f"reproducible (fixed-order) sums need a power-of-two number of devices, "
                     f"got {num_devices}; use 1, 2, 4, 8, ... devices or reproducible=False")
  # Not cut to a device's share: a client's own arithmetic (vmapped matmuls)
  # may round differently at another chunk width, so the width must not
  # depend on the device count.
  chunk = _pow2_floor(min(chunk, 1 << (num_clients - 1).bit_length()))
  per_device = chunk * (1 << (-(-share // chunk) - 1).bit_length())
  return chunk, per_device * num_devices


def _weighted_sum(weight: jax.Array, value: jax.Array) -> jax.Array:
  # A [1, chunk] x [chunk, size] product over the chunk's values, zeroed first
  # where the weight is 0 (0 * NaN would still be NaN). On a CPU it beat an
  # elementwise multiply + reduce by 10% for the MLP's chunk of 25 (and tied
  # for the 2NN's chunk of 1); HIGHEST keeps a GPU from rounding the sum's
  # inputs to TF32.
  flat = value.reshape(value.shape[0], -1).astype(jnp.float32)
  flat = jnp.where((weight > 0)[:, None], flat, 0.0)
  total = jnp.matmul(weight[None, :], flat, precision=lax.Precision.HIGHEST)
  return total.reshape(value.shape[1:])


def _pairwise(x: jax.Array) -> jax.Array:
  """The sum over axis 0 (a power of two long) as a balanced tree of adjacent pairs.

  The barrier keeps XLA from fusing the terms' products into the adds as
  fused multiply-adds, whose single rounding would differ from the separate
  product the next chunk (or device) boundary forces.
  """
  x = lax.optimization_barrier(x)
  while x.shape[0] > 1:
    x = x.reshape(x.shape[0] // 2, 2, *x.shape[1:])
    x = x[:, 0] + x[:, 1]
  return x[0]


def _tree_weighted_sum(weight: jax.Array, value: jax.Array) -> jax.Array:
  # -0.0 where the weight is 0: x + (-0.0) == x for every x, so empty lanes
  # and padding leave the sum bit for bit what it would be without them.
  w = weight.reshape(-1, *([1] * (value.ndim - 1)))
  return _pairwise(jnp.where(w > 0, w * value.astype(jnp.float32), -0.0))


def _chunk(client_fn, broadcast, data, rows, ids, index, client_keys, exact=False):
  """Sums and per-client outputs of one chunk; id -1 is a padding slot."""
  real = ids >= 0
  at = jnp.where(real, index, 0)
  clients = data.select(at)
  clients = clients.replace(num_examples=jnp.where(real, clients.num_examples, 0))
  rows_in = jax.tree.map(lambda r: r[at], rows)
  out = jax.vmap(client_fn, in_axes=(None, 0, 0, 0))(broadcast, clients, rows_in, client_keys)
  n = clients.num_examples.astype(jnp.float32)
  live = n > 0
  if exact:
    weighted_sum, total = _tree_weighted_sum, lambda a: _pairwise(jnp.where(live, a, -0.0))
  else:
    weighted_sum, total = _weighted_sum, jnp.sum
  sums, weights = {}, {}
  for name, contribution in out.sums.items():
    w = jnp.where(live, contribution.weight.astype(jnp.float32), 0.0)
    sums[name] = jax.tree.map(lambda v, w=w: weighted_sum(w, v), contribution.value)
    weights[name] = total(w)
  keep = lambda new, old: jnp.where(live.reshape(-1, *([1] * (new.ndim - 1))), new, old)
  new_rows = jax.tree.map(keep, out.row, rows_in)
  steps = jnp.where(live, out.num_steps, 0).astype(jnp.int32)
  totals = (sums, weights, total(n), total(n * jnp.where(live, out.train_loss, 0.0)),
            jnp.sum(live).astype(jnp.int32), jnp.sum(steps).astype(jnp.int32))
  return totals, (steps, new_rows)


def _scan(client_fn, broadcast, data, rows, round_key, ids, index, chunk, exact=False):
  """This device's slots, `chunk` at a time: the totals and per-slot outputs."""
  # Every client's key at once: one threefry call over all of this device's
  # ids instead of one small one per chunk (MLP round -2%, bit-identical).
  client_keys = jax.vmap(keys.client_key, in_axes=(None, 0))(round_key, jnp.maximum(ids, 0))
  blocks = lambda a: a.reshape(-1, chunk, *a.shape[1:])
  xs = (blocks(ids), blocks(index), blocks(client_keys))
  one = lambda *a: _chunk(client_fn, broadcast, data, rows, *a, exact=exact)
  shapes, slot_shapes = jax.eval_shape(one, *(a[0] for a in xs))
  if exact:
    return _tree_scan(one, xs, shapes, slot_shapes)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(acc, chunk_xs):
    totals, outs = one(*chunk_xs)
    return jax.tree.map(jnp.add, acc, totals), outs

  acc, outs = lax.scan(body, zeros, xs)
  return acc, jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), outs)


def _neg_zeros(shapes):
  return jax.tree.map(lambda s: jnp.full(s.shape, -0.0 if jnp.issubdtype(s.dtype, jnp.floating)
                                         else 0, s.dtype), shapes)


def _tree_scan(one, xs, shapes, slot_shapes):
  """The chunks' totals summed as a balanced tree over the chunks (their number a power of two).

  Nested scans of length 2: level k adds the totals of two blocks of 2^(k-1)
  chunks, starting from -0.0, so (-0.0 + left) + right == left + right and
  the tree over all slots is the same whatever the chunk size. A chunk of
  padding only is skipped (`lax.cond`): it adds -0.0 and costs nothing.
  """
  num_chunks = xs[0].shape[0]
  depth = num_chunks.bit_length() - 1
  nested = jax.tree.map(lambda a: a.reshape(*([2] * depth), *a.shape[1:]), xs)

  def chunk_or_skip(x):
    ids = x[0]
    skip = lambda x: (_neg_zeros(shapes), jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), slot_shapes))
    return lax.cond(jnp.any(ids >= 0), lambda x: one(*x), skip, x)

  def level(k, x):
    if k == 0:
      return chunk_or_skip(x)

    def body(acc, xi):
      totals, outs = level(k - 1, xi)
      return jax.tree.map(jnp.add, acc, totals), outs

    return lax.scan(body, _neg_zeros(shapes), x)

  acc, outs = level(depth, nested)
  return acc, jax.tree.map(lambda a: a.reshape(-1, *a.shape[depth + 1:]), outs)


def run_cohort(client_fn: ClientFn, broadcast, cohort: Cohort, round_key: jax.Array, *,
               chunk: int, mesh: Mesh | None = None, exact: bool = False) -> CohortSums:
  """Runs `client_fn` over the cohort and reduces its sums (traceable; jit it).

  Args:
    client_fn: ``client(broadcast, client, row, key) -> ClientOutput`` for one client.
    broadcast: what every client receives (replicated).
    cohort: the round's ids, data and rows (`Cohort`).
    round_key: the round's key; client i's key is ``fold_in(round_key, i)``.
    chunk: clients per vmapped block (>= 1; cut to a device's share of the round).
    mesh: optional mesh with a `CLIENTS_AXIS` axis to shard the cohort over.
    exact: sum in a fixed order (a balanced tree over the slots), so that the
      sums are bit-identical for every chunk size and power-of-two device
      count (see `layout`); otherwise chunks add up in scan order and devices
      in a `psum`, and results agree up to float summation order.

  Returns:
    `CohortSums` (sums replicated across `mesh`; per-client outputs in id order).
  """
  if chunk < 1:
    raise ValueError(f"client_chunk must be >= 1, got {chunk}")
  m = cohort.ids.shape[0]
  num_devices = 1 if mesh is None else mesh.shape[CLIENTS_AXIS]
  chunk, slots = layout(m, chunk, num_devices, exact)
  ids = jnp.concatenate([cohort.ids.astype(jnp.int32), jnp.full((slots - m,), -1, jnp.int32)])
  # Host (numpy) arrays cannot be indexed by tracers.
  data, rows = jax.tree.map(jnp.asarray, (cohort.data, cohort.rows))
  if cohort.gathered:
    # Entry j is client ids[j]'s: cut or pad the cohort's arrays to the slots.
    fit = lambda a: (a[:slots] if a.shape[0] >= slots else
                     jnp.concatenate([a, jnp.zeros((slots - a.shape[0], *a.shape[1:]), a.dtype)]))
    data, rows = jax.tree.map(fit, data), jax.tree.map(fit, rows)
    index = jnp.arange(slots, dtype=jnp.int32)
  else:
    index = jnp.maximum(ids, 0)

  def finish(totals, per_slot):
    (sums, weights, n, loss, live, steps), (client_steps, new_rows) = totals, per_slot
    return CohortSums(sums=sums, weights=weights, num_examples=n, weighted_loss=loss,
                      num_clients=live, num_steps=steps, client_steps=client_steps[:m],
                      rows=jax.tree.map(lambda r: r[:m], new_rows))

  if mesh is None or num_devices == 1:
    return finish(*_scan(client_fn, broadcast, data, rows, round_key, ids, index, chunk,
                         exact))

  def per_device(broadcast, data, rows, round_key, local_ids, local_index):
    if cohort.gathered:  # this device's share of the cohort, in slot order
      local_index = jnp.arange(local_ids.shape[0], dtype=jnp.int32)
    totals, (steps, new_rows) = _scan(client_fn, broadcast, data, rows, round_key,
                                      local_ids, local_index, chunk, exact)
    # Every slot's step count, placed at this device's offset, rides in the sums'
    # all-reduce: returning it sharded cost a second collective per round
    # (about 5% of a 1,000-client logistic round on 2 CPU devices).
    offset = lax.axis_index(CLIENTS_AXIS) * steps.shape[0]
    steps = lax.dynamic_update_slice(jnp.zeros((slots,), jnp.int32), steps, (offset,))
    if not exact:
      return lax.psum((totals, steps), CLIENTS_AXIS), new_rows
    # The devices' totals are the top of the tree: gathered, then added in pairs.
    gathered = lax.all_gather((totals, steps), CLIENTS_AXIS)
    return jax.tree.map(lambda a: _pairwise(a) if jnp.issubdtype(a.dtype, jnp.floating)
                        else jnp.sum(a, axis=0), gathered), new_rows

  spread = P(CLIENTS_AXIS) if cohort.gathered else P()
  # check_vma=False: client code (scans over replicated params whose carries
  # become per-device) is written for one device and should not need pcasts.
  (totals, steps), new_rows = jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), spread, spread, P(), P(CLIENTS_AXIS),
                                       P(CLIENTS_AXIS)),
      out_specs=(P(), P(CLIENTS_AXIS)), check_vma=False)(broadcast, data, rows, round_key, ids,
                                                         index)
  return finish(totals, (steps, new_rows))


def make_round(broadcast, client_fn: ClientFn, server, *, chunk: int,
               mesh: Mesh | None = None, exact: bool = False):
  """The jitted ``round(state, cohort) -> (state, RoundOutput)`` of an algorithm's pieces.

  ``state`` must have ``round`` and ``seed_key``; ``server(state, sums,
  num_clients)`` (N, the population size) advances ``round``.
  """
  def run_round(state, cohort: Cohort):
    round_key = keys.round_key(state.seed_key, state.round)
    sums = run_cohort(client_fn, broadcast(state), cohort, round_key, chunk=chunk, mesh=mesh,
                      exact=exact)
    new_state, metrics = server(state, sums, cohort.num_clients)
    return new_state, RoundOutput(metrics=metrics, client_ids=cohort.ids,
                                  client_steps=sums.client_steps, rows=sums.rows)

  # On a multi-device CPU mesh, at most a few rounds may be queued (`sharding.paced`).
  return sharding.paced(jax.jit(run_round), mesh)
