"""What the check measures: the figures, their config, and how each is set up.

Every figure is a ratio of two subjects of `benchmarks._throughput_setup`
timed alternately in this process (`benchmarks._timing.Pair`): the vmapped
round over the per-client loop, or a kernel over a copy of the same array.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from benchmarks import _throughput_setup as subjects
from benchmarks._timing import Pair
from benchmarks.throughput_check import quiet
from benchmarks.throughput_check.slowdown import after_all_of, repeated
from benchmarks.throughput_check.verdict import HIGHER, LOWER
from fedjax_comp import kernels

PLACES = 3  # arrays a kernel figure cycles over
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
        f"time of kernels.quantize_pack ({BITS} bits; native on a CPU) over a copy of the input"),
    f"unpack_dequantize_ratio_to_copy/{BITS}": Figure(
        LOWER, 0.5, "unpack_dequantize",
        f"time of kernels.unpack_dequantize ({BITS} bits; native on a CPU) over a copy of the "
        "output"),
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
          "one_thread": quiet.ONE_THREAD}


def make_figure(name: str, cfg: Config, slowdown: int = 1, say=None) -> Callable[[], float]:
  """Sets up figure `name` (inputs, compiles, calibration); returns a function measuring it."""
  subject = FIGURES[name].subject
  if subject.endswith("_round"):
    return _round_figure(subject[:-len("_round")], cfg, slowdown, say)
  return _kernel_figure(subject, cfg, slowdown, say)


def _round_figure(model_name: str, cfg: Config, slowdown: int, say) -> Callable[[], float]:
  """Sets up the vmapped round's speedup over the per-client loop, as the benchmark times it."""
  m = cfg.clients_per_round
  su = subjects.setup(model_name, max(m, cfg.loop_clients), examples=cfg.examples_per_client,
                      batch_size=cfg.batch_size, local_steps=cfg.local_steps, seed=cfg.seed)
  _, state0, rounds = su.fed_avg(m)
  step = rounds.compile(state0)

  def vmapped_round():
    state = state0
    for _ in range(slowdown):  # injected: rounds back to back, each on the last one's state
      state, _ = step(state)
    return state

  pair = Pair(vmapped_round, su.loop(cfg.loop_clients), cfg.repeats, cfg.span_ms / 1e3, say)

  def measure() -> float:  # (m / round seconds) / (loop clients / loop seconds)
    return m / cfg.loop_clients / pair.ratio()

  return measure


def _kernel_figure(name: str, cfg: Config, slowdown: int, say) -> Callable[[], float]:
  """Sets up a kernel's time over a copy (``-x``) of an array of its input's (output's) size."""
  key = jax.random.key(cfg.seed)
  xs = [jax.random.normal(jax.random.fold_in(key, i), (cfg.kernel_batch, cfg.kernel_dim),
                          jnp.float32) for i in range(PLACES)]
  quantize_pack = subjects.quantize_pack(BITS)
  if name == "fwht":
    fn = repeated(subjects.fwht, slowdown, lambda args, out: (out,))
    args = [(x,) for x in xs]
  elif name == "quantize_pack":
    fn = repeated(quantize_pack, slowdown,
                  lambda args, out: (args[0], after_all_of(out, args[1])))
    args = [(key, x) for x in xs]
  elif name == "unpack_dequantize":
    fn = repeated(subjects.unpack_dequantize(BITS, cfg.kernel_dim), slowdown,
                  lambda args, out: (after_all_of(out, args[0]), *args[1:]))
    args = [jax.jit(quantize_pack)(key, x) for x in xs]
  else:
    raise ValueError(f"no kernel {name!r}")
  pair = Pair(_cycling(jax.jit(fn), args), _cycling(jax.jit(subjects.copy), [(x,) for x in xs]),
              cfg.repeats, cfg.span_ms / 1e3, say)
  return pair.ratio


def _cycling(fn, args: list[tuple]):
  """`fn` called on each of `args` in turn, its last few results kept alive.

  The placement in memory of a kernel's input and output buffers shifts its
  time relative to a copy's (cache sets, pages) a little, and differently in
  each process. Cycling over a few inputs, and keeping as many outputs
  alive so that the allocator hands out a different buffer each call,
  averages over placements within one process.
  """
  args, kept = itertools.cycle(args), collections.deque(maxlen=PLACES)

  def call():
    out = fn(*next(args))
    kept.append(out)
    return out

  return call
