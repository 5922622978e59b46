r"""The distributed-mean-estimation table: every codec on the same inputs, across d and n.

::

  .venv/bin/python -m benchmarks.dme_table --output_dir=results/dme_table
  .venv/bin/python -m benchmarks.dme_table --log2_dims=16 --num_clients=1 --trials=20

For each distribution (``normal``: N(0, 1); ``lognormal``: LogNormal(0, 1);
``exponential``: Exp(1); ``model_delta``: real client updates of the main
job, below), each d = 2^k of ``--log2_dims`` and each n of
``--num_clients``, every codec of ``--codecs`` runs `benchmarks.dme`'s
measurement (the same vectors and keys for every codec): vNMSE, NMSE of the
mean, bits per coordinate as sent (and Elias-coded, for QSGD), encode and
decode time of all n clients, and a copy of the same [n, d] array timed in
the same run (XLA's ``-x`` and numpy's ``copyto``), so each codec's time is
also a ratio to the machine's copy.

``model_delta``: the main job's model (the MLP on MNIST-1D, d = 15,210)
trained for one round by clients of its population from the initial
model: each trial draws n of a pool of ``--delta_pool`` real deltas. Its d
is the model's, whatever ``--log2_dims`` says.

Checks (``checks`` in result.json; any failure fails the run): the
measured vNMSE of DRIVE and of EDEN's unbiased scale at b = 1, 2, 4 within
5% of the published asymptotic values (0.571, 0.133, 0.0096: Vargaftik et
al. 2021, 2022; for b = 0.5, (1 + 0.571) / 0.5 - 1 = 2.14) at every
d >= 2^16 of a distribution of i.i.d. coordinates, and EDEN's biased
scales within 5% of the Lloyd-Max distortion of N(0, 1).

Writes ``result.json``, ``dme_table.md`` (one table per distribution and
n) and ``vnmse_vs_bits.png`` (log-log, one curve per codec family, at the
largest d and n = 1).
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fedjax_comp as fc
from benchmarks import _flags, _parse, dme
from fedjax_comp import codecs
from fedjax_comp.codecs import rotated_codes
from fedjax_comp.experiment import configs, federated, plotting, results
from fedjax_comp.experiment.configs import knob
from fedjax_comp.sharding import CLIENTS_AXIS

DEFAULT_CODECS = (
    "quantize(bits=1)", "hadamard,quantize(bits=1)", "hadamard,quantize(bits=2)",
    "drive", "eden(bits=0.5)", "eden(bits=1)", "eden(bits=2)", "eden(bits=4)",
    "eden(bits=2,scale=mse)", "eden(bits=2,scale=one)",
    "qsgd(levels=1)", "qsgd(levels=4,bucket=512)", "terngrad",
    "rand_k(p=1/32)", "top_k(p=1/32)",
)
DISTRIBUTIONS = ("normal", "lognormal", "exponential", "model_delta")


@dataclasses.dataclass(frozen=True)
class TableConfig:
  """The grid."""

  codecs: str = knob(";".join(DEFAULT_CODECS), "Codec specs, separated by ';'.")
  distributions: str = knob(",".join(DISTRIBUTIONS), "Comma-separated: "
                            + ", ".join(DISTRIBUTIONS) + ".")
  log2_dims: str = knob("10,12,14,16,18,20", "Comma-separated k for d = 2^k, 1 <= k <= 24.")
  num_clients: str = knob("1,100", "Comma-separated client counts n >= 1.")
  trials: int = knob(3, "Trials per cell (fresh vectors and keys), >= 1.")
  delta_pool: int = knob(200, "Real model deltas to draw n from (model_delta), >= 1.")
  seed: int = knob(0, "Seed, in [0, 2**32).")

  def __post_init__(self):
    configs._int("trials", self.trials, 1)  # pylint: disable=protected-access
    configs._int("delta_pool", self.delta_pool, 1)  # pylint: disable=protected-access
    self.grid()

  def grid(self):
    specs = _parse.check_specs([s.strip() for s in self.codecs.split(";") if s.strip()],
                               dme.parse_dme_codec)
    dists = [d.strip() for d in self.distributions.split(",") if d.strip()]
    bad = [d for d in dists if d not in DISTRIBUTIONS]
    if bad or not dists:
      raise ValueError(f"--distributions must list some of {', '.join(DISTRIBUTIONS)}, "
                       f"got {self.distributions!r}")
    ks = _parse.parse_int_list(self.log2_dims, "log2_dims", low=1)
    if not ks or max(ks) > 24:
      raise ValueError(f"--log2_dims must list integers in 1..24, got {self.log2_dims!r}")
    ns = _parse.parse_int_list(self.num_clients, "num_clients", low=1)
    if not ns:
      raise ValueError("--num_clients must list at least one n >= 1")
    return specs, dists, ks, ns


def model_deltas(pool: int, seed: int) -> np.ndarray:
  """float32 [pool, d]: one round of local training by `pool` clients of the main job."""
  cfg = configs.FederatedConfig()
  data = federated.load_data(cfg)
  model = fc.get_model(cfg.train.model, data.input_shape, data.num_classes)
  params = model.init(jax.random.key(seed))
  update = fc.make_client_update(model.train_loss, optax.sgd(cfg.train.client_lr),
                                 fc.LocalSchedule(epochs=cfg.train.local_epochs,
                                                  batch_size=cfg.train.batch_size))
  clients = jax.tree.map(jnp.asarray, data.clients)
  ids = np.flatnonzero(np.asarray(clients.num_examples) > 0)[:pool]

  @jax.jit
  def one(i, key):
    delta, _ = update(params, jax.tree.map(lambda a: a[i], clients), key)
    return jnp.concatenate([jnp.reshape(l, -1) for l in jax.tree.leaves(delta)])

  return np.stack([np.asarray(one(int(i), jax.random.key(int(i)))) for i in ids])


def copy_seconds(xs, reps: int = 11) -> dict:
  """Median seconds of XLA's ``-x`` and numpy's ``copyto`` of `xs` (the yardsticks)."""
  neg = jax.jit(lambda x: -x)
  jax.block_until_ready(neg(xs))
  host = np.asarray(xs)
  dst = np.empty_like(host)
  xla, npy = [], []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(neg(xs))
    xla.append(time.perf_counter() - t)
    t = time.perf_counter()
    np.copyto(dst, host)
    npy.append(time.perf_counter() - t)
  return {"xla_copy_s": statistics.median(xla), "numpy_copy_s": statistics.median(npy)}


def cell(specs, dist, dim, n, board, pool, say) -> dict:
  """Every codec on one (distribution, d, n): `dme.measure_codec`, plus the copy yardstick."""
  cfg = dme.Config(codecs=tuple(specs), dim=dim, num_clients=n,
                   distribution="normal" if dist == "model_delta" else dist,
                   trials=board.trials, seed=board.seed)
  ndev = dme._num_devices(n)  # pylint: disable=protected-access
  mesh = fc.clients_mesh(ndev)
  sharding = NamedSharding(mesh, P(CLIENTS_AXIS))
  if dist == "model_delta":
    table = jnp.asarray(pool)

    def draw(key):
      return table[jax.random.choice(key, table.shape[0], (n,), replace=table.shape[0] < n)]

    sample = jax.jit(draw, out_shardings=sharding)
  else:
    sample = dme.make_sampler(dist, n, dim, sharding)
  ids = jax.device_put(jnp.arange(n, dtype=jnp.int32), sharding)
  xs = sample(jax.random.key(0))
  # The copy is timed again beside every codec and the cell's median taken: one
  # measurement at a busy moment would skew the whole cell's ratios.
  copies, out = [], {}
  for spec in specs:
    copies.append(copy_seconds(xs))
    out[spec] = dme.measure_codec(spec, cfg, mesh, sample, ids, say=lambda *_: None)
  copy = {k: statistics.median(c[k] for c in copies) for k in copies[0]}
  for m in out.values():
    m.update(copy, codec_to_copy=(m["encode_s"] + m["decode_s"]) / min(copy.values()))
  say(f"{dist} d={dim} n={n}: " + ", ".join(f"{s} {m['vnmse']:.4g}" for s, m in out.items()))
  return out


PUBLISHED = {  # spec -> asymptotic vNMSE (the unbiased ones: Vargaftik et al. 2021, 2022)
    "drive": rotated_codes.unbiased_vnmse(1),
    "eden(bits=1)": rotated_codes.unbiased_vnmse(1),
    "eden(bits=2)": rotated_codes.unbiased_vnmse(2),
    "eden(bits=4)": rotated_codes.unbiased_vnmse(4),
    "eden(bits=0.5)": (1 + rotated_codes.unbiased_vnmse(1)) / 0.5 - 1,
    "eden(bits=2,scale=mse)": rotated_codes.distortion(2),
    "eden(bits=2,scale=one)": rotated_codes.distortion(2),
}


def checks(cells: dict) -> list[dict]:
  """The published values at d >= 2^16 (i.i.d. distributions), within 5%."""
  out = []
  for (dist, dim, n), metrics in cells.items():
    if dist == "model_delta" or dim < 2**16:
      continue
    for spec, want in PUBLISHED.items():
      if spec in metrics:
        got = metrics[spec]["vnmse"]
        out.append({"distribution": dist, "dim": dim, "num_clients": n, "codec": spec,
                    "vnmse": got, "published": want, "ok": abs(got / want - 1) <= 0.05})
  return out


def format_tables(cells: dict) -> str:
  parts = []
  for (dist, dim, n), metrics in cells.items():
    parts += [f"### {dist}, d = {dim:,}, n = {n}", "",
              "| codec | bits/coord | of which index list | coded bits/coord | vNMSE | "
              "NMSE of mean | encode ms | decode ms | (enc+dec)/copy |", "|" + "---|" * 9]
    for spec, m in metrics.items():
      coded = "-" if m["coded_bits_per_coordinate"] is None else (
          f"{m['coded_bits_per_coordinate']:.3f}")
      index = ", ".join(f"{bits / dim:.3f} ({coding})"
                        for coding, bits in sorted(m.get("index_bits", {}).items())) or "-"
      parts.append(f"| `{spec}` | {m['bits_per_coordinate']:.3f} | {index} | {coded} | "
                   f"{m['vnmse']:.4g} | {m['nmse']:.4g} | {m['encode_s'] * 1e3:.2f} | "
                   f"{m['decode_s'] * 1e3:.2f} | {m['codec_to_copy']:.1f} |")
    parts.append("")
  return "\n".join(parts)


def plot(path, cells: dict) -> None:
  """vNMSE vs bits per coordinate, log-log, one curve per family, at the largest d, n = 1."""
  iid = [k for k in cells if k[0] != "model_delta"]
  if not iid:
    return
  key = max(iid, key=lambda k: (k[1], -k[2]))
  family = {}
  for spec, m in cells[key].items():
    stages = codecs.parse_stages(spec)
    if not stages:  # `identity`: the floor of the timings, not a point on this plot
      continue
    name = stages[-1][0] if spec.startswith("hadamard") else stages[0][0]
    family.setdefault(name, []).append((m["bits_per_coordinate"], max(m["vnmse"], 1e-12)))
  series = [(name, *zip(*sorted(pts))) for name, pts in family.items()]
  plotting.line_plot(path, [(n, list(x), list(y)) for n, x, y in series],
                     xlabel="bits per coordinate", ylabel="vNMSE", logx=True, logy=True,
                     title=f"DME: {key[0]}, d = {key[1]:,}, n = {key[2]}")


def run(board: TableConfig, output_dir: str, say=print) -> dict:
  specs, dists, ks, ns = board.grid()
  out = pathlib.Path(output_dir)
  recorder = results.RunRecorder(out, "dme_table")
  pool = model_deltas(board.delta_pool, board.seed) if "model_delta" in dists else None
  cells = {}
  for dist in dists:
    dims = [pool.shape[1]] if dist == "model_delta" else [2**k for k in ks]
    for dim in dims:
      for n in ns:
        cells[(dist, dim, n)] = cell(specs, dist, dim, n, board, pool, say)
        for spec, m in cells[(dist, dim, n)].items():
          recorder.log({"distribution": dist, "dim": dim, "num_clients": n, "codec": spec, **m})
  found = checks(cells)
  table = format_tables(cells)
  (out / "dme_table.md").write_text(table)
  bad = [c for c in found if not c["ok"]]
  for c in bad:
    say(f"CHECK FAILED: {c['codec']} on {c['distribution']} d={c['dim']} n={c['num_clients']}: "
        f"vNMSE {c['vnmse']:.4g}, published {c['published']:.4g}")
  metrics = {f"{d}/{dim}/{n}": m for (d, dim, n), m in cells.items()}
  path = recorder.finish(succeeded=not bad, metrics=metrics,
                         extras={"board": dataclasses.asdict(board), "checks": found,
                                 **results.environment()})
  plot(out / "vnmse_vs_bits.png", cells)  # after the results are safe
  say(f"{len(found) - len(bad)}/{len(found)} published-value checks passed\nresults: {path}")
  return results.read_result(out)


def main(table) -> int:
  if _flags.RESUME.value:
    raise ValueError("--resume: the DME table keeps no checkpoint; use --overwrite")
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/dme_table",
                                overwrite=_flags.OVERWRITE.value)
  return 0 if run(table.config(), out)["succeeded"] else 1


if __name__ == "__main__":
  # Defined only when run: its knob names (--codecs, --num_clients, --seed) are other
  # runners' too, and the tests import several runners into one process.
  _TABLE = _flags.define(TableConfig)
  _flags.main(lambda: main(_TABLE))
