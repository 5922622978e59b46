r"""Federated learning vs in-center distributed training, on one model and one dataset.

::

  python -m benchmarks.fl_vs_incenter --output_dir=results/fl_vs_incenter   # ~5 min on 2 cores
  python -m benchmarks.fl_vs_incenter --codecs='none;quantize(bits=4)' --rounds=100

The project's answer to its design note's title. Three ways to train the
same model (default: the MLP on MNIST-1D), each with and without an uplink
codec (``--codecs``, ';'-separated):

- ``fedavg``: federated averaging as in `benchmarks.fedavg` (the same flags:
  Dirichlet non-IID clients, partial participation, local epochs), run
  through `fedjax_comp.experiment.federated`. A round is one download of
  the model and one upload from each sampled client with data.
- ``local_sgd``: N in-center workers (``--workers``) on IID shards, each
  taking ``--local_period`` local steps between averagings (a round).
- ``sync_sgd``: the same workers all-reducing their gradients every step
  (a round per step): data-centre synchronous data-parallel SGD.

The in-center methods take ``--incenter_steps`` steps of ``--incenter_batch``
per worker: by default about as many examples as FedAvg's clients process
in total (counted from the step counts its rounds report). Training is
independent of the network, so each method is trained once per codec and
then clocked under every preset in ``--presets`` (default ``datacenter`` and
``cellular``; the link flags such as ``--uplink_mbps`` override every
preset): a FedAvg round takes its slowest client's download + local steps +
upload, from the client ids and step counts the round returned; an
in-center round the slowest worker's steps plus one averaging (upload of
the codec's payload, download of the float32 mean) through a server.

Writes ``result.json`` (metrics keyed ``<method>/<codec>``), ``table.md``
(the table with an explanation), ``metrics.jsonl`` (one line per method and
evaluation), ``accuracy_vs_sim_time_<preset>.png`` (log time: the
evaluations at t = 0 are left out) and, under ``runs/``, the FedAvg runs'
own records.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import pathlib

import jax
import numpy as np
from absl import flags

from benchmarks import _flags, _parse, _workers
from fedjax_comp.experiment import clock, configs, federated, loop, plotting, results
from fedjax_comp.experiment.configs import knob

DEFAULT_CODECS = ("none", "hadamard(flatten=true,block=1024),quantize(bits=2)")


@dataclasses.dataclass(frozen=True)
class IncenterConfig:
  """The comparison: network presets, and the in-center workers' training."""

  presets: str = knob("datacenter,cellular", "Network presets to clock every run under.")
  workers: int = knob(16, "In-center workers N.")
  incenter_steps: int = knob(0, "Steps per in-center worker; 0: about as many examples in "
                             "total as FedAvg's clients process.")
  incenter_batch: int = knob(32, "In-center per-worker batch.")
  incenter_lr: float = knob(0.1, "In-center SGD learning rate.")
  local_period: int = knob(10, "Local SGD: steps between averagings (FedAvg's clients take "
                           "about 10).")
  incenter_eval_every: int = knob(200, "In-center: evaluate every this many steps.")

  def __post_init__(self):
    for p in self.preset_list():
      clock.preset(p)  # ValueError listing the valid presets
    for name, low in (("workers", 1), ("incenter_steps", 0), ("incenter_batch", 1),
                      ("local_period", 1), ("incenter_eval_every", 1)):
      if getattr(self, name) < low:
        raise ValueError(f"--{name} must be >= {low}, got {getattr(self, name)}")
    if not self.incenter_lr > 0:
      raise ValueError(f"--incenter_lr must be > 0, got {self.incenter_lr}")

  def preset_list(self) -> list[str]:
    return [p.strip() for p in self.presets.split(",") if p.strip()]


DATA = _flags.define(configs.DataConfig)
TRAIN = _flags.define(configs.TrainConfig)
RUN = _flags.define(configs.RunConfig)
NETWORK = _flags.define(configs.NetworkConfig)
INCENTER = _flags.define(IncenterConfig)
CODECS = _flags.define(_parse.CodecList)


def run_fedavg(cfg: configs.FederatedConfig, output_dir: str):
  """FedAvg through the library loop, keeping each round's cohort to clock it afterwards."""
  cfg = dataclasses.replace(cfg, network=configs.NetworkConfig(
      network="none", target_accuracy=cfg.network.target_accuracy))  # clocked per preset
  exp = federated.setup(cfg, say=None)
  _, history = loop.run_rounds(
      exp.algorithm, exp.state, exp.rounds, num_rounds=cfg.train.rounds,
      evaluate=exp.evaluate, eval_every=cfg.run.eval_every, output_dir=output_dir,
      run_name="fedavg", config=cfg.checkpoint_key(),
      result_metrics=lambda h: federated.summary(exp, h),
      extras={"config": dataclasses.asdict(cfg), **results.environment()},
      keep_cohorts=True, say=None)
  return exp, history


def fedavg_times(exp, history: loop.History, net: clock.NetworkModel) -> list[float]:
  """The simulated clock after each round under `net`, from the rounds' own cohorts."""
  up = exp.algorithm.uplink_bits(jax.device_get(exp.state.params))
  round_clock = clock.RoundClock(net, exp.data.num_clients, exp.cfg.train.seed)
  return [cohort.clock(round_clock, up)[1] for cohort in history.cohorts]


def matching_steps(exp, history: loop.History, inc: IncenterConfig) -> tuple[int, float]:
  """In-center steps per worker processing about FedAvg's examples, and that count."""
  sizes, batch = exp.data.sizes(), exp.cfg.train.batch_size
  per_step = np.minimum(sizes, batch or sizes.max())
  examples = float(sum(np.sum(c.steps * per_step[c.ids]) for c in history.cohorts))
  steps = inc.incenter_steps or max(1, round(examples / (inc.workers * inc.incenter_batch)))
  return steps, examples


def run(cfg: configs.FederatedConfig, inc: IncenterConfig, specs: list[str], output_dir: str,
        *, say=print) -> dict:
  """FedAvg, local SGD and sync SGD with each codec of `specs`, clocked under every preset."""
  _parse.check_specs(specs, _workers.check_codec)  # sketches only: the workers use them too
  say = say or (lambda _: None)
  out = pathlib.Path(output_dir)
  nets = {p: clock.preset(p, **cfg.network.overrides()) for p in inc.preset_list()}
  target, d = cfg.network.target_accuracy, cfg.data
  recorder = results.RunRecorder(out, "fl_vs_incenter")
  metrics, curves, steps = {}, {p: [] for p in nets}, None
  for codec in specs:
    exp, h = run_fedavg(cfg.replace(codec=codec), str(out / "runs" / f"fedavg_{_slug(codec)}"))
    if steps is None:
      steps, fl_examples = matching_steps(exp, h, inc)
      say(f"FedAvg: {h.rounds_done} rounds x {cfg.train.clients_per_round} of "
          f"{d.num_clients} clients ({d.partition}), {fl_examples:,.0f} examples processed; "
          f"in-center: {inc.workers} workers (iid) x {steps} steps x batch "
          f"{inc.incenter_batch}")
    xs, accs = [e["round"] for e in h.evals], [e["accuracy"] for e in h.evals]
    entry = {"method": "fedavg", "codec": codec, "data": f"{d.partition} ({d.num_clients} "
             f"clients, {cfg.train.clients_per_round}/round)",
             "final_test_accuracy": accs[-1] if accs else None, "rounds": h.rounds_done,
             "uplink_bytes": h.total_uplink_bits / 8, "downlink_bytes": h.total_downlink_bits / 8,
             "rounds_to_target": h.to_target("accuracy", target), "error": h.error}
    for p, net in nets.items():
      clock_s = fedavg_times(exp, h, net)
      times = [clock_s[x - 1] for x in xs]
      entry[f"sim_time_s/{p}"] = clock_s[-1] if clock_s else 0.0
      entry[f"sim_time_to_target_s/{p}"] = clock.time_to_target(times, accs, target)
      curves[p].append([f"fedavg, {codec}", times, accs])
    add_entry(metrics, recorder, entry, xs, accs, say)

    task = _workers.WorkerTask(
        dataset=d.dataset, partition="iid", data_dir=d.data_dir, num_workers=inc.workers,
        model=cfg.train.model, steps=steps, batch_size=inc.incenter_batch, lr=inc.incenter_lr,
        eval_every=inc.incenter_eval_every, seed=cfg.train.seed, codec=codec)
    for entry, steps_at, accs, series in incenter_entries(task, inc.local_period, nets, target):
      for p, s in series.items():
        curves[p].append(s)
      add_entry(metrics, recorder, entry, steps_at, accs, say)

  curves = {p: {"title": f"FL vs in-center: {cfg.train.model} on {d.dataset}, {p} network",
                "series": series} for p, series in curves.items()}
  for p, curve in curves.items():
    plotting.accuracy_vs_time(out / f"accuracy_vs_sim_time_{p}.png", curve, logx=True)
  table = format_table(metrics, cfg, inc, steps, nets)
  (out / "table.md").write_text(table + "\n")
  say("\n" + table)
  extras = {"config": dataclasses.asdict(cfg), "incenter": dataclasses.asdict(inc),
            "codecs": specs, "incenter_steps": steps, "fedavg_examples_processed": fl_examples,
            "networks": {p: dataclasses.asdict(n) for p, n in nets.items()},
            "curves": curves,  # simulated seconds and test accuracy per run (scripts/plot.py)
            **results.environment()}
  errors = [k for k, e in metrics.items() if e["error"]]
  recorder.finish(succeeded=not errors, metrics=metrics, extras=extras)
  say(f"results: {out / 'result.json'}")
  return results.read_result(out)


def incenter_entries(task: _workers.WorkerTask, local_period: int, nets: dict, target: float):
  """local_sgd and sync_sgd on `task`: (entry, eval steps, accuracies, {preset: series})."""
  w = _workers.setup(task)
  for method, period in (("local_sgd", local_period), ("sync_sgd", 1)):
    alg = _workers.build(w, period=period, sync_every_step=method == "sync_sgd")
    tr = _workers.train(w, alg, say=None, label=method)
    rounds = tr["steps_done"] // period
    entry = {"method": method, "codec": task.codec,
             "data": f"iid ({task.num_workers} workers, all every round)",
             "final_test_accuracy": tr["final_test_accuracy"], "rounds": rounds,
             "uplink_bytes": w.up_bits / 8 * task.num_workers * rounds,
             "downlink_bytes": w.down_bits / 8 * task.num_workers * rounds,
             "error": tr["error"]}
    k = clock.time_to_target(tr["steps"], tr["test_accuracy"], target)
    entry["rounds_to_target"] = None if k is None else -(-k // period)
    series = {}
    for p, net in nets.items():
      times = _workers.times_at(w, _workers.links(w, net), tr["steps"], period=period)
      entry[f"sim_time_s/{p}"] = times[-1]
      entry[f"sim_time_to_target_s/{p}"] = clock.time_to_target(times, tr["test_accuracy"],
                                                                target)
      series[p] = [f"{method}, {task.codec}", times, tr["test_accuracy"]]
    yield entry, tr["steps"], tr["test_accuracy"], series


def _slug(codec: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in codec)[:60]


def add_entry(metrics, recorder, entry, xs, accs, say) -> None:
  key = f"{entry['method']}/{entry['codec']}"
  metrics[key] = entry
  for x, a in zip(xs, accs):
    recorder.log({"run": key, "x": x, "test_accuracy": a})
  acc = entry["final_test_accuracy"]
  say(f"{entry['method']:<10} {entry['codec']:<50} acc "
      f"{'  -   ' if acc is None else f'{acc:.4f}'}  rounds {entry['rounds']:>6}  "
      f"uplink {entry['uplink_bytes'] / 1e6:9.2f} MB")


def _fmt_time(x) -> str:
  if x is None:
    return "never"
  unit, scale = clock.readable_unit(x)
  return f"{x / scale:.3g} {unit}"


def format_table(metrics: dict, cfg: configs.FederatedConfig, inc: IncenterConfig, steps: int,
                 nets: dict) -> str:
  """The comparison table, with the explanation that makes it readable alone."""
  target, d, t = cfg.network.target_accuracy, cfg.data, cfg.train
  head = ["| method | data | codec | final acc | rounds | uplink MB | downlink MB |"]
  sep = ["|---|---|---|---|---|---|---|"]
  for p in nets:
    head.append(f" time ({p}) | to {target:g} ({p}) |")
    sep.append("---|---|")
  lines = ["".join(head), "".join(sep)]
  for e in metrics.values():
    acc = e["final_test_accuracy"]
    row = (f"| {e['method']} | {e['data']} | {e['codec']} | "
           f"{'-' if acc is None else f'{acc:.4f}'} | {e['rounds']} | "
           f"{e['uplink_bytes'] / 1e6:.2f} | {e['downlink_bytes'] / 1e6:.2f} |")
    for p in nets:
      row += (f" {_fmt_time(e[f'sim_time_s/{p}'])} | "
              f"{_fmt_time(e[f'sim_time_to_target_s/{p}'])} |")
    lines.append(row)
  epochs = f"{t.local_steps} local steps" if t.local_steps else f"{t.local_epochs} local epochs"
  notes = [
      "",
      f"{t.model} on {d.dataset}. fedavg: {d.num_clients} clients ({d.partition}), "
      f"{t.clients_per_round} sampled per round, {epochs} of batch {t.batch_size}, "
      f"{t.rounds} rounds. local_sgd / sync_sgd: {inc.workers} workers on IID shards, "
      f"{steps} steps of batch {inc.incenter_batch} each"
      + ("" if inc.incenter_steps else " (about as many examples as FedAvg processes)")
      + f", averaging every {inc.local_period} steps / every step.",
      "A round is one exchange with the server: FedAvg's sampled clients with data download "
      "the model and upload an update; in-center, every worker uploads its update (gradient "
      "for sync_sgd) and downloads the float32 mean. Bytes are totals over all participants.",
      "Times are simulated: " + "; ".join(f"{p}: {n.describe()}" for p, n in nets.items())
      + f". A round waits for its slowest participant; 'to {target:g}' is the simulated time "
      f"until the test accuracy first reached {target:g} (checked at evaluations).",
      "FedAvg trains on non-IID data held by intermittent clients, so its accuracy is not "
      "comparable one-to-one with the in-center IID runs: the table shows what each setting "
      "costs in rounds, bytes and time on each network.",
  ]
  return "\n".join(lines + notes)


def main() -> int:
  _parse.refuse_present(("codec",), "benchmarks.fl_vs_incenter compares --codecs")
  _parse.refuse_present(("network",), "benchmarks.fl_vs_incenter clocks every run under "
                          "--presets (the link flags override each preset)")
  _parse.refuse_present(("checkpoint_every",), "benchmarks.fl_vs_incenter keeps no "
                          "checkpoint to resume from")
  cfg = configs.FederatedConfig(data=DATA.config(), train=TRAIN.config(), run=RUN.config(),
                                network=NETWORK.config())
  inc, specs = INCENTER.config(), CODECS.config().specs(_workers.check_codec)
  if _flags.RESUME.value:
    raise ValueError("--resume: fl_vs_incenter keeps no checkpoint of its own; use --overwrite")
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/fl_vs_incenter",
                                overwrite=_flags.OVERWRITE.value)
  return 0 if run(cfg, inc, specs, out)["succeeded"] else 1


if __name__ == "__main__":
  flags.FLAGS.set_default("codecs", ";".join(DEFAULT_CODECS))
  _flags.main(main)
