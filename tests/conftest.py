"""Test settings: one CPU device per test process unless a test asks for more.

The multi-device tests start a subprocess with
``--xla_force_host_platform_device_count=8``; everything else runs on one
device so that results do not depend on which tests ran first in a worker.
"""

import os

os.environ.setdefault("FEDJAX_COMP_CPU_DEVICES", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
