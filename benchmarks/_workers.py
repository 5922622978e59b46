"""Shared driver of the worker-based runners (`benchmarks.latency`, `benchmarks.fl_vs_incenter`).

Loads a dataset split over N workers, trains it with `fedjax_comp.distributed`
(synchronous SGD, local SGD or DGA), evaluating the workers' mean model every
``eval_every`` steps, and turns a network model into the simulated clock of
the run (`network.periodic_times`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import numpy as np
import optax

import fedjax_comp as fc
from benchmarks._parse import check_names, raise_first_failed
from fedjax_comp import distributed, network


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
  dataset: str = "mnist1d"
  partition: str = "iid"
  dirichlet_alpha: float = 0.5
  num_workers: int = 16
  model: str = "mlp"
  steps: int = 6000
  batch_size: int | None = 32  # None: each worker's whole shard
  lr: float = 0.1
  eval_every: int = 200
  seed: int = 0
  codec: str = "none"
  data_dir: str | None = None

  def validate(self) -> None:
    """Raises ValueError naming the flag and its valid range."""
    checks = [
        (self.num_workers >= 1, f"--num_workers must be >= 1, got {self.num_workers}"),
        (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
        (self.batch_size is None or self.batch_size >= 1,
         f"--batch_size must be >= 1 or 'inf', got {self.batch_size}"),
        (self.lr > 0 and math.isfinite(self.lr), f"--lr must be > 0, got {self.lr}"),
        (self.eval_every >= 1, f"--eval_every must be >= 1, got {self.eval_every}"),
        (self.dirichlet_alpha > 0, f"--dirichlet_alpha must be > 0, got {self.dirichlet_alpha}"),
    ]
    raise_first_failed(checks)
    codec = check_names(dataset=self.dataset, model=self.model, codec=self.codec)
    if codec.structure is not None:
      raise ValueError(f"--codec {self.codec!r}: structured codecs (low_rank, random_mask) "
                       "only work with FedAvg; use a sketch (quantize, hadamard, subsample)")


@dataclasses.dataclass
class Setup:
  """What every training of one `WorkerConfig` shares."""

  cfg: WorkerConfig
  data: fc.FederatedDataset
  model: fc.Model
  shards: fc.ClientArrays
  test_batches: tuple
  mesh: object
  up_bits: int  # one worker's upload, from the codec's payload arrays
  down_bits: int  # the float32 model (or gradient) the server sends back
  num_params: int


def setup(cfg: WorkerConfig) -> Setup:
  cfg.validate()
  data = fc.load_federated(cfg.dataset, cfg.partition, num_clients=cfg.num_workers,
                           seed=cfg.seed, alpha=cfg.dirichlet_alpha, data_dir=cfg.data_dir)
  empty = (np.asarray(data.clients.num_examples) < 1).nonzero()[0]
  if empty.size:
    raise ValueError(f"--partition={cfg.partition} left workers {empty.tolist()} without "
                     "data; use fewer --num_workers or --partition=iid")
  model = fc.get_model(cfg.model, data.input_shape, data.num_classes)
  n_dev = jax.device_count()
  mesh = fc.clients_mesh(n_dev) if n_dev > 1 and cfg.num_workers % n_dev == 0 else None
  params = jax.eval_shape(model.init, jax.random.key(0))  # shapes only: bits need no values
  codec = fc.codecs.parse(cfg.codec)
  return Setup(cfg=cfg, data=data, model=model, shards=fc.replicate(data.clients, mesh),
               test_batches=fc.batch_for_eval(data.test.x, data.test.y), mesh=mesh,
               up_bits=fc.uplink_bits(codec, params), down_bits=fc.codecs.dense_bits(params),
               num_params=fc.num_params(params))


def build(s: Setup, *, period: int, delay: int, sync_every_step: bool = False
          ) -> distributed.WorkerAlgorithm:
  """Synchronous SGD (`sync_every_step`), else local SGD / DGA with (K, D)."""
  loss = fc.masked_cross_entropy(s.model)
  codec = fc.codecs.parse(s.cfg.codec)
  if sync_every_step:
    return distributed.sync_sgd(s.model.init, loss, optax.sgd(s.cfg.lr),
                                batch_size=s.cfg.batch_size, codec=codec, mesh=s.mesh)
  return distributed.periodic_averaging(s.model.init, loss, optax.sgd(s.cfg.lr), period=period,
                                        delay=delay, batch_size=s.cfg.batch_size, codec=codec,
                                        mesh=s.mesh)


def train(s: Setup, alg: distributed.WorkerAlgorithm, *,
          say: Callable[[str], None] = print, label: str = "") -> dict:
  """Runs ``cfg.steps`` steps, evaluating every ``eval_every``; never loses what it measured.

  Returns:
    ``steps`` and ``test_accuracy`` at each evaluation (step 0 included),
    ``final_test_accuracy``, ``final_test_loss``, ``train_s`` (steady state),
    ``first_call_s`` (each chunk length's first call: compile plus its steps),
    ``steps_done``, and ``error`` (None, or the message naming the steps where
    the loss or the model became non-finite, after which training stopped).
  """
  cfg = s.cfg
  state = alg.init(cfg.seed, cfg.num_workers)
  ev = jax.device_get(fc.evaluate(s.model, alg.model(state), s.test_batches))
  history = {"steps": [0], "test_accuracy": [float(ev.accuracy)]}
  first_call_s = train_s = 0.0
  done, error, last = 0, None, (float(ev.accuracy), float(ev.loss))
  while done < cfg.steps:
    n = min(cfg.eval_every, cfg.steps - done)
    t = time.perf_counter()
    new_state, metrics = alg.run(state, s.shards, n)
    losses = np.asarray(jax.device_get(metrics.loss))
    elapsed = time.perf_counter() - t
    if done == 0 or n != cfg.eval_every:
      first_call_s += elapsed  # the first call of each length compiles
    else:
      train_s += elapsed
    if not (bool(metrics.finite) and np.isfinite(losses).all()):
      error = (f"non-finite loss or model between steps {done + 1} and {done + n}; stopping. "
               "Try a smaller --lr.")
      say(f"{label}: {error}")
      break
    state, done = new_state, done + n
    ev = jax.device_get(fc.evaluate(s.model, alg.model(state), s.test_batches))
    last = (float(ev.accuracy), float(ev.loss))
    history["steps"].append(done)
    history["test_accuracy"].append(last[0])
  say(f"{label:<28} test_acc {last[0]:.4f} after {done} steps "
      f"({train_s + first_call_s:.1f}s, compile included)")
  return {**history, "final_test_accuracy": last[0], "final_test_loss": last[1],
          "steps_done": done, "train_s": train_s, "first_call_s": first_call_s, "error": error}


def worker_links(s: Setup, net: network.NetworkModel) -> network.Links:
  return network.sample_links(net, s.cfg.num_workers, s.cfg.seed)


def comm_and_step(s: Setup, links: network.Links) -> tuple[float, float]:
  """(seconds of one averaging through the server, seconds of one lock-step step)."""
  ids = np.arange(s.cfg.num_workers)
  comm = network.allreduce_time(links, ids, up_bits=s.up_bits, down_bits=s.down_bits)
  return comm, float(np.max(links.step_s))


def derived_delay(s: Setup, links: network.Links) -> int:
  """D that hides the averaging behind local steps (`network.delay_steps`)."""
  ids = np.arange(s.cfg.num_workers)
  return network.delay_steps(links, ids, up_bits=s.up_bits, down_bits=s.down_bits)


def clock(s: Setup, links: network.Links, *, period: int, delay: int) -> np.ndarray:
  """Simulated clock after each step (index 0 is step 1)."""
  comm, step = comm_and_step(s, links)
  return network.periodic_times(s.cfg.steps, period, delay, step, comm)


def times_at(clock_s: np.ndarray, steps) -> list[float]:
  """The clock at evaluation steps (0 at step 0)."""
  return [0.0 if k == 0 else float(clock_s[k - 1]) for k in steps]


def parse_int_list(text: str, flag: str, *, low: int) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError as e:
    raise ValueError(f"--{flag} must be a comma-separated list of integers, got {text!r}") from e
  bad = [v for v in values if v < low]
  if bad:
    raise ValueError(f"--{flag} values must be >= {low}, got {bad}")
  return values


def parse_float_list(text: str, flag: str, *, low: float) -> list[float]:
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError as e:
    raise ValueError(f"--{flag} must be a comma-separated list of numbers, got {text!r}") from e
  bad = [v for v in values if not v >= low or v == float("inf")]
  if not values or bad:
    raise ValueError(f"--{flag} must be a non-empty list of finite values >= {low}, got {text!r}")
  return values
