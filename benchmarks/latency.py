r"""Synchronous averaging vs Delayed Gradient Averaging across latencies and delays.

::

  python -m benchmarks.latency --output_dir=results/latency          # a few minutes on 2 cores
  python -m benchmarks.latency --latencies_ms=50,500 --delays=10,40 --period=4
  python -m benchmarks.latency --network=wifi --partition=dirichlet

N workers (``--num_clients``, default 16, IID shards of MNIST-1D, the MLP,
``--batch_size`` 32, ``--client_lr`` 0.1) average their updates every K local
steps (`fedjax_comp.algorithms.periodic_averaging`). ``sync`` waits for each
average (D = 0); ``dga`` keeps training and applies the average D steps
later with the correction w <- w - Δ_own + mean(Δ) (Zhu et al., NeurIPS
2021). Each D in ``--delays`` is trained once, plus, for every latency in
``--latencies_ms``, the D that hides that latency (``auto``:
`clock.delay_steps`, the averaging's time over a step's).

Training does not depend on the network; the simulated clock does. For each
latency (the rest of the network from ``--network``, default ``cellular``,
and its overrides) the clock of every run is `clock.periodic_times`: a step
takes the slowest worker's step time, an averaging costs
`clock.allreduce_time` (the slowest upload of the codec's payload, then the
slowest download of the float32 mean), and a DGA worker stalls only when
the average arrives after its D steps are done. The default
``--target_accuracy`` is 0.78: sync reaches it at about 55% of the steps.

Writes ``result.json`` (metrics keyed by method then setting, each with
``final_test_accuracy`` and ``sim_time_to_target_s``), ``metrics.jsonl``
(one line per run and evaluation), ``table.md``, and per latency
``accuracy_vs_sim_time_<L>ms.png`` (one line per setting).
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import pathlib

from absl import flags

from benchmarks import _flags, _parse, _workers
from fedjax_comp.experiment import clock, configs, plotting, results
from fedjax_comp.experiment.configs import knob


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
  """The sweep: steps, the averaging period K, the delays D and the latencies."""

  steps: int = knob(6000, "Local steps per worker.")
  eval_every_steps: int = knob(200, "Evaluate the workers' mean model every this many steps.")
  period: int = knob(8, "K: local steps between averagings.")
  delays: str = knob("5,10,20", "DGA delays D to train, in local steps (the network-derived D "
                     "of each latency is added).")
  latencies_ms: str = knob("10,100,300", "One-way latencies to simulate, ms (they replace the "
                           "preset's).")

  def __post_init__(self):
    for name in ("steps", "eval_every_steps", "period"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--{name} must be an integer >= 1, got {value!r}")
    self.delay_list()
    self.latency_list()

  def delay_list(self) -> list[int]:
    return _parse.parse_int_list(self.delays, "delays", low=0)

  def latency_list(self) -> list[float]:
    return _parse.parse_float_list(self.latencies_ms, "latencies_ms", low=0.0)


DATA = _flags.define(configs.DataConfig)
TRAIN = _flags.define(configs.TrainConfig)
NETWORK = _flags.define(configs.NetworkConfig)
SWEEP = _flags.define(LatencyConfig)
# FedAvg's knobs in the shared groups that N workers training every step do not have.
NOT_HERE = ("algorithm", "clients_per_round", "rounds", "local_epochs", "local_steps",
            "server_optimizer", "server_lr", "fedprox_mu", "client_chunk", "client_store",
            "max_examples", "latency_ms")


def train_all(w: _workers.Workers, sweep: LatencyConfig, auto: dict, say) -> dict[int, dict]:
  """sync (D = 0), every given D and every derived D, each trained once."""
  trained = {}
  for d in sorted({0, *sweep.delay_list(), *auto.values()}):
    alg = _workers.build(w, period=sweep.period, delay=d)
    trained[d] = _workers.train(w, alg, say=say, label="sync" if d == 0 else f"dga D={d}")
  return trained


def clock_latency(w, sweep, lat, links, auto_d, trained, target) -> tuple[list, list]:
  """Each setting's entry and curve at one latency: (name, entry) rows and series."""
  delays = sweep.delay_list()
  settings = [(0, "sync")] + [(d, "given") for d in delays if d > 0]
  if auto_d > 0 and auto_d not in delays:
    settings.append((auto_d, "derived"))
  step_s = _workers.comm_and_step(w, links)[1]
  rows, series, sync = [], [], None
  for d, source in settings:
    run = trained[d]
    times = _workers.times_at(w, links, run["steps"], period=sweep.period, delay=d)
    steps_to_target = clock.time_to_target(run["steps"], run["test_accuracy"], target)
    entry = {"final_test_accuracy": run["final_test_accuracy"],
             "sim_time_to_target_s": clock.time_to_target(times, run["test_accuracy"], target),
             "steps_to_target": steps_to_target,
             "rounds_to_target": (None if steps_to_target is None
                                  else -(-steps_to_target // sweep.period)),
             "sim_time_s": times[-1], "delay_steps": d, "delay_source": source,
             "latency_ms": lat, "period": sweep.period,
             "waiting_s": max(0.0, times[-1] - run["steps_done"] * step_s),
             "error": run["error"]}
    if d == 0:
      sync = entry
    else:
      entry["accuracy_vs_sync_points"] = 100 * (entry["final_test_accuracy"]
                                                - sync["final_test_accuracy"])
      tt, st = entry["sim_time_to_target_s"], sync["sim_time_to_target_s"]
      entry["speedup_to_target_vs_sync"] = st / tt if tt and st else None
    name = "sync" if d == 0 else f"dga D={d}" + (" (auto)" if source == "derived" else "")
    rows.append((name, entry))
    series.append([name, times, run["test_accuracy"]])
  return rows, series


def run(task: _workers.WorkerTask, sweep: LatencyConfig, net: clock.NetworkModel,
        target: float, output_dir: str, *, say=print) -> dict:
  """Trains sync and every DGA delay once, then clocks them at every latency."""
  say = say or (lambda _: None)
  w = _workers.setup(task)
  lats = sweep.latency_list()
  links = {lat: _workers.links(w, net.replace(latency_s=lat / 1e3)) for lat in lats}
  auto = {lat: _workers.derived_delay(w, links[lat]) for lat in lats}
  say(f"{task.dataset}/{task.partition}: {task.num_workers} workers, {task.model} "
      f"({w.num_params:,} params), K={sweep.period}, {task.steps} steps of batch "
      f"{task.batch_size}; codec {task.codec!r}: {w.up_bits:,} bits up, {w.down_bits:,} down "
      f"per worker\nnetwork {net.describe()}")
  for lat in lats:
    comm, step = _workers.comm_and_step(w, links[lat])
    say(f"  latency {lat:g} ms: averaging {comm * 1e3:.1f} ms, step {step * 1e3:.2f} ms "
        f"(slowest worker) -> D hiding it: {auto[lat]}")
  recorder = results.RunRecorder(output_dir, "latency")
  trained = train_all(w, sweep, auto, say)
  for d, tr in trained.items():
    for k, acc in zip(tr["steps"], tr["test_accuracy"]):
      recorder.log({"delay": d, "step": k, "test_accuracy": acc})
  metrics, table_rows, curves = {"sync": {}, "dga": {}}, [], {}
  for lat in lats:
    rows, series = clock_latency(w, sweep, lat, links[lat], auto[lat], trained, target)
    for name, entry in rows:
      d = entry["delay_steps"]
      key = f"latency={lat:g}ms" + (f",D={d}" if d else "")
      metrics["dga" if d else "sync"][key] = entry
      table_rows.append((lat, name, entry))
    curves[f"{lat:g}ms"] = {"title": f"sync vs DGA, K={sweep.period}, latency {lat:g} ms "
                                     f"({task.num_workers} workers)", "series": series}
    plotting.accuracy_vs_time(pathlib.Path(output_dir) / f"accuracy_vs_sim_time_{lat:g}ms.png",
                              curves[f"{lat:g}ms"])
  table = format_table(table_rows, target)
  pathlib.Path(output_dir, "table.md").write_text(table + "\n")
  say("\n" + table)
  extras = {"task": dataclasses.asdict(task), "sweep": dataclasses.asdict(sweep),
            "derived_delays": {f"{k:g}ms": v for k, v in auto.items()},
            "network": dataclasses.asdict(net), "target_accuracy": target,
            "curves": curves,  # simulated seconds and test accuracy per setting (scripts/plot.py)
            "uplink_bits_per_worker": w.up_bits, "downlink_bits_per_worker": w.down_bits,
            "training": {str(d): r for d, r in trained.items()}, **results.environment()}
  path = recorder.finish(succeeded=not any(r["error"] for r in trained.values()),
                         metrics=metrics, extras=extras)
  say(f"results: {path}")
  return results.read_result(output_dir)


def format_table(rows, target) -> str:
  def speedup(x):
    return "" if x is None else f"{x:.2f}x"

  lines = [f"| latency | method | final acc | vs sync (points) | sim time to {target:g} | "
           "speedup | total sim time | waiting |",
           "|---|---|---|---|---|---|---|---|"]
  for lat, name, e in rows:
    tt = e["sim_time_to_target_s"]
    lines.append(
        f"| {lat:g} ms | {name} | {e['final_test_accuracy']:.4f} | "
        f"{e.get('accuracy_vs_sync_points', 0.0):+.2f} | "
        f"{'not reached' if tt is None else f'{tt:.1f} s'} | "
        f"{speedup(e.get('speedup_to_target_vs_sync'))} | "
        f"{e['sim_time_s']:.1f} s | {e['waiting_s']:.1f} s |")
  return "\n".join(lines)


def main() -> int:
  _parse.refuse_present(NOT_HERE, "not a knob of benchmarks.latency (its workers all train "
                          "every step; --latencies_ms sets the latency)")
  data, train, network, sweep = DATA.config(), TRAIN.config(), NETWORK.config(), SWEEP.config()
  net = network.model()
  if net is None:
    raise ValueError("--network=none: the latency sweep needs a network model; choose one of "
                     f"{', '.join(clock.PRESETS)}")
  task = _workers.WorkerTask(
      dataset=data.dataset, partition=data.partition, dirichlet_alpha=data.dirichlet_alpha,
      data_dir=data.data_dir, num_workers=data.num_clients, model=train.model,
      steps=sweep.steps, batch_size=train.batch_size, lr=train.client_lr,
      eval_every=sweep.eval_every_steps, seed=train.seed, codec=train.codec)
  if _flags.RESUME.value:
    raise ValueError("--resume: a latency sweep keeps no checkpoint; use --overwrite")
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/latency",
                                overwrite=_flags.OVERWRITE.value)
  return 0 if run(task, sweep, net, network.target_accuracy, out)["succeeded"] else 1


if __name__ == "__main__":
  for name, value in (("num_clients", "16"), ("partition", "iid"), ("batch_size", "32"),
                      ("client_lr", "0.1"), ("target_accuracy", "0.78")):
    flags.FLAGS.set_default(name, value)
  _flags.main(main)
