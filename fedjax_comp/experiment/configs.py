"""The knobs of a federated experiment, in groups, each a frozen dataclass.

Every knob is declared once, as a field here with its default and its help
(field metadata); `benchmarks/_flags.py` turns each group into absl flags of
the same names, and a runner turns the flags back into these configs. Each
config checks itself on construction and raises a ValueError naming the
flag (``--name``) and its valid range.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fedjax_comp.algorithms import ALGORITHMS, SERVER_OPTIMIZERS
from fedjax_comp.data import DATASETS, FILE_DATASETS, PARTITIONS
from fedjax_comp.experiment.tasks import TASKS

STORES = ("auto", "device", "host")
NETWORKS = ("none", "datacenter", "wifi", "cellular")


def knob(default, help: str, **extra):  # pylint: disable=redefined-builtin
  """A config field with its flag help (and flag hints: ``words`` for int-or-word values)."""
  return dataclasses.field(default=default, metadata={"help": help, **extra})


def _fail(flag: str, rule: str, value) -> None:
  raise ValueError(f"--{flag} must be {rule}, got {value!r}")


def _int(flag, value, low, *, none_ok=False):
  if value is None and none_ok:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    _fail(flag, f"an integer >= {low}" + (" (or unset)" if none_ok else ""), value)


def _positive(flag, value):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and value > 0):
    _fail(flag, "a finite number > 0", value)


def _choice(flag, value, valid):
  if value not in valid:
    raise ValueError(f"unknown --{flag} {value!r}; valid: {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which clients: a dataset, how it is split, and where the clients live."""

  dataset: str = knob("mnist1d", "Dataset: " + ", ".join(DATASETS) + "; or read from the "
                      "published files in --data_dir (natural clients; --partition and "
                      "--num_clients are then the files'): " + ", ".join(FILE_DATASETS) + ".")
  partition: str = knob("dirichlet", "How to split the train set into clients: "
                        + ", ".join(PARTITIONS) + ".")
  num_clients: int = knob(2000, "Number of clients.")
  dirichlet_alpha: float = knob(0.5, "Dirichlet concentration (--partition=dirichlet).")
  shards_per_client: int = knob(2, "Shards per client (--partition=shards).")
  max_examples: int | None = knob(None, "Cap on a client's examples (its first ones are "
                                  "kept); default: no cap.")
  synthetic_alpha: float = knob(1.0, "Synthetic(alpha, beta): spread of the local models.")
  synthetic_beta: float = knob(1.0, "Synthetic(alpha, beta): spread of the local inputs.")
  synthetic_sizes: str = knob("capped", "Synthetic client sizes: capped (lognormal in "
                              "[10, 250]), fedprox (FedProx's lognormal(4, 2) + 50) or heavy "
                              "(lognormal, mean ~50, uncapped).")
  data_dir: str | None = knob(None, "The folder holding a file dataset's files, or TFDS's "
                              "data_dir for the image datasets.")
  test_clients: int | None = knob(None, "File datasets: evaluate on a seeded sample of this "
                                  "many test clients (default: all of them).")
  client_store: str = knob("auto", "Where the population lives: device (padded, on the "
                           "accelerator), host (ragged, a cohort sent per round) or auto "
                           "(device while it fits its memory budget).")

  def __post_init__(self):
    if self.dataset.split("/")[0].split(":")[0] not in DATASETS + FILE_DATASETS:
      raise ValueError(f"unknown --dataset {self.dataset!r}; valid: "
                       f"{', '.join(DATASETS + FILE_DATASETS)}")
    _int("test_clients", self.test_clients, 1, none_ok=True)
    _choice("partition", self.partition, PARTITIONS)
    _int("num_clients", self.num_clients, 1)
    _positive("dirichlet_alpha", self.dirichlet_alpha)
    _int("shards_per_client", self.shards_per_client, 1)
    _int("max_examples", self.max_examples, 1, none_ok=True)
    for flag in ("synthetic_alpha", "synthetic_beta"):
      value = getattr(self, flag)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        _fail(flag, "a finite number >= 0", value)
    _choice("client_store", self.client_store, STORES)
    _choice("synthetic_sizes", self.synthetic_sizes, ("capped", "fedprox", "heavy"))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to train: the model, the algorithm, local work, the server, the codec, the seed."""

  algorithm: str = knob("fedavg", "Federated algorithm: " + ", ".join(ALGORITHMS) + ".")
  model: str = knob("mlp", "Model (fedjax_comp.models).")
  clients_per_round: int = knob(100, "Clients sampled per round.")
  rounds: int = knob(300, "Rounds.")
  local_epochs: int = knob(5, "Local epochs E (ignored with --local_steps).")
  local_steps: int | None = knob(None, "Fixed local steps K instead of epochs.")
  batch_size: int | None = knob(10, "Local batch size B, or 'inf' for full batch.",
                                words=("inf", "none", "full"))
  client_lr: float = knob(0.05, "Client SGD learning rate.")
  server_optimizer: str = knob("fedavg", "Server optimizer on the pseudo-gradient -H: "
                               + ", ".join(SERVER_OPTIMIZERS) + ".")
  server_lr: float = knob(1.0, "Server learning rate.")
  server_eps: float | None = knob(None, "Adaptive server optimizers' epsilon (Reddi et al.'s "
                                  "tau; default 1e-3).")
  server_beta2: float | None = knob(None, "fedadam/fedyogi's beta2 (default 0.99).")
  task: str = knob("none", "A published protocol's preset (fedjax_comp.experiment.tasks): "
                   + ", ".join(TASKS) + "; sets the dataset, model, clients, batch, epochs, "
                   "rounds and learning rates (flags given win).")
  fedprox_mu: float | None = knob(None, "FedProx's proximal weight mu >= 0 "
                                  "(--algorithm=fedprox; default 0.01).")
  codec: str = knob("none", "Uplink codec spec, e.g. 'hadamard,quantize(bits=2)' or "
                    "'low_rank(rank=4)'; 'none' sends float32.")
  downlink_codec: str = knob("none", "Downlink codec spec: the server broadcasts a compressed "
                             "model change and clients train from its decode, e.g. "
                             "'hadamard,quantize(bits=4)'; 'none' broadcasts float32. A "
                             "sampled client downloads the broadcasts it missed since it "
                             "last trained, or the float32 model if fewer bits.")
  downlink_feedback: bool = knob(True, "With --downlink_codec: compress the model's distance "
                                 "from the clients' copy (EF21-P error feedback) instead of "
                                 "the last round's change.")
  client_chunk: int | None = knob(None, "Clients per vmapped block, or 'auto' (the model's "
                                  "default for the backend).", words=("auto",))
  reproducible: bool = knob(True, "Sum client updates in a fixed order, so a seed gives the "
                            "same numbers on any power-of-two device count (the chunk is then "
                            "a power of two; costs ~1-4% for logistic/mlp rounds, ~15-40% for "
                            "chunk-1 models such as 2nn/cnn on a CPU).")
  seed: int = knob(0, "Seed of the partition, sampling and training, in [0, 2**32).")

  def __post_init__(self):
    _choice("algorithm", self.algorithm, ALGORITHMS)
    _int("clients_per_round", self.clients_per_round, 1)
    _int("rounds", self.rounds, 1)
    _int("local_epochs", self.local_epochs, 1)
    _int("local_steps", self.local_steps, 1, none_ok=True)
    _int("batch_size", self.batch_size, 1, none_ok=True)
    _positive("client_lr", self.client_lr)
    _choice("server_optimizer", self.server_optimizer, SERVER_OPTIMIZERS)
    _positive("server_lr", self.server_lr)
    if self.server_eps is not None:
      _positive("server_eps", self.server_eps)
    if self.server_beta2 is not None and not (isinstance(self.server_beta2, (int, float))
                                              and 0 <= self.server_beta2 < 1):
      _fail("server_beta2", "a number in [0, 1)", self.server_beta2)
    _choice("task", self.task, ("none",) + tuple(TASKS))
    if self.fedprox_mu is not None:
      if not (isinstance(self.fedprox_mu, (int, float)) and math.isfinite(self.fedprox_mu)
              and self.fedprox_mu >= 0):
        _fail("fedprox_mu", "a finite number >= 0", self.fedprox_mu)
      if self.algorithm != "fedprox":
        raise ValueError(f"--fedprox_mu applies to --algorithm=fedprox only (got "
                         f"--algorithm={self.algorithm})")
    _int("client_chunk", self.client_chunk, 1, none_ok=True)
    if self.downlink_codec.strip().lower() not in ("", "none") and self.algorithm not in (
        "fedavg", "fedprox"):
      raise ValueError(f"--downlink_codec applies to --algorithm=fedavg or fedprox (got "
                       f"--algorithm={self.algorithm})")
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (
        0 <= self.seed < 2**32):
      _fail("seed", "an integer in [0, 2**32)", self.seed)

  def hparams(self) -> dict[str, Any]:
    """The algorithm's own knobs (`algorithms.build`'s keyword arguments)."""
    out = {}
    if self.algorithm == "fedprox":
      out["mu"] = 0.01 if self.fedprox_mu is None else float(self.fedprox_mu)
    if self.downlink_codec.strip().lower() not in ("", "none"):
      out.update(downlink_codec=self.downlink_codec, downlink_feedback=self.downlink_feedback)
    return out


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Evaluation and checkpoint cadence."""

  eval_every: int = knob(10, "Evaluate every this many rounds (and after the last).")
  checkpoint_every: int = knob(50, "Checkpoint every this many rounds (0: only the last).")

  def __post_init__(self):
    _int("eval_every", self.eval_every, 1)
    _int("checkpoint_every", self.checkpoint_every, 0)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """The simulated clock: a preset, overrides in the units people quote, a target."""

  network: str = knob("cellular", "Simulated network ('none': no clock): "
                      + ", ".join(NETWORKS[1:]) + ".")
  uplink_mbps: float | None = knob(None, "Median uplink bandwidth, Mb/s (default: the "
                                   "preset's).")
  downlink_mbps: float | None = knob(None, "Median downlink bandwidth, Mb/s (default: the "
                                     "preset's).")
  latency_ms: float | None = knob(None, "Median one-way latency, ms (default: the preset's).")
  step_ms: float | None = knob(None, "Median compute time of one local step, ms (default: "
                               "the preset's).")
  straggler_sigma: float | None = knob(None, "Lognormal sigma of the per-client spread of "
                                       "links and step times (default: the preset's).")
  target_accuracy: float = knob(0.55, "Test accuracy whose rounds and simulated time to "
                                "reach are reported.")

  def __post_init__(self):
    _choice("network", self.network, NETWORKS)
    for flag in ("uplink_mbps", "downlink_mbps"):
      value = getattr(self, flag)
      if value is not None:
        _positive(flag, value)
    for flag in ("latency_ms", "step_ms", "straggler_sigma"):
      value = getattr(self, flag)
      if value is not None and not (math.isfinite(value) and value >= 0):
        _fail(flag, "a finite number >= 0", value)
    if self.network == "none" and self.overrides():
      raise ValueError("--network=none takes no link overrides, got "
                       + ", ".join(f"--{k}" for k in self._set_overrides()))
    if not 0.0 <= self.target_accuracy <= 1.0:
      _fail("target_accuracy", "in [0, 1]", self.target_accuracy)

  def _set_overrides(self) -> list[str]:
    return [k for k in ("uplink_mbps", "downlink_mbps", "latency_ms", "step_ms",
                        "straggler_sigma") if getattr(self, k) is not None]

  def overrides(self) -> dict[str, float]:
    """The set overrides as `clock.NetworkModel` fields in SI units."""
    out = {}
    for k in self._set_overrides():
      v = getattr(self, k)
      # ms / 1e3 rather than ms * 1e-3: 100 ms is then exactly the double nearest 0.1 s.
      out[{"uplink_mbps": "uplink_bps", "downlink_mbps": "downlink_bps",
           "latency_ms": "latency_s", "step_ms": "step_s",
           "straggler_sigma": "straggler_sigma"}[k]] = (
               v * 1e6 if k.endswith("mbps") else v / 1e3 if k.endswith("_ms") else v)
    return out

  def model(self):
    """The `clock.NetworkModel`, or None for ``--network=none``."""
    from fedjax_comp.experiment import clock  # pylint: disable=g-import-not-at-top
    if self.network == "none":
      return None
    return clock.preset(self.network, **self.overrides())


@dataclasses.dataclass(frozen=True)
class FederatedConfig:
  """A whole federated experiment: the four groups."""

  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  run: RunConfig = dataclasses.field(default_factory=RunConfig)
  network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)

  def replace(self, **changes) -> "FederatedConfig":
    """A copy with knobs changed by name, whatever their group: ``cfg.replace(codec=...)``."""
    groups = {}
    for name, value in changes.items():
      group = next((g.name for g in dataclasses.fields(self)
                    if name in {f.name for f in dataclasses.fields(getattr(self, g.name))}),
                   None)
      if group is None:
        raise ValueError(f"no knob named {name!r}")
      groups.setdefault(group, {})[name] = value
    return dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **c)
                                        for g, c in groups.items()})

  def checkpoint_key(self) -> dict[str, Any]:
    """The knobs a resumed run must share with its checkpoint (cadence and target may change)."""
    d = {}
    for group in (self.data, self.train, self.network):
      d.update(dataclasses.asdict(group))
    for k in ("rounds", "target_accuracy"):
      d.pop(k)
    return d
