r"""The cost of fixed-order sums: a round with ``reproducible=True`` against the fast sums, paired.

::

  .venv/bin/python scripts/fixed_order_cost.py mlp 1000 25,16,32      # fast chunk, then exact chunks
  .venv/bin/python scripts/fixed_order_cost.py 2nn 1000 1,1,2 9       # 9 samples

Arguments: model, clients per round, ``FAST_CHUNK,EXACT_CHUNK,...`` and the
number of samples (default 15). 2 XLA CPU devices, 20 examples per client,
batch 10, 2 local steps. Every sample times each variant once (the order
flips every other sample); a variant's figure is the median over samples of
its time over the fast round's time in the same sample.
"""

import os
import statistics
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import fedjax_comp as fc  # noqa: E402


def main():
  name, m = sys.argv[1], int(sys.argv[2])
  chunks = [int(c) for c in sys.argv[3].split(",")]
  samples = int(sys.argv[4]) if len(sys.argv) > 4 else 15
  shape = {"logistic": (40,), "mlp": (40,), "2nn": (28, 28)}[name]
  rng = np.random.default_rng(0)
  n_all = max(m, 1000)
  data = fc.ClientArrays(
      features={"x": rng.standard_normal((n_all, 20, *shape), np.float32),
                "y": rng.integers(0, 10, (n_all, 20)).astype(np.int32)},
      num_examples=np.full((n_all,), 20, np.int32))
  mesh = fc.clients_mesh()
  model = fc.get_model(name, shape, 10)
  steps = {}
  for label, chunk, exact in [("fast", chunks[0], False)] + [
      (f"exact{c}", c, True) for c in chunks[1:]]:
    alg = fc.fed_avg(model, optax.sgd(0.01), fc.server_optimizer("fedavg", 1.0),
                     fc.LocalSchedule(batch_size=10, steps=2), clients_per_round=m,
                     client_chunk=chunk, mesh=mesh, reproducible=exact)
    state = fc.replicate(alg.init(0), mesh)
    steps[label] = (fc.DeviceStore(data, mesh=mesh).bind(alg, state.params).compile(state),
                    state)

  def timed(label):
    step, state = steps[label]
    t = time.perf_counter()
    jax.block_until_ready(step(state))
    return time.perf_counter() - t

  for label in steps:
    timed(label)
    timed(label)
  times = {label: [] for label in steps}
  for i in range(samples):
    for label in (list(steps) if i % 2 == 0 else list(steps)[::-1]):
      times[label].append(timed(label))
  for label, ts in times.items():
    ratio = statistics.median(a / b for a, b in zip(ts, times["fast"]))
    print(f"{name} {m} clients {label}: {statistics.median(ts) * 1e3:.1f} ms, "
          f"x{ratio:.3f} the fast sums")


if __name__ == "__main__":
  main()
