"""Import first in a runner: on a CPU host, one XLA device per core.

A round shards its clients over a ``"clients"`` mesh. On a CPU, splitting the
host into one XLA device per core and sharding clients over them beats one
device whose small per-client matmuls are split across threads (about 1.6x
for the 2NN on 2 cores, see WORKSPACE.md). This must run before jax is
imported; it only adds the flag when the user has not set it, and it has no
effect on GPU/TPU backends (their devices are not host devices).
Set ``FEDJAX_COMP_CPU_DEVICES=1`` to keep a single CPU device.
"""

import os

_n = os.environ.get("FEDJAX_COMP_CPU_DEVICES") or str(os.cpu_count() or 1)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={int(_n)}").strip()
