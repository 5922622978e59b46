r"""The accelerator measurements in one short run, written to one JSON.

::

  scripts/device_bench.sh                 # on a GPU machine (see the .sh for the set-up)
  .venv/bin/python scripts/device_bench.py --quick --out=/tmp/db   # the CPU smoke test

Sections, in this order (the JSON is rewritten after each one, so a run cut
off by a time limit still returns what it measured):

1. ``chunk_sweep``: seconds per FedAvg round (`benchmarks._throughput_setup.setup`:
   20 examples per client, batch 10, 2 local steps) for every model and each
   candidate ``client_chunk``, at the largest size. The fastest chunk per
   model is what the model's ``gpu_chunk`` (`Model.default_chunk`) should
   say for this backend.
2. ``throughput``: `benchmarks._throughput_setup.measure_throughput`
   (vmapped round against the per-client loop, alternated), as
   `benchmarks.throughput` runs it, for mlp, 2nn and cnn at 1,000 and 10,000
   clients per round, with the sweep's best chunk.
3. ``kernels``: `benchmarks._throughput_setup.measure_kernels` (FWHT,
   rotation, quantize/pack against a copy of the same array), as
   `benchmarks.kernels` runs it.
4. ``main_job``: `fedjax_comp.experiment.federated.run` with the main job's
   defaults (`benchmarks.fedavg`: MNIST-1D, MLP, 300 rounds).

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
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import _flags  # noqa: E402
from benchmarks import _throughput_setup as subjects  # noqa: E402
from benchmarks._timing import seconds  # noqa: E402
from fedjax_comp.experiment import configs, federated, results, tasks  # noqa: E402

_OUT = flags.DEFINE_string("out", "results/device_bench", "Directory for device_bench.json.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes: a smoke test of the script on a CPU.")
_PRESET = flags.DEFINE_string("preset", None, "Run only this --task preset (e.g. "
                              "emnist_character) from the files in --preset_data_dir.")
_PRESET_DIR = flags.DEFINE_string("preset_data_dir", None, "The preset's files (--data_dir).")
_PRESET_ROUNDS = flags.DEFINE_integer("preset_rounds", 50, "Rounds of the preset to time.")

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
      su = subjects.setup(model, size, chunk=chunk)
      _, state, rounds = su.fed_avg(size)
      run_round, _, compile_s = subjects.compile_round(rounds, state)
      seconds(run_round)  # warm
      sec = statistics.median(seconds(run_round) for _ in range(max(repeats, 3)))
      entries[str(chunk)] = {"sec_per_round": sec, "client_updates_per_sec": size / sec,
                             "compile_s": compile_s}
      say(f"sweep {model:8s} chunk {chunk:6d}: {sec * 1e3:9.2f} ms/round "
          f"({size / sec:10.0f} upd/s), compile {compile_s:.1f}s")
    best = min(entries, key=lambda c: entries[c]["sec_per_round"])
    out[model] = {"clients_per_round": size, "chunks": entries, "best_chunk": int(best)}
  return out


def main_job(cfg: dict, quick: bool, out_dir: pathlib.Path, store: str = "auto") -> dict:
  """The main job (`benchmarks.fedavg`'s defaults; a tiny one with --quick), by the library,
  from the given client store."""
  fed = configs.FederatedConfig().replace(client_store=store)
  if quick:
    fed = fed.replace(dataset="digits", num_clients=20, clients_per_round=4,
                      rounds=cfg["rounds"], local_epochs=1, eval_every=1)
  exp, _, _ = federated.run(fed, str(out_dir / f"fedavg_{store}"), say=None)
  r = results.read_result(out_dir / f"fedavg_{store}")
  out = {k: r["metrics"][k] for k in ("final_test_accuracy", "final_test_loss", "rounds",
                                      "client_updates_per_sec", "compile_s", "client_store")}
  if hasattr(exp.rounds, "data_wait_s"):
    out["last_data_wait_s"] = exp.rounds.data_wait_s
  return out


def preset_run(name: str, data_dir: str, rounds: int, out_dir: pathlib.Path) -> dict:
  """`rounds` rounds of a `--task` preset (no simulated clock), evaluated once at the end."""
  if not data_dir:
    raise ValueError(f"--preset={name} reads the published files: pass --preset_data_dir=DIR "
                     "holding them")
  data, train = tasks.get_task(name).values()
  knobs = {**data, **train, "task": name, "data_dir": data_dir, "rounds": rounds,
           "eval_every": rounds, "network": "none"}
  fed = configs.FederatedConfig().replace(**knobs)
  run_dir = out_dir / f"preset_{name}"
  federated.run(fed, str(run_dir), say=print)
  m = results.read_result(run_dir)["metrics"]
  return {k: m.get(k) for k in ("rounds", "rounds_per_sec", "client_updates_per_sec",
                                "compile_s", "final_test_accuracy", "final_test_accuracy_per_client",
                                "client_store", "num_params", "data_wait_s_per_round")}


def gpu_description() -> str | None:
  try:
    return subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def main() -> int:
  if _flags.OUTPUT_DIR.value or _flags.RESUME.value or _flags.OVERWRITE.value:
    raise ValueError("device_bench writes to --out (rewriting it); --output_dir, --resume and "
                     "--overwrite do not apply")
  cfg = _SMOKE if _QUICK.value else _FULL
  chunks = _SMOKE_CHUNKS if _QUICK.value else (
      _GPU_CHUNKS if jax.default_backend() != "cpu" else {m: (1,) for m in _GPU_CHUNKS})
  out_dir = pathlib.Path(_OUT.value)
  out_dir.mkdir(parents=True, exist_ok=True)
  report = {"environment": {**results.environment(), "gpu": gpu_description()},
            "quick": _QUICK.value, "sections": {}, "errors": {}}
  path = out_dir / "device_bench.json"

  def section(name, fn):
    t = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
      report["sections"][name] = fn()
    except Exception:  # pylint: disable=broad-except  (the next sections still run)
      report["errors"][name] = traceback.format_exc()
      print(report["errors"][name], flush=True)
    report.setdefault("wall_s", {})[name] = time.perf_counter() - t
    tmp = path.with_suffix(".tmp")  # rewritten after each section: a cut-off run keeps them
    tmp.write_text(json.dumps(report, indent=1, default=float))
    os.replace(tmp, path)

  if _PRESET.value:
    section(f"preset_{_PRESET.value}", lambda: preset_run(
        _PRESET.value, _PRESET_DIR.value, _PRESET_ROUNDS.value, out_dir))
    print(f"wrote {path}; errors in: {sorted(report['errors']) or 'none'}")
    return 1 if report["errors"] else 0
  section("chunk_sweep", lambda: chunk_sweep(chunks, cfg["sweep_size"], cfg["repeats"], print))
  best = {m: e["best_chunk"] for m, e in report["sections"].get("chunk_sweep", {}).items()}
  section("throughput", lambda: {
      m: subjects.measure_throughput(
          m, list(cfg["sizes"]), examples=20, batch_size=10, local_steps=2, chunk=best.get(m),
          loop_clients=cfg["loop_clients"], repeats=cfg["repeats"], seed=0)
      for m in cfg["throughput_models"]})
  section("kernels", lambda: subjects.measure_kernels(cfg["kernel_shapes"], cfg["kernel_bits"],
                                                      cfg["repeats"]))
  section("main_job", lambda: main_job(cfg, _QUICK.value, out_dir))
  section("main_job_host_store", lambda: main_job(cfg, _QUICK.value, out_dir, "host"))
  print(f"wrote {path}; errors in: {sorted(report['errors']) or 'none'}")
  return 1 if report["errors"] else 0


if __name__ == "__main__":
  _flags.main(main)
