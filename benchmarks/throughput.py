r"""Client updates per second of the vmapped round against a per-client Python loop.

::

  python -m benchmarks.throughput --model=mlp --output_dir=results/throughput
  python -m benchmarks.throughput --model=2nn --clients_per_round=1000

For each size in ``--clients_per_round`` it times one FedAvg round as the
device store runs it (sample -> scan over vmapped chunks of client updates
-> weighted mean -> server update) on synthetic inputs shaped for the model
(40 features for ``mlp`` and ``logistic``, 28x28 for ``2nn`` and ``cnn``,
32x32x3 for ``cifar_cnn``), each client holding ``--examples_per_client``
examples and taking ``--local_steps`` steps of ``--batch_size``. In the same
process it times the reference: the per-client Python loop
`fedjax_comp.algorithms.reference.cohort_sums`, one jitted client call per
client (FedJAX's default backend), on ``--loop_clients`` clients (its cost
per client is flat in the number of clients). The round and the loop are
sampled alternately (`benchmarks._timing.Pair`, as in the CI check):
``--repeats`` samples of each, every sample spanning about ``--span_ms`` of
back-to-back calls, each waited for with ``block_until_ready``.
``speedup_vs_loop`` is the median over the pairs of the quotient of two
samples taken one right after the other, so a slow moment of this noisy
machine slows both sides alike; the rates are the per-side medians. Compile
time is reported apart.

Per size, metrics hold ``vmap_client_updates_per_sec``,
``loop_client_updates_per_sec``, ``speedup_vs_loop``, ``sec_per_round``,
``compile_s``, ``peak_rss_mb`` (the process's peak so far; sizes run in
increasing order) and ``flop_efficiency``: useful FLOPs per second (3x the
forward matmul and convolution FLOPs of the examples trained on, counted
from the model's jaxpr with loop bodies times their trip count:
`_throughput_setup.matmul_flops`) over the rate of a dense
2048x2048 float32 matmul timed right after the round. The subjects are set
up in `benchmarks._throughput_setup`, shared with the CI check.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses

from absl import flags

from benchmarks import _flags
from benchmarks import _throughput_setup as subjects
from fedjax_comp.experiment import results


def _int(flag: str, text: str, low: int, high: int | None = None) -> int:
  """`text` as an integer in [low, high], or a ValueError naming the flag and the range."""
  rule = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
  try:
    value = int(str(text).strip())
  except ValueError:
    raise ValueError(f"--{flag} must be {rule}, got {text!r}") from None
  if value < low or (high is not None and value > high):
    raise ValueError(f"--{flag} must be {rule}, got {text!r}")
  return value


@dataclasses.dataclass(frozen=True)
class Config:
  """What is measured; checks itself (ranges, and memory before anything is allocated)."""

  model: str = "mlp"
  clients_per_round: tuple[int, ...] = (10, 100, 1000, 10000)
  examples_per_client: int = 20
  batch_size: int = 10
  local_steps: int = 2
  client_chunk: int | None = None  # None: the model's default for the backend
  loop_clients: int = 200
  repeats: int = 5
  span_ms: int = 200
  seed: int = 0
  compile_only: bool = False

  def __post_init__(self):
    if self.model not in subjects.INPUT_SHAPES:
      raise ValueError(f"unknown --model {self.model!r}; valid: "
                       f"{', '.join(subjects.INPUT_SHAPES)}")
    if not self.clients_per_round or min(self.clients_per_round) < 1:
      raise ValueError(f"--clients_per_round must be comma-separated integers >= 1, got "
                       f"{self.clients_per_round}")
    for name in ("examples_per_client", "batch_size", "local_steps", "loop_clients",
                 "repeats", "span_ms"):
      _int(name, getattr(self, name), 1)
    if self.client_chunk is not None:
      _int("client_chunk", self.client_chunk, 1)
    _int("seed", self.seed, 0, 2**32 - 1)

  def check_memory(self, budget: int) -> None:
    """Refuses, naming the bytes, a population over `budget` bytes per device."""
    m = max(self.clients_per_round)
    need = subjects.population_bytes(m, self.examples_per_client,
                                     subjects.INPUT_SHAPES[self.model])
    if need > budget:
      raise ValueError(
          f"--clients_per_round={m} with --examples_per_client={self.examples_per_client} "
          f"needs {need / 2**30:.2f} GiB of synthetic clients ({self.model} inputs "
          f"{subjects.INPUT_SHAPES[self.model]}) per device, over the budget of "
          f"{budget / 2**30:.2f} GiB (half a device's memory); lower either flag")


def define_flags() -> dict:
  """The runner's flags (as text: `config_from_flags` parses and checks them)."""
  d = Config()
  text = lambda name, default, help_text: flags.DEFINE_string(name, str(default), help_text)
  return {
      "model": text("model", d.model, f"Model: {', '.join(subjects.INPUT_SHAPES)}."),
      "clients_per_round": text("clients_per_round", ",".join(map(str, d.clients_per_round)),
                                "Comma-separated clients per round to measure."),
      "examples_per_client": text("examples_per_client", d.examples_per_client,
                                  "Examples per client."),
      "batch_size": text("batch_size", d.batch_size, "Local batch size."),
      "local_steps": text("local_steps", d.local_steps, "Local steps per client."),
      "client_chunk": text("client_chunk", "auto", "Clients per vmapped block, or 'auto'."),
      "loop_clients": text("loop_clients", d.loop_clients, "Clients timed in the Python loop."),
      "repeats": text("repeats", d.repeats, "Alternating samples of the round and the loop."),
      "span_ms": text("span_ms", d.span_ms, "Back-to-back calls per sample span about this "
                      "many milliseconds (a slower call is one sample)."),
      "seed": text("seed", d.seed, "Seed, in [0, 2**32)."),
      "compile_only": flags.DEFINE_bool(
          "compile_only", False, "Only compile each round and report XLA's memory analysis "
          "(for sizes too slow to run here, e.g. the CNN at 10,000 clients on a CPU)."),
  }


def config_from_flags(values: dict) -> Config:
  """The checked `Config` of the flags' values (text, as given on the command line)."""
  text = str(values["clients_per_round"])
  sizes = [s.strip() for s in text.split(",") if s.strip()]
  if not sizes or not all(s.isdigit() and int(s) >= 1 for s in sizes):
    raise ValueError(f"--clients_per_round must be comma-separated integers >= 1, got {text!r}")
  chunk = str(values["client_chunk"]).strip().lower()
  if chunk != "auto" and not (chunk.isdigit() and int(chunk) >= 1):
    raise ValueError(f"--client_chunk must be an integer >= 1 or 'auto', got "
                     f"{values['client_chunk']!r}")
  counts = {k: _int(k, values[k], 1) for k in ("examples_per_client", "batch_size",
                                               "local_steps", "loop_clients", "repeats",
                                               "span_ms")}
  return Config(model=str(values["model"]),
                clients_per_round=tuple(sorted({int(s) for s in sizes})),
                client_chunk=None if chunk == "auto" else int(chunk),
                seed=_int("seed", values["seed"], 0, 2**32 - 1),
                compile_only=bool(values["compile_only"]), **counts)


def main(holders: dict) -> int:
  cfg = config_from_flags({k: h.value for k, h in holders.items()})
  if _flags.RESUME.value:
    raise ValueError("--resume: a throughput run has no checkpoint; use --overwrite")
  cfg.check_memory(subjects.device_budget())
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/throughput",
                                overwrite=_flags.OVERWRITE.value)
  recorder = results.RunRecorder(out, f"throughput_{cfg.model}")
  sizes = list(cfg.clients_per_round)
  metrics = subjects.measure_throughput(
      cfg.model, sizes, examples=cfg.examples_per_client, batch_size=cfg.batch_size,
      local_steps=cfg.local_steps, chunk=cfg.client_chunk, loop_clients=cfg.loop_clients,
      repeats=cfg.repeats, seed=cfg.seed, compile_only=cfg.compile_only,
      span_s=cfg.span_ms / 1e3)
  for m in sizes:
    recorder.log({"clients_per_round": m, **metrics[f"clients_{m}"]})
  config = dataclasses.asdict(cfg)
  config.pop("seed")
  config.pop("client_chunk")  # metrics["client_chunk"] says which was used
  config["clients_per_round"] = sizes
  path = recorder.finish(succeeded=True, metrics=metrics,
                         extras={"config": config, "seed": cfg.seed, **results.environment()})
  print(f"results: {path}")
  return 0


if __name__ == "__main__":
  _HOLDERS = define_flags()
  _flags.main(lambda: main(_HOLDERS))
