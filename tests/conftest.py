"""Test settings: one CPU device per test process unless a test asks for more.

The multi-device tests start a subprocess with
``--xla_force_host_platform_device_count=8``; everything else runs on one
device so that results do not depend on which tests ran first in a worker.
"""

import os
import pathlib

os.environ.setdefault("FEDJAX_COMP_CPU_DEVICES", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite is dominated by XLA compiles of small computations: LLVM's -O0
# compiles them about 20% faster (tests compare results computed under the
# same flags; benchmarks and scripts/check_throughput.py do not use it).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()
# A persistent XLA compilation cache shared by the xdist workers and the
# subprocess tests (they inherit the directory, with jax's default 1 s
# threshold): many tests build the same computation from fresh closures (a
# runner's round, a codec chain), so the HLO is identical and a cache hit
# skips its compile. Here, compiles slower than 0.2 s are stored. Results do not change: the key is the HLO, the
# compile options and the jax/jaxlib versions.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
