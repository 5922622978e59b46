"""Client stores: where a population's examples and per-client state rows live.

A round consumes a cohort: the sampled ids (`sampling.round_ids`, a pure
function of the seed and the round), their examples and their state rows.
A store binds to an algorithm (`store.bind(algorithm, params)`) and runs its
rounds (``state, out = bound.step(state)``), feeding it cohorts and writing
the returned rows back.

* `DeviceStore` (the fast path): the whole population, padded to its largest
  client, sits on the device(s) and the round gathers each chunk's clients
  inside the jit. Its rows are ``[num_clients, ...]`` device arrays, updated
  in place (donated) every round. It refuses a population over its memory
  budget before allocating, naming the bytes and the host store.
* `HostStore` (`data.host_store`): the population stays in host memory as
  ragged arrays, each round's cohort is gathered, padded to a bucket and
  transferred, and round t+1's cohort is prepared while round t runs.

Both give bit-identical rounds for the same seed (tests/test_stores.py).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fedjax_comp import sampling
from fedjax_comp.algorithms.base import Cohort, FederatedAlgorithm, RoundOutput
from fedjax_comp.data.federated import ClientArrays
from fedjax_comp.sharding import CLIENTS_AXIS, fetch, paced, replicate

# Share of the memory a store may fill by default: a device's memory, or the
# host's RAM for CPU devices (which all live in it).
DEFAULT_MEMORY_FRACTION = 0.5


def tree_bytes(tree) -> int:
  """Bytes of a pytree of arrays or `jax.ShapeDtypeStruct`s."""
  return sum(int(np.prod(np.shape(a), dtype=np.int64)) * np.dtype(a.dtype).itemsize
             for a in jax.tree.leaves(tree))


def host_memory_budget() -> int:
  """Bytes of host RAM a population may fill by default: half of it."""
  return int(DEFAULT_MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def memory_budget(mesh: Mesh | None = None) -> int:
  """Bytes a device store may use by default: half of a device's memory (all CPU devices
  share the host's RAM, so there it is half of the RAM over the device count)."""
  devices = list(mesh.devices.flat) if mesh is not None else [jax.devices()[0]]
  if devices[0].platform == "cpu":
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(DEFAULT_MEMORY_FRACTION * ram / len(devices))
  stats = devices[0].memory_stats() or {}
  limit = stats.get("bytes_limit") or 16 * 2**30
  return int(DEFAULT_MEMORY_FRACTION * limit)


def row_stack_shapes(algorithm: FederatedAlgorithm, params, num_rows: int):
  """Abstract ``[num_rows, ...]`` rows of `algorithm` for a model like `params`."""
  row = jax.eval_shape(algorithm.init_row, params)
  return jax.tree.map(lambda r: jax.ShapeDtypeStruct((num_rows, *r.shape), r.dtype), row)


def check_clients_per_round(num_clients: int, clients_per_round: int) -> None:
  if not 1 <= clients_per_round <= num_clients:
    raise ValueError(f"clients_per_round must be in [1, num_clients={num_clients}], "
                     f"got {clients_per_round}")


class RowTable:
  """The rows of the clients sampled so far, in host memory: one growable array per leaf
  and an id -> position index, so a cohort's rows are read and written with one
  fancy-indexing operation per leaf (no per-client Python work beyond the index lookup).
  A client without a stored row reads `init_row`.
  """

  def __init__(self, init_row):
    self.init_row = jax.tree.map(np.asarray, init_row)
    self._index: dict[int, int] = {}
    self._data = jax.tree.map(lambda r: np.zeros((0, *r.shape), r.dtype), self.init_row)

  def __len__(self) -> int:
    return len(self._index)

  def _positions(self, ids) -> np.ndarray:
    return np.fromiter((self._index.get(int(i), -1) for i in ids), np.int64, len(ids))

  def gather(self, ids, count: int):
    """Rows of `ids`, padded with `init_row` to `count` rows."""
    pos = self._positions(ids)
    known = np.nonzero(pos >= 0)[0]

    def leaf(init, data):
      out = np.broadcast_to(init, (count, *init.shape)).copy()
      out[known] = data[pos[known]]
      return out

    return jax.tree.map(leaf, self.init_row, self._data)

  def scatter(self, ids, rows) -> None:
    """Stores ``rows[j]`` as client ``ids[j]``'s row."""
    for i in ids:
      self._index.setdefault(int(i), len(self._index))
    need = len(self._index)
    capacity = jax.tree.leaves(self._data)[0].shape[0] if jax.tree.leaves(self._data) else 0
    if need > capacity:  # grow by doubling
      grow = max(need, 2 * capacity) - capacity
      self._data = jax.tree.map(
          lambda d: np.concatenate([d, np.zeros((grow, *d.shape[1:]), d.dtype)]), self._data)
    pos = self._positions(ids)
    self._data = jax.tree.map(lambda d, r: _set(d, pos, r), self._data, rows)

  def table(self):
    """``{"ids", "rows"}`` of the stored rows, in increasing id order."""
    ids = np.array(sorted(self._index), np.int64)
    pos = self._positions(ids)
    return {"ids": ids, "rows": jax.tree.map(lambda d: d[pos], self._data)}

  def load(self, table) -> None:
    """Replaces every stored row with ``table``'s."""
    self._index = {}
    self._data = jax.tree.map(lambda r: np.zeros((0, *r.shape), r.dtype), self.init_row)
    if len(table["ids"]):
      self.scatter(np.asarray(table["ids"]), table["rows"])


def _set(data, pos, rows):
  data[pos] = np.asarray(rows)
  return data


def check_row_table(table, init_row) -> None:
  """ValueError unless every row of ``table["rows"]`` has the shape and dtype of `init_row`."""
  ids = np.asarray(table["ids"])
  want = jax.tree.structure(init_row)
  if jax.tree.structure(table["rows"]) != want:
    raise ValueError(f"state rows: the table's structure {jax.tree.structure(table['rows'])} "
                     f"does not match this algorithm's row {want}")
  for got, row in zip(jax.tree.leaves(table["rows"]), jax.tree.leaves(init_row)):
    expected = (len(ids), *np.shape(row))
    if tuple(np.shape(got)) != expected or np.dtype(got.dtype) != np.dtype(row.dtype):
      raise ValueError(f"state rows: an array of shape {tuple(np.shape(got))} "
                       f"{np.dtype(got.dtype)} where the model's rows need {expected} "
                       f"{np.dtype(row.dtype)} (another model or algorithm?)")


def _gib(n: int) -> str:
  return f"{n / 2**30:.2f} GiB"


class DeviceStore:
  """The whole population on the device(s), gathered inside the round.

  Args:
    clients: every client's padded arrays (numpy or device).
    mesh: optional clients mesh; the population is replicated on it.
    memory_budget_bytes: refuse populations (plus rows) larger than this per
      device; default `memory_budget(mesh)`.
  """

  def __init__(self, clients: ClientArrays, *, mesh: Mesh | None = None,
               memory_budget_bytes: int | None = None):
    self.mesh = mesh if mesh is not None and mesh.shape[CLIENTS_AXIS] > 1 else None
    self.num_clients = int(clients.num_clients)
    self.budget = memory_budget(self.mesh) if memory_budget_bytes is None else int(
        memory_budget_bytes)
    self._check_bytes(tree_bytes(clients), "the population")
    self.clients = replicate(clients, self.mesh)

  def _check_bytes(self, needed: int, what: str) -> None:
    if needed > self.budget:
      raise ValueError(
          f"client_store=device: {what} needs {_gib(needed)} per device, over the device "
          f"store's memory budget of {_gib(self.budget)}; use --client_store=host (the "
          f"population stays in host memory and each round transfers only its cohort)")

  def bind(self, algorithm: FederatedAlgorithm, params) -> "DeviceRounds":
    """Rounds of `algorithm` on this population, with its rows initialised (from `params`)."""
    shapes = row_stack_shapes(algorithm, params, self.num_clients)
    self._check_bytes(tree_bytes(self.clients) + tree_bytes(shapes),
                      "the population with its per-client state rows")
    return DeviceRounds(self, algorithm, params)


class DeviceRounds:
  """`algorithm`'s rounds on a `DeviceStore`: ``state, out = rounds.step(state)``."""

  def __init__(self, store: DeviceStore, algorithm: FederatedAlgorithm, params):
    self.store, self.algorithm = store, algorithm
    n, m = store.num_clients, algorithm.clients_per_round
    check_clients_per_round(n, m)
    row = algorithm.init_row(params)
    self.stateful = bool(jax.tree.leaves(row))
    self.rows = replicate(jax.tree.map(
        lambda r: jnp.broadcast_to(r, (n, *r.shape)), row), store.mesh) if self.stateful else ()

    def step(state, data, rows):
      ids = sampling.round_ids(state.seed_key, state.round, n, m)
      state, out = algorithm.round(state, Cohort(ids=ids, data=data, rows=rows,
                                                 num_clients=n))
      # A refused round (non-finite aggregate) writes no row either.
      keep = lambda r, new: r.at[ids].set(jnp.where(out.metrics.finite, new.astype(r.dtype),
                                                    r[ids]))
      rows = jax.tree.map(keep, rows, out.rows)
      return state, out._replace(rows=()), rows

    # The rows are updated in place: donating them saves a copy of every row
    # per round.
    self._step = paced(jax.jit(step, donate_argnums=(2,) if self.stateful else ()), store.mesh)

  def lower(self, state):
    return self._step.lower(state, self.store.clients, self.rows)

  def compile(self, state):
    """Compiles the round once (for states like `state`); returns a `step` that uses it."""
    # (state, clients, rows) -> (state, out, rows), paced on a CPU mesh (`sharding.paced`).
    self.compiled = paced(self.lower(state).compile(), self.store.mesh)

    def step(state):
      state, out, self.rows = self.compiled(state, self.store.clients, self.rows)
      return state, out

    return step

  def step(self, state) -> tuple[Any, RoundOutput]:
    """Runs the round `state` is at; returns the new state and the round's output."""
    state, out, self.rows = self._step(state, self.store.clients, self.rows)
    return state, out

  def get_rows(self):
    """``{"ids", "rows"}``: every client's id and row, on the host (a checkpoint's table)."""
    n = self.store.num_clients if self.stateful else 0
    return {"ids": np.arange(n, dtype=np.int64), "rows": fetch(self.rows)}

  def rows_template(self, count: int):
    """A `get_rows`-shaped table of `count` rows."""
    rows = jax.tree.map(lambda r: np.zeros((count, *r.shape[1:]), r.dtype), self.rows)
    return {"ids": np.zeros((count,), np.int64), "rows": rows}

  def set_rows(self, table) -> None:
    """Sets the rows of ``table["ids"]`` (from `get_rows` or a host store's table)."""
    if not self.stateful:
      return
    check_row_table(table, jax.tree.map(lambda r: r[0], fetch(self.rows)))
    if not len(table["ids"]):
      return
    ids = jnp.asarray(table["ids"], jnp.int32)
    self.rows = replicate(jax.tree.map(lambda r, new: jnp.asarray(r).at[ids].set(new),
                                       fetch(self.rows), table["rows"]),
                          self.store.mesh)
