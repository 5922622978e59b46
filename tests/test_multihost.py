"""Beyond one device: back-to-back rounds on a CPU mesh, and two JAX processes on localhost.

Two processes with one CPU device each (`jax.distributed.initialize`, gloo
collectives) run the library's round over a mesh spanning both; with
fixed-order sums the result is bit-identical to one process on one device.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BACK_TO_BACK = textwrap.dedent("""
    import jax, optax
    import fedjax_comp as fc
    from tests import helpers
    data = helpers.random_clients([3, 5, 8, 2, 6, 7, 4, 8] * 4, max_examples=8)
    model = fc.get_model("logistic", (6,), 3)
    mesh = fc.clients_mesh()
    alg = fc.fed_avg(model, optax.sgd(0.1), fc.server_optimizer("fedavg", 1.0),
                     fc.LocalSchedule(batch_size=4), clients_per_round=8, client_chunk=1,
                     mesh=mesh)
    state = fc.replicate(alg.init(0), mesh)
    rounds = fc.DeviceStore(data, mesh=mesh).bind(alg, state.params)
    for _ in range(100):  # the README's pattern: no wait between rounds
      state, out = rounds.step(state)
    cohort = fc.Cohort(ids=out.client_ids, data=rounds.store.clients, rows=(),
                       num_clients=data.num_clients)
    for _ in range(100):  # the algorithm's own round, called directly
      state, out = alg.round(state, cohort)
    assert int(state.round) == 200 and bool(out.metrics.finite)
    print("OK", jax.device_count())
""")


@pytest.mark.parametrize("devices", [2, 8])
def test_rounds_back_to_back_on_a_cpu_mesh_do_not_deadlock(devices):
  """XLA:CPU deadlocks once ~32 executions with collectives are queued; the round is paced."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
      " --xla_cpu_collective_call_terminate_timeout_seconds=10"))
  proc = subprocess.run([sys.executable, "-c", BACK_TO_BACK], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and f"OK {devices}" in proc.stdout, (
      f"rc={proc.returncode}\n" + proc.stdout + proc.stderr[-3000:])


WORKER = textwrap.dedent("""
    import sys
    import jax, numpy as np, optax
    pid, port, path, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.config.update("jax_num_cpu_devices", 1)
    if pid >= 0:
      jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                 process_id=pid)
    import fedjax_comp as fc
    data = fc.load_federated("digits", "iid", num_clients=40, seed=0)
    model = fc.get_model("logistic", data.input_shape, data.num_classes)
    mesh = fc.clients_mesh() if jax.device_count() > 1 else None
    alg = fc.fed_avg(model, optax.sgd(0.05), fc.server_optimizer("fedavg", 1.0),
                     fc.LocalSchedule(batch_size=10), clients_per_round=10, client_chunk=2,
                     mesh=mesh, reproducible=True)
    state = fc.replicate(alg.init(0), mesh)
    if store == "device":
      rounds = fc.DeviceStore(data.clients, mesh=mesh).bind(alg, state.params)
    else:  # each process gathers the slots of its own device
      from fedjax_comp.data.host_store import HostStore
      rounds = HostStore(data.ragged(), mesh=mesh, min_bucket=10, say=None).bind(
          alg, state.params)
    for _ in range(5):
      state, out = rounds.step(state)
    params = fc.sharding.fetch(state.params)
    np.savez(path, *jax.tree.leaves(params), loss=fc.sharding.fetch(out.metrics.train_loss),
             devices=jax.device_count())
    print("OK", jax.process_count(), jax.device_count())
    if pid >= 0:
      jax.distributed.shutdown()
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("store", ["device", "host"])
def test_two_processes_equal_one_process_bit_for_bit(tmp_path, store):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(port),
                             str(tmp_path / f"p{i}.npz"), store], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in (0, 1)]
  single = subprocess.run([sys.executable, "-c", WORKER, "-1", "0", str(tmp_path / "one.npz"),
                           "device"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append((p.returncode, out, err))
  for rc, out, err in outs:
    assert rc == 0 and "OK 2 2" in out, f"rc={rc}\n{out}\n{err[-3000:]}"
  assert single.returncode == 0 and "OK 1 1" in single.stdout, single.stderr[-3000:]
  one = np.load(tmp_path / "one.npz")
  for i in (0, 1):
    two = np.load(tmp_path / f"p{i}.npz")
    assert int(two["devices"]) == 2
    for key in one.files:
      if key != "devices":
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)
