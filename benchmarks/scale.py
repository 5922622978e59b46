r"""Large populations on the host store: set-up time, peak memory, rounds, and what bucketing saves.

::

  .venv/bin/python -m benchmarks.scale --output_dir=results/scale         # ~5 min on 2 cores
  .venv/bin/python -m benchmarks.scale --populations=1000000 --rounds=10

For each size in ``--populations`` (a fresh subprocess each, so peak memory
is that size's alone) it builds a heavy-tailed Synthetic(1, 1) population
(`data.lazy`, ``sizes=heavy``: lognormal client sizes, mean ~50, uncapped)
on the host store, with ``--clients_per_round`` clients per round and the
logistic model, E = 1 epoch of batch 10, and runs ``--rounds`` rounds. It
reports the set-up time (population, store, first compile), the peak RSS,
rounds per second, the device's wait for each cohort, and the compiled
cohort buckets. Then, on the same population and rounds, the round with
every client padded to the population's largest (``min_bucket`` = that
size: what a store padded to the population would run) against the
cohort-bucketed round: seconds per round and padded example-steps per
round (a client runs ``E * ceil(bucket / B)`` steps of ``B`` examples).

Last, a user's own natural clients: 300 clients of 1 to 5,000 examples
(log-uniform), the MLP, 30 per round, on the device store (padded to 5,000)
and on the host store, at the MLP's chunk and at one client per chunk
(what ``--client_chunk=auto`` picks for such tails on a CPU): bytes held
and seconds per round.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import json
import subprocess
import sys
import time

from absl import flags

from benchmarks import _flags

_POPULATIONS = flags.DEFINE_string("populations", "10000,100000,1000000",
                                   "Population sizes, comma-separated.")
_PER_ROUND = flags.DEFINE_string("scale_clients_per_round", "100", "Clients per round.")
_ROUNDS = flags.DEFINE_string("scale_rounds", "10", "Rounds per population.")
_PADDED_ROUNDS = flags.DEFINE_string("padded_rounds", "3", "Rounds with population-max padding "
                                     "(0: skip the comparison).")
_CHILD = flags.DEFINE_string("child", None, "Internal: measure one population size.")


def _timed_pass(step, state, rounds, bound):
  """Runs `rounds` rounds from `state`; per round: seconds, data wait, bucket, real steps."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = []
  for _ in range(rounds):
    t = time.perf_counter()
    state, out = step(state)
    steps = int(out.metrics.num_steps)
    rows.append((time.perf_counter() - t, bound.data_wait_s, bound.last_bucket, steps))
  return np.array(rows, dtype=np.float64)


def measure(num_clients: int, per_round: int, rounds: int, padded_rounds: int) -> dict:
  """One population: set-up, rounds, memory, and the padding comparison.

  Rounds run twice from the same state: the first pass compiles each new
  cohort bucket, the second is timed.
  """
  import resource  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fedjax_comp.data.host_store import HostStore  # pylint: disable=g-import-not-at-top
  from fedjax_comp.experiment import configs, federated  # pylint: disable=g-import-not-at-top

  batch = 10
  t0 = time.perf_counter()
  cfg = configs.FederatedConfig().replace(
      dataset="synthetic", partition="natural", num_clients=num_clients,
      synthetic_sizes="heavy", client_store="host", model="logistic",
      clients_per_round=per_round, rounds=rounds, local_epochs=1, batch_size=batch,
      network="none", eval_every=rounds)
  exp = federated.setup(cfg, say=None)
  step = exp.rounds.compile(exp.state)
  setup_s = time.perf_counter() - t0
  sizes = exp.data.sizes()
  _timed_pass(step, exp.state, rounds, exp.rounds)  # compiles every bucket the rounds meet
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  rows = _timed_pass(step, exp.state, rounds, exp.rounds)
  slots = exp.rounds.slots
  entry = {
      "num_clients": num_clients, "setup_s": setup_s, "peak_rss_mb": rss,
      "mean_client_size": float(sizes.mean()), "max_client_size": int(sizes.max()),
      "rounds": rounds, "sec_per_round": float(np.median(rows[:, 0])),
      "data_wait_s_per_round": float(np.median(rows[:, 1])),
      "buckets_compiled": exp.rounds.buckets_compiled,
      "real_example_steps_per_round": float(np.mean(rows[:, 3]) * batch),
      "padded_example_steps_per_round": float(np.mean(
          slots * np.ceil(rows[:, 2] / batch) * batch)),
  }
  if padded_rounds:
    cap = int(sizes.max())
    wide = HostStore(exp.data.ragged(), min_bucket=cap, say=None).bind(
        exp.algorithm, exp.state.params)
    wide_step = wide.compile(exp.state)
    wide_rows = _timed_pass(wide_step, exp.state, padded_rounds, wide)
    entry["population_max_padding"] = {
        "bucket": cap, "sec_per_round": float(np.median(wide_rows[:, 0])),
        "padded_example_steps_per_round": float(slots * -(-cap // batch) * batch)}
    entry["bucketing_speedup"] = entry["population_max_padding"]["sec_per_round"] / float(
        np.median(rows[:padded_rounds, 0]))
    entry["peak_rss_with_padding_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return entry


def natural_case(num_clients: int = 300, largest: int = 5000, per_round: int = 30,
                 rounds: int = 5) -> dict:
  """A user's own natural clients of 1 to `largest` examples (log-uniform sizes, 40
  features, 10 classes, the MLP, E = 1 of batch 10): device store (padded to the largest)
  against host store (ragged, cohort buckets): bytes held and seconds per round."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import fedjax_comp as fc  # pylint: disable=g-import-not-at-top
  from fedjax_comp.data.host_store import HostStore  # pylint: disable=g-import-not-at-top
  from fedjax_comp.data.ragged import RaggedClients  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  sizes = np.round(np.exp(rng.uniform(0, np.log(largest), num_clients))).astype(np.int64)
  sizes[0] = largest
  total = int(sizes.sum())
  ragged = RaggedClients({"x": rng.standard_normal((total, 40)).astype(np.float32),
                          "y": rng.integers(0, 10, total).astype(np.int32)},
                         np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
  model = fc.get_model("mlp", (40,), 10)
  out = {"num_clients": num_clients, "largest": largest, "real_examples": total,
         "ragged_bytes": ragged.nbytes}
  padded = fc.ClientArrays(features=ragged.gather(np.arange(num_clients), largest),
                           num_examples=sizes.astype(np.int32))
  for chunk in (model.cpu_chunk, 1):  # the MLP's chunk, and what "auto" picks for such tails
    alg = fc.fed_avg(model, optax.sgd(0.05), fc.server_optimizer("fedavg", 1.0),
                     fc.LocalSchedule(epochs=1, batch_size=10), clients_per_round=per_round,
                     client_chunk=chunk)
    for kind in ("host", "device"):
      state = alg.init(0)
      bound = (HostStore(ragged, min_bucket=10, say=None) if kind == "host"
               else fc.DeviceStore(padded)).bind(alg, state.params)
      step = bound.compile(state)
      for timed in (False, True):  # the first pass compiles every bucket the rounds meet
        s, t = state, time.perf_counter()
        for _ in range(rounds):
          s, o = step(s)
          int(o.metrics.num_steps)
        if timed:
          out[f"{kind}_chunk{chunk}_sec_per_round"] = (time.perf_counter() - t) / rounds
  out["padded_bytes"] = sum(int(a.nbytes) for a in padded.features.values())
  out["memory_ratio"] = out["padded_bytes"] / out["ragged_bytes"]
  return out


def _ints(text: str, flag: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise ValueError(f"--{flag} must be comma-separated integers >= 1, got {text!r}")
  return values


def main() -> int:
  per_round = _ints(_PER_ROUND.value, "scale_clients_per_round")[0]
  rounds = _ints(_ROUNDS.value, "scale_rounds")[0]
  padded = int(_PADDED_ROUNDS.value) if _PADDED_ROUNDS.value.isdigit() else -1
  if padded < 0:
    raise ValueError(f"--padded_rounds must be an integer >= 0, got {_PADDED_ROUNDS.value!r}")
  if _CHILD.value == "natural":
    print(json.dumps(natural_case()))
    return 0
  if _CHILD.value:
    print(json.dumps(measure(int(_CHILD.value), per_round, rounds, padded)))
    return 0
  sizes = _ints(_POPULATIONS.value, "populations")
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/scale",
                                overwrite=_flags.OVERWRITE.value, resumable=False)
  from fedjax_comp.experiment import results  # pylint: disable=g-import-not-at-top
  recorder = results.RunRecorder(out, "scale")
  metrics = {}
  for n in sizes:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", f"--child={n}",
                           f"--scale_clients_per_round={per_round}",
                           f"--scale_rounds={rounds}", f"--padded_rounds={padded}"],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
      raise ValueError(f"population {n}: {proc.stderr.strip().splitlines()[-1]}")
    entry = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics[str(n)] = entry
    recorder.log(entry)
    print(f"{n:>9,} clients: set-up {entry['setup_s']:5.1f} s, peak RSS "
          f"{entry['peak_rss_mb']:6.0f} MB, {entry['sec_per_round'] * 1e3:7.1f} ms/round "
          f"(data wait {entry['data_wait_s_per_round'] * 1e3:.1f} ms), buckets "
          f"{entry['buckets_compiled']}, largest client {entry['max_client_size']}"
          + (f"; population-max padding {entry['bucketing_speedup']:.1f}x slower"
             if "bucketing_speedup" in entry else ""))
  proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child=natural"],
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise ValueError(f"natural clients case: {proc.stderr.strip().splitlines()[-1]}")
  metrics["natural_clients"] = nat = json.loads(proc.stdout.strip().splitlines()[-1])
  recorder.log(nat)
  print(f"natural clients (300, 1 to 5,000 examples): padded {nat['memory_ratio']:.1f}x the "
        "ragged bytes; ms/round " + ", ".join(
            f"{k.removesuffix('_sec_per_round')} {v * 1e3:.0f}" for k, v in nat.items()
            if k.endswith("_sec_per_round")))
  recorder.finish(succeeded=True, metrics=metrics, extras={
      "config": {"populations": sizes, "clients_per_round": per_round, "rounds": rounds,
                 "padded_rounds": padded, "model": "logistic", "sizes": "heavy",
                 "local_epochs": 1, "batch_size": 10}, **results.environment()})
  print(f"results: {out}/result.json")
  return 0


if __name__ == "__main__":
  _flags.main(main)
