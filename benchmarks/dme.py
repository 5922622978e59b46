r"""Distributed mean estimation (DME): each codec's error on the mean of n client vectors.

::

  python -m benchmarks.dme --output_dir=results/dme
  python -m benchmarks.dme --codec='hadamard,quantize(bits=2)' --distribution=normal
  python -m benchmarks.dme --codecs='quantize(bits=4);hadamard,quantize(bits=4)' --dim=65536

The setting of Suresh et al. 2017 (arXiv 1611.00429): each of
``--num_clients`` clients holds a vector x_i in R^``--dim`` drawn from
``--distribution`` (``lognormal``: LogNormal(0, 1), ``exponential``:
Exponential(1), ``normal``: Normal(0, 1), i.i.d. per coordinate and client;
``shared``: one Normal(0, 1) vector held by every client). Each client
encodes its vector with its own key, the server decodes every payload with
the same key (rebuilt, never sent) and averages. Per trial t (``--trials``)
the keys are::

  trial_key  = fold_in(seed_key(seed), t)
  codec key  = fold_in(trial_key, i)             client i, 0 <= i < n
  data key   = fold_in(trial_key, keys.SERVER)   all clients' vectors

so every codec spec sees the same vectors, and a client's randomness does
not depend on how the clients are sharded over devices.

The encode of all clients is one jitted `vmap` (sharded over the clients
axis when there are several devices, as in a round), and so is the server's
decode + average; both are compiled ahead (``compile_s``), run once to warm
up, then timed per trial after ``block_until_ready``.

Per codec spec, ``result.json``'s ``metrics[spec]`` holds:

* ``vnmse``: mean over trials and clients of ||x̂_i - x_i||² / ||x_i||²;
* ``nmse``: mean over trials of ||mean x̂_i - mean x_i||² / ||mean x_i||²
  (with independent client randomness about vnmse / n for equal vectors);
* ``bits_per_coordinate``: bits of one client's real payload arrays over
  ``--dim`` (checked against `codecs.uplink_bits`);
* ``coded_bits_per_coordinate``: for a codec with a variable-length code
  (QSGD's Elias coding, `Codec.coded_bits`), the mean coded length of the
  first trial's payloads over ``--dim``; null for the others;
* ``encode_s``, ``decode_s``: median over trials of the encode of all clients
  and of the decode + average, each trial's the median of 2-5 back-to-back
  calls after its first (warm, like the copy it is compared with);
  ``compile_s`` of both;
* ``suresh_bound``: the single-client bound on vnmse for ``quantize(bits=b)``,
  d / (2 (2^b - 1)²), and for ``hadamard,quantize(bits=b)`` (one rotation of
  the whole vector, d its padded length), (2 ln d + 2) / (2^b - 1)²; null
  for other specs. Both bounds hold for ``stochastic=false`` too (its
  squared error per coordinate is at most step² / 4, the stochastic
  variance bound they rest on).

Structured codecs (``low_rank``, ``random_mask``) reparametrize local
training and have no meaning here: they are rejected. Writes
``result.json``, ``metrics.jsonl`` (one line per spec and trial) and
``vnmse_vs_bits.png`` to ``--output_dir``.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.ticker
from absl import flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fedjax_comp as fc
from fedjax_comp import codecs, kernels, keys
from fedjax_comp.data.stores import memory_budget
from fedjax_comp.experiment import results
from fedjax_comp.sharding import CLIENTS_AXIS

from benchmarks import _flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

DISTRIBUTIONS = ("normal", "lognormal", "exponential", "shared")
DEFAULT_CODECS = (
    "none", "quantize(bits=1)", "quantize(bits=2)", "quantize(bits=4)",
    "hadamard,quantize(bits=1)", "hadamard,quantize(bits=2)", "hadamard,quantize(bits=4)",
    "subsample(p=0.0625),hadamard,quantize(bits=2)")


def define_flags() -> dict:
  """The runner's flags, defined only when it runs (importing it defines none); numbers
  are text, parsed by `config_from_flags` into one line naming a bad flag."""
  text = flags.DEFINE_string
  return {
      "codec": text("codec", "hadamard,quantize(bits=2)", "One codec spec to measure (grammar: "
                    "fedjax_comp.codecs.spec); when given, it replaces --codecs."),
      "codecs": text("codecs", ";".join(DEFAULT_CODECS), "Codec specs to compare, separated "
                     "by ';' (used unless --codec is given)."),
      "dim": text("dim", str(2**14), "Coordinates per client vector, in [1, 2**30]."),
      "num_clients": text("num_clients", "100", "Clients n, >= 1."),
      "distribution": text("distribution", "lognormal", "Client vectors' coordinates: "
                           f"{', '.join(DISTRIBUTIONS)} ('shared': one Normal vector for all)."),
      "trials": text("trials", "10", "Trials (fresh vectors and keys) per codec, >= 1."),
      "seed": text("seed", "0", "Seed, in [0, 2**32)."),
  }


@dataclasses.dataclass(frozen=True)
class Config:
  codecs: tuple[str, ...] = DEFAULT_CODECS
  dim: int = 2**14
  num_clients: int = 100
  distribution: str = "lognormal"
  trials: int = 10
  seed: int = 0

  def validate(self) -> None:
    """Raises ValueError naming the flag and its valid range (memory included)."""
    _int("dim", self.dim, *_DIM)
    for flag in ("num_clients", "trials"):
      _int(flag, getattr(self, flag), *_AT_LEAST_1)
    _int("seed", self.seed, *_SEED)
    if not self.codecs:
      raise ValueError("--codecs must name at least one codec spec")
    if self.distribution not in DISTRIBUTIONS:
      raise ValueError(f"unknown --distribution {self.distribution!r}; valid: "
                       f"{', '.join(DISTRIBUTIONS)}")
    seen = set()
    for spec in self.codecs:
      if spec in seen:
        raise ValueError(f"--codecs lists {spec!r} twice")
      seen.add(spec)
      parse_dme_codec(spec)
    ndev = _num_devices(self.num_clients)
    check_memory(self, ndev, memory_budget(fc.clients_mesh(ndev)))


_AT_LEAST_1 = ("an integer >= 1", lambda v: v >= 1)
_SEED = ("an integer in [0, 2**32)", lambda v: 0 <= v < 2**32)
MAX_DIM = 2**30  # jnp indexes with int32, and the rotation pads to the next power of two
_DIM = ("an integer in [1, 2**30]", lambda v: v >= 1)  # the top: `check_memory`, after bytes


def _int(flag: str, value, rule: str, ok) -> int:
  """`value` (an int, or its text) if it is an integer meeting `ok`, else a ValueError."""
  try:
    number = None if isinstance(value, (bool, float)) else int(str(value).strip())
  except ValueError:
    number = None
  if number is None or not ok(number):
    raise ValueError(f"--{flag} must be {rule}, got {value!r}")
  return number


def bytes_needed(cfg: Config, num_devices: int) -> int:
  """Bytes one device holds at the peak of a trial, estimated before anything is allocated:
  its share of the clients' float32 vectors and of four float32 buffers of the padded
  length (payloads, at most dense; the encoder's rotated copy; the decoded vectors; the
  evaluation's differences)."""
  per_client = 4 * cfg.dim + 4 * 4 * kernels.next_pow2(cfg.dim)
  return -(-cfg.num_clients // num_devices) * per_client


def check_memory(cfg: Config, num_devices: int, budget: int) -> None:
  """Refuses, naming the bytes, a run that would not fit in `budget` bytes per device,
  then a vector longer than `MAX_DIM` (on a device with the memory for it)."""
  need = bytes_needed(cfg, num_devices)
  if need > budget:
    raise ValueError(
        f"--dim={cfg.dim} with --num_clients={cfg.num_clients} needs about "
        f"{need / 2**30:.2f} GiB per device (client vectors, payloads, decode buffers), over "
        f"the budget of {budget / 2**30:.2f} GiB (half a device's memory); lower --dim or "
        "--num_clients")
  if cfg.dim > MAX_DIM:
    raise ValueError(f"--dim must be an integer in [1, 2**30] (jax indexes a vector with "
                     f"int32, and a rotation pads it to a power of two), got {cfg.dim}")


def parse_dme_codec(spec: str) -> codecs.Codec:
  """`codecs.parse`, with errors naming --codec; rejects structured codecs."""
  try:
    codec = codecs.parse(spec)
  except ValueError as e:
    raise ValueError(f"--codec {spec!r}: {e}") from e
  if codec.structure is not None:
    raise ValueError(
        f"--codec {spec!r} is a structured codec (low_rank, random_mask): it changes local "
        "training and does not apply to distributed mean estimation; use quantize, hadamard "
        "and subsample stages")
  if codec.aggregator is not None or codec.stateful:
    raise ValueError(
        f"--codec {spec!r} keeps per-client state or its own aggregation rule (ef, ef21, "
        "powersgd, sign): one round of mean estimation does not measure it; the leaderboard "
        "(benchmarks.leaderboard) does")
  return codec


def parse_codec_list(text: str) -> tuple[str, ...]:
  """The ';'-separated specs of --codecs, stripped, empty entries dropped."""
  return tuple(s.strip() for s in text.split(";") if s.strip())


def suresh_bound(spec: str, dim: int) -> float | None:
  """Suresh et al.'s single-client bound on vNMSE for `spec`, or None where none applies.

  ``quantize(bits=b)``: d / (2 (2^b - 1)²). ``hadamard,quantize(bits=b)``
  with one rotation of the whole (zero-padded) vector: (2 ln d + 2) /
  (2^b - 1)², d the padded length. A blocked rotation (``block`` shorter
  than the vector) or any other composition gets None.
  """
  stages = codecs.parse_stages(spec, with_defaults=True)
  names = [name for name, _ in stages]
  if names == ["quantize"]:
    levels = 2**stages[0][1]["bits"] - 1
    return dim / (2 * levels**2)
  if names == ["hadamard", "quantize"]:
    block = stages[0][1]["block"] or None
    d = kernels.rotated_length(dim, block)
    if block is not None and block < d:
      return None
    levels = 2**stages[1][1]["bits"] - 1
    return (2 * math.log(d) + 2) / levels**2
  return None


def _num_devices(num_clients: int) -> int:
  """The most devices (<= jax.device_count()) that split the clients evenly."""
  return max(k for k in range(1, jax.device_count() + 1) if num_clients % k == 0)


def make_sampler(distribution: str, num_clients: int, dim: int, sharding):
  """Jitted data_key -> float32 [num_clients, dim], sharded over clients."""

  def sample(key):
    shape = (num_clients, dim)
    if distribution == "normal":
      return jax.random.normal(key, shape)
    if distribution == "lognormal":
      return jnp.exp(jax.random.normal(key, shape))
    if distribution == "exponential":
      return jax.random.exponential(key, shape)
    return jnp.broadcast_to(jax.random.normal(key, (dim,)), shape)  # shared

  return jax.jit(sample, out_shardings=sharding)


def make_dme_fns(codec: codecs.Codec, dim: int, mesh):
  """Jitted (encode_all, decode_mean, evaluate), sharded over the mesh's clients axis.

  encode_all(trial_key, ids, xs) -> payloads (leading axis: clients);
  decode_mean(trial_key, ids, payloads) -> the server's estimate [dim];
  evaluate(trial_key, ids, payloads, xs) -> (per-client ||x̂ - x||² / ||x||², nmse).
  """
  state = codec.init(jax.ShapeDtypeStruct((dim,), jnp.float32))
  c = P(CLIENTS_AXIS)

  def shard(f, in_specs, out_specs):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

  def client_keys(trial_key, ids):
    return jax.vmap(lambda i: jax.random.fold_in(trial_key, i))(ids)

  def encode_local(trial_key, ids, xs):
    return jax.vmap(lambda k, x: codec.encode(k, x, state)[0])(client_keys(trial_key, ids), xs)

  def decode_local(trial_key, ids, payloads):
    return jax.vmap(codec.decode)(client_keys(trial_key, ids), payloads)

  def sum_clients(x):
    # A [1, n] x [n, dim] product: XLA:CPU's reduce over a short leading axis of long rows
    # runs in YNNPACK at 1-2% of memory speed (161 ms against 3.4 ms for [16, 2^20]).
    return jnp.matmul(jnp.ones((1, x.shape[0]), x.dtype), x, precision=jax.lax.Precision.HIGHEST)[0]

  def decode_sum(trial_key, ids, payloads):
    return jax.lax.psum(sum_clients(decode_local(trial_key, ids, payloads)), CLIENTS_AXIS)

  def eval_local(trial_key, ids, payloads, xs):
    x_hat = decode_local(trial_key, ids, payloads)
    rel = jnp.sum((x_hat - xs)**2, axis=-1) / jnp.sum(xs**2, axis=-1)
    sums = jax.lax.psum((sum_clients(x_hat), sum_clients(xs)), CLIENTS_AXIS)
    return rel, sums

  @jax.jit
  def encode_all(trial_key, ids, xs):
    return shard(encode_local, (P(), c, c), c)(trial_key, ids, xs)

  @jax.jit
  def decode_mean(trial_key, ids, payloads):
    return shard(decode_sum, (P(), c, c), P())(trial_key, ids, payloads) / ids.shape[0]

  @jax.jit
  def evaluate(trial_key, ids, payloads, xs):
    rel, (sum_hat, sum_x) = shard(eval_local, (P(), c, c, c), (c, P()))(
        trial_key, ids, payloads, xs)
    n = ids.shape[0]
    mean_hat, mean_x = sum_hat / n, sum_x / n
    return rel, jnp.sum((mean_hat - mean_x)**2) / jnp.sum(mean_x**2)

  return encode_all, decode_mean, evaluate


def _warm_seconds(fn, *args, calls: int = 5, budget_s: float = 0.05) -> float:
  """Median seconds of back-to-back calls of `fn` (already run once on `args`): 2 to `calls`
  of them, stopping once `budget_s` is spent. Warm, as the copy it is compared with is
  timed: a single call right after other work (sampling, evaluation) ran 1.5-2.5x slower."""
  times, start = [], time.perf_counter()
  while len(times) < 2 or (len(times) < calls and time.perf_counter() - start < budget_s):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure_codec(spec: str, cfg: Config, mesh, sample, ids, say=print,
                  log=lambda record: None) -> dict:
  """Runs `cfg.trials` trials of one spec; returns its metrics."""
  codec = parse_dme_codec(spec)
  encode_all, decode_mean, evaluate = make_dme_fns(codec, cfg.dim, mesh)
  seed_key = keys.seed_key(cfg.seed)

  def trial_inputs(t):
    trial_key = keys.round_key(seed_key, t)
    xs = sample(keys.client_key(trial_key, keys.SERVER))
    return trial_key, jax.block_until_ready(xs)

  trial_key, xs = trial_inputs(0)
  t0 = time.perf_counter()
  encode_c = encode_all.lower(trial_key, ids, xs).compile()
  compile_s = time.perf_counter() - t0
  payloads = jax.block_until_ready(encode_c(trial_key, ids, xs))  # warm-up
  t0 = time.perf_counter()
  decode_c = decode_mean.lower(trial_key, ids, payloads).compile()
  compile_s += time.perf_counter() - t0
  jax.block_until_ready(decode_c(trial_key, ids, payloads))  # warm-up

  # Bits from the real arrays of one client's payload, checked against the abstract count.
  for leaf in jax.tree.leaves(payloads):
    if leaf.shape[:1] != (cfg.num_clients,):
      raise AssertionError(f"{spec!r}: payload leaf of shape {leaf.shape} has no clients axis")
  one = jax.tree.map(lambda a: a[0], payloads)
  bits = codecs.payload_bits(one)
  expected = codecs.uplink_bits(codec, jax.ShapeDtypeStruct((cfg.dim,), jnp.float32))
  if bits != expected:
    raise AssertionError(f"{spec!r}: payload holds {bits} bits, uplink_bits says {expected}")

  coded = None
  if codec.coded_bits is not None:  # a variable-length code's exact length (QSGD's Elias)
    coded = float(jnp.mean(jax.jit(jax.vmap(codec.coded_bits))(payloads))) / cfg.dim

  rel_errors, nmses, enc_times, dec_times = [], [], [], []
  for t in range(cfg.trials):
    if t:
      trial_key, xs = trial_inputs(t)
    payloads = jax.block_until_ready(encode_c(trial_key, ids, xs))
    enc_times.append(_warm_seconds(encode_c, trial_key, ids, xs))
    jax.block_until_ready(decode_c(trial_key, ids, payloads))
    dec_times.append(_warm_seconds(decode_c, trial_key, ids, payloads))
    rel, nmse = jax.device_get(evaluate(trial_key, ids, payloads, xs))
    rel_errors.append(float(rel.mean()))
    nmses.append(float(nmse))
    log({"codec": spec, "trial": t, "vnmse": rel_errors[-1], "nmse": nmses[-1],
         "encode_s": enc_times[-1], "decode_s": dec_times[-1]})
  out = {
      "vnmse": statistics.fmean(rel_errors),
      "nmse": statistics.fmean(nmses),
      "bits_per_coordinate": bits / cfg.dim,
      "bits_per_client": bits,
      "index_bits": codecs.index_bits(one),  # top-k's index lists, by coding
      "coded_bits_per_coordinate": coded,
      "suresh_bound": suresh_bound(spec, cfg.dim),
      "encode_s": statistics.median(enc_times),
      "decode_s": statistics.median(dec_times),
      "compile_s": compile_s,
  }
  say(f"{spec:<48} {out['bits_per_coordinate']:8.4f} bits/coord  vnmse {out['vnmse']:.4g}  "
      f"nmse {out['nmse']:.4g}  encode {out['encode_s'] * 1e3:.2f} ms  "
      f"decode {out['decode_s'] * 1e3:.2f} ms  compile {compile_s:.2f}s")
  return out


def format_table(metrics: dict) -> str:
  """The summary table: one row per spec."""
  head = (f"{'codec':<48} {'bits/coord':>10} {'vnmse':>10} {'nmse':>10} {'bound':>10} "
          f"{'encode ms':>10} {'decode ms':>10}")
  rows = [head, "-" * len(head)]
  for spec, m in metrics.items():
    bound = "-" if m["suresh_bound"] is None else f"{m['suresh_bound']:.4g}"
    rows.append(f"{spec:<48} {m['bits_per_coordinate']:>10.4f} {m['vnmse']:>10.4g} "
                f"{m['nmse']:>10.4g} {bound:>10} {m['encode_s'] * 1e3:>10.2f} "
                f"{m['decode_s'] * 1e3:>10.2f}")
  return "\n".join(rows)


def plot_vnmse_vs_bits(path, metrics: dict, title: str) -> None:
  """Log-log: vnmse against bits per coordinate, one labelled point per spec (and its bound)."""
  fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
  points = [(s, m) for s, m in metrics.items() if m["vnmse"] > 0]  # log axes: drop exact
  bits = lambda ms: [m["bits_per_coordinate"] for m in ms]
  if points:
    ax.scatter(bits(m for _, m in points), [m["vnmse"] for _, m in points],
               label="measured vNMSE", zorder=3)
    for i, (spec, m) in enumerate(points):  # alternate sides: equal-bits specs stack
      ax.annotate(spec, (m["bits_per_coordinate"], m["vnmse"]), textcoords="offset points",
                  xytext=(5, 3) if i % 2 else (5, -9), fontsize=7)
    ticks = sorted(set(bits(m for _, m in points)))  # tick the measured rates themselves
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
  bounds = [m for _, m in points if m["suresh_bound"] is not None]
  if bounds:
    ax.scatter(bits(bounds), [m["suresh_bound"] for m in bounds], marker="x", color="gray",
               label="Suresh et al. bound")
    ax.legend(fontsize=8)
  exact = [s for s, m in metrics.items() if m["vnmse"] <= 0]
  if exact:
    ax.text(0.01, 0.01, "vNMSE 0 (not shown): " + ", ".join(exact), transform=ax.transAxes,
            fontsize=7, va="bottom")
  ax.set_yscale("log")
  ax.set(xlabel="bits per coordinate", ylabel="vNMSE (one client)")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3, which="both")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def run(cfg: Config, output_dir: str, verbose: bool = True) -> dict:
  """Measures every codec spec of `cfg`, writing to `output_dir`; returns result.json's content."""
  cfg.validate()
  say = print if verbose else (lambda *a, **k: None)
  ndev = _num_devices(cfg.num_clients)
  mesh = fc.clients_mesh(ndev)
  clients_sharding = NamedSharding(mesh, P(CLIENTS_AXIS))
  sample = make_sampler(cfg.distribution, cfg.num_clients, cfg.dim, clients_sharding)
  ids = jax.device_put(jnp.arange(cfg.num_clients, dtype=jnp.int32), clients_sharding)
  say(f"DME: {cfg.num_clients} clients x {cfg.dim} coordinates ({cfg.distribution}), "
      f"{cfg.trials} trials, {ndev} {jax.default_backend()} device(s)")
  recorder = results.RunRecorder(output_dir, "dme")
  metrics = {spec: measure_codec(spec, cfg, mesh, sample, ids, say=say, log=recorder.log)
             for spec in cfg.codecs}
  plot_vnmse_vs_bits(f"{output_dir}/vnmse_vs_bits.png", metrics, f"DME: n={cfg.num_clients}, "
                     f"d={cfg.dim}, {cfg.distribution}, {cfg.trials} trials")
  extras = {"config": dataclasses.asdict(cfg), "seed": cfg.seed, "devices_used": ndev,
            **results.environment()}
  path = recorder.finish(succeeded=True, metrics=metrics, extras=extras)
  say("\n" + format_table(metrics) + f"\nresults: {path}")
  return json.loads(path.read_text())


def config_from_flags(holders: dict) -> Config:
  """The checked Config of the flags: --codec alone when given, else the --codecs list."""
  specs = ((holders["codec"].value,) if holders["codec"].present
           else parse_codec_list(holders["codecs"].value))
  cfg = Config(codecs=specs, dim=_int("dim", holders["dim"].value, *_DIM),
               num_clients=_int("num_clients", holders["num_clients"].value, *_AT_LEAST_1),
               distribution=holders["distribution"].value,
               trials=_int("trials", holders["trials"].value, *_AT_LEAST_1),
               seed=_int("seed", holders["seed"].value, *_SEED))
  cfg.validate()
  return cfg


def main(holders: dict) -> int:
  if holders["codec"].present and holders["codecs"].present:
    print("note: --codec given, so --codecs is ignored")
  cfg = config_from_flags(holders)
  if _flags.RESUME.value:
    raise ValueError("--resume: a DME run has no checkpoint; use --overwrite")
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/dme",
                                overwrite=_flags.OVERWRITE.value)
  run(cfg, out)
  return 0


if __name__ == "__main__":
  _HOLDERS = define_flags()
  _flags.main(lambda: main(_HOLDERS))
