r"""Client updates per second of the vmapped round against a per-client Python loop.

::

  python -m benchmarks.throughput --model=mlp --output_dir=results/throughput
  python -m benchmarks.throughput --model=2nn --clients_per_round=1000

For each size in ``--clients_per_round`` it times one FedAvg round (sample ->
scan over vmapped chunks of client updates -> weighted mean -> server update)
on synthetic inputs shaped for the model (40 features for ``mlp`` and
``logistic``, 28x28 for ``2nn`` and ``cnn``, 32x32x3 for ``cifar_cnn``), each
client holding ``--examples_per_client`` examples and taking
``--local_steps`` steps of ``--batch_size``. In the same process it times the
reference: a Python loop calling a jitted single-client update per client
(FedJAX's default backend), on ``--loop_clients`` clients (its cost per client
is flat in the number of clients). The round and the loop are sampled
alternately (`benchmarks._timing.Pair`, as in the CI check): ``--repeats``
samples of each, every sample spanning about ``--span_ms`` of back-to-back
calls, each waited for with ``block_until_ready``. ``speedup_vs_loop`` is the
median over the pairs of the quotient of two samples taken one right after
the other, so a slow moment of this noisy machine slows both sides alike;
the rates are the per-side medians. Compile time is reported apart.

Per size, metrics hold ``vmap_client_updates_per_sec``,
``loop_client_updates_per_sec``, ``speedup_vs_loop``, ``sec_per_round``,
``compile_s``, ``peak_rss_mb`` (the process's peak so far; sizes run in
increasing order) and ``flop_efficiency``: useful FLOPs per second (3x the
forward FLOPs of the examples trained on) over the rate of a dense
2048x2048 float32 matmul timed right after the round.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import resource
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from jax.sharding import Mesh

import fedjax_comp as fc
from fedjax_comp import results
from fedjax_comp.clients import ClientUpdateFn
from fedjax_comp.data.federated import ClientArrays

from benchmarks._parse import parse_chunk
from benchmarks._timing import Pair, seconds

_MODEL = flags.DEFINE_enum("model", "mlp", fc.MODELS, "Model.", allow_override=True)
_SIZES = flags.DEFINE_list("clients_per_round", ["10", "100", "1000", "10000"],
                           "Clients per round to measure.", allow_override=True)
_EXAMPLES = flags.DEFINE_integer("examples_per_client", 20, "Examples per client.", allow_override=True)
_BATCH = flags.DEFINE_integer("batch_size", 10, "Local batch size.", allow_override=True)
_STEPS = flags.DEFINE_integer("local_steps", 2, "Local steps per client.", allow_override=True)
_CHUNK = flags.DEFINE_string("client_chunk", "auto", "Clients per vmapped block, or 'auto'.", allow_override=True)
_LOOP_CLIENTS = flags.DEFINE_integer("loop_clients", 200, "Clients timed in the Python loop.", allow_override=True)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Alternating samples of the round and the loop.",
                                allow_override=True)
_SPAN_MS = flags.DEFINE_integer("span_ms", 200, "Back-to-back calls per sample span about this "
                                "many milliseconds (a slower call is one sample).", allow_override=True)
_SEED = flags.DEFINE_integer("seed", 0, "Seed.", allow_override=True)
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Only compile each round and report XLA's memory analysis "
    "(for sizes too slow to run on this machine, e.g. the CNN at 10,000 clients on a CPU).", allow_override=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/throughput", "Where results go.", allow_override=True)

INPUT_SHAPES = {"logistic": (40,), "mlp": (40,), "2nn": (28, 28), "cnn": (28, 28),
                "cifar_cnn": (32, 32, 3)}


def _median_time(fn, repeats: int) -> float:
  return statistics.median(seconds(fn) for _ in range(repeats))


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def dense_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  return 2 * n**3 / _median_time(lambda: f(a), repeats) / 1e9


def synthetic_clients(num_clients: int, examples: int, shape: tuple[int, ...],
                      seed: int) -> ClientArrays:
  rng = np.random.default_rng(seed)
  return ClientArrays(
      x=rng.standard_normal((num_clients, examples, *shape), np.float32),
      y=rng.integers(0, 10, (num_clients, examples)).astype(np.int32),
      num_examples=np.full((num_clients,), examples, np.int32))


class Setup(NamedTuple):
  """One model's synthetic clients and client update, as every size's round uses them."""

  model: fc.Model
  client_update: ClientUpdateFn
  host_clients: ClientArrays  # numpy, for the per-client loop
  clients: ClientArrays  # on the device(s)
  mesh: Mesh | None
  chunk: int
  seed: int

  def fed_avg(self, clients_per_round: int):
    """A FedAvg round over `clients_per_round` clients and its initial state (on the mesh)."""
    algorithm = fc.fed_avg(self.model.init, self.client_update,
                           fc.server_optimizer("fedavg", 1.0),
                           clients_per_round=clients_per_round, client_chunk=self.chunk,
                           mesh=self.mesh)
    return algorithm, fc.replicate(algorithm.init(self.seed), self.mesh)  # no per-call reshard

  def loop(self, num_clients: int):
    """The reference: clients 0..num_clients-1 by a Python loop of jitted single-client
    updates (FedJAX's default backend), from the seed's initial model, as a callable."""
    params = self.model.init(jax.random.key(self.seed))
    round_key = jax.random.key(self.seed)
    codec = fc.identity()  # one object: loop_round_sums caches its jit per (update, codec)
    return lambda: fc.loop_round_sums(self.client_update, codec, params, self.host_clients,
                                      range(num_clients), round_key)


def setup(model_name: str, num_clients: int, *, examples: int = 20, batch_size: int = 10,
          local_steps: int = 2, chunk: int | None = None, seed: int = 0) -> Setup:
  """`num_clients` synthetic clients shaped for `model_name`, on all local devices."""
  shape = INPUT_SHAPES[model_name]
  model = fc.get_model(model_name, shape, 10)
  chunk = chunk or fc.aggregation.default_chunk(model_name, jax.default_backend())
  mesh = fc.clients_mesh() if jax.device_count() > 1 else None
  client_update = fc.make_client_update(fc.masked_cross_entropy(model), optax.sgd(0.01),
                                        batch_size=batch_size, local_steps=local_steps)
  host_clients = synthetic_clients(num_clients, examples, shape, seed)
  return Setup(model, client_update, host_clients, fc.replicate(host_clients, mesh), mesh,
               chunk, seed)


def measure(model_name: str, sizes: list[int], *, examples: int, batch_size: int,
            local_steps: int, chunk: int | None, loop_clients: int, repeats: int,
            seed: int, compile_only: bool = False, span_s: float = 0.2, say=print) -> dict:
  """Runs the measurements; returns the metrics dict of result.json."""
  shape = INPUT_SHAPES[model_name]
  backend = jax.default_backend()
  su = setup(model_name, max(sizes), examples=examples, batch_size=batch_size,
             local_steps=local_steps, chunk=chunk, seed=seed)
  model, clients, chunk = su.model, su.clients, su.chunk
  params = model.init(jax.random.key(seed))
  fwd_flops = jax.jit(model.apply).lower(
      params, jnp.zeros((1, *shape))).compile().cost_analysis()["flops"]
  useful_flops_per_client = 3 * fwd_flops * min(examples, batch_size) * local_steps
  dense = dense_matmul_gflops()
  say(f"{model_name}: {fc.num_params(params):,} params, chunk {chunk}, "
      f"{jax.device_count()} {backend} device(s); dense matmul {dense:.1f} GFLOP/s")

  # The reference loop, sampled alternately with each size's round.
  loop_n = min(loop_clients, max(sizes))
  loop = su.loop(loop_n)

  out = {"dense_matmul_gflops": dense, "client_chunk": chunk, "loop_clients": loop_n,
         "useful_flops_per_client": useful_flops_per_client}
  for m in sizes:
    algorithm, state = su.fed_avg(m)
    t = time.perf_counter()
    round_fn = algorithm.round.lower(state, clients).compile()
    compile_s = time.perf_counter() - t
    memory = round_fn.memory_analysis()
    # Per device: arguments (the replicated client arrays dominate) + XLA temporaries.
    xla_mb = (memory.argument_size_in_bytes + memory.temp_size_in_bytes +
              memory.output_size_in_bytes) / 2**20
    if compile_only:
      out[f"clients_{m}"] = {"compile_s": compile_s, "xla_memory_mb_per_device": xla_mb,
                             "xla_temp_mb_per_device": memory.temp_size_in_bytes / 2**20}
      say(f"{m:6d} clients/round: compiled in {compile_s:.1f}s; XLA memory per device "
          f"{xla_mb:.0f} MB (temporaries {memory.temp_size_in_bytes / 2**20:.0f} MB)")
      continue
    pair = Pair(lambda: round_fn(state, clients), loop, repeats, span_s)
    round_over_loop = pair.ratio()  # median of (round s / loop s), samples side by side
    sec, loop_sec = pair.medians
    rate = m / sec
    dense_now = dense_matmul_gflops()  # next to the round: a same-moment ratio
    entry = {
        "vmap_client_updates_per_sec": rate, "loop_client_updates_per_sec": loop_n / loop_sec,
        "speedup_vs_loop": m / loop_n / round_over_loop, "sec_per_round": sec,
        "compile_s": compile_s,
        "peak_rss_mb": peak_rss_mb(), "xla_memory_mb_per_device": xla_mb,
        "dense_matmul_gflops": dense_now,
        "flop_efficiency": useful_flops_per_client * rate / 1e9 / dense_now,
    }
    out[f"clients_{m}"] = entry
    say(f"{m:6d} clients/round: {rate:9.0f} client updates/s  {sec * 1e3:9.1f} ms/round  "
        f"loop {entry['loop_client_updates_per_sec']:7.0f}/s  x{entry['speedup_vs_loop']:.1f} vs loop  flop_eff {entry['flop_efficiency']:.2f}  "
        f"compile {compile_s:.1f}s  peak {entry['peak_rss_mb']:.0f} MB")
  big = [m for m in sizes if m >= 1000]
  if len(big) >= 2 and not compile_only:
    # The scaling target: cost per client from the smallest to the largest big round.
    out["cost_per_client_ratio"] = (out[f"clients_{big[-1]}"]["sec_per_round"] / big[-1]) / (
        out[f"clients_{big[0]}"]["sec_per_round"] / big[0])
  return out


def main(argv):
  del argv
  sizes = sorted(int(s) for s in _SIZES.value)
  if not sizes or sizes[0] < 1:
    raise app.UsageError(f"--clients_per_round must be positive integers, got {_SIZES.value}")
  for name, value in (("examples_per_client", _EXAMPLES.value), ("batch_size", _BATCH.value),
                      ("local_steps", _STEPS.value), ("loop_clients", _LOOP_CLIENTS.value),
                      ("repeats", _REPEATS.value), ("span_ms", _SPAN_MS.value)):
    if value < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {value}")
  try:
    chunk = parse_chunk(_CHUNK.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  recorder = results.RunRecorder(_OUTPUT_DIR.value, f"throughput_{_MODEL.value}")
  metrics = measure(_MODEL.value, sizes, examples=_EXAMPLES.value, batch_size=_BATCH.value,
                    local_steps=_STEPS.value, chunk=chunk, loop_clients=_LOOP_CLIENTS.value,
                    repeats=_REPEATS.value, seed=_SEED.value, compile_only=_COMPILE_ONLY.value,
                    span_s=_SPAN_MS.value / 1e3)
  for m in sizes:
    recorder.log({"clients_per_round": m, **metrics[f"clients_{m}"]})
  config = {"model": _MODEL.value, "clients_per_round": sizes,
            "examples_per_client": _EXAMPLES.value, "batch_size": _BATCH.value,
            "local_steps": _STEPS.value, "loop_clients": _LOOP_CLIENTS.value,
            "repeats": _REPEATS.value, "span_ms": _SPAN_MS.value,
            "compile_only": _COMPILE_ONLY.value}
  path = recorder.finish(succeeded=True, metrics=metrics,
                         extras={"config": config, "seed": _SEED.value, **results.environment()})
  print(f"results: {path}")


if __name__ == "__main__":
  app.run(main)
