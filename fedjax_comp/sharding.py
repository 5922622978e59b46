"""Meshes for sharding a round's clients over devices, on one host or several.

Single host: ``mesh = clients_mesh()`` uses every local device; pass it to
an algorithm (``fed_avg(..., mesh=mesh)``) and to the client store
(``DeviceStore(clients, mesh=mesh)``), and put the state on it with
`replicate`. On one device nothing changes.

Multi-host (JAX's own runtime, CPU collectives by gloo): every process runs
the same program. Before anything else touches JAX::

  jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)          # CPU hosts
  jax.distributed.initialize(coordinator_address="HOST0:PORT",
                             num_processes=P, process_id=I)

(or the cluster's environment: SLURM, Kubernetes, Cloud TPU, which
`initialize` reads by itself). `clients_mesh()` then spans every process's
devices. Each process opens the same seeded population (the same files,
or the same lazy generator); the device store replicates it, while the host
store has each process gather only the cohort slots of its own devices
(every host reads its own share of the store). `replicate` builds global
arrays from the value every process holds, and results come back with
`fetch`. tests/test_multihost.py runs two processes on localhost, from
either store.

XLA:CPU pacing: with several CPU devices, more than about 32 executions of
a program with collectives queued at once deadlock XLA:CPU's runtime
(jaxlib 0.10: a launch blocks on the per-device in-flight semaphore while
holding one of the client's few pool threads, and the oldest execution's
collective then cannot gather all its participants). `paced` wraps a
round function so that at most `MAX_ROUNDS_IN_FLIGHT` are in flight on a
multi-device CPU mesh; the stores and `engine.make_round` use it.
"""

from __future__ import annotations

import collections

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

CLIENTS_AXIS = "clients"  # the mesh axis a round's clients (or workers) are split over
MAX_ROUNDS_IN_FLIGHT = 2


def clients_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh with axis ``"clients"`` over the first `num_devices` devices (all processes')."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
  # Auto axes: plain sharded jit around the shard_map (jax 0.10's make_mesh
  # defaults to Explicit axes, which would need every input resharded first).
  return jax.make_mesh((n,), (CLIENTS_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices[:n])


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree, mesh: Mesh | None):
  """Puts `tree` on every device of `mesh` (a no-op without a mesh).

  On a mesh spanning several processes, every process must pass the same
  value; each builds its own devices' copies (`jax.make_array_from_callback`).
  """
  if mesh is None:
    return jax.device_put(tree)
  sharding = NamedSharding(mesh, P())
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x  # already global
    if _is_key(x):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(put, tree)


def fetch(tree):
  """`jax.device_get` that also works for arrays spanning several processes."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if _is_key(x):
        return jax.random.wrap_key_data(get(jax.random.key_data(x)),
                                        impl=jax.random.key_impl(x))
      if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_shards[0].data)
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_get(x)

  return jax.tree.map(get, tree)


def needs_pacing(mesh: Mesh | None) -> bool:
  """True on a CPU mesh of several devices (see the module docstring)."""
  return mesh is not None and mesh.size > 1 and all(
      d.platform == "cpu" for d in mesh.devices.flat)


class Paced:
  """A round function that waits for older calls so at most `max_in_flight` are queued.

  Calls under a trace (inside another jit) pass straight through;
  attributes (``lower``, ...) are the wrapped function's.
  """

  def __init__(self, fn, max_in_flight: int = MAX_ROUNDS_IN_FLIGHT):
    self._fn, self._max = fn, max_in_flight
    self._in_flight = collections.deque()

  def __call__(self, *args, **kwargs):
    while len(self._in_flight) >= self._max:
      jax.block_until_ready(self._in_flight.popleft())
    out = self._fn(*args, **kwargs)
    leaves = [x for x in jax.tree.leaves(out) if isinstance(x, jax.Array)
              and not isinstance(x, jax.core.Tracer)]
    if leaves:  # a CPU execution's outputs become ready together
      self._in_flight.append(leaves[0])
    return out

  def __getattr__(self, name):
    return getattr(self._fn, name)


def paced(fn, mesh: Mesh | None):
  """`fn` wrapped in `Paced` where `needs_pacing(mesh)`, else `fn` itself."""
  return Paced(fn) if needs_pacing(mesh) else fn
