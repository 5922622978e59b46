r"""Synchronous averaging vs Delayed Gradient Averaging across latencies and delays.

::

  python -m benchmarks.latency --output_dir=results/latency          # a few minutes on 2 cores
  python -m benchmarks.latency --latencies_ms=50,500 --delays=10,40 --period=4
  python -m benchmarks.latency --network=wifi --partition=dirichlet

N workers (default 16, IID shards of MNIST-1D, the MLP) average their
updates every K local steps (`fedjax_comp.distributed.periodic_averaging`).
``sync`` waits for each average (D = 0); ``dga`` keeps training and applies
the average D steps later with the correction w <- w - Δ_own + mean(Δ) (Zhu
et al., NeurIPS 2021). Each D in ``--delays`` is trained once, plus, for
every latency in ``--latencies_ms``, the D that hides that latency
(``auto``: `network.delay_steps`, the averaging's time over a step's).

Training does not depend on the network; the simulated clock does. For each
latency (the rest of the network from ``--network``, default ``cellular``)
the clock of every run is `network.periodic_times`: a step takes the
slowest worker's step time, an averaging costs `network.allreduce_time`
(the slowest upload of the codec's payload, then the slowest download of
the float32 mean), and a DGA worker stalls only when the average arrives
after its D steps are done.

Writes ``result.json`` (metrics keyed by method then setting, each with
``final_test_accuracy`` and ``sim_time_to_target_s``), ``metrics.jsonl``
(one line per run and evaluation), ``table.md``, and per latency
``accuracy_vs_sim_time_<L>ms.png`` (one line per setting).
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import pathlib
import sys

from absl import app, flags

from benchmarks import _network, _workers
from benchmarks._parse import parse_batch_size
from fedjax_comp import network, plotting, results

def define_flags() -> dict:
  """Defines the runner's own flags (only when run as a script); returns their holders.

  Several runners share flag names with other defaults (--partition is
  ``dirichlet`` in `benchmarks.fedavg`), so defining them at import would let
  whichever runner a process imported last decide the defaults.
  """
  f = flags
  holders = {
      "dataset": f.DEFINE_string("dataset", "mnist1d", "Dataset."),
      "partition": f.DEFINE_string("partition", "iid", "How to split the data over workers."),
      "dirichlet_alpha": f.DEFINE_float("dirichlet_alpha", 0.5, "Dirichlet concentration."),
      "num_workers": f.DEFINE_integer("num_workers", 16, "Workers N."),
      "model": f.DEFINE_string("model", "mlp", "Model."),
      "steps": f.DEFINE_integer("steps", 6000, "Local steps per worker."),
      "batch_size": f.DEFINE_string("batch_size", "32", "Per-worker minibatch, or 'inf'."),
      "lr": f.DEFINE_float("lr", 0.1, "Local SGD learning rate."),
      "eval_every": f.DEFINE_integer("eval_every", 200, "Evaluate every this many steps."),
      "seed": f.DEFINE_integer("seed", 0, "Seed."),
      "codec": f.DEFINE_string("codec", "none", "Codec of every upload (a sketch)."),
      "period": f.DEFINE_integer("period", 8, "K: local steps between averagings."),
      "delays": f.DEFINE_string("delays", "5,10,20", "DGA delays D to train, in local steps "
                                "(the network-derived D of each latency is added)."),
      "latencies_ms": f.DEFINE_string("latencies_ms", "10,100,300", "One-way latencies to "
                                      "simulate, ms (they override the preset's)."),
      "output_dir": f.DEFINE_string("output_dir", "results/latency", "Where results go."),
  }
  flags.FLAGS.set_default("target_accuracy", DEFAULT_TARGET)
  return holders


DEFAULT_TARGET = 0.78  # MNIST-1D MLP: sync reaches it at about 55% of the default steps


def check_sweep(period: int, delays: list[int], latencies_ms: list[float]) -> None:
  """ValueError naming the flag for K < 1, D < 0, or a missing/negative latency."""
  if period < 1:
    raise ValueError(f"--period (K) must be >= 1, got {period}")
  if any(d < 0 for d in delays):
    raise ValueError(f"--delays (D) must be >= 0, got {delays}")
  if not latencies_ms or any(not (lat >= 0) for lat in latencies_ms):
    raise ValueError(f"--latencies_ms must be a non-empty list of values >= 0, got {latencies_ms}")


def run(cfg: _workers.WorkerConfig, *, period: int, delays: list[int],
        latencies_ms: list[float], net: network.NetworkModel, target: float,
        output_dir: str, verbose: bool = True) -> dict:
  """Trains sync and every DGA delay once, then clocks them at every latency."""
  check_sweep(period, delays, latencies_ms)
  say = print if verbose else (lambda *a, **k: None)
  s = _workers.setup(cfg)
  links = {lat: _workers.worker_links(s, net.replace(latency_s=lat / 1e3)) for lat in latencies_ms}
  auto = {lat: _workers.derived_delay(s, links[lat]) for lat in latencies_ms}
  say(f"{cfg.dataset}/{cfg.partition}: {cfg.num_workers} workers, {cfg.model} "
      f"({s.num_params:,} params), K={period}, {cfg.steps} steps of batch {cfg.batch_size}; "
      f"codec {cfg.codec!r}: {s.up_bits:,} bits up, {s.down_bits:,} down per worker")
  say(f"network {net.describe()}")
  for lat in latencies_ms:
    comm, step = _workers.comm_and_step(s, links[lat])
    say(f"  latency {lat:g} ms: averaging {comm * 1e3:.1f} ms, step {step * 1e3:.2f} ms "
        f"(slowest worker) -> D hiding it: {auto[lat]}")
  recorder = results.RunRecorder(output_dir, "latency")
  trained = {}
  for d in sorted({0, *delays, *auto.values()}):
    label = "sync" if d == 0 else f"dga D={d}"
    trained[d] = _workers.train(s, _workers.build(s, period=period, delay=d), say=say,
                                label=label)
    for k, acc in zip(trained[d]["steps"], trained[d]["test_accuracy"]):
      recorder.log({"delay": d, "step": k, "test_accuracy": acc})

  metrics = {"sync": {}, "dga": {}}
  rows, curves = [], {}
  for lat in latencies_ms:
    sync_entry = None
    settings = [(0, "given")] + [(d, "given") for d in delays if d > 0]
    if auto[lat] > 0 and auto[lat] not in delays:
      settings.append((auto[lat], "derived"))
    series = []
    for d, source in settings:
      run_ = trained[d]
      clock = _workers.clock(s, links[lat], period=period, delay=d)
      times = _workers.times_at(clock, run_["steps"])
      to_target = network.time_to_target(times, run_["test_accuracy"], target)
      steps_to_target = network.time_to_target(run_["steps"], run_["test_accuracy"], target)
      entry = {
          "final_test_accuracy": run_["final_test_accuracy"],
          "sim_time_to_target_s": to_target,
          "steps_to_target": steps_to_target,
          "rounds_to_target": None if steps_to_target is None else -(-steps_to_target // period),
          "sim_time_s": times[-1],
          "delay_steps": d, "delay_source": source if d else "sync",
          "latency_ms": lat, "period": period,
          "waiting_s": max(0.0, times[-1] - run_["steps_done"] * _workers.comm_and_step(s, links[lat])[1]),
          "error": run_["error"],
      }
      if d == 0:
        sync_entry = entry
        metrics["sync"][f"latency={lat:g}ms"] = entry
        name = "sync"
      else:
        entry["accuracy_vs_sync_points"] = 100 * (entry["final_test_accuracy"]
                                                  - sync_entry["final_test_accuracy"])
        entry["speedup_to_target_vs_sync"] = (
            sync_entry["sim_time_to_target_s"] / to_target
            if to_target and sync_entry["sim_time_to_target_s"] else None)
        metrics["dga"][f"latency={lat:g}ms,D={d}"] = entry
        name = f"dga D={d}" + (" (auto)" if source == "derived" else "")
      rows.append((lat, name, entry))
      series.append((name, times, run_["test_accuracy"]))
    curves[f"{lat:g}ms"] = {
        "title": f"sync vs DGA, K={period}, latency {lat:g} ms ({cfg.num_workers} workers)",
        "series": [[n, ts, accs] for n, ts, accs in series]}
    plot_curves(pathlib.Path(output_dir) / f"accuracy_vs_sim_time_{lat:g}ms.png",
                curves[f"{lat:g}ms"])

  table = _table(rows, target)
  pathlib.Path(output_dir, "table.md").write_text(table + "\n")
  say("\n" + table)
  errors = [r["error"] for r in trained.values() if r["error"]]
  extras = {"config": dataclasses.asdict(cfg), "period": period, "delays": delays,
            "latencies_ms": latencies_ms, "derived_delays": {f"{k:g}ms": v for k, v in auto.items()},
            "network": dataclasses.asdict(net), "target_accuracy": target,
            "curves": curves,  # simulated seconds and test accuracy per setting (scripts/plot.py)
            "uplink_bits_per_worker": s.up_bits, "downlink_bits_per_worker": s.down_bits,
            "training": {str(d): {k: v for k, v in r.items()} for d, r in trained.items()},
            **results.environment()}
  path = recorder.finish(succeeded=not errors, metrics=metrics, extras=extras)
  say(f"results: {path}")
  return results.read_result(output_dir)


def plot_curves(path, curve: dict, logx: bool = False) -> None:
  """Accuracy vs simulated time from a result's ``extras["curves"][key]`` (also scripts/plot.py)."""
  series = curve["series"]
  unit, scale = network.readable_unit(max((max(ts) for _, ts, _ in series if ts), default=0.0))
  plotting.line_plot(path, [(n, [t / scale for t in ts], accs) for n, ts, accs in series],
                     xlabel=f"simulated time ({unit})", ylabel="test accuracy",
                     title=curve["title"], logx=logx)


def _speedup(x) -> str:
  return "" if x is None else f"{x:.2f}x"


def _table(rows, target) -> str:
  lines = [f"| latency | method | final acc | vs sync (points) | sim time to {target:g} | "
           "speedup | total sim time | waiting |",
           "|---|---|---|---|---|---|---|---|"]
  for lat, name, e in rows:
    tt = e["sim_time_to_target_s"]
    lines.append(
        f"| {lat:g} ms | {name} | {e['final_test_accuracy']:.4f} | "
        f"{e.get('accuracy_vs_sync_points', 0.0):+.2f} | "
        f"{'not reached' if tt is None else f'{tt:.1f} s'} | "
        f"{_speedup(e.get('speedup_to_target_vs_sync'))} | "
        f"{e['sim_time_s']:.1f} s | {e['waiting_s']:.1f} s |")
  return "\n".join(lines)


def main(argv, h: dict):
  del argv
  try:
    cfg = _workers.WorkerConfig(
        dataset=h["dataset"].value, partition=h["partition"].value,
        dirichlet_alpha=h["dirichlet_alpha"].value, num_workers=h["num_workers"].value,
        model=h["model"].value, steps=h["steps"].value,
        batch_size=parse_batch_size(h["batch_size"].value), lr=h["lr"].value,
        eval_every=h["eval_every"].value, seed=h["seed"].value, codec=h["codec"].value)
    cfg.validate()
    delays = _workers.parse_int_list(h["delays"].value, "delays", low=0)
    latencies = _workers.parse_float_list(h["latencies_ms"].value, "latencies_ms", low=0.0)
    net = _network.network_from_flags()
    if net is None:
      raise ValueError("--network=none: the latency sweep needs a network model; "
                       f"choose one of {', '.join(network.PRESETS)}")
    target = _network.target_from_flags()
    check_sweep(h["period"].value, delays, latencies)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  result = run(cfg, period=h["period"].value, delays=delays, latencies_ms=latencies, net=net,
               target=target, output_dir=h["output_dir"].value)
  if not result["succeeded"]:
    sys.exit(1)


if __name__ == "__main__":
  _HOLDERS = define_flags()
  app.run(lambda argv: main(argv, _HOLDERS))
