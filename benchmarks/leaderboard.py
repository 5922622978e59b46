r"""The leaderboard (the main job): FedAvg with every compression method, on one task, 3 seeds.

::

  .venv/bin/python -m benchmarks.leaderboard --output_dir=results/leaderboard
  .venv/bin/python -m benchmarks.leaderboard --rows=none,drive,ef_top_k --seeds=1
  .venv/bin/python -m benchmarks.leaderboard --extra_codecs='eden(bits=4);qsgd(levels=1)'

Each row is FedAvg on the same task with one uplink codec (and, for the
downlink rows, a downlink codec), run once per seed (``--seeds``, seeds
0..S-1: sampling, initialisation and codec keys all change). The table
reports, per row, the mean and standard deviation over seeds of:

* final test accuracy, and its difference from the uncompressed row in
  points (the spread tells a difference from noise);
* uplink and downlink MB over the run (all clients), and the uplink
  compression ratio against float32. With a downlink codec a sampled
  client downloads the broadcasts it missed since it last trained, or the
  float32 model where that is fewer bits (`algorithms.downlink`);
* simulated time to ``--target_accuracy`` under the ``cellular`` and
  ``datacenter`` network presets (each run's clients, step counts and
  downloads replayed through both clocks; evaluated every 5 rounds, so a
  time is that of the first evaluation at or above the target; "-" where
  a seed never reached it);
* the round's wall time (ms, compile excluded: a codec's overhead against
  the ``none`` row) and the wall time per run (setup, compile, rounds and
  evaluations; later seeds reuse the first one's compiled programs from
  XLA's persistent cache).

The default task is chosen so the methods separate (issue 12): on the
former main job (100 clients per round) 1-bit quantization and a 230x
sketch landed within 0.1 point of float32, because averaging 100 clients
divides a codec's variance by 100. With 10 clients per round (Reddi et
al.'s cross-device cohorts) the cohort average keeps a tenth of it, and
biased codecs (sign, top-k without feedback) cannot hide. Cut from the
main job (Dirichlet(0.5) MNIST-1D, the MLP, batch 10) to fit 10 minutes
on a 2-core CPU: 100 clients instead of 2,000, 1 local epoch instead of
5, 200 rounds instead of 300 (`TASK_DEFAULTS`). Set any of the main job's
flags to change the task (``--clients_per_round=100`` is the old
setting). The plain FedAvg run stays one runner away:
``python -m benchmarks.fedavg``.

Writes ``result.json`` (metrics keyed by row label), ``leaderboard.md``
(the table), ``accuracy_vs_uplink.png``, ``accuracy_vs_sim_time.png``
(cellular) and ``metrics.jsonl`` (one line per row, seed and evaluation);
the runs themselves write nothing. ``--readme=README.md`` replaces the
table between the README's leaderboard markers.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import pathlib
import statistics
import time

import jax
from absl import flags

from benchmarks import _flags
from fedjax_comp import codecs, models
from fedjax_comp.experiment import clock as clock_lib
from fedjax_comp.experiment import configs, federated, plotting, results
from fedjax_comp.experiment.configs import knob
from fedjax_comp.experiment.links import preset

SKETCH = "subsample(p=1/16),hadamard(flatten=true,block=1024),quantize(bits=2)"
NETWORKS = ("cellular", "datacenter")


@dataclasses.dataclass(frozen=True)
class Row:
  """One leaderboard row: a label, an uplink codec, and what else differs from the task."""

  label: str
  codec: str
  downlink: str = "none"
  overrides: tuple[tuple[str, object], ...] = ()  # TrainConfig fields, e.g. server_lr
  note: str = ""


ROWS = (
    Row("none", "none", note="float32 updates"),
    Row("sketch_256x", SKETCH, note="Konečný et al.: 1/16 subsample, rotate, 2 bits"),
    Row("low_rank", "low_rank(rank=4)", note="Konečný et al.: structured, rank 4"),
    Row("random_mask", "@match:low_rank(rank=4)", note="structured, upload matched to low_rank"),
    Row("drive", "drive", note="Vargaftik et al. 2021: 1 bit"),
    Row("eden_1bit", "eden(bits=1)", note="Vargaftik et al. 2022"),
    Row("eden_2bit", "eden(bits=2)"),
    Row("qsgd", "qsgd(levels=4,bucket=512)", note="Alistarh et al. 2017, fixed-length codes"),
    Row("terngrad", "terngrad", note="Wen et al. 2017"),
    Row("sign_vote", "sign", overrides=(("server_lr", 0.003),),
        note="Bernstein et al. 2019: majority vote, server lr 0.003"),
    Row("top_k", "top_k(p=0.01)", note="1% of coordinates, no feedback"),
    Row("ef_top_k", "ef(top_k(p=0.01))", note="1%, error feedback"),
    Row("powersgd", "powersgd(rank=2)", note="Vogels et al. 2019: rank 2, warm start, EF"),
    Row("eden_2bit_down4", "eden(bits=2)", downlink="eden(bits=4)",
        note="+ 4-bit EDEN downlink with EF21-P"),
)
ROW_LABELS = tuple(r.label for r in ROWS)


@dataclasses.dataclass(frozen=True)
class LeaderboardConfig:
  """Which rows, how many seeds, what target."""

  rows: str = knob(",".join(ROW_LABELS), "Rows to run, comma-separated labels: "
                   + ", ".join(ROW_LABELS) + ".")
  extra_codecs: str = knob("", "More rows: uplink codec specs separated by ';'.")
  seeds: int = knob(3, "Seeds per row (0..seeds-1), >= 1.")
  readme: str = knob("", "A README whose leaderboard table (between its markers) is replaced.")

  def __post_init__(self):
    configs._int("seeds", self.seeds, 1)  # pylint: disable=protected-access
    self.selected()

  def selected(self) -> list[Row]:
    labels = [s.strip() for s in self.rows.split(",") if s.strip()]
    unknown = [l for l in labels if l not in ROW_LABELS]
    if unknown:
      raise ValueError(f"--rows: unknown row(s) {', '.join(unknown)}; valid rows: "
                       f"{', '.join(ROW_LABELS)}")
    rows = [r for r in ROWS if r.label in labels]
    for spec in (s.strip() for s in self.extra_codecs.split(";") if s.strip()):
      try:
        codecs.parse(spec)
      except ValueError as e:
        raise ValueError(f"--extra_codecs: {e}") from e
      rows.append(Row(spec, spec))
    if not rows:
      raise ValueError("--rows: select at least one row (or give --extra_codecs)")
    return rows


DATA = _flags.define(configs.DataConfig)
TRAIN = _flags.define(configs.TrainConfig)
RUN = _flags.define(configs.RunConfig)
NETWORK = _flags.define(configs.NetworkConfig)
BOARD = _flags.define(LeaderboardConfig)


def resolve(row: Row, params) -> str:
  """The row's codec spec, with ``@match:SPEC`` turned into the upload-matched random_mask."""
  if not row.codec.startswith("@match:"):
    return row.codec
  return codecs.matched_random_mask(row.codec[len("@match:"):], params)


def replay(history, cfg: configs.FederatedConfig, network: str, up: int):
  """Simulated seconds at each evaluation, replaying the run's cohorts through `network`."""
  clock = clock_lib.RoundClock(preset(network), cfg.data.num_clients, cfg.train.seed)
  total, at_round = 0.0, {}
  for r, cohort in enumerate(history.cohorts, 1):
    total = cohort.clock(clock, up)[1]
    at_round[r] = total
  return [at_round[e["round"]] for e in history.evals]


def run_one(cfg: configs.FederatedConfig) -> dict:
  """One run (no files of its own): accuracy, traffic, wall time, curves, time to target."""
  t0 = time.perf_counter()
  exp, _, history = federated.run(cfg, None, say=None, keep_cohorts=True)
  wall = time.perf_counter() - t0
  params = jax.device_get(exp.state.params)
  up = exp.algorithm.uplink_bits(params)
  evals = history.evals
  by_round = {r["round"]: r for r in history.records}
  accs = [e["accuracy"] for e in evals]
  target = cfg.network.target_accuracy
  times = {net: replay(history, cfg, net, up) for net in NETWORKS}
  return {
      "accuracy": (history.final_eval or {}).get("accuracy"),
      "uplink_mb": history.total_uplink_bits / 8e6, "downlink_mb": history.total_downlink_bits / 8e6,
      "ratio": codecs.dense_bits(params) / up, "wall_s": wall, "error": history.error,
      "round_ms": 1e3 * history.round_time_s / max(history.rounds_done, 1),
      "compile_s": history.compile_s,
      "to_target_s": {net: next((t for t, a in zip(ts, accs) if a >= target), None)
                      for net, ts in times.items()},
      "curve": {"round": [e["round"] for e in evals], "accuracy": accs,
                "uplink_mb": [by_round[e["round"]]["total_uplink_bytes"] / 1e6 for e in evals],
                **{f"sim_s_{net}": ts for net, ts in times.items()}}}


def _stats(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict], reference: list[dict] | None) -> dict:
  acc = _stats([r["accuracy"] for r in runs])
  out = {"accuracy_mean": acc[0], "accuracy_sd": acc[1],
         "uplink_mb": _stats([r["uplink_mb"] for r in runs])[0],
         "downlink_mb": _stats([r["downlink_mb"] for r in runs])[0],
         "compression_ratio": runs[0]["ratio"],
         "wall_s": _stats([r["wall_s"] for r in runs])[0],
         "round_ms": _stats([r["round_ms"] for r in runs])[0],
         "compile_s": _stats([r["compile_s"] for r in runs])[0],
         "failed_seeds": sum(r["error"] is not None for r in runs)}
  if reference:  # paired by seed: the same sampling and initialisation
    diffs = [100 * (r["accuracy"] - q["accuracy"]) for r, q in zip(runs, reference)
             if r["accuracy"] is not None and q["accuracy"] is not None]
    out["delta_points_mean"], out["delta_points_sd"] = _stats(diffs)
  for net in NETWORKS:
    reached = [r["to_target_s"][net] for r in runs]
    out[f"to_target_s_{net}"] = _stats(reached)[0]
    out[f"reached_{net}"] = sum(t is not None for t in reached)
  return out


def _readable(seconds: float) -> str:
  unit, scale = clock_lib.readable_unit(seconds)
  return f"{seconds / scale:.3g} {unit}"


def format_table(metrics: dict, seeds: int, target: float) -> str:
  fmt = lambda v, spec: "-" if v is None else format(v, spec)
  head = ("| row | codec | accuracy | Δ vs none (pts) | uplink MB | downlink MB | ratio | "
          f"cellular to {target:g} | datacenter to {target:g} | ms/round | wall s |")
  lines = [head, "|" + "---|" * 11]
  for label, m in metrics.items():
    delta = ("-" if m.get("delta_points_mean") is None else
             f"{m['delta_points_mean']:+.2f} ± {m['delta_points_sd']:.2f}")
    reach = lambda net: ("-" if m[f"to_target_s_{net}"] is None else
                         f"{_readable(m[f'to_target_s_{net}'])}"
                         + ("" if m[f"reached_{net}"] == seeds else f" ({m[f'reached_{net}']}/{seeds})"))
    lines.append(
        f"| {label} | `{m['codec']}`{' ↓`' + m['downlink'] + '`' if m['downlink'] != 'none' else ''}"
        f" | {fmt(m['accuracy_mean'], '.4f')} ± {fmt(m['accuracy_sd'], '.4f')} | {delta} | "
        f"{m['uplink_mb']:.2f} | {m['downlink_mb']:.2f} | {m['compression_ratio']:.1f}x | "
        f"{reach('cellular')} | {reach('datacenter')} | {m['round_ms']:.1f} | "
        f"{m['wall_s']:.1f} |")
  return "\n".join(lines)


def run(cfg: configs.FederatedConfig, board: LeaderboardConfig, output_dir: str,
        say=print) -> dict:
  """Every selected row for every seed; writes the table, plots and result.json."""
  say = say or (lambda _: None)
  out = pathlib.Path(output_dir)
  data = federated.load_data(cfg)
  model = models.get_model(cfg.train.model, data.input_shape, data.num_classes)
  params = jax.eval_shape(model.init, jax.random.key(0))
  recorder = results.RunRecorder(out, "leaderboard")
  metrics, per_seed, t0 = {}, {}, time.perf_counter()
  for row in board.selected():
    spec = resolve(row, params)
    runs = []
    for seed in range(board.seeds):
      run_cfg = cfg.replace(codec=spec, downlink_codec=row.downlink, seed=seed,
                            **dict(row.overrides))
      runs.append(run_one(run_cfg))
      r = runs[-1]
      for i, rnd in enumerate(r["curve"]["round"]):
        recorder.log({"row": row.label, "seed": seed, "round": rnd,
                      **{k: v[i] for k, v in r["curve"].items() if k != "round"}})
    per_seed[row.label] = runs
    m = metrics[row.label] = {"codec": spec, "downlink": row.downlink, "note": row.note,
                              **summarize(runs, per_seed.get("none"))}
    say(f"{row.label:<16} acc {m['accuracy_mean']:.4f} ± {m['accuracy_sd']:.4f}  uplink "
        f"{m['uplink_mb']:.1f} MB ({m['compression_ratio']:.1f}x)  {m['wall_s']:.1f} s/run")
  target = cfg.network.target_accuracy
  table = format_table(metrics, board.seeds, target)
  header = (f"FedAvg on {cfg.data.dataset} ({cfg.data.partition}, {cfg.data.num_clients} clients), "
            f"{cfg.train.model}, {cfg.train.clients_per_round} clients/round, "
            f"{cfg.train.rounds} rounds, {board.seeds} seeds (mean ± sd); "
            f"total {time.perf_counter() - t0:.0f} s on {jax.default_backend()}.")
  (out / "leaderboard.md").write_text(header + "\n\n" + table + "\n")
  _plots(out, per_seed, cfg)
  if board.readme:
    replace_in_readme(board.readme, header + "\n\n" + table)
  path = recorder.finish(
      succeeded=all(m["failed_seeds"] == 0 for m in metrics.values()), metrics=metrics,
      extras={"config": dataclasses.asdict(cfg), "board": dataclasses.asdict(board),
              "table": table, **results.environment()})
  say("\n" + header + "\n\n" + table + f"\nresults: {path}")
  return results.read_result(out)


def _plots(out: pathlib.Path, per_seed: dict, cfg) -> None:
  first = {label: runs[0]["curve"] for label, runs in per_seed.items()}  # seed 0's curve
  plotting.line_plot(out / "accuracy_vs_uplink.png",
                     [(label, c["uplink_mb"], c["accuracy"]) for label, c in first.items()],
                     xlabel="cumulative uplink MB (seed 0)", ylabel="test accuracy", logx=True,
                     title=f"FedAvg on {cfg.data.dataset}: accuracy vs uplink")
  plotting.line_plot(out / "accuracy_vs_sim_time.png",
                     [(label, [t / 3600 for t in c["sim_s_cellular"]], c["accuracy"])
                      for label, c in first.items()],
                     xlabel="simulated hours, cellular (seed 0)", ylabel="test accuracy",
                     logx=True, title=f"FedAvg on {cfg.data.dataset}: accuracy vs time")


START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


def replace_in_readme(path: str, table: str) -> None:
  """Replaces the text between the README's leaderboard markers with `table`."""
  p = pathlib.Path(path)
  text = p.read_text()
  if START not in text or END not in text:
    raise ValueError(f"--readme: {path} has no {START} ... {END} markers")
  head, rest = text.split(START, 1)
  _, tail = rest.split(END, 1)
  p.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def main() -> int:
  cfg = configs.FederatedConfig(data=DATA.config(), train=TRAIN.config(), run=RUN.config(),
                                network=NETWORK.config())
  if _flags.RESUME.value:
    raise ValueError("--resume: the leaderboard keeps no checkpoint of its own; use --overwrite")
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/leaderboard",
                                overwrite=_flags.OVERWRITE.value)
  return 0 if run(cfg, BOARD.config(), out)["succeeded"] else 1


# The leaderboard task (module docstring): what differs from the fedavg main job's flags.
TASK_DEFAULTS = {"num_clients": "100", "clients_per_round": "10", "local_epochs": "1",
                 "rounds": "200", "eval_every": "5", "checkpoint_every": "0",
                 "target_accuracy": "0.65"}


def compilation_cache() -> None:
  """XLA's persistent cache under $FEDJAX_COMP_CACHE/xla: a row's seeds compile once."""
  from fedjax_comp.data import sources  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", str(sources.cache_dir() / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


if __name__ == "__main__":
  for _name, _value in TASK_DEFAULTS.items():
    flags.FLAGS.set_default(_name, _value)
  compilation_cache()
  _flags.main(main)
