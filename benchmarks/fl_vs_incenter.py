r"""Federated learning vs in-center distributed training, on one model and one dataset.

::

  python -m benchmarks.fl_vs_incenter --output_dir=results/fl_vs_incenter   # ~5 min on 2 cores
  python -m benchmarks.fl_vs_incenter --codecs='none;quantize(bits=4)' --rounds=100

The project's answer to its design note's title. Three ways to train the
same model (default: the MLP on MNIST-1D), each with and without an uplink
codec (``--codecs``, ';'-separated):

- ``fedavg``: federated averaging as in `benchmarks.fedavg` (its flags:
  Dirichlet non-IID clients, partial participation, local epochs). A round
  is one download of the model and one upload from each sampled client.
- ``local_sgd``: N in-center workers (``--workers``) on IID shards, each
  taking ``--local_period`` local steps between averagings (a round).
- ``sync_sgd``: the same workers all-reducing their gradients every step
  (a round per step): data-centre synchronous data-parallel SGD.

The in-center methods take ``--incenter_steps`` steps of ``--incenter_batch``
per worker: by default as many examples as FedAvg's clients process in
total. Training is independent of the network, so each method is trained
once per codec and then clocked under every preset in ``--presets``
(default ``datacenter`` and ``cellular``, `fedjax_comp.network`): a FedAvg
round takes its slowest selected client's download + local steps + upload;
an in-center round the slowest worker's steps plus one averaging (upload of
the codec's payload, download of the float32 mean) through a server.

Writes ``result.json`` (metrics keyed ``<method>/<codec>``), ``table.md``
(the table with an explanation), ``metrics.jsonl`` (one line per method and
evaluation), ``accuracy_vs_sim_time_<preset>.png`` and, under ``runs/``, the
FedAvg runs' own outputs.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import pathlib
import sys

import numpy as np
from absl import app, flags

import fedjax_comp as fc
from benchmarks import _network, _workers, latency
from benchmarks._parse import raise_first_failed
from benchmarks import fedavg as fedavg_runner
from fedjax_comp import network, results

DEFAULT_CODECS = ("none", "hadamard(flatten=true,block=1024),quantize(bits=2)")


def define_flags() -> dict:
  """This runner's flags beyond `benchmarks.fedavg`'s (defined only when run as a script)."""
  f = flags
  holders = {
      "codecs": f.DEFINE_string("codecs", ";".join(DEFAULT_CODECS),
                                "Uplink codecs to compare, ';'-separated ('none': float32)."),
      "presets": f.DEFINE_string("presets", "datacenter,cellular",
                                 "Network presets to clock every run under."),
      "workers": f.DEFINE_integer("workers", 16, "In-center workers N."),
      "incenter_steps": f.DEFINE_integer(
          "incenter_steps", 0, "Steps per in-center worker; 0: as many examples in total as "
          "FedAvg's clients process."),
      "incenter_batch": f.DEFINE_integer("incenter_batch", 32, "In-center per-worker batch."),
      "incenter_lr": f.DEFINE_float("incenter_lr", 0.1, "In-center SGD learning rate."),
      "local_period": f.DEFINE_integer("local_period", 10, "Local SGD: steps between "
                                       "averagings (FedAvg's clients take about 10)."),
      "incenter_eval_every": f.DEFINE_integer("incenter_eval_every", 200,
                                              "In-center: evaluate every this many steps."),
  }
  flags.FLAGS.set_default("output_dir", "results/fl_vs_incenter")
  return holders


@dataclasses.dataclass(frozen=True)
class Config:
  fedavg: fedavg_runner.Config
  codecs: tuple[str, ...] = DEFAULT_CODECS
  presets: tuple[str, ...] = ("datacenter", "cellular")
  workers: int = 16
  incenter_steps: int = 0  # 0: match FedAvg's examples processed
  incenter_batch: int = 32
  incenter_lr: float = 0.1
  local_period: int = 10
  incenter_eval_every: int = 200

  def validate(self) -> None:
    self.fedavg.validate()
    if not self.codecs:
      raise ValueError("--codecs must name at least one codec ('none' for float32)")
    for c in self.codecs:
      _workers.WorkerConfig(codec=c).validate()  # a sketch both sides can use
    for p in self.presets:
      network.preset(p)  # ValueError listing the valid presets
    checks = [
        (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
        (self.incenter_steps >= 0, f"--incenter_steps must be >= 0, got {self.incenter_steps}"),
        (self.incenter_batch >= 1, f"--incenter_batch must be >= 1, got {self.incenter_batch}"),
        (self.incenter_lr > 0, f"--incenter_lr must be > 0, got {self.incenter_lr}"),
        (self.local_period >= 1, f"--local_period (K) must be >= 1, got {self.local_period}"),
        (self.incenter_eval_every >= 1,
         f"--incenter_eval_every must be >= 1, got {self.incenter_eval_every}"),
    ]
    raise_first_failed(checks)


def _fedavg_clock(cfg: fedavg_runner.Config, net, round_ids: list[np.ndarray],
                  step_counts: np.ndarray, up_bits: int, down_bits: int) -> np.ndarray:
  """Simulated clock after each FedAvg round under `net`, given each round's client ids."""
  links = network.sample_links(net, cfg.num_clients, cfg.seed)
  return np.cumsum([fedavg_runner.sim_round_time(links, ids, step_counts, up_bits=up_bits,
                                                 down_bits=down_bits) for ids in round_ids])


def run(cfg: Config, output_dir: str, *, verbose: bool = True) -> dict:
  cfg.validate()
  say = print if verbose else (lambda *a, **k: None)
  out = pathlib.Path(output_dir)
  fa = cfg.fedavg
  data = fc.load_federated(fa.dataset, fa.partition, num_clients=fa.num_clients, seed=fa.seed,
                           alpha=fa.dirichlet_alpha, shards_per_client=fa.shards_per_client,
                           max_examples=fa.max_examples, data_dir=fa.data_dir)
  sizes = np.asarray(data.clients.num_examples)
  steps_per_client = fedavg_runner.local_step_counts(
      sizes, local_epochs=fa.local_epochs, batch_size=fa.batch_size, local_steps=fa.local_steps)
  # Examples FedAvg's clients process, on average, over the run.
  per_step = np.minimum(sizes, fa.batch_size or sizes.max())
  fl_examples = float(np.mean(steps_per_client * per_step)) * fa.clients_per_round * fa.rounds
  steps = cfg.incenter_steps or max(1, round(fl_examples / (cfg.workers * cfg.incenter_batch)))
  nets = {p: network.preset(p) for p in cfg.presets}
  # The rounds' client ids depend on the seed alone: rebuilt once, clocked per preset.
  ids_of = fedavg_runner.round_ids_fn(fc.keys.seed_key(fa.seed), fa.num_clients,
                                      fa.clients_per_round)
  round_ids = [np.asarray(ids_of(r)) for r in range(1, fa.rounds + 1)]
  say(f"FedAvg: {fa.rounds} rounds x {fa.clients_per_round} of {fa.num_clients} clients "
      f"({fa.partition}), {fl_examples:,.0f} examples processed; in-center: {cfg.workers} "
      f"workers (iid) x {steps} steps x batch {cfg.incenter_batch}")
  recorder = results.RunRecorder(output_dir, "fl_vs_incenter")
  metrics, curves, errors = {}, {p: [] for p in cfg.presets}, []

  for codec in cfg.codecs:
    # --- FedAvg, through its own runner (its clock switched off: we clock it per preset).
    run_dir = out / "runs" / f"fedavg_{_slug(codec)}"
    res = fedavg_runner.run(dataclasses.replace(fa, codec=codec, network="none",
                                                network_overrides={}, checkpoint_every=0),
                            str(run_dir), verbose=False)
    m = res["metrics"]
    evals = [r for r in results.read_metrics(run_dir) if "test_accuracy" in r]
    rounds_done = m["rounds"]
    up, down = m["uplink_bits_per_client_round"], m["downlink_bits_per_client_round"]
    entry = {"method": "fedavg", "codec": codec, "data": f"{fa.partition} ({fa.num_clients} "
             f"clients, {fa.clients_per_round}/round)",
             "final_test_accuracy": m["final_test_accuracy"], "rounds": rounds_done,
             "uplink_bytes": m["total_uplink_bytes"],
             "downlink_bytes": down / 8 * fa.clients_per_round * rounds_done,
             "error": m.get("error")}
    xs = [r["round"] for r in evals]
    accs = [r["test_accuracy"] for r in evals]
    for p, net in nets.items():
      clock = _fedavg_clock(fa, net, round_ids[:rounds_done], steps_per_client, up, down)
      times = [float(clock[x - 1]) for x in xs]
      entry[f"sim_time_s/{p}"] = float(clock[-1]) if rounds_done else 0.0
      entry[f"sim_time_to_target_s/{p}"] = network.time_to_target(times, accs, fa.target_accuracy)
      curves[p].append((f"fedavg, {codec}", times, accs))
    entry["rounds_to_target"] = network.time_to_target(xs, accs, fa.target_accuracy)
    _finish_entry(metrics, recorder, entry, xs, accs, errors)
    say(_line(entry))

    # --- In-center: local SGD and synchronous SGD on IID shards.
    wcfg = _workers.WorkerConfig(
        dataset=fa.dataset, partition="iid", num_workers=cfg.workers, model=fa.model,
        steps=steps, batch_size=cfg.incenter_batch, lr=cfg.incenter_lr,
        eval_every=cfg.incenter_eval_every, seed=fa.seed, codec=codec, data_dir=fa.data_dir)
    s = _workers.setup(wcfg)
    for method, period in (("local_sgd", cfg.local_period), ("sync_sgd", 1)):
      alg = _workers.build(s, period=period, delay=0, sync_every_step=method == "sync_sgd")
      tr = _workers.train(s, alg, say=lambda *_: None, label=method)
      rounds_done = tr["steps_done"] // period
      entry = {"method": method, "codec": codec,
               "data": f"iid ({cfg.workers} workers, all every round)",
               "final_test_accuracy": tr["final_test_accuracy"], "rounds": rounds_done,
               "uplink_bytes": s.up_bits / 8 * cfg.workers * rounds_done,
               "downlink_bytes": s.down_bits / 8 * cfg.workers * rounds_done,
               "error": tr["error"]}
      for p, net in nets.items():
        clock = _workers.clock(s, _workers.worker_links(s, net), period=period, delay=0)
        times = _workers.times_at(clock, tr["steps"])
        entry[f"sim_time_s/{p}"] = times[-1]
        entry[f"sim_time_to_target_s/{p}"] = network.time_to_target(
            times, tr["test_accuracy"], fa.target_accuracy)
        curves[p].append((f"{method}, {codec}", times, tr["test_accuracy"]))
      entry["rounds_to_target"] = (
          None if (k := network.time_to_target(tr["steps"], tr["test_accuracy"],
                                                fa.target_accuracy)) is None
          else -(-k // period))
      _finish_entry(metrics, recorder, entry, tr["steps"], tr["test_accuracy"], errors)
      say(_line(entry))

  curves = {p: {"title": f"FL vs in-center: {fa.model} on {fa.dataset}, {p} network",
                "series": [[label, ts, accs] for label, ts, accs in series]}
            for p, series in curves.items()}
  for p, curve in curves.items():
    latency.plot_curves(out / f"accuracy_vs_sim_time_{p}.png", curve, logx=True)
  table = format_table(metrics, cfg, steps)
  (out / "table.md").write_text(table + "\n")
  say("\n" + table)
  extras = {"config": dataclasses.asdict(cfg), "incenter_steps": steps,
            "fedavg_examples_processed": fl_examples,
            "networks": {p: dataclasses.asdict(n) for p, n in nets.items()},
            "curves": curves,  # simulated seconds and test accuracy per run (scripts/plot.py)
            **results.environment()}
  recorder.finish(succeeded=not errors, metrics=metrics, extras=extras)
  say(f"results: {out / 'result.json'}")
  return results.read_result(output_dir)


def _slug(codec: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in codec)[:60]


def _finish_entry(metrics, recorder, entry, xs, accs, errors):
  key = f"{entry['method']}/{entry['codec']}"
  metrics[key] = entry
  for x, a in zip(xs, accs):
    recorder.log({"run": key, "x": x, "test_accuracy": a})
  if entry["error"]:
    errors.append(f"{key}: {entry['error']}")


def _line(e) -> str:
  return (f"{e['method']:<10} {e['codec']:<50} acc {e['final_test_accuracy']:.4f}  "
          f"rounds {e['rounds']:>6}  uplink {e['uplink_bytes'] / 1e6:9.2f} MB")


def _fmt_time(x) -> str:
  if x is None:
    return "never"
  unit, scale = network.readable_unit(x)
  return f"{x / scale:.3g} {unit}"


def format_table(metrics: dict, cfg: Config, steps: int) -> str:
  """The comparison table, with the explanation that makes it readable alone."""
  fa = cfg.fedavg
  target = fa.target_accuracy
  head = ["| method | data | codec | final acc | rounds | uplink MB | downlink MB |"]
  sep = ["|---|---|---|---|---|---|---|"]
  for p in cfg.presets:
    head.append(f" time ({p}) | to {target:g} ({p}) |")
    sep.append("---|---|")
  lines = ["".join(head), "".join(sep)]
  for e in metrics.values():
    row = (f"| {e['method']} | {e['data']} | {e['codec']} | {e['final_test_accuracy']:.4f} | "
           f"{e['rounds']} | {e['uplink_bytes'] / 1e6:.2f} | {e['downlink_bytes'] / 1e6:.2f} |")
    for p in cfg.presets:
      row += (f" {_fmt_time(e[f'sim_time_s/{p}'])} | "
              f"{_fmt_time(e[f'sim_time_to_target_s/{p}'])} |")
    lines.append(row)
  nets = "; ".join(f"{p}: {network.preset(p).describe()}" for p in cfg.presets)
  notes = [
      "",
      f"{fa.model} on {fa.dataset}. fedavg: {fa.num_clients} clients ({fa.partition}), "
      f"{fa.clients_per_round} sampled per round, {fa.local_epochs} local epochs of batch "
      f"{fa.batch_size}, {fa.rounds} rounds. local_sgd / sync_sgd: {cfg.workers} workers on "
      f"IID shards, {steps} steps of batch {cfg.incenter_batch} each (about as many examples "
      f"as FedAvg processes), averaging every {cfg.local_period} steps / every step.",
      "A round is one exchange with the server: FedAvg's sampled clients download the model "
      "and upload an update; in-center, every worker uploads its update (gradient for "
      "sync_sgd) and downloads the float32 mean. Bytes are totals over all participants.",
      f"Times are simulated: {nets}. A round waits for its slowest participant; "
      f"'to {target:g}' is the simulated time until the test accuracy first reached "
      f"{target:g} (checked at evaluations).",
      "FedAvg trains on non-IID data held by intermittent clients, so its accuracy is not "
      "comparable one-to-one with the in-center IID runs: the table shows what each setting "
      "costs in rounds, bytes and time on each network.",
  ]
  return "\n".join(lines + notes)


def config_from_flags(h: dict) -> Config:
  return Config(
      fedavg=fedavg_runner.config_from_flags(),
      codecs=tuple(c.strip() for c in h["codecs"].value.split(";") if c.strip()),
      presets=tuple(p.strip() for p in h["presets"].value.split(",") if p.strip()),
      workers=h["workers"].value, incenter_steps=h["incenter_steps"].value,
      incenter_batch=h["incenter_batch"].value, incenter_lr=h["incenter_lr"].value,
      local_period=h["local_period"].value, incenter_eval_every=h["incenter_eval_every"].value)


def main(argv, h: dict):
  del argv
  try:
    cfg = config_from_flags(h)
    cfg.validate()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  result = run(cfg, fedavg_runner._OUTPUT_DIR.value)  # pylint: disable=protected-access
  if not result["succeeded"]:
    sys.exit(1)


if __name__ == "__main__":
  _HOLDERS = define_flags()
  app.run(lambda argv: main(argv, _HOLDERS))
