r"""CI throughput regression check: same-run ratios against a committed baseline.

::

  .venv/bin/python scripts/check_throughput.py                    # the check (.ci/run runs it)
  .venv/bin/python scripts/check_throughput.py --update_baseline  # after an intended perf change
  .venv/bin/python scripts/check_throughput.py --inject_slowdown=fwht:3   # watch it fail

The test suite says whether the code is right; this says whether it is still
fast. It measures the figures in `FIGURES`, prints a table of figure,
measured value, baseline, allowed bound and PASS/FAIL, and exits 1 with a line
``REGRESSION: fwht_ratio_to_copy = 54.1 > allowed 14 (baseline 9.32,
tolerance +50%, lower_is_better)`` for each figure that regressed past its
tolerance (2 on a usage error or an unusable baseline). It takes about 45 s on
a 2-core CPU, compiles included.

Why ratios, not times
  CI machines are noisy (this 2-core box read a dense matmul at 75-153
  GFLOP/s across runs, see WORKSPACE.md) and differ from each other, so an
  absolute time says little. Every figure is instead a ratio of two things
  timed in the same process moments apart: the vmapped round against the
  per-client Python loop `fedjax_comp.loop_round_sums` (as in
  `benchmarks.throughput`), a kernel against a copy ``-x`` of an array of
  the same size (as in `benchmarks.kernels`). Both sides are warmed up
  (compiled) first; then samples of the two alternate, each sample timing
  back-to-back calls (each waited for with `jax.block_until_ready`) that
  span about ``span_ms``, so a 2 ms copy and a 20 ms transform both see
  many scheduler slices. A figure is the median over ``repeats`` pairs of
  the quotient of two samples taken one right after the other: whatever
  state the machine is in at that moment slows both alike and cancels.

Why one device, one thread, no async dispatch, a greedy allocator
  What is left to control is how the two sides share the machine.
  `benchmarks._cpu` splits a CPU host into one XLA device per core, the
  fastest set-up, but then the round runs on both cores while the loop runs
  on one, and the ratio moves with whatever else holds the second core: the
  check uses one device (``FEDJAX_COMP_CPU_DEVICES`` set in the environment
  still wins). It starts XLA's CPU client with one worker thread: a
  multi-threaded op waits for its slowest thread, and on a busy machine
  that thread loses whole scheduler slices (quantize+pack read 2-6x a copy
  across runs that way). It turns off async dispatch
  (``jax_cpu_enable_async_dispatch``), so the Python loop does not hand each
  client's update to a second thread that must be woken up. It keeps glibc's
  allocator from giving freed memory back to the OS, or a fresh 16 MB output
  buffer may be page-faulted in on every call (a copy read 2.5 ms in one
  process and 7 ms in the next), and each kernel figure cycles over a few
  inputs and keeps as many outputs alive, so that no single placement in
  memory decides it. With all that, over runs on this 2-core machine while
  other jobs shared it, single measurements stayed within about -15%/+40%
  of the baseline (the numbers are in ``benchmarks/baselines/README.md``).
  The figures are not the fastest set-up's numbers (the
  benchmarks report those); they only have to move when the code gets
  slower. A baseline records the execution set-up it was measured with, and
  the check refuses to compare against another one.

Direction and tolerance
  Each figure is ``higher_is_better`` (a speedup) or ``lower_is_better`` (a
  time relative to a copy), with a relative tolerance t in the baseline: a
  higher-is-better figure fails when ``measured < baseline * (1 - t)``, a
  lower-is-better one when ``measured > baseline * (1 + t)``; the bound
  itself passes. Tolerances are wide enough for run-to-run noise and tight
  enough that a 2x slower kernel or round fails (t < 1 for a time ratio,
  t < 0.5 for a speedup; the tests check both): 0.5 for a kernel, 0.35 for
  a speedup. A figure that fails is measured again, up to ``--retries``
  times, each time in a fresh process after all the others, and its best
  value is kept: a burst of load, or a process that drew a bad memory
  layout, does not fail CI; a real slowdown fails every time. (A passing
  check takes no longer for it; a failing one about 45 s more per retry.)

The baseline file
  ``benchmarks/baselines/throughput_cpu.json`` holds the config the figures
  were measured with (sizes, repeats), each figure's value, direction and
  tolerance, and metadata (date, machine, jax version, command, execution
  set-up). The check measures with the baseline's config, so a comparison is
  always like with like. ``--update_baseline`` measures each figure
  ``--update_runs`` times in each of ``--update_processes`` fresh processes
  (see `measure_in_fresh_processes`), writes the medians and keeps the
  tolerances; how and when to refresh is in ``benchmarks/baselines/README.md``.

Injecting a slowdown
  ``--inject_slowdown=fwht:6`` (comma-separated ``KERNEL:N``, kernels in
  `SLOWABLE`) makes a kernel do its work N times in sequence inside one
  jitted call (a `lax.fori_loop` whose every pass needs all of the previous
  pass's output, so XLA can neither merge, drop nor trim passes), or runs a
  vmapped round N times back to back, each on the previous round's state.
  ``tests/test_check_throughput.py`` uses it to show that the check fails on
  a genuinely slower kernel.

Flags are parsed with argparse, not absl, so that `main(argv)` can be called
from a test without touching the runners' global flag registry.
"""

from __future__ import annotations

import ctypes
import os
import sys

# One XLA CPU device unless the environment says otherwise; this must come
# before benchmarks._cpu and jax are imported.
os.environ.setdefault("FEDJAX_COMP_CPU_DEVICES", "1")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from benchmarks import _cpu  # noqa: E402,F401  (first: XLA device flags)


def _quiet_process() -> bool:
  """Makes this process time steadily (see "Why one device, one thread ..."); returns whether.

  Keeps glibc's allocator from returning freed memory to the OS, then starts
  XLA's CPU client single-threaded and synchronous. XLA sizes its CPU thread
  pool from the CPUs the process may run on when the client starts, so the
  client starts while the process may use one CPU, which is then given back:
  the scheduler may still run the one thread on whichever core is free. Not
  done where jax was imported first (a test process importing this module):
  its client may already exist.
  """
  if "jax" in sys.modules or not hasattr(os, "sched_setaffinity"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: never trim the heap's top
    libc.mallopt(-3, 2**25)  # M_MMAP_THRESHOLD: buffers up to 32 MB from the heap, no mmap
  except (OSError, AttributeError):
    pass  # not glibc
  cpus = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {min(cpus)})
  try:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    jax.devices()
  finally:
    os.sched_setaffinity(0, cpus)
  return True


ONE_THREAD = _quiet_process()

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from fedjax_comp import kernels  # noqa: E402

from benchmarks import throughput  # noqa: E402
from benchmarks._timing import Pair  # noqa: E402

DEFAULT_BASELINE = os.path.join(_ROOT, "benchmarks", "baselines", "throughput_cpu.json")
HIGHER = "higher_is_better"
LOWER = "lower_is_better"
_PLACES = 3  # arrays a kernel figure cycles over
BITS = 2  # the quantizer width of the kernel figures (their names end in /2)


@dataclasses.dataclass(frozen=True)
class Figure:
  direction: str
  tolerance: float  # for a new baseline entry; an existing entry's tolerance is kept
  subject: str  # what `--inject_slowdown` names to slow this figure's subject down
  doc: str


FIGURES = {
    "mlp_vmap_speedup_vs_loop": Figure(
        HIGHER, 0.35, "mlp_round",
        "client updates/s of the vmapped MLP round over the per-client Python loop"),
    "logistic_vmap_speedup_vs_loop": Figure(
        HIGHER, 0.35, "logistic_round",
        "client updates/s of the vmapped logistic-regression round over the loop"),
    "fwht_ratio_to_copy": Figure(
        LOWER, 0.5, "fwht", "time of kernels.fwht over a copy (-x) of the same array"),
    f"quantize_pack_ratio_to_copy/{BITS}": Figure(
        LOWER, 0.5, "quantize_pack",
        f"time of kernels.quantize + pack ({BITS} bits) over a copy of the input"),
    f"unpack_dequantize_ratio_to_copy/{BITS}": Figure(
        LOWER, 0.5, "unpack_dequantize",
        f"time of kernels.unpack + dequantize ({BITS} bits) over a copy of the output"),
}
SLOWABLE = sorted({f.subject for f in FIGURES.values()})


@dataclasses.dataclass(frozen=True)
class Config:
  """What is measured; stored in the baseline, whose config the check then measures with."""
  clients_per_round: int = 200  # the vmapped round (default client_chunk of the model)
  loop_clients: int = 50  # clients of the reference loop (its cost per client is flat)
  examples_per_client: int = 20
  batch_size: int = 10
  local_steps: int = 2
  kernel_batch: int = 256  # the kernels run on a [kernel_batch, kernel_dim] float32 array
  kernel_dim: int = 16384
  repeats: int = 15  # samples per side of a ratio, alternating (odd: a true median)
  span_ms: int = 60  # one sample times back-to-back calls spanning about this long
  seed: int = 0

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown config keys in the baseline: {sorted(unknown)}")
    cfg = cls(**d)
    for name, value in dataclasses.asdict(cfg).items():
      if not isinstance(value, int) or value < (0 if name == "seed" else 1):
        raise ValueError(f"baseline config {name} must be a positive integer, got {value!r}")
    if not kernels.is_pow2(cfg.kernel_dim):
      raise ValueError(f"baseline config kernel_dim must be a power of two, got {cfg.kernel_dim}")
    return cfg


def execution() -> dict:
  """The set-up the ratios depend on; a baseline is only comparable under the same one."""
  return {"backend": jax.default_backend(), "num_devices": jax.device_count(),
          "one_thread": ONE_THREAD}


# --------------------------------------------------------------------------- timing


def repeated(fn, n: int, feedback):
  """`fn` done n times in sequence within one call: an injected, genuine slowdown.

  `feedback(args, out)` builds each pass's arguments from the previous pass's
  output, so XLA can neither merge the passes nor drop any of them.
  """
  if n == 1:
    return fn

  def slowed(*args):
    def body(_, carry):
      args, out = carry
      args = feedback(args, out)
      return args, fn(*args)

    return lax.fori_loop(1, n, body, (args, fn(*args)))[1]

  return slowed


def after_all_of(out, arg):
  """`arg`, unchanged, in a way that needs every element of `out` (XLA cannot prove that
  the sum is never NaN): a feedback for `repeated`. Anything less and XLA computes only
  what the next pass reads (a slice of a decode, the min and max of a quantization)."""
  total = sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in jax.tree.leaves(out))
  return jnp.where(jnp.isnan(total), jnp.zeros_like(arg), arg)


# --------------------------------------------------------------------------- figures


def _round_figure(model_name: str, cfg: Config, slowdown: int, say) -> Callable[[], float]:
  """Sets up the vmapped round's speedup over the per-client loop."""
  m = cfg.clients_per_round
  su = throughput.setup(model_name, max(m, cfg.loop_clients), examples=cfg.examples_per_client,
                        batch_size=cfg.batch_size, local_steps=cfg.local_steps, seed=cfg.seed)
  algorithm, state0 = su.fed_avg(m)

  def vmapped_round():
    state = state0
    for _ in range(slowdown):  # injected: rounds back to back, each on the last one's state
      state, _ = algorithm.round(state, su.clients)
    return state

  # FedJAX's way, as benchmarks.throughput times it.
  pair = Pair(vmapped_round, su.loop(cfg.loop_clients), cfg.repeats, cfg.span_ms / 1e3, say)

  def measure() -> float:  # (m / round seconds) / (loop clients / loop seconds)
    return m / cfg.loop_clients / pair.ratio()

  return measure


def _kernel_figure(name: str, cfg: Config, slowdown: int, say) -> Callable[[], float]:
  """Sets up a kernel's time over a copy (``-x``) of an array of its input's (output's) size."""
  key = jax.random.key(cfg.seed)
  xs = [jax.random.normal(jax.random.fold_in(key, i), (cfg.kernel_batch, cfg.kernel_dim),
                          jnp.float32) for i in range(_PLACES)]

  def quantize_pack(k, v):
    codes, lo, hi = kernels.quantize(k, v, BITS)
    return kernels.pack(codes, BITS), lo, hi

  def unpack_dequantize(words, lo, hi):
    return kernels.dequantize(kernels.unpack(words, BITS, cfg.kernel_dim), lo, hi, BITS)

  if name == "fwht":
    fn = repeated(kernels.fwht, slowdown, lambda args, out: (out,))
    args = [(x,) for x in xs]
  elif name == "quantize_pack":
    fn = repeated(quantize_pack, slowdown,
                  lambda args, out: (args[0], after_all_of(out, args[1])))
    args = [(key, x) for x in xs]
  elif name == "unpack_dequantize":
    fn = repeated(unpack_dequantize, slowdown,
                  lambda args, out: (after_all_of(out, args[0]), *args[1:]))
    args = [jax.jit(quantize_pack)(key, x) for x in xs]
  else:
    raise ValueError(f"no kernel {name!r}")
  fn = jax.jit(fn)
  copy = jax.jit(lambda v: -v)
  pair = Pair(_cycling(fn, args), _cycling(copy, [(x,) for x in xs]), cfg.repeats,
              cfg.span_ms / 1e3, say)

  return pair.ratio


def _cycling(fn, args: list[tuple]):
  """`fn` called on each of `args` in turn, its last few results kept alive.

  The placement in memory of a kernel's input and output buffers shifts its
  time relative to a copy's (cache sets, pages) a little, and differently in
  each process. Cycling over a few inputs, and keeping as many outputs
  alive so that the allocator hands out a different buffer each call,
  averages over placements within one process.
  """
  args, kept = itertools.cycle(args), collections.deque(maxlen=_PLACES)

  def call():
    out = fn(*next(args))
    kept.append(out)
    return out

  return call


def make_figure(name: str, cfg: Config, slowdown: int = 1, say=None) -> Callable[[], float]:
  """Sets up figure `name` (inputs, compiles, calibration); returns a function measuring it."""
  subject = FIGURES[name].subject
  if subject.endswith("_round"):
    return _round_figure(subject[:-len("_round")], cfg, slowdown, say)
  return _kernel_figure(subject, cfg, slowdown, say)


# --------------------------------------------------------------------------- comparison


def allowed_bound(baseline: float, direction: str, tolerance: float) -> float:
  """The worst value that still passes."""
  if direction == HIGHER:
    return baseline * (1 - tolerance)
  if direction == LOWER:
    return baseline * (1 + tolerance)
  raise ValueError(f"direction must be {HIGHER!r} or {LOWER!r}, got {direction!r}")


def within(measured: float, baseline: float, direction: str, tolerance: float) -> bool:
  """Whether `measured` is no worse than the allowed bound (the bound itself passes)."""
  bound = allowed_bound(baseline, direction, tolerance)
  if not math.isfinite(measured):
    return False
  return measured >= bound if direction == HIGHER else measured <= bound


def better(a: float, b: float, direction: str) -> float:
  return max(a, b) if direction == HIGHER else min(a, b)


@dataclasses.dataclass(frozen=True)
class Row:
  """One figure's verdict; `baseline` is None when the baseline file lacks the figure."""
  figure: str
  measured: float
  baseline: float | None = None
  direction: str | None = None
  tolerance: float | None = None
  attempts: int = 1

  @property
  def bound(self) -> float | None:
    if self.baseline is None:
      return None
    return allowed_bound(self.baseline, self.direction, self.tolerance)

  @property
  def passed(self) -> bool:
    return self.baseline is not None and within(self.measured, self.baseline, self.direction,
                                                self.tolerance)

  def message(self) -> str:
    if self.baseline is None:
      return (f"REGRESSION: {self.figure} = {self.measured:.3g} has no baseline; "
              "add it with --update_baseline")
    op, sign = (">", "+") if self.direction == LOWER else ("<", "-")
    tries = f"; best of {self.attempts} measurements" if self.attempts > 1 else ""
    return (f"REGRESSION: {self.figure} = {self.measured:.3g} {op} allowed {self.bound:.3g} "
            f"(baseline {self.baseline:.3g}, tolerance {sign}{self.tolerance:.0%}, "
            f"{self.direction}{tries})")


def compare(measured: dict[str, float], baseline: dict,
            attempts: dict[str, int] | None = None) -> list[Row]:
  """One `Row` per measured figure, against the baseline file's ``figures`` entries."""
  rows = []
  for name, value in measured.items():
    entry = baseline.get("figures", {}).get(name)
    tries = (attempts or {}).get(name, 1)
    if entry is None:
      rows.append(Row(name, value, attempts=tries))
    else:
      rows.append(Row(name, value, float(entry["value"]), entry["direction"],
                      float(entry["tolerance"]), tries))
  return rows


def format_table(rows: list[Row]) -> str:
  lines = [f"{'figure':<36} {'measured':>9} {'baseline':>9} {'allowed':>11}  result", "-" * 76]
  for r in rows:
    if r.baseline is None:
      lines.append(f"{r.figure:<36} {r.measured:9.3g} {'-':>9} {'-':>11}  FAIL (no baseline)")
      continue
    op = ">=" if r.direction == HIGHER else "<="
    note = f" (best of {r.attempts})" if r.attempts > 1 else ""
    lines.append(f"{r.figure:<36} {r.measured:9.3g} {r.baseline:9.3g} {op:>2} {r.bound:8.3g}  "
                 f"{'PASS' if r.passed else 'FAIL'}{note}")
  return "\n".join(lines)


# --------------------------------------------------------------------------- baseline file


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


def _machine() -> dict:
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
          "machine": _machine(), "jax_version": jax.__version__, "execution": then,
          "command": " ".join([".venv/bin/python scripts/check_throughput.py",
                               *map(shlex.quote, argv)]),
      },
      "config": dataclasses.asdict(cfg),
      "figures": dict(sorted(figures.items())),
  }


def _write_json(path: str, obj: dict):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")


# --------------------------------------------------------------------------- driver


def parse_slowdown(text: str) -> dict[str, int]:
  """``"fwht:3,quantize_pack:2"`` -> ``{"fwht": 3, "quantize_pack": 2}``."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, n = part.partition(":")
    if name not in SLOWABLE or not n.isdigit() or int(n) < 1:
      raise ValueError(f"--inject_slowdown entries are KERNEL:N with N >= 1 and KERNEL one of "
                       f"{', '.join(SLOWABLE)}; got {part!r}")
    out[name] = int(n)
  return out


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="check_throughput.py", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="CI throughput regression check: same-run ratios against a committed "
                  "baseline (see the module docstring and benchmarks/baselines/README.md).")
  p.add_argument("--baseline", default=DEFAULT_BASELINE, help="Baseline JSON file.")
  p.add_argument("--update_baseline", action="store_true",
                 help="Rewrite the baseline from this run (tolerances kept) instead of checking.")
  p.add_argument("--update_processes", type=int, default=5,
                 help="With --update_baseline: fresh processes to measure in (0: this one).")
  p.add_argument("--update_runs", type=int, default=1,
                 help="With --update_baseline: measurements per figure and process.")
  p.add_argument("--measure_into", help=argparse.SUPPRESS)  # a child of --update_baseline
  p.add_argument("--output", help="Also write this run's measurements and verdicts as JSON.")
  p.add_argument("--figures", default=",".join(FIGURES),
                 help="Comma-separated figures to measure (default: all).")
  p.add_argument("--retries", type=int, default=2,
                 help="Times a failing figure is measured again, each time in a fresh process "
                      "(its best value is kept).")
  p.add_argument("--inject_slowdown", default="",
                 help=f"KERNEL:N[,...]: KERNEL does its work N times; one of {SLOWABLE}.")
  p.add_argument("--verbose", action="store_true", help="Print set-up times and raw samples.")
  return p


def measure_in_fresh_processes(args, names, processes: int, runs: int, why: str = "update"
                               ) -> tuple[dict[str, list[float]], dict]:
  """Measures `names` `runs` times in each of `processes` fresh runs of this script.

  Some of what shifts a figure is fixed for the life of a process (where its
  buffers landed in memory, and now and then a regime in which the round
  reads half its usual speedup for the whole process), so a baseline is
  taken over several processes, and a failing figure is retried in a new one.
  """
  out_runs, then = {n: [] for n in names}, None
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(processes):
      out = os.path.join(tmp, f"{i}.json")
      cmd = [sys.executable, os.path.abspath(__file__), f"--baseline={args.baseline}",
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


def _write_update(args, argv, baseline, cfg, runs, then, start) -> int:
  new = updated_baseline(baseline, cfg, runs, argv, then)
  _write_json(args.baseline, new)
  for n, values in runs.items():
    old = baseline.get("figures", {}).get(n, {}).get("value")
    print(f"{n:<36} {new['figures'][n]['value']:9.4g}  runs "
          f"{', '.join(f'{v:.3g}' for v in values)}{'' if old is None else f'; was {old:.4g}'}")
  print(f"baseline written: {args.baseline} ({time.perf_counter() - start:.0f}s)")
  if args.output:
    _write_json(args.output, {"config": dataclasses.asdict(cfg), "execution": then,
                              "runs": runs})
  return 0


def main(argv: list[str] | None = None) -> int:
  """Runs the check (or the baseline update); returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parser().parse_args(argv)
  try:
    slowdown = parse_slowdown(args.inject_slowdown)
    names = [n.strip() for n in args.figures.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown or not names:
      raise ValueError(f"--figures: unknown {unknown}; valid: {', '.join(FIGURES)}")
    if slowdown and args.update_baseline:
      raise ValueError("--inject_slowdown is for checking, not for --update_baseline")
    if min(args.retries, args.update_processes) < 0 or args.update_runs < 1:
      raise ValueError("--retries and --update_processes must be >= 0, --update_runs >= 1")
    if os.path.exists(args.baseline):
      baseline = load_baseline(args.baseline)
    elif args.update_baseline or args.measure_into:
      baseline = {}
    else:
      raise ValueError(f"no baseline at {args.baseline}; create one with --update_baseline")
    cfg = Config.from_dict(baseline.get("config", {}))
    then = baseline.get("metadata", {}).get("execution")
    if (then is not None and then != execution() and not args.update_baseline and
        not args.measure_into):
      raise ValueError(f"the baseline was measured with {then}, this run has {execution()}: "
                       "the ratios are not comparable. Run the script as CI does (without "
                       "FEDJAX_COMP_CPU_DEVICES or a device count in XLA_FLAGS), or refresh "
                       "the baseline")
  except (ValueError, TypeError, OSError) as e:  # json.JSONDecodeError is a ValueError
    print(f"check_throughput: error: {e}", file=sys.stderr)
    return 2
  say = print if args.verbose else None
  if slowdown:
    print(f"INJECTED SLOWDOWN: {slowdown} (to test the check itself)")
  print(f"execution {execution()}, jax {jax.__version__}; config {dataclasses.asdict(cfg)}")

  start = time.perf_counter()
  if args.update_baseline and args.update_processes:
    runs, then = measure_in_fresh_processes(args, names, args.update_processes,
                                            args.update_runs)
    return _write_update(args, argv, baseline, cfg, runs, then, start)

  measures = {}
  for n in names:
    t = time.perf_counter()
    measures[n] = make_figure(n, cfg, slowdown.get(FIGURES[n].subject, 1), say)
    if say:
      say(f"  {n}: set up in {time.perf_counter() - t:.1f}s")

  if args.update_baseline or args.measure_into:
    runs = {n: [] for n in measures}
    for _ in range(args.update_runs):  # round-robin: each figure's runs spread over the run
      for n, measure in measures.items():
        runs[n].append(measure())
    if args.measure_into:
      _write_json(args.measure_into, {"execution": execution(), "runs": runs})
      return 0
    return _write_update(args, argv, baseline, cfg, runs, execution(), start)

  # A failing figure is measured again in a fresh process, after all the others: its
  # retries land in another stretch of the machine's load, and another process.
  trials = {n: [measure()] for n, measure in measures.items()}
  figures = baseline.get("figures", {})

  def best(n):
    return functools.reduce(lambda a, b: better(a, b, FIGURES[n].direction), trials[n])

  def failing(n):
    entry = figures.get(n)
    return entry is not None and not within(best(n), entry["value"], entry["direction"],
                                            entry["tolerance"])

  for retry in range(args.retries):
    again = [n for n in names if failing(n)]
    if not again:
      break
    why = f"retry {retry + 1}/{args.retries}"
    for n, values in measure_in_fresh_processes(args, again, 1, 1, why)[0].items():
      trials[n] += values
  measured = {n: best(n) for n in names}
  attempts = {n: len(t) for n, t in trials.items()}
  rows = compare(measured, baseline, attempts)
  print(format_table(rows))
  failures = [r for r in rows if not r.passed]
  for r in failures:
    print(r.message())
  elapsed = time.perf_counter() - start
  print(f"{'FAILED' if failures else 'OK'}: {len(rows) - len(failures)}/{len(rows)} figures "
        f"within tolerance of {args.baseline} ({elapsed:.0f}s, imports apart)")
  if args.output:
    _write_json(args.output, {
        "passed": not failures, "config": dataclasses.asdict(cfg), "execution": execution(),
        "slowdown": slowdown, "wall_s": elapsed,
        "figures": {r.figure: {"measured": r.measured, "trials": trials[r.figure],
                               "baseline": r.baseline, "direction": r.direction,
                               "tolerance": r.tolerance, "allowed": r.bound, "passed": r.passed}
                    for r in rows}})
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
