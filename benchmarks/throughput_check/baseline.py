"""The baseline file: read and checked, or rewritten from a run's measurements."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import statistics

import jax

from benchmarks.throughput_check.figures import FIGURES, Config
from benchmarks.throughput_check.verdict import HIGHER, allowed_bound

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BASELINE = os.path.join(ROOT, "benchmarks", "baselines", "throughput_cpu.json")


def load_baseline(path: str) -> dict:
  with open(path) as f:
    baseline = json.load(f)
  if not isinstance(baseline, dict) or not isinstance(baseline.get("figures", {}), dict):
    raise ValueError(f"{path}: not a baseline file (expected an object with 'figures')")
  for name, entry in baseline.get("figures", {}).items():
    missing = {"value", "direction", "tolerance"} - set(entry)
    if missing:
      raise ValueError(f"{path}: figure {name} lacks {sorted(missing)}")
    allowed_bound(1.0, entry["direction"], 0.0)  # checks the direction
    if not 0 <= entry["tolerance"] < (1 if entry["direction"] == HIGHER else math.inf):
      raise ValueError(f"{path}: figure {name} has tolerance {entry['tolerance']}")
  return baseline


def machine() -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform()}


def _sig(v: float) -> float:
  return float(f"{v:.4g}")


def updated_baseline(old: dict, cfg: Config, runs: dict[str, list[float]], argv,
                     then: dict) -> dict:
  """The baseline with this run's medians; tolerances and unmeasured figures kept."""
  figures = dict(old.get("figures", {}))
  for name, values in runs.items():
    figure = FIGURES[name]
    figures[name] = {
        "value": _sig(statistics.median(values)), "direction": figure.direction,
        "tolerance": figures.get(name, {}).get("tolerance", figure.tolerance),
        "runs": [_sig(v) for v in values], "doc": figure.doc}
  return {
      "about": "Baseline of scripts/check_throughput.py; see benchmarks/baselines/README.md.",
      "metadata": {
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "machine": machine(), "jax_version": jax.__version__, "execution": then,
          "command": " ".join([".venv/bin/python scripts/check_throughput.py",
                               *map(shlex.quote, argv)]),
      },
      "config": dataclasses.asdict(cfg),
      "figures": dict(sorted(figures.items())),
  }


def write_json(path: str, obj: dict):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
