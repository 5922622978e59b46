"""Meshes for sharding a round's clients over devices.

Single host: ``mesh = clients_mesh()`` uses every local device; pass it to
`fedavg.fed_avg(..., mesh=mesh)` and put the client arrays on it with
`replicate`. On one device nothing changes.

Multi-host: call ``jax.distributed.initialize()`` (coordinator address,
process count and id from flags or the cluster environment) on every host
first, then build the same mesh over ``jax.devices()`` (all hosts' devices);
each host runs the same program. Client arrays must then be present on every
host (each loads the same seeded federated dataset).
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fedjax_comp.aggregation import CLIENTS_AXIS


def clients_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh with axis ``"clients"`` over the first `num_devices` devices."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
  # Auto axes: plain sharded jit around the shard_map (REFERENCES.md, pitfall 10).
  return jax.make_mesh((n,), (CLIENTS_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices[:n])


def replicate(tree, mesh: Mesh | None):
  """Puts `tree` on every device of `mesh` (a no-op without a mesh)."""
  if mesh is None:
    return jax.device_put(tree)
  return jax.device_put(tree, NamedSharding(mesh, P()))
