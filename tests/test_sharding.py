"""An 8-device sharded round equals the 1-device round (forced CPU devices, subprocess)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    import fedjax_comp as fc
    from tests import helpers
    data = helpers.random_clients([5, 8, 0, 3, 8, 6, 2, 7, 4, 1, 8, 5, 3], max_examples=8)
    model, update = helpers.mlp_setup(batch_size=3, local_epochs=2)

    def run(mesh):
      alg = fc.fed_avg(model.init, update, fc.server_optimizer("fedadam", 0.05),
                       clients_per_round=11, client_chunk=2, mesh=mesh)
      state = alg.init(0)
      clients = fc.replicate(data, mesh)
      for _ in range(3):
        state, metrics = alg.round(state, clients)
      return state, metrics

    one, m1 = run(None)
    eight, m8 = run(fc.clients_mesh(8))
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=2e-5)
    assert float(m1.num_examples) == float(m8.num_examples)
    assert int(m1.num_clients) == int(m8.num_clients)
    np.testing.assert_allclose(float(m1.train_loss), float(m8.train_loss), rtol=1e-5)
    print("OK")
""")


def test_eight_devices_equal_one():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
