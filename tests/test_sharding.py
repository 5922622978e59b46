"""Every registered algorithm on 8 forced CPU devices equals 1 device, from either store (subprocess)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    import fedjax_comp as fc
    from fedjax_comp.data.host_store import HostStore, RaggedClients
    from tests import helpers
    data = helpers.random_clients([5, 8, 0, 3, 8, 6, 2, 7, 4, 1, 8, 5, 3], max_examples=8)
    model = fc.get_model("logistic", (6,), 3)

    def run(name, hparams, mesh, store):
      alg = fc.algorithms.build(name, model, client_lr=0.1,
                                server_optimizer=fc.server_optimizer("fedadam", 0.05),
                                schedule=fc.LocalSchedule(epochs=2, batch_size=3),
                                clients_per_round=11, client_chunk=2, mesh=mesh, **hparams)
      state = fc.replicate(alg.init(0), mesh)
      if store == "device":
        bound = fc.DeviceStore(data, mesh=mesh).bind(alg, state.params)
      else:
        bound = HostStore(RaggedClients.from_client_arrays(data), mesh=mesh,
                          min_bucket=4).bind(alg, state.params)
      for _ in range(3):
        state, out = bound.step(state)
      return jax.device_get((state.params, out.metrics)), bound.get_rows()

    for name, info in fc.algorithms.REGISTRY.items():
      for hparams in info.examples:
        (p1, m1), rows1 = run(name, hparams, None, "device")
        mesh = fc.clients_mesh(8)
        (p8, m8), rows8 = run(name, hparams, mesh, "device")
        (ph, mh), rowsh = run(name, hparams, mesh, "host")
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
          np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
        for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(ph)):
          np.testing.assert_array_equal(a, b)  # the stores agree bit for bit on the mesh too
        assert float(m1.num_examples) == float(m8.num_examples)
        assert int(m1.num_clients) == int(m8.num_clients)
        np.testing.assert_allclose(float(m1.train_loss), float(m8.train_loss), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(rows1), jax.tree.leaves(rows8)):
          np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
        print("OK", name, hparams)
""")


def test_eight_devices_equal_one_for_every_algorithm():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  import fedjax_comp as fc  # pylint: disable=g-import-not-at-top
  expected = sum(len(info.examples) for info in fc.algorithms.REGISTRY.values())
  assert proc.stdout.count("OK") == expected, proc.stdout
