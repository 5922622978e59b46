r"""Paired A/B of a round: the engine before the open-engine refactor (commit 17cd257) against now.

::

  .venv/bin/python scripts/ab_open_engine.py --model=mlp --clients=1000 --samples=31
  .venv/bin/python scripts/ab_open_engine.py --model=logistic --calls=10
  .venv/bin/python scripts/ab_open_engine.py --model=logistic --clients=10 --examples=2048 --epochs=1

Both rounds run in one process on the same synthetic clients (--examples
each, batch 10, 2 local steps or --epochs epochs): the old package is
exported from git into a temporary directory and imported as
``fedjax_comp_old``. Samples alternate old/new (the order flips every
other sample) and the figure is the median of the per-pair quotients
new / old, so the machine's state at a moment slows both alike. Each
sample is --calls back-to-back rounds, waited for at the end.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

OLD_COMMIT = "17cd257"


def old_package(root: pathlib.Path) -> pathlib.Path:
  """``fedjax_comp`` at OLD_COMMIT, renamed ``fedjax_comp_old``, under a temporary directory."""
  out = pathlib.Path(tempfile.mkdtemp(prefix="fedjax_comp_old_"))
  tar = subprocess.run(["git", "-C", str(root), "archive", OLD_COMMIT, "fedjax_comp"],
                       capture_output=True, check=True).stdout
  subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True)
  (out / "fedjax_comp").rename(out / "fedjax_comp_old")
  for path in (out / "fedjax_comp_old").rglob("*.py"):
    path.write_text(path.read_text().replace("fedjax_comp", "fedjax_comp_old"))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="mlp", choices=("logistic", "mlp", "2nn"))
  p.add_argument("--clients", type=int, default=1000)
  p.add_argument("--examples", type=int, default=20)
  p.add_argument("--epochs", type=int, default=0, help="0: 2 local steps")
  p.add_argument("--samples", type=int, default=21)
  p.add_argument("--calls", type=int, default=1)
  p.add_argument("--devices", type=int, default=2)
  a = p.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.devices}"
  root = pathlib.Path(__file__).resolve().parents[1]
  sys.path.insert(0, str(old_package(root)))
  sys.path.insert(0, str(root))
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import fedjax_comp as new  # pylint: disable=g-import-not-at-top
  import fedjax_comp_old as old  # pylint: disable=g-import-not-at-top

  shape = {"logistic": (40,), "mlp": (40,), "2nn": (28, 28)}[a.model]
  chunk = {"logistic": 64, "mlp": 25, "2nn": 1}[a.model]
  rng = np.random.default_rng(0)
  n_all = max(a.clients, 1000)
  x = rng.standard_normal((n_all, a.examples, *shape), np.float32)
  y = rng.integers(0, 10, (n_all, a.examples)).astype(np.int32)
  n = np.full((n_all,), a.examples, np.int32)
  local = {"local_epochs": a.epochs} if a.epochs else {"local_steps": 2}
  mesh_old, mesh_new = old.clients_mesh(), new.clients_mesh()
  om = old.get_model(a.model, shape, 10)
  upd = old.make_client_update(old.masked_cross_entropy(om), optax.sgd(0.01), batch_size=10,
                               **local)
  oalg = old.fed_avg(om.init, upd, old.server_optimizer("fedavg", 1.0),
                     clients_per_round=a.clients, client_chunk=chunk, mesh=mesh_old)
  oclients = old.replicate(old.ClientArrays(x=x, y=y, num_examples=n), mesh_old)
  ostate = old.replicate(oalg.init(0), mesh_old)
  oround = oalg.round.lower(ostate, oclients).compile()
  schedule = new.LocalSchedule(batch_size=10, **({"epochs": a.epochs} if a.epochs
                                                 else {"steps": 2}))
  nalg = new.fed_avg(new.get_model(a.model, shape, 10), optax.sgd(0.01),
                     new.server_optimizer("fedavg", 1.0), schedule, clients_per_round=a.clients,
                     client_chunk=chunk, mesh=mesh_new)
  nstate = new.replicate(nalg.init(0), mesh_new)
  nstep = new.DeviceStore(new.ClientArrays(features={"x": x, "y": y}, num_examples=n),
                          mesh=mesh_new).bind(nalg, nstate.params).compile(nstate)

  def timed(fn):
    t = time.perf_counter()
    for _ in range(a.calls):
      out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / a.calls

  sides = (lambda: oround(ostate, oclients), lambda: nstep(nstate))
  for fn in sides * 3:
    timed(fn)
  pairs = []
  for i in range(a.samples):
    order = (0, 1) if i % 2 == 0 else (1, 0)
    t = {k: timed(sides[k]) for k in order}
    pairs.append((t[0], t[1]))
  ratios = [b / o for o, b in pairs]
  q1, q3 = np.percentile(ratios, [25, 75])
  print(f"{a.model} {a.clients} clients x {a.examples} examples, "
        f"{'E=%d' % a.epochs if a.epochs else '2 steps'}: old "
        f"{statistics.median(o for o, _ in pairs) * 1e3:.1f} ms, new "
        f"{statistics.median(b for _, b in pairs) * 1e3:.1f} ms; new/old median "
        f"{statistics.median(ratios):.3f} (quartiles {q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
  main()
