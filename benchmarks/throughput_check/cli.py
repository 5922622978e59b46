"""The check's command line: flags, the check itself, the baseline update, fresh processes.

Flags are parsed with argparse, not absl, so that `main(argv)` can be called
from a test without touching the runners' global flag registry. Exit
status: 0 when every figure passes, 1 on a regression, 2 on a usage error or
an unusable baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import jax

from benchmarks.throughput_check import baseline as baseline_file
from benchmarks.throughput_check import figures, verdict

SCRIPT = os.path.join(baseline_file.ROOT, "scripts", "check_throughput.py")


def parse_slowdown(text: str) -> dict[str, int]:
  """``"fwht:3,quantize_pack:2"`` -> ``{"fwht": 3, "quantize_pack": 2}``."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, n = part.partition(":")
    if name not in figures.SLOWABLE or not n.isdigit() or int(n) < 1:
      raise ValueError(f"--inject_slowdown entries are KERNEL:N with N >= 1 and KERNEL one of "
                       f"{', '.join(figures.SLOWABLE)}; got {part!r}")
    out[name] = int(n)
  return out


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="check_throughput.py", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="CI throughput regression check: same-run ratios against a committed "
                  "baseline (see benchmarks/throughput_check and benchmarks/baselines/README.md).")
  p.add_argument("--baseline", default=baseline_file.DEFAULT_BASELINE, help="Baseline JSON file.")
  p.add_argument("--update_baseline", action="store_true",
                 help="Rewrite the baseline from this run (tolerances kept) instead of checking.")
  p.add_argument("--update_processes", type=int, default=5,
                 help="With --update_baseline: fresh processes to measure in (0: this one).")
  p.add_argument("--update_runs", type=int, default=1,
                 help="With --update_baseline: measurements per figure and process.")
  p.add_argument("--measure_into", help=argparse.SUPPRESS)  # a child of --update_baseline
  p.add_argument("--output", help="Also write this run's measurements and verdicts as JSON.")
  p.add_argument("--figures", default=",".join(figures.FIGURES),
                 help="Comma-separated figures to measure (default: all).")
  p.add_argument("--retries", type=int, default=2,
                 help="Times a failing figure is measured again, each time in a fresh process "
                      "(its best value is kept).")
  p.add_argument("--inject_slowdown", default="",
                 help=f"KERNEL:N[,...]: KERNEL does its work N times; one of {figures.SLOWABLE}.")
  p.add_argument("--verbose", action="store_true", help="Print set-up times and raw samples.")
  return p


class Plan(NamedTuple):
  """A checked command line: what to measure, against which baseline, with which config."""
  args: argparse.Namespace
  names: list[str]
  slowdown: dict[str, int]
  baseline: dict
  cfg: figures.Config


def plan(args: argparse.Namespace) -> Plan:
  """Checks the flags and the baseline; raises ValueError (or OSError) on a usage error."""
  slowdown = parse_slowdown(args.inject_slowdown)
  names = [n.strip() for n in args.figures.split(",") if n.strip()]
  unknown = [n for n in names if n not in figures.FIGURES]
  if unknown or not names:
    raise ValueError(f"--figures: unknown {unknown}; valid: {', '.join(figures.FIGURES)}")
  if slowdown and args.update_baseline:
    raise ValueError("--inject_slowdown is for checking, not for --update_baseline")
  if min(args.retries, args.update_processes) < 0 or args.update_runs < 1:
    raise ValueError("--retries and --update_processes must be >= 0, --update_runs >= 1")
  if os.path.exists(args.baseline):
    baseline = baseline_file.load_baseline(args.baseline)
  elif args.update_baseline or args.measure_into:
    baseline = {}
  else:
    raise ValueError(f"no baseline at {args.baseline}; create one with --update_baseline")
  cfg = figures.Config.from_dict(baseline.get("config", {}))
  then, now = baseline.get("metadata", {}).get("execution"), figures.execution()
  if then is not None and then != now and not args.update_baseline and not args.measure_into:
    raise ValueError(f"the baseline was measured with {then}, this run has {now}: the ratios "
                     "are not comparable. Run the script as CI does (without "
                     "FEDJAX_COMP_CPU_DEVICES or a device count in XLA_FLAGS), or refresh the "
                     "baseline")
  return Plan(args, names, slowdown, baseline, cfg)


def measure_in_fresh_processes(args, names, processes: int, runs: int, why: str = "update"
                               ) -> tuple[dict[str, list[float]], dict]:
  """Measures `names` `runs` times in each of `processes` fresh runs of the script.

  Some of what shifts a figure is fixed for the life of a process (where its
  buffers landed in memory, and now and then a regime in which the round
  reads half its usual speedup for the whole process), so a baseline is
  taken over several processes, and a failing figure is retried in a new one.
  """
  out_runs, then = {n: [] for n in names}, None
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(processes):
      out = os.path.join(tmp, f"{i}.json")
      cmd = [sys.executable, SCRIPT, f"--baseline={args.baseline}",
             f"--figures={','.join(names)}", f"--update_runs={runs}", f"--measure_into={out}"]
      if args.inject_slowdown:
        cmd.append(f"--inject_slowdown={args.inject_slowdown}")
      print(f"{why}: measuring {', '.join(names)} in a fresh process"
            f"{f' ({i + 1}/{processes})' if processes > 1 else ''}", flush=True)
      subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
      with open(out) as f:
        child = json.load(f)
      then = child["execution"]
      for n in names:
        out_runs[n] += child["runs"][n]
  return out_runs, then


def write_update(p: Plan, argv, runs, then, start) -> int:
  """Rewrites the baseline with `runs`; prints what moved."""
  new = baseline_file.updated_baseline(p.baseline, p.cfg, runs, argv, then)
  baseline_file.write_json(p.args.baseline, new)
  for n, values in runs.items():
    old = p.baseline.get("figures", {}).get(n, {}).get("value")
    print(f"{n:<36} {new['figures'][n]['value']:9.4g}  runs "
          f"{', '.join(f'{v:.3g}' for v in values)}{'' if old is None else f'; was {old:.4g}'}")
  print(f"baseline written: {p.args.baseline} ({time.perf_counter() - start:.0f}s)")
  if p.args.output:
    baseline_file.write_json(p.args.output, {"config": dataclasses.asdict(p.cfg),
                                             "execution": then, "runs": runs})
  return 0


def check(p: Plan, measures: dict, start: float) -> int:
  """Measures each figure once, retries the failing ones in fresh processes, prints the verdict.

  A failing figure is measured again after all the others: its retries land
  in another stretch of the machine's load, and another process.
  """
  trials = {n: [measure()] for n, measure in measures.items()}
  entries = p.baseline.get("figures", {})

  def best(n):
    return functools.reduce(lambda a, b: verdict.better(a, b, figures.FIGURES[n].direction),
                            trials[n])

  def failing(n):
    e = entries.get(n)
    return e is not None and not verdict.within(best(n), e["value"], e["direction"],
                                                e["tolerance"])

  for retry in range(p.args.retries):
    again = [n for n in p.names if failing(n)]
    if not again:
      break
    why = f"retry {retry + 1}/{p.args.retries}"
    for n, values in measure_in_fresh_processes(p.args, again, 1, 1, why)[0].items():
      trials[n] += values
  rows = verdict.compare({n: best(n) for n in p.names}, p.baseline,
                         {n: len(t) for n, t in trials.items()})
  print(verdict.format_table(rows))
  failures = [r for r in rows if not r.passed]
  for r in failures:
    print(r.message())
  elapsed = time.perf_counter() - start
  print(f"{'FAILED' if failures else 'OK'}: {len(rows) - len(failures)}/{len(rows)} figures "
        f"within tolerance of {p.args.baseline} ({elapsed:.0f}s, imports apart)")
  if p.args.output:
    baseline_file.write_json(p.args.output, {
        "passed": not failures, "config": dataclasses.asdict(p.cfg),
        "execution": figures.execution(), "slowdown": p.slowdown, "wall_s": elapsed,
        "figures": {r.figure: {"measured": r.measured, "trials": trials[r.figure],
                               "baseline": r.baseline, "direction": r.direction,
                               "tolerance": r.tolerance, "allowed": r.bound, "passed": r.passed}
                    for r in rows}})
  return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
  """Runs the check (or the baseline update); returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser().parse_args(argv)
  try:
    p = plan(args)
  except (ValueError, TypeError, OSError) as e:  # json.JSONDecodeError is a ValueError
    print(f"check_throughput: error: {e}", file=sys.stderr)
    return 2
  say = print if args.verbose else None
  if p.slowdown:
    print(f"INJECTED SLOWDOWN: {p.slowdown} (to test the check itself)")
  print(f"execution {figures.execution()}, jax {jax.__version__}; config "
        f"{dataclasses.asdict(p.cfg)}")
  start = time.perf_counter()
  if args.update_baseline and args.update_processes:
    runs, then = measure_in_fresh_processes(args, p.names, args.update_processes,
                                            args.update_runs)
    return write_update(p, argv, runs, then, start)
  measures = {}
  for n in p.names:
    t = time.perf_counter()
    measures[n] = figures.make_figure(n, p.cfg, p.slowdown.get(figures.FIGURES[n].subject, 1),
                                      say)
    if say:
      say(f"  {n}: set up in {time.perf_counter() - t:.1f}s")
  if not (args.update_baseline or args.measure_into):
    return check(p, measures, start)
  runs = {n: [] for n in measures}
  for _ in range(args.update_runs):  # round-robin: each figure's runs spread over the run
    for n, measure in measures.items():
      runs[n].append(measure())
  if args.measure_into:
    baseline_file.write_json(args.measure_into, {"execution": figures.execution(), "runs": runs})
    return 0
  return write_update(p, argv, runs, figures.execution(), start)
