r"""The accelerator measurements in one short run, written to one JSON.

::

  scripts/device_bench.sh                 # on a GPU machine (see the .sh for the set-up)
  .venv/bin/python scripts/device_bench.py --quick --out=/tmp/db   # the CPU smoke test

Sections, in this order (the JSON is rewritten after each one, so a run cut
off by a time limit still returns what it measured):

1. ``chunk_sweep``: seconds per FedAvg round (`benchmarks.throughput.setup`:
   20 examples per client, batch 10, 2 local steps) for every model and each
   candidate ``client_chunk``, at the largest size. The fastest chunk per
   model is what `default_chunk` should say for this backend.
2. ``throughput``: `benchmarks.throughput.measure` (vmapped round against
   the per-client loop, alternated) for mlp, 2nn and cnn at 1,000 and 10,000
   clients per round, with the sweep's best chunk.
3. ``kernels``: `benchmarks.kernels.run` (FWHT, rotation, quantize/pack
   against a copy of the same array).
4. ``main_job``: `benchmarks.fedavg.run` with its defaults (MNIST-1D, MLP,
   300 rounds).

Each section also records its own wall seconds, so the next run can be sized.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import _cpu  # noqa: F401,E402  (first: XLA device flags)

import json  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import fedavg as fedavg_runner  # noqa: E402
from benchmarks import kernels as kernels_bench  # noqa: E402
from benchmarks import throughput  # noqa: E402
from benchmarks._timing import seconds  # noqa: E402
from fedjax_comp import results  # noqa: E402

_OUT = flags.DEFINE_string("out", "results/device_bench", "Directory for device_bench.json.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes: a smoke test of the script on a CPU.")

# Candidate chunks per model on an accelerator; the sweep keeps the fastest.
_GPU_CHUNKS = {
    "logistic": (256, 1024, 4096, 10000),
    "mlp": (128, 512, 2048, 10000),
    "2nn": (256, 1024, 4096),
    "cnn": (64, 256, 1024),
    "cifar_cnn": (64, 256, 1024),
}
_FULL = dict(sweep_size=10000, sizes=(1000, 10000), loop_clients=100, repeats=5,
             kernel_shapes=[(1024, 16384), (4096, 1024), (1, 1048576)], kernel_bits=[1, 2, 4, 8],
             throughput_models=("mlp", "2nn", "cnn"), rounds=300)
_SMOKE = dict(sweep_size=16, sizes=(8, 16), loop_clients=4, repeats=1,
              kernel_shapes=[(4, 1024)], kernel_bits=[2], throughput_models=("logistic",),
              rounds=2)
_SMOKE_CHUNKS = {"logistic": (1, 4)}


def chunk_sweep(chunks: dict, size: int, repeats: int, say) -> dict:
  """Seconds per round of each (model, chunk) at `size` clients; the best chunk per model."""
  out = {}
  for model, candidates in chunks.items():
    entries = {}
    for chunk in candidates:
      su = throughput.setup(model, size, chunk=chunk)
      algorithm, state = su.fed_avg(size)
      t = time.perf_counter()
      round_fn = algorithm.round.lower(state, su.clients).compile()
      compile_s = time.perf_counter() - t
      seconds(lambda: round_fn(state, su.clients))  # warm
      sec = statistics.median(seconds(lambda: round_fn(state, su.clients))
                              for _ in range(max(repeats, 3)))
      entries[str(chunk)] = {"sec_per_round": sec, "client_updates_per_sec": size / sec,
                             "compile_s": compile_s}
      say(f"sweep {model:8s} chunk {chunk:6d}: {sec * 1e3:9.2f} ms/round "
          f"({size / sec:10.0f} upd/s), compile {compile_s:.1f}s")
    best = min(entries, key=lambda c: entries[c]["sec_per_round"])
    out[model] = {"clients_per_round": size, "chunks": entries, "best_chunk": int(best)}
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cfg = _SMOKE if _QUICK.value else _FULL
  chunks = _SMOKE_CHUNKS if _QUICK.value else (
      _GPU_CHUNKS if jax.default_backend() != "cpu" else {m: (1,) for m in _GPU_CHUNKS})
  out_dir = pathlib.Path(_OUT.value)
  out_dir.mkdir(parents=True, exist_ok=True)
  report = {"environment": results.environment(), "quick": _QUICK.value, "sections": {},
            "errors": {}}
  try:
    import subprocess  # pylint: disable=g-import-not-at-top
    report["environment"]["gpu"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    report["environment"]["gpu"] = None
  path = out_dir / "device_bench.json"

  def write():
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=float))
    os.replace(tmp, path)

  def section(name, fn):
    t = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
      report["sections"][name] = fn()
    except Exception:  # pylint: disable=broad-except
      report["errors"][name] = traceback.format_exc()
      print(report["errors"][name], flush=True)
    report.setdefault("wall_s", {})[name] = time.perf_counter() - t
    write()

  section("chunk_sweep", lambda: chunk_sweep(chunks, cfg["sweep_size"], cfg["repeats"], print))
  best = {m: e["best_chunk"] for m, e in report["sections"].get("chunk_sweep", {}).items()}
  section("throughput", lambda: {
      m: throughput.measure(m, list(cfg["sizes"]), examples=20, batch_size=10, local_steps=2,
                            chunk=best.get(m), loop_clients=cfg["loop_clients"],
                            repeats=cfg["repeats"], seed=0)
      for m in cfg["throughput_models"]})
  section("kernels", lambda: kernels_bench.run(cfg["kernel_shapes"], cfg["kernel_bits"],
                                               cfg["repeats"], str(out_dir / "kernels")))

  def main_job():
    fedavg_cfg = (fedavg_runner.Config(rounds=cfg["rounds"]) if not _QUICK.value else
                  fedavg_runner.Config(dataset="digits", num_clients=20, clients_per_round=4,
                                       rounds=cfg["rounds"], local_epochs=1, eval_every=1))
    r = fedavg_runner.run(fedavg_cfg, str(out_dir / "fedavg"), verbose=False)
    return {k: r["metrics"][k] for k in ("final_test_accuracy", "final_test_loss", "rounds",
                                         "client_updates_per_sec", "compile_s")}

  section("main_job", main_job)
  print(f"wrote {path}; errors in: {sorted(report['errors']) or 'none'}")
  if report["errors"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
