"""What the throughput benchmarks time, set up once for all of them.

* A FedAvg round on synthetic clients, as the device store runs it (sample
  -> scan over vmapped chunks of client updates -> weighted mean -> server
  update, one jitted step), and its reference: the per-client Python loop
  `fedjax_comp.algorithms.reference.cohort_sums` (FedJAX's default backend).
  `setup` builds both; `measure_throughput` times them against each other.
* The compression kernels and their yardstick, a copy ``-x`` of an array of
  the same size (`copy`, `fwht`, `quantize_pack`, `unpack_dequantize`, the
  last two native on a CPU, with their XLA versions as `*_xla` rows);
  `measure_kernels` times them.

`benchmarks.throughput`, `benchmarks.kernels`, the CI check
(`benchmarks.throughput_check`), `scripts/profile_round.py` and
`scripts/device_bench.py` all take their subjects from here, so the check
times exactly what the benchmarks report. Not a runner: it defines no flags.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

import fedjax_comp as fc
from fedjax_comp import codecs, kernels, native
from fedjax_comp.algorithms import reference
from fedjax_comp.data.stores import memory_budget

from benchmarks._timing import Pair, seconds

# Synthetic inputs per model: MNIST-1D-like vectors, MNIST-like and CIFAR-like images.
INPUT_SHAPES = {"logistic": (40,), "mlp": (40,), "2nn": (28, 28), "cnn": (28, 28),
                "cifar_cnn": (32, 32, 3),
                # The published benchmark models, on their tasks' shapes.
                "emnist_cr": (28, 28, 1), "shakespeare_lstm": (80,),
                "stackoverflow_lstm": (20,), "stackoverflow_transformer": (20,),
                "cifar100_resnet18": (32, 32, 3)}
NUM_CLASSES = 10
# Classes (or vocabulary) of the models not measured on NUM_CLASSES; token models get
# random ids in [3, classes) as inputs and targets.
CLASSES = {"emnist_cr": 62, "shakespeare_lstm": 90, "stackoverflow_lstm": 10_004,
           "stackoverflow_transformer": 10_004, "cifar100_resnet18": 100}
TOKEN_MODELS = ("shakespeare_lstm", "stackoverflow_lstm", "stackoverflow_transformer")
CLIENT_LR = 0.01


def population_bytes(num_clients: int, examples: int, shape: tuple[int, ...]) -> int:
  """Bytes of `num_clients` synthetic clients: float32 x, int32 y, int32 counts."""
  return num_clients * (examples * (math.prod(shape) * 4 + 4) + 4)


def device_budget() -> int:
  """Bytes one device may fill: the device store's budget, half its memory (CPU devices
  share the RAM: half of it over their count)."""
  return memory_budget(fc.clients_mesh() if jax.device_count() > 1 else None)


def synthetic_clients(num_clients: int, examples: int, shape: tuple[int, ...],
                      seed: int, classes: int = NUM_CLASSES,
                      tokens: bool = False) -> fc.ClientArrays:
  rng = np.random.default_rng(seed)
  if tokens:
    x = rng.integers(3, classes, (num_clients, examples, *shape)).astype(np.int32)
    y = rng.integers(3, classes, (num_clients, examples, *shape)).astype(np.int32)
  else:
    x = rng.standard_normal((num_clients, examples, *shape), np.float32)
    y = rng.integers(0, classes, (num_clients, examples)).astype(np.int32)
  return fc.ClientArrays(features={"x": x, "y": y},
                         num_examples=np.full((num_clients,), examples, np.int32))


@dataclasses.dataclass
class RoundSetup:
  """One model's synthetic clients, as every size's round and the loop use them."""

  model: fc.Model
  schedule: fc.LocalSchedule
  host_clients: fc.ClientArrays  # numpy, for the per-client loop
  store: fc.DeviceStore  # the same clients on the device(s)
  mesh: Mesh | None
  chunk: int
  seed: int
  loop_algorithm: fc.FederatedAlgorithm  # one object: the loop jits once per client function

  def fed_avg(self, clients_per_round: int):
    """``(algorithm, state, rounds)``: a FedAvg round over `clients_per_round` clients of
    the store, its initial state on the mesh (no per-call reshard) and its bound rounds."""
    algorithm = build_fed_avg(self.model, self.schedule, clients_per_round, self.chunk,
                              self.mesh)
    state = fc.replicate(algorithm.init(self.seed), self.mesh)
    return algorithm, state, self.store.bind(algorithm, state.params)

  def loop(self, num_clients: int) -> Callable[[], object]:
    """The reference: clients 0..num_clients-1 by a Python loop of one jitted client call
    each (FedJAX's default backend), from the seed's initial model, as a callable."""
    state = self.loop_algorithm.init(self.seed)
    cohort = fc.Cohort(ids=jnp.arange(num_clients, dtype=jnp.int32), data=self.host_clients,
                       rows=(), num_clients=self.host_clients.num_clients)
    return lambda: reference.cohort_sums(self.loop_algorithm, state, cohort)


def build_fed_avg(model, schedule, clients_per_round: int, chunk: int, mesh):
  return fc.fed_avg(model, optax.sgd(CLIENT_LR), fc.server_optimizer("fedavg", 1.0), schedule,
                    clients_per_round=clients_per_round, client_chunk=chunk, mesh=mesh)


def setup(model_name: str, num_clients: int, *, examples: int = 20, batch_size: int = 10,
          local_steps: int = 2, chunk: int | None = None, seed: int = 0) -> RoundSetup:
  """`num_clients` synthetic clients shaped for `model_name`, on all local devices."""
  if model_name not in INPUT_SHAPES:
    raise ValueError(f"unknown model {model_name!r}; valid: {', '.join(INPUT_SHAPES)}")
  shape = INPUT_SHAPES[model_name]
  classes = CLASSES.get(model_name, NUM_CLASSES)
  model = fc.get_model(model_name, shape, classes)
  chunk = chunk or model.default_chunk(jax.default_backend())
  mesh = fc.clients_mesh() if jax.device_count() > 1 else None
  schedule = fc.LocalSchedule(batch_size=batch_size, steps=local_steps)
  host_clients = synthetic_clients(num_clients, examples, shape, seed, classes,
                                   model_name in TOKEN_MODELS)
  return RoundSetup(model, schedule, host_clients, fc.DeviceStore(host_clients, mesh=mesh),
                    mesh, chunk, seed, build_fed_avg(model, schedule, 1, chunk, None))


def compile_round(rounds, state):
  """``(call, compiled, compile_s)``: the store's step compiled ahead for `state`, and a
  callable running it from `state` (the same round every call; the state is not advanced).

  The compiled executable is kept (not only `rounds.compile`'s step) for its
  `memory_analysis`; it takes what `rounds.lower` lowered it with.
  """
  t = time.perf_counter()
  compiled = rounds.lower(state).compile()
  compile_s = time.perf_counter() - t
  return lambda: compiled(state, rounds.store.clients, rounds.rows), compiled, compile_s


def matmul_flops(fn, *args) -> float:
  """FLOPs of the matmuls and convolutions `fn(*args)` runs, counted from its jaxpr.

  A loop body counts once per iteration (a `scan`'s length), which XLA's
  `cost_analysis` does not do (it counts a while loop's body once: an
  LSTM over 80 steps would be credited 1/80 of its work). Elementwise work
  is not counted: this is the work the dense matmul rate is a yardstick for.
  """
  def count(jaxpr) -> float:
    total = 0.0
    for e in jaxpr.eqns:
      name = e.primitive.name
      if name == "dot_general":
        (lc, _), _ = e.params["dimension_numbers"]
        lhs = e.invars[0].aval.shape
        total += 2.0 * math.prod(e.outvars[0].aval.shape) * math.prod(lhs[d] for d in lc)
      elif name == "conv_general_dilated":
        rhs = e.invars[1].aval.shape  # OIHW-like: out features, in features / groups, window
        per_output = math.prod(rhs) / rhs[e.params["dimension_numbers"].rhs_spec[0]]
        total += 2.0 * math.prod(e.outvars[0].aval.shape) * per_output
      if name == "cond":  # one branch runs: count the costliest
        total += max(count(b.jaxpr) for b in e.params["branches"])
        continue
      times = e.params.get("length", 1) if name == "scan" else 1
      for v in e.params.values():
        for sub in (v if isinstance(v, (tuple, list)) else (v,)):
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns"):
            total += times * count(inner)
    return total

  return count(jax.make_jaxpr(fn)(*args).jaxpr)


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def dense_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  return 2 * n**3 / statistics.median(seconds(lambda: f(a)) for _ in range(repeats)) / 1e9


def measure_throughput(model_name: str, sizes: list[int], *, examples: int, batch_size: int,
                       local_steps: int, chunk: int | None, loop_clients: int, repeats: int,
                       seed: int, compile_only: bool = False, span_s: float = 0.2,
                       say=print) -> dict:
  """Times each size's round against the loop; returns the metrics of result.json."""
  su = setup(model_name, max(sizes), examples=examples, batch_size=batch_size,
             local_steps=local_steps, chunk=chunk, seed=seed)
  params = su.model.init(jax.random.key(seed))
  fwd_flops = matmul_flops(su.model.apply, params, jnp.zeros((1, *su.model.input_shape)))
  useful_flops_per_client = 3 * fwd_flops * min(examples, batch_size) * local_steps
  dense = dense_matmul_gflops()
  say(f"{model_name}: {fc.num_params(params):,} params, chunk {su.chunk}, "
      f"{jax.device_count()} {jax.default_backend()} device(s); dense matmul "
      f"{dense:.1f} GFLOP/s")
  loop_n = min(loop_clients, max(sizes))
  loop = su.loop(loop_n)  # sampled alternately with each size's round
  out = {"dense_matmul_gflops": dense, "client_chunk": su.chunk, "loop_clients": loop_n,
         "useful_flops_per_client": useful_flops_per_client}
  for m in sizes:
    _, state, rounds = su.fed_avg(m)
    call, compiled, compile_s = compile_round(rounds, state)
    memory = compiled.memory_analysis()
    # Per device: arguments (the replicated client arrays dominate) + XLA temporaries.
    xla_mb = (memory.argument_size_in_bytes + memory.temp_size_in_bytes +
              memory.output_size_in_bytes) / 2**20
    temp_mb = memory.temp_size_in_bytes / 2**20
    if compile_only:
      out[f"clients_{m}"] = {"compile_s": compile_s, "xla_memory_mb_per_device": xla_mb,
                             "xla_temp_mb_per_device": temp_mb}
      say(f"{m:6d} clients/round: compiled in {compile_s:.1f}s; XLA memory per device "
          f"{xla_mb:.0f} MB (temporaries {temp_mb:.0f} MB)")
      continue
    pair = Pair(call, loop, repeats, span_s)
    round_over_loop = pair.ratio()  # median of (round s / loop s), samples side by side
    sec, loop_sec = pair.medians
    rate = m / sec
    dense_now = dense_matmul_gflops()  # next to the round: a same-moment ratio
    e = out[f"clients_{m}"] = {
        "vmap_client_updates_per_sec": rate, "loop_client_updates_per_sec": loop_n / loop_sec,
        "speedup_vs_loop": m / loop_n / round_over_loop, "sec_per_round": sec,
        "compile_s": compile_s, "peak_rss_mb": peak_rss_mb(),
        "xla_memory_mb_per_device": xla_mb, "dense_matmul_gflops": dense_now,
        "flop_efficiency": useful_flops_per_client * rate / 1e9 / dense_now,
    }
    say(f"{m:6d} clients/round: {rate:9.0f} client updates/s  {sec * 1e3:9.1f} ms/round  "
        f"loop {e['loop_client_updates_per_sec']:7.0f}/s  x{e['speedup_vs_loop']:.1f} vs loop"
        f"  flop_eff {e['flop_efficiency']:.2f}  compile {compile_s:.1f}s  "
        f"peak {e['peak_rss_mb']:.0f} MB")
  big = [m for m in sizes if m >= 1000]
  if len(big) >= 2 and not compile_only:
    # The scaling target: cost per client from the smallest to the largest big round.
    out["cost_per_client_ratio"] = (out[f"clients_{big[-1]}"]["sec_per_round"] / big[-1]) / (
        out[f"clients_{big[0]}"]["sec_per_round"] / big[0])
  return out


# ----------------------------------------------------------------------------- kernels

DENSE_MAX_DIM = 4096  # H_4096 is 64 MB in float32; larger ones do not fit sensibly


def copy(x: jax.Array) -> jax.Array:
  """The yardstick: one read and one write of the array."""
  return -x


fwht = kernels.fwht


def quantize_pack(bits: int):
  """``(key, x) -> (words, lo, hi)``: `kernels.quantize_pack` (native on a CPU for long rows)."""
  return lambda key, x: kernels.quantize_pack(key, x, bits)


def unpack_dequantize(bits: int, dim: int):
  """``(words, lo, hi) -> x_hat [..., dim]``: the inverse, `kernels.unpack_dequantize`."""
  return lambda words, lo, hi: kernels.unpack_dequantize(words, lo, hi, bits, dim)


def quantize_pack_xla(bits: int):
  """`quantize_pack` by XLA's kernels in turn (`kernels.quantize`, then `kernels.pack`)."""
  def fn(key, x):
    codes, lo, hi = kernels.quantize(key, x, bits)
    return kernels.pack(codes, bits), lo, hi
  return fn


def unpack_dequantize_xla(bits: int, dim: int):
  """`unpack_dequantize` by XLA's kernels in turn."""
  def fn(words, lo, hi):
    return kernels.dequantize(kernels.unpack(words, bits, dim), lo, hi, bits)
  return fn


def kernel_bytes(batch: int, dim: int) -> int:
  """Bytes `measure_kernels` holds at once for one shape: input, output, copy, codes."""
  dense = dim if dim <= DENSE_MAX_DIM else 0
  return 4 * (4 * batch * dim + dense * dense)


def time_fn(fn, *args, repeats: int) -> tuple[float, float]:
  """(compile + first run seconds, median warm seconds)."""
  first = seconds(lambda: fn(*args))
  return first, statistics.median(seconds(lambda: fn(*args)) for _ in range(repeats))


def time_chained(fn, x, *, repeats: int) -> float:
  """Median seconds of ``x = fn(x)`` with `fn` donating its input (the output reuses its
  buffer: no fresh allocation, so no page faults on first touch), `fn` an involution or
  a negation so values stay bounded."""
  x = jax.block_until_ready(fn(jnp.copy(x)))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    x = jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def memcpy_seconds(x: jax.Array, repeats: int) -> float:
  """Median seconds of numpy's ``copyto`` of `x` into a preallocated array (memcpy)."""
  src = np.asarray(x)
  dst = np.empty_like(src)
  np.copyto(dst, src)
  return statistics.median(seconds(lambda: np.copyto(dst, src)) for _ in range(repeats))


def _nbytes(tree) -> int:
  return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def measure_kernels(shapes, bits_list, repeats: int, seed: int = 0, say=print,
                    log=lambda record: None) -> dict:
  """Times every kernel on each ``(batch, dim)`` shape; metrics keyed ``kernel@BxD``."""
  metrics, key = {}, jax.random.key(seed)

  best = {}  # shape -> the machine's best copy: numpy's memcpy or XLA's donated copy

  def record(name, shape, first, sec, bytes_moved, copy_s, **extra):
    m = {"sec": sec, "compile_s": max(first - sec, 0.0), "ratio_to_copy": sec / copy_s,
         "ratio_to_best_copy": sec / best[shape], "gb_per_s": bytes_moved / sec / 1e9, **extra}
    metrics[f"{name}@{shape[0]}x{shape[1]}"] = m
    log({"kernel": name, "shape": list(shape), **m})
    say(f"{name:<24} {shape[0]:>5}x{shape[1]:<8} {sec * 1e3:9.2f} ms  "
        f"{m['ratio_to_copy']:6.2f}x copy  {m['gb_per_s']:6.2f} GB/s")

  for shape in shapes:
    x = jax.random.normal(jax.random.fold_in(key, shape[0] * shape[1]), shape, jnp.float32)
    nbytes = x.size * 4
    first, copy_s = time_fn(jax.jit(copy), x, repeats=repeats)
    memcpy_s = memcpy_seconds(x, repeats)
    donated_s = time_chained(jax.jit(copy, donate_argnums=0), x, repeats=repeats)
    best[shape] = min(memcpy_s, donated_s)
    record("copy", shape, first, copy_s, 2 * nbytes, copy_s)
    record("memcpy", shape, memcpy_s, memcpy_s, 2 * nbytes, copy_s)
    record("copy_donated", shape, donated_s, donated_s, 2 * nbytes, copy_s)
    first, sec = time_fn(jax.jit(fwht), x, repeats=repeats)
    record("fwht", shape, first, sec, 2 * nbytes, copy_s)
    sec = time_chained(jax.jit(fwht, donate_argnums=0), x, repeats=repeats)
    record("fwht_donated", shape, sec, sec, 2 * nbytes, copy_s)
    if native.active():
      # fwht above is the native kernel; XLA's butterflies beside it
      first, sec = time_fn(jax.jit(functools.partial(fwht, impl="xla")), x, repeats=repeats)
      record("fwht_xla", shape, first, sec, 2 * nbytes, copy_s,
             native_speedup=sec / metrics[f"fwht@{shape[0]}x{shape[1]}"]["sec"])
    first, sec = time_fn(jax.jit(kernels.rotate), key, x, repeats=repeats)
    record("rotate", shape, first, sec, 2 * nbytes, copy_s)
    if shape[1] <= DENSE_MAX_DIM:
      h = jnp.asarray(kernels.hadamard_matrix(shape[1], np.float32) / np.sqrt(shape[1]))
      first, sec = time_fn(jax.jit(jnp.matmul), x, h, repeats=repeats)
      record("dense_hadamard", shape, first, sec, 2 * nbytes + h.size * 4, copy_s,
             fwht_speedup=sec / metrics[f"fwht@{shape[0]}x{shape[1]}"]["sec"])
    for bits in bits_list:
      qpack = jax.jit(quantize_pack(bits))
      packed = qpack(key, x)
      first, sec = time_fn(qpack, key, x, repeats=repeats)
      record(f"quantize_pack/{bits}", shape, first, sec, nbytes + _nbytes(packed), copy_s)
      first, sec = time_fn(jax.jit(unpack_dequantize(bits, shape[1])), *packed,
                           repeats=repeats)
      record(f"unpack_dequantize/{bits}", shape, first, sec, nbytes + _nbytes(packed), copy_s)
      if kernels.native_quantizer(shape[1]):  # the rows above were native: XLA's beside them
        first, sec = time_fn(jax.jit(quantize_pack_xla(bits)), key, x, repeats=repeats)
        record(f"quantize_pack_xla/{bits}", shape, first, sec, nbytes + _nbytes(packed), copy_s)
        first, sec = time_fn(jax.jit(unpack_dequantize_xla(bits, shape[1])), *packed,
                             repeats=repeats)
        record(f"unpack_dequantize_xla/{bits}", shape, first, sec, nbytes + _nbytes(packed),
               copy_s)
      if shape[0] == 1:
        _codec_roundtrip(record, key, x[0], bits, repeats, copy_s)
  return metrics


def _codec_roundtrip(record, key, vec, bits: int, repeats: int, copy_s: float) -> None:
  """encode + decode of ``hadamard,quantize(bits=b)`` on one vector, with its vNMSE."""
  codec = codecs.parse(f"hadamard,quantize(bits={bits})")

  @jax.jit
  def roundtrip(k, v):
    payload, _ = codec.encode(k, v, codec.init(v))
    return codec.decode(k, payload)

  first, sec = time_fn(roundtrip, key, vec, repeats=repeats)
  trial_keys = jax.random.split(jax.random.fold_in(key, 7), 20)
  errs = [float(jnp.sum((roundtrip(k, vec) - vec) ** 2) / jnp.sum(vec**2)) for k in trial_keys]
  record(f"codec_roundtrip/{bits}", (1, vec.shape[0]), first, sec, 2 * vec.size * 4, copy_s,
         vnmse=float(np.mean(errs)), bits_per_coordinate=codecs.uplink_bits(codec, vec)
         / vec.shape[0])
