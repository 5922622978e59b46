"""The host store: a population in host memory (or memory-mapped files), cohorts sent per round.

The population is ragged, never padded: every feature's examples of all
clients concatenated, plus offsets (`RaggedClients`), or clients generated on
demand from (seed, client id) (`data.lazy`). Each round `HostRounds`:

1. takes the round's ids (`sampling.round_ids`, from the seed and round
   number alone, so they are known before the round);
2. gathers those clients, each capped at `max_examples` (the first ones in
   its stored order are kept), into arrays padded to the round's *bucket*:
   the next power of two at or above the cohort's largest client, at least
   `min_bucket` (so a cohort costs what its largest client needs, not what
   the population's largest does);
3. transfers them to the device(s) (sharded over the clients mesh);
4. runs the round, then writes the returned rows into its row table.

Steps 1-3 of round t+1 run in a background thread while round t runs on the
device (`data_wait_s` is how long a round still waited for them). Rows are
gathered right before each round (a client in two consecutive cohorts must
see its row from the first). Clients never sampled have no stored row: they
read the algorithm's initial row.

Compiles: one per bucket, i.e. at most ``log2(cap / min_bucket) + 1`` shapes
for a cap of `max_examples` (or the population's largest client).

Bit-identity with the device store: the same round gives the same
parameters when ``min_bucket`` is at least the local batch size (the
default 16 covers batch sizes up to 16): the padded slots only add inactive
steps and masked examples. With full-batch training (``batch_size=None``)
the batch is the padded length, so results agree up to float summation
order only.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fedjax_comp import sampling
from fedjax_comp.algorithms import engine
from fedjax_comp.algorithms.base import Cohort, FederatedAlgorithm, RoundOutput
from fedjax_comp.data.federated import ClientArrays
from fedjax_comp.data.ragged import RaggedClients  # noqa: F401  (re-exported)
from fedjax_comp.data.stores import RowTable, check_clients_per_round, check_row_table
from fedjax_comp.sharding import CLIENTS_AXIS, fetch, paced, replicate

IDS_AHEAD = 64  # rounds whose client ids are computed in one call (at most)


def next_pow2(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


class HostStore:
  """A population on the host; each round's cohort is gathered, bucketed and transferred.

  Args:
    population: a `RaggedClients`, or any object with ``num_clients``,
      ``sizes()`` and ``gather(ids, bucket)`` (e.g. `data.lazy` populations).
    mesh: optional clients mesh; cohorts are sharded over it.
    max_examples: cap on a client's examples (its first ones are kept).
    min_bucket: the smallest padded size of a cohort (see the module docstring).
    say: where the store reports capping (None: silent).
  """

  def __init__(self, population, *, mesh: Mesh | None = None, max_examples: int | None = None,
               min_bucket: int = 16, say=print):
    self.population = population
    self.mesh = mesh if mesh is not None and mesh.shape[CLIENTS_AXIS] > 1 else None
    self.num_clients = int(population.num_clients)
    self.sizes = np.asarray(population.sizes(), np.int64)
    largest = int(self.sizes.max()) if self.sizes.size else 0
    if max_examples is not None and max_examples < 1:
      raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    self.cap = largest if max_examples is None else min(int(max_examples), largest)
    if not (isinstance(min_bucket, int) and min_bucket >= 1):
      raise ValueError(f"min_bucket must be an integer >= 1, got {min_bucket!r}")
    self.min_bucket = min_bucket
    over = int((self.sizes > self.cap).sum())
    if over and say:
      say(f"host store: {over} of {self.num_clients} clients hold more than "
          f"max_examples={self.cap} examples (largest {largest}); each keeps its first "
          f"{self.cap} in stored order")

  def bucket(self, ids: np.ndarray) -> int:
    """The padded size of a cohort: next power of two >= its largest (capped) client,
    at least `min_bucket`, at most the cap."""
    largest = int(np.minimum(self.sizes[ids], self.cap).max()) if len(ids) else 1
    return max(min(max(next_pow2(largest), self.min_bucket), self.cap), 1)

  def bind(self, algorithm: FederatedAlgorithm, params) -> "HostRounds":
    return HostRounds(self, algorithm, params)


class HostRounds:
  """`algorithm`'s rounds on a `HostStore`, preparing round t+1's cohort during round t."""

  def __init__(self, store: HostStore, algorithm: FederatedAlgorithm, params):
    self.store, self.algorithm = store, algorithm
    n, m = store.num_clients, algorithm.clients_per_round
    check_clients_per_round(n, m)
    self.init_row = fetch(algorithm.init_row(params))
    self.stateful = bool(jax.tree.leaves(self.init_row))
    self.rows = RowTable(self.init_row)  # the rows of the clients sampled so far
    ndev = 1 if store.mesh is None else store.mesh.shape[CLIENTS_AXIS]
    _, self.slots = engine.layout(m, algorithm.client_chunk, ndev, algorithm.reproducible)
    self._spread = (NamedSharding(store.mesh, P(CLIENTS_AXIS)) if store.mesh is not None
                    else None)
    self._ids_block = jax.jit(jax.vmap(
        lambda key, r: sampling.round_ids(key, r, n, m), in_axes=(None, 0)))
    self._ids_table: dict[int, np.ndarray] = {}
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cohort")
    self._next: tuple[int, concurrent.futures.Future] | None = None
    self._compiled: dict[int, Any] = {}
    self.buckets_compiled: list[int] = []  # one compile each
    self.data_wait_s = 0.0  # how long the last round waited for its cohort's data
    self.last_bucket = None  # the last round's padded size
    self._round: int | None = None
    self._seed_key = None
    self._last_round = None  # the round counter of the state the last step returned

  def _put(self, tree):
    if self._spread is None:
      return jax.device_put(tree)
    if self._spread.is_fully_addressable:
      return jax.device_put(tree, self._spread)
    # A mesh over several processes: each builds its own devices' shards.
    return jax.tree.map(lambda a: jax.make_array_from_callback(
        a.shape, self._spread, lambda idx, a=a: a[idx]), tree)

  def _put_features(self, padded: np.ndarray, bucket: int):
    """The cohort's features on the device(s). Over several processes each gathers only the
    slots of its own devices: every host reads its own share of the store."""
    if self._spread is None or self._spread.is_fully_addressable:
      return self._put(self.store.population.gather(padded, bucket))
    probe = self.store.population.gather(padded[:1], bucket)
    shards = {}

    def shard(index, name):
      rows = index[0]
      key = (rows.start, rows.stop)
      if key not in shards:
        shards[key] = self.store.population.gather(padded[rows], bucket)
      return shards[key][name][(slice(None),) + tuple(index[1:])]

    return {name: jax.make_array_from_callback((len(padded), *a.shape[1:]), self._spread,
                                               lambda idx, name=name: shard(idx, name))
            for name, a in probe.items()}

  def _round_ids(self, r: int) -> np.ndarray:
    """Round r's ids, from a table of the next rounds' computed in one call.

    Called from the main thread before the round that overlaps round r's
    preparation is dispatched, so the device runs it first (a call queued
    behind that round would serialize the prefetch); one call per 64 rounds
    (fewer for populations over 65,536 clients) instead of one per round saves
    ~0.5 ms of host time a round.
    """
    if r not in self._ids_table:
      # At most ~4M random scores per call: a million clients get 4 rounds at a time.
      ahead = max(1, min(IDS_AHEAD, 2**22 // self.store.num_clients))
      rounds = np.arange(r, r + ahead, dtype=np.int32)
      table = np.asarray(fetch(self._ids_block(self._seed_key, rounds)))
      self._ids_table = dict(zip(rounds.tolist(), table))
    return self._ids_table[r]

  def _prepare(self, r: int, ids: np.ndarray | None = None):
    """Round r's ids, bucket and device arrays (runs in the prefetch thread)."""
    ids = self._round_ids(r) if ids is None else ids
    bucket = self.store.bucket(ids)
    padded = np.concatenate([ids, np.zeros((self.slots - len(ids),), ids.dtype)])
    counts = np.minimum(self.store.sizes[padded], bucket).astype(np.int32)
    counts[len(ids):] = 0
    return ids, bucket, ClientArrays(features=self._put_features(padded, bucket),
                                     num_examples=self._put(counts))

  def _cohort(self, r: int) -> tuple[Cohort, int]:
    """Round r's cohort: its prefetched data (or prepared now) and its rows as of now."""
    if self._next is not None and self._next[0] == r:
      future = self._next[1]
    else:
      future = self._pool.submit(self._prepare, r)
    t = time.perf_counter()
    ids, bucket, data = future.result()
    self.data_wait_s = time.perf_counter() - t
    # Round r+1's cohort is prepared while round r runs.
    self._next = (r + 1, self._pool.submit(self._prepare, r + 1, self._round_ids(r + 1)))
    return Cohort(ids=replicate(np.asarray(ids, np.int32), self.store.mesh), data=data,
                  rows=self._rows_for(ids), num_clients=self.store.num_clients,
                  gathered=True), bucket

  def _rows_for(self, ids):
    """The stored rows of `ids` (the initial row for a client never sampled), padded, on device."""
    if not self.stateful:
      return ()
    return self._put(self.rows.gather(ids, self.slots))

  def _sync(self, state) -> None:
    """Follows `state` (its seed and round): a resumed or replaced state restarts prefetch."""
    r = int(fetch(state.round))
    if r != self._round or self._seed_key is not state.seed_key:
      if self._seed_key is not state.seed_key:
        self._ids_table = {}
      self._seed_key, self._round, self._next = state.seed_key, r, None

  def _executable(self, state, cohort: Cohort, bucket: int):
    if bucket not in self._compiled:
      self._compiled[bucket] = paced(self.algorithm.round.lower(state, cohort).compile(),
                                     self.store.mesh)
      self.buckets_compiled.append(bucket)
    return self._compiled[bucket]

  def compile(self, state):
    """Compiles the first round's bucket (later buckets compile when first seen); returns `step`."""
    self._sync(state)
    future = self._pool.submit(self._prepare, self._round)
    ids, bucket, data = future.result()
    self._next = (self._round, future)  # the first step takes it
    cohort = Cohort(ids=replicate(np.asarray(ids, np.int32), self.store.mesh), data=data,
                    rows=self._rows_for(ids), num_clients=self.store.num_clients,
                    gathered=True)
    self._executable(state, cohort, bucket)
    return self.step

  def step(self, state) -> tuple[Any, RoundOutput]:
    """Runs the round `state` is at (its cohort prefetched during the previous round)."""
    if state.round is not self._last_round:  # not the state the last step returned
      self._sync(state)
    cohort, bucket = self._cohort(self._round)
    self.last_bucket = bucket
    state, out = self._executable(state, cohort, bucket)(state, cohort)
    self._last_round = state.round
    if self.stateful and bool(out.metrics.finite):  # a refused round writes no row
      self.rows.scatter(np.asarray(fetch(cohort.ids)), fetch(out.rows))
    self._round += 1
    return state, out._replace(rows=())

  def get_rows(self):
    """``{"ids", "rows"}``: the clients with a stored row (sorted) and their rows."""
    return self.rows.table()

  def rows_template(self, count: int):
    """A `get_rows`-shaped table of `count` rows (what a checkpoint holds)."""
    rows = (jax.tree.map(lambda r: np.zeros((count, *np.shape(r)), np.asarray(r).dtype),
                         self.init_row) if self.stateful else ())
    return {"ids": np.zeros((count,), np.int64), "rows": rows}

  def set_rows(self, table) -> None:
    """Replaces the stored rows with ``table`` (from `get_rows`, a checkpoint, a device store)."""
    if self.stateful:
      check_row_table(table, self.init_row)
      self.rows.load(table)
