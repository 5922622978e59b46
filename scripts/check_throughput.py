r"""CI throughput regression check: same-run ratios against a committed baseline.

::

  .venv/bin/python scripts/check_throughput.py                    # the check (.ci/run runs it)
  .venv/bin/python scripts/check_throughput.py --update_baseline  # after an intended perf change
  .venv/bin/python scripts/check_throughput.py --inject_slowdown=fwht:3   # watch it fail

The test suite says whether the code is right; this says whether it is still
fast. It measures a handful of figures (`FIGURES`), prints a table of figure,
measured value, baseline, allowed bound and PASS/FAIL, and exits 1 with a
``REGRESSION: <figure> = <measured> > allowed <bound> (baseline <b>, tolerance
+<t>%)`` line per figure that regressed past its tolerance. It takes about a
minute on a 2-core CPU, compile included.

Why ratios, not times
  CI machines are noisy (this 2-core box read a dense matmul at 75-153
  GFLOP/s across runs, see WORKSPACE.md) and differ from each other, so an
  absolute time says little. Every figure is instead a ratio of two things
  timed in the same process moments apart, interleaved call by call (subject,
  reference, subject, ...) after a warm-up, each side the median of
  ``repeats`` calls with `jax.block_until_ready`: load that slows both sides
  cancels. The references are the ones the benchmarks already use: the
  per-client Python loop `fedjax_comp.loop_round_sums` for the vmapped round
  (`benchmarks.throughput`) and a copy ``-x`` of the same array for a kernel
  (`benchmarks.kernels`).

Why one XLA device
  `benchmarks._cpu` splits a CPU host into one device per core, which is the
  fastest set-up, but then the vmapped round runs on both cores while the
  loop runs on one, and the ratio moves with whatever else holds the second
  core. With a single device both sides share the same resources, so the
  ratio is the more reproducible figure, and that is all a regression check
  needs. ``FEDJAX_COMP_CPU_DEVICES`` (or ``XLA_FLAGS``) set in the
  environment still wins; a baseline records the device count it was
  measured with, and the check refuses to compare against a different one.

Direction and tolerance
  Each figure is ``higher_is_better`` (a speedup) or ``lower_is_better`` (a
  cost relative to a copy), and has a relative tolerance t in its baseline:
  a higher-is-better figure fails when ``measured < baseline * (1 - t)``, a
  lower-is-better one when ``measured > baseline * (1 + t)``; the bound
  itself passes. Tolerances are set wide enough for run-to-run noise and
  tight enough that a 2x slower kernel or round fails (t < 1 for a cost, t <
  0.5 for a speedup; the test suite checks both). A figure that fails is
  measured again, up to ``--retries`` times, and its best value is kept: a
  passing burst of load does not fail CI, a real slowdown fails every time.

The baseline file
  ``benchmarks/baselines/throughput_cpu.json`` holds the config the figures
  were measured with (sizes, repeats), each figure's value, direction and
  tolerance, and metadata (date, machine, jax version, command). The check
  measures with the baseline's config, so a comparison is always like with
  like. ``--update_baseline`` measures each figure ``--update_runs`` times,
  writes the medians and keeps the tolerances; how and when to refresh is in
  ``benchmarks/baselines/README.md``.

Injecting a slowdown
  ``--inject_slowdown=fwht:6`` (comma-separated ``kernel:n``, kernels in
  `SLOWABLE`) makes that kernel do its work n times in sequence inside one
  jitted call (a `lax.fori_loop` whose every pass takes the previous pass's
  output, so XLA can neither merge nor drop passes), or runs the vmapped
  round n times back to back. ``tests/test_check_throughput.py`` uses it to
  show that the check fails on a genuinely slower kernel.

Flags are parsed with argparse, not absl, so that `main(argv)` can be called
from a test without touching the runners' global flag registry.
"""

from __future__ import annotations

import os
import sys

# A single XLA CPU device unless the environment says otherwise (see "Why one
# XLA device"); this must happen before benchmarks._cpu and jax are imported.
os.environ.setdefault("FEDJAX_COMP_CPU_DEVICES", "1")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from benchmarks import _cpu  # noqa: E402,F401  (first: XLA device flags)


def _start_xla_on_one_thread():
  """Starts XLA's CPU client while this process may use one CPU only, then frees it again.

  XLA sizes its CPU thread pool from the CPUs the process may run on when the
  client starts. With one thread every op runs start to end on one core (see
  "Why one thread"); with all CPUs back, the scheduler may run that thread on
  whichever core is free. A no-op where jax was imported first (a test
  process): its client may already exist.
  """
  if "jax" in sys.modules or not hasattr(os, "sched_setaffinity"):
    return
  cpus = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {min(cpus)})
  try:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    jax.devices()
  finally:
    os.sched_setaffinity(0, cpus)


if os.environ.get("FEDJAX_COMP_CHECK_THREADS", "1") == "1":
  _start_xla_on_one_thread()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

import fedjax_comp as fc  # noqa: E402
from fedjax_comp import kernels, results  # noqa: E402

from benchmarks import throughput  # noqa: E402

DEFAULT_BASELINE = os.path.join(_ROOT, "benchmarks", "baselines", "throughput_cpu.json")
HIGHER = "higher_is_better"
LOWER = "lower_is_better"
_BITS = 2  # the quantizer width of the kernel figures (their names end in /2)


@dataclasses.dataclass(frozen=True)
class Figure:
  direction: str
  tolerance: float  # the default for a new baseline entry; the baseline's own value wins
  subject: str  # the kernel `--inject_slowdown` names to slow this figure down
  doc: str


FIGURES = {
    "mlp_vmap_speedup_vs_loop": Figure(
        HIGHER, 0.35, "mlp_round",
        "MLP client updates/s of the vmapped round over the per-client Python loop"),
    "logistic_vmap_speedup_vs_loop": Figure(
        HIGHER, 0.35, "logistic_round",
        "logistic-regression client updates/s of the vmapped round over the loop"),
    "fwht_ratio_to_copy": Figure(
        LOWER, 0.5, "fwht", "time of kernels.fwht over a copy (-x) of the same array"),
    f"quantize_pack_ratio_to_copy/{_BITS}": Figure(
        LOWER, 0.5, "quantize_pack",
        f"time of kernels.quantize + pack at {_BITS} bits over a copy of the input"),
    f"unpack_dequantize_ratio_to_copy/{_BITS}": Figure(
        LOWER, 0.5, "unpack_dequantize",
        f"time of kernels.unpack + dequantize at {_BITS} bits over a copy of the output"),
}
SLOWABLE = sorted({f.subject for f in FIGURES.values()})


@dataclasses.dataclass(frozen=True)
class Config:
  """What is measured; stored in the baseline, which the check then measures with."""
  clients_per_round: int = 200  # the vmapped round
  loop_clients: int = 50  # clients of the reference loop (its cost per client is flat)
  examples_per_client: int = 20
  batch_size: int = 10
  local_steps: int = 2
  kernel_batch: int = 256  # kernels run on a [kernel_batch, kernel_dim] float32 array
  kernel_dim: int = 16384
  repeats: int = 7  # samples per side of a ratio, alternating; medians are kept
  span_ms: int = 60  # each sample times back-to-back calls spanning about this long
  seed: int = 0

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown config keys in the baseline: {sorted(unknown)}")
    cfg = cls(**d)
    for name, value in dataclasses.asdict(cfg).items():
      if name != "seed" and (not isinstance(value, int) or value < 1):
        raise ValueError(f"baseline config {name} must be a positive integer, got {value!r}")
    if not kernels.is_pow2(cfg.kernel_dim):
      raise ValueError(f"baseline config kernel_dim must be a power of two, got {cfg.kernel_dim}")
    return cfg


# --------------------------------------------------------------------------- timing


def _seconds(fn: Callable[[], object], calls: int = 1) -> float:
  """Wall seconds of `calls` calls of `fn`, each waited for."""
  t = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(fn())
  return time.perf_counter() - t


class Pair:
  """A subject and a reference timed alternately: the two sides of one ratio.

  The constructor warms both up (compiling them) and picks, per side, how
  many back-to-back calls make one sample span about `span_s` seconds, so a
  short call and a long one both see many scheduler slices. `seconds()` then
  alternates samples of the two sides, so both see the same load: a busy
  machine slows both alike and their ratio keeps still while each time on
  its own swings. It returns the median sample of each side, per call.
  """

  def __init__(self, subject, reference, repeats: int, span_s: float):
    self.fns, self.repeats = (subject, reference), repeats
    self.calls = []
    for fn in self.fns:
      _seconds(fn)  # compiles
      calls = 1
      while (sec := _seconds(fn, calls)) < span_s / 4:
        calls *= 2
      self.calls.append(max(1, round(calls * span_s / sec)))

  def seconds(self) -> tuple[float, float]:
    samples = ([], [])
    for _ in range(self.repeats):
      for fn, calls, out in zip(self.fns, self.calls, samples):
        out.append(_seconds(fn, calls) / calls)
    s, r = samples
    if os.environ.get("CT_DEBUG"):
      print(f"  DEBUG calls {self.calls} med/med {statistics.median(s)/statistics.median(r):.3f} "
            f"min/min {min(s)/min(r):.3f} s {[round(v*1e3,2) for v in s]} r {[round(v*1e3,2) for v in r]}")
    return statistics.median(s), statistics.median(r)


def repeated(fn, n: int, feedback):
  """`fn` done n times in sequence inside one call: an injected, genuine slowdown.

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


# --------------------------------------------------------------------------- figures


def _round_figure(model_name: str, cfg: Config, slowdown: int) -> Callable[[], float]:
  """Returns a measurement of the vmapped round's speedup over the per-client loop."""
  shape = throughput.INPUT_SHAPES[model_name]
  model = fc.get_model(model_name, shape, 10)
  chunk = fc.aggregation.default_chunk(model_name, jax.default_backend())
  mesh = fc.clients_mesh() if jax.device_count() > 1 else None
  client_update = fc.make_client_update(fc.masked_cross_entropy(model), optax.sgd(0.01),
                                        batch_size=cfg.batch_size, local_steps=cfg.local_steps)
  m = cfg.clients_per_round
  host_clients = throughput.synthetic_clients(max(m, cfg.loop_clients), cfg.examples_per_client,
                                              shape, cfg.seed)
  clients = fc.replicate(host_clients, mesh)
  algorithm = fc.fed_avg(model.init, client_update, fc.server_optimizer("fedavg", 1.0),
                         clients_per_round=m, client_chunk=chunk, mesh=mesh)
  state0 = fc.replicate(algorithm.init(cfg.seed), mesh)
  params = model.init(jax.random.key(cfg.seed))
  round_key = jax.random.key(cfg.seed)
  codec = fc.identity()

  def vmapped_round():
    state = state0
    for _ in range(slowdown):  # n rounds back to back, each on the previous one's state
      state, _ = algorithm.round(state, clients)
    return state

  def loop():  # as benchmarks.throughput times it: one jitted client update per client
    return fc.loop_round_sums(client_update, codec, params, host_clients,
                              range(cfg.loop_clients), round_key)

  pair = Pair(vmapped_round, loop, cfg.repeats, cfg.span_ms / 1e3)

  def measure() -> float:
    round_s, loop_s = pair.seconds()
    return (m / round_s) / (cfg.loop_clients / loop_s)

  return measure


def _kernel_figure(name: str, cfg: Config, slowdown: int) -> Callable[[], float]:
  """Returns a measurement of a kernel's time over a copy (``-x``) of the same array."""
  key = jax.random.key(cfg.seed)
  x = jax.random.normal(jax.random.fold_in(key, 1), (cfg.kernel_batch, cfg.kernel_dim),
                        jnp.float32)

  def quantize_pack(k, v):
    codes, lo, hi = kernels.quantize(k, v, _BITS)
    return kernels.pack(codes, _BITS), lo, hi

  def unpack_dequantize(words, lo, hi):
    return kernels.dequantize(kernels.unpack(words, _BITS, cfg.kernel_dim), lo, hi, _BITS)

  if name == "fwht":
    fn = repeated(kernels.fwht, slowdown, lambda args, out: (out,))
    args = (x,)
  elif name == "quantize_pack":
    # lo <= hi always, but XLA cannot know it: the next pass depends on this one.
    fn = repeated(quantize_pack, slowdown,
                  lambda args, out: (args[0], jnp.where((out[1] > out[2])[:, None], 0.0, args[1])))
    args = (key, x)
  elif name == "unpack_dequantize":
    fn = repeated(unpack_dequantize, slowdown,
                  lambda args, out: (jnp.where(jnp.isnan(out[:, :1, None]), 0, args[0]),
                                     *args[1:]))
    args = jax.jit(quantize_pack)(key, x)
  else:
    raise ValueError(f"no kernel {name!r}")
  fn = jax.jit(fn)
  copy = jax.jit(lambda v: -v)

  pair = Pair(lambda: fn(*args), lambda: copy(x), cfg.repeats, cfg.span_ms / 1e3)

  def measure() -> float:
    kernel_s, copy_s = pair.seconds()
    return kernel_s / copy_s

  return measure


def make_figure(name: str, cfg: Config, slowdown: int = 1) -> Callable[[], float]:
  """Sets up (builds the inputs for) figure `name`; returns a function measuring it once."""
  subject = FIGURES[name].subject
  if subject.endswith("_round"):
    return _round_figure(subject[:-len("_round")], cfg, slowdown)
  return _kernel_figure(subject, cfg, slowdown)


# --------------------------------------------------------------------------- comparison


@dataclasses.dataclass(frozen=True)
class Row:
  figure: str
  measured: float
  baseline: float | None
  direction: str | None
  tolerance: float | None

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
    return (f"REGRESSION: {self.figure} = {self.measured:.3g} {op} allowed {self.bound:.3g} "
            f"(baseline {self.baseline:.3g}, tolerance {sign}{self.tolerance:.0%}, "
            f"{self.direction})")


def allowed_bound(baseline: float, direction: str, tolerance: float) -> float:
  """The worst value that still passes."""
  if direction == HIGHER:
    return baseline * (1 - tolerance)
  if direction == LOWER:
    return baseline * (1 + tolerance)
  raise ValueError(f"direction must be {HIGHER!r} or {LOWER!r}, got {direction!r}")


def within(measured: float, baseline: float, direction: str, tolerance: float) -> bool:
  """Whether `measured` is no worse than the bound (the bound itself passes)."""
  if not math.isfinite(measured):
    return False
  bound = allowed_bound(baseline, direction, tolerance)
  return measured >= bound if direction == HIGHER else measured <= bound


def compare(measured: dict[str, float], baseline: dict) -> list[Row]:
  """One `Row` per measured figure against the baseline file's ``figures`` entries."""
  rows = []
  for name, value in measured.items():
    entry = baseline.get("figures", {}).get(name)
    if entry is None:
      rows.append(Row(name, value, None, None, None))
    else:
      rows.append(Row(name, value, float(entry["value"]), entry["direction"],
                      float(entry["tolerance"])))
  return rows


def better(a: float, b: float, direction: str) -> float:
  return max(a, b) if direction == HIGHER else min(a, b)


def format_table(rows: list[Row], attempts: dict[str, int] | None = None) -> str:
  attempts = attempts or {}
  lines = [f"{'figure':<36} {'measured':>9} {'baseline':>9} {'allowed':>11}  result",
           "-" * 76]
  for r in rows:
    if r.baseline is None:
      lines.append(f"{r.figure:<36} {r.measured:9.3g} {'-':>9} {'-':>11}  FAIL (no baseline)")
      continue
    op = ">=" if r.direction == HIGHER else "<="
    note = f" (best of {attempts[r.figure]})" if attempts.get(r.figure, 1) > 1 else ""
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
    allowed_bound(1.0, entry["direction"], 0.0)  # validates the direction
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


def updated_baseline(old: dict, cfg: Config, runs: dict[str, list[float]], argv) -> dict:
  """The baseline with this run's medians; tolerances, directions and other figures kept."""
  figures = dict(old.get("figures", {}))
  for name, values in runs.items():
    figure = FIGURES[name]
    tolerance = figures.get(name, {}).get("tolerance", figure.tolerance)
    figures[name] = {"value": round(statistics.median(values), 4), "direction": figure.direction,
                     "tolerance": tolerance, "runs": [round(v, 4) for v in values],
                     "doc": figure.doc}
  env = results.environment()
  return {
      "about": "Baseline of scripts/check_throughput.py; see benchmarks/baselines/README.md.",
      "metadata": {
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "machine": _machine(), "jax_version": env["jax_version"],
          "backend": env["backend"], "num_devices": env["num_devices"],
          "command": " ".join(["python scripts/check_throughput.py", *map(shlex.quote, argv)]),
          "runs_per_figure": max(len(v) for v in runs.values()),
      },
      "config": dataclasses.asdict(cfg),
      "figures": dict(sorted(figures.items())),
  }


# --------------------------------------------------------------------------- driver


def parse_slowdown(text: str) -> dict[str, int]:
  """``"fwht:3,quantize_pack:2"`` -> ``{"fwht": 3, "quantize_pack": 2}``."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, n = part.partition(":")
    try:
      times = int(n)
    except ValueError:
      times = 0
    if name not in SLOWABLE or times < 1:
      raise ValueError(f"--inject_slowdown entries are KERNEL:N with N >= 1 and KERNEL one of "
                       f"{', '.join(SLOWABLE)}; got {part!r}")
    out[name] = times
  return out


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="check_throughput.py", description=__doc__.split("\n\n")[2].strip(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--baseline", default=DEFAULT_BASELINE, help="Baseline JSON file.")
  p.add_argument("--update_baseline", action="store_true",
                 help="Rewrite the baseline from this run (tolerances kept) instead of checking.")
  p.add_argument("--update_runs", type=int, default=3,
                 help="With --update_baseline: measurements per figure; the median is written.")
  p.add_argument("--output", help="Write this run's measurements and verdicts to this JSON file.")
  p.add_argument("--figures", default=",".join(FIGURES),
                 help="Comma-separated figures to measure (default: all).")
  p.add_argument("--retries", type=int, default=2,
                 help="Times a failing figure is measured again (its best value is kept).")
  p.add_argument("--inject_slowdown", default="",
                 help=f"KERNEL:N[,...]: make KERNEL do its work N times (one of {SLOWABLE}).")
  return p


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
    if args.retries < 0 or args.update_runs < 1:
      raise ValueError("--retries must be >= 0 and --update_runs >= 1")
    if os.path.exists(args.baseline):
      baseline = load_baseline(args.baseline)
    elif args.update_baseline:
      baseline = {}
    else:
      raise ValueError(f"no baseline at {args.baseline}; create one with --update_baseline")
    cfg = Config.from_dict(baseline.get("config", {}))
    devices = baseline.get("metadata", {}).get("num_devices")
    if devices is not None and devices != jax.device_count() and not args.update_baseline:
      raise ValueError(f"the baseline was measured on {devices} XLA device(s), this run has "
                       f"{jax.device_count()}; unset FEDJAX_COMP_CPU_DEVICES / XLA_FLAGS' device "
                       "count, or refresh the baseline")
  except (ValueError, OSError, json.JSONDecodeError) as e:
    print(f"check_throughput: error: {e}", file=sys.stderr)
    return 2
  if slowdown:
    print(f"INJECTED SLOWDOWN: {slowdown} (for testing the check)")
  print(f"{jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}; "
        f"config {dataclasses.asdict(cfg)}")

  start = time.perf_counter()
  measures = {}
  for n in names:
    t = time.perf_counter()
    measures[n] = make_figure(n, cfg, slowdown.get(FIGURES[n].subject, 1))
    if os.environ.get("CT_DEBUG"):
      print(f"  DEBUG setup {n} {time.perf_counter() - t:.1f}s")
  if args.update_baseline:
    runs = {n: [measure() for _ in range(args.update_runs)] for n, measure in measures.items()}
    new = updated_baseline(baseline, cfg, runs, argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.baseline)), exist_ok=True)
    with open(args.baseline, "w") as f:
      json.dump(new, f, indent=2)
      f.write("\n")
    for n, values in runs.items():
      old = baseline.get("figures", {}).get(n, {}).get("value")
      print(f"{n:<36} {new['figures'][n]['value']:9.3g}  (runs {', '.join(f'{v:.3g}' for v in values)}"
            f"{'' if old is None else f'; was {old:.3g}'})")
    print(f"baseline written: {args.baseline} ({time.perf_counter() - start:.0f}s)")
    _write_output(args.output, cfg, {n: statistics.median(v) for n, v in runs.items()}, None, runs)
    return 0

  measured, attempts, trials = {}, {}, {}
  for n, measure in measures.items():
    entry, direction = baseline["figures"].get(n), FIGURES[n].direction
    trials[n] = [measure()]
    best = trials[n][0]
    while (entry is not None and len(trials[n]) <= args.retries and
           not within(best, entry["value"], entry["direction"], entry["tolerance"])):
      trials[n].append(measure())
      best = better(best, trials[n][-1], direction)
    measured[n], attempts[n] = best, len(trials[n])
  rows = compare(measured, baseline)
  print(format_table(rows, attempts))
  failures = [r for r in rows if not r.passed]
  for r in failures:
    print(r.message())
  elapsed = time.perf_counter() - start
  print(f"{'FAILED' if failures else 'OK'}: {len(rows) - len(failures)}/{len(rows)} figures "
        f"within tolerance of {args.baseline} ({elapsed:.0f}s)")
  _write_output(args.output, cfg, measured, rows, trials)
  return 1 if failures else 0


def _write_output(path, cfg, measured, rows, trials):
  if not path:
    return
  verdicts = {r.figure: r for r in rows or []}
  out = {"config": dataclasses.asdict(cfg), **results.environment(), "figures": {}}
  for n, value in measured.items():
    r = verdicts.get(n)
    out["figures"][n] = {"measured": value, "trials": trials[n],
                         "direction": FIGURES[n].direction}
    if r is not None:
      out["figures"][n].update(baseline=r.baseline, tolerance=r.tolerance, allowed=r.bound,
                               passed=r.passed)
  out["passed"] = None if rows is None else all(r.passed for r in rows)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")


if __name__ == "__main__":
  sys.exit(main())
