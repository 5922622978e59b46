"""Import first in a runner: on a CPU host, one XLA device per core.

A round shards its clients over a ``"clients"`` mesh. On a CPU, splitting the
host into one XLA device per core and sharding clients over them beats one
device whose small per-client matmuls are split across threads (about 1.6x
for the 2NN on 2 cores, see docs/performance.md). This must run before jax is
imported; it only adds the flag when the user has not set it, and it has no
effect on GPU/TPU backends (their devices are not host devices).
Set ``FEDJAX_COMP_CPU_DEVICES=1`` to keep a single CPU device.
"""

import os
import sys

_text = os.environ.get("FEDJAX_COMP_CPU_DEVICES") or str(os.cpu_count() or 1)
if not _text.strip().isdigit() or int(_text) < 1:
  prog = os.path.basename(sys.argv[0] or "runner").removesuffix(".py")
  print(f"{prog}: error: FEDJAX_COMP_CPU_DEVICES must be a positive integer (CPU devices to "
        f"split the host into), got {_text!r}", file=sys.stderr)
  sys.exit(1)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={int(_text)}").strip()
