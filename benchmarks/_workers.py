"""In-center workers for `benchmarks.latency` and `benchmarks.fl_vs_incenter`: train, then clock.

N workers split a dataset (IID by default), all of them train every step
with `fedjax_comp.algorithms.sync_sgd` or `periodic_averaging` (local SGD,
Delayed Gradient Averaging), and the workers' mean model is evaluated every
``eval_every`` steps. Training does not depend on the network; the simulated
clock of a run is computed afterwards from the links
(`clock.periodic_times`), so one training serves every network.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
import optax

from fedjax_comp import algorithms, codecs, evaluation, models, sharding
from fedjax_comp.data import ClientArrays, load_federated
from fedjax_comp.experiment import clock


@dataclasses.dataclass(frozen=True)
class WorkerTask:
  """What the workers train. Not a flag group: each runner fills it from its own flags."""

  dataset: str = "mnist1d"
  partition: str = "iid"
  dirichlet_alpha: float = 0.5
  data_dir: str | None = None
  num_workers: int = 16
  model: str = "mlp"
  steps: int = 6000
  batch_size: int | None = 32  # None: each worker's whole shard
  lr: float = 0.1
  eval_every: int = 200
  seed: int = 0
  codec: str = "none"

  def __post_init__(self):
    for name, low in (("num_workers", 1), ("steps", 1), ("eval_every", 1)):
      if getattr(self, name) < low:
        raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
    check_codec(self.codec)


def check_codec(spec: str) -> codecs.Codec:
  """The parsed codec; ValueError for a bad spec or one workers cannot use."""
  codec = codecs.parse(spec)
  if codec.structure is not None:
    raise ValueError(f"codec {spec!r}: structured codecs (low_rank, random_mask) only work "
                     "with FedAvg; use a sketch (quantize, hadamard, subsample)")
  return codec


@dataclasses.dataclass
class Workers:
  """Everything the trainings of one `WorkerTask` share."""

  task: WorkerTask
  model: models.Model
  codec: codecs.Codec
  shards: ClientArrays
  test_batches: evaluation.EvalBatches
  mesh: object
  up_bits: int  # one worker's upload, counted from the codec's payload arrays
  down_bits: int  # the float32 mean (model or gradient) the server sends back
  num_params: int


def setup(task: WorkerTask) -> Workers:
  data = load_federated(task.dataset, task.partition, num_clients=task.num_workers,
                        seed=task.seed, alpha=task.dirichlet_alpha, data_dir=task.data_dir)
  empty = (data.sizes() < 1).nonzero()[0]
  if empty.size:
    raise ValueError(f"partition {task.partition!r} left workers {empty.tolist()} without "
                     "data; use fewer workers or the iid partition")
  model = models.get_model(task.model, data.input_shape, data.num_classes)
  n_dev = jax.device_count()
  mesh = sharding.clients_mesh(n_dev) if n_dev > 1 and task.num_workers % n_dev == 0 else None
  params = jax.eval_shape(model.init, jax.random.key(0))  # shapes only: bits need no values
  codec = check_codec(task.codec)
  return Workers(task=task, model=model, codec=codec,
                 shards=sharding.replicate(data.clients, mesh),
                 test_batches=evaluation.batch_for_eval(data.test), mesh=mesh,
                 up_bits=codecs.uplink_bits(codec, params), down_bits=codecs.dense_bits(params),
                 num_params=models.num_params(params))


def build(w: Workers, *, period: int, delay: int = 0,
          sync_every_step: bool = False) -> algorithms.workers.WorkerAlgorithm:
  """Synchronous SGD (`sync_every_step`), else local SGD / DGA with (K, D)."""
  t = w.task
  if sync_every_step:
    return algorithms.sync_sgd(w.model.init, w.model.train_loss, optax.sgd(t.lr),
                               batch_size=t.batch_size, codec=w.codec, mesh=w.mesh)
  return algorithms.periodic_averaging(w.model.init, w.model.train_loss, optax.sgd(t.lr),
                                       period=period, delay=delay, batch_size=t.batch_size,
                                       codec=w.codec, mesh=w.mesh)


def train(w: Workers, alg: algorithms.workers.WorkerAlgorithm, *,
          say: Callable[[str], None] | None = print, label: str = "") -> dict:
  """Runs ``task.steps`` steps, evaluating every ``eval_every``; keeps what it measured.

  Returns:
    ``steps`` and ``test_accuracy`` at each evaluation (step 0 included),
    ``final_test_accuracy``, ``final_test_loss``, ``train_s`` (steady state),
    ``first_call_s`` (each chunk length's first call: compile plus its steps),
    ``steps_done``, and ``error`` (None, or the message naming the steps where
    the loss or the model became non-finite, after which training stopped).
  """
  say = say or (lambda _: None)
  t = w.task
  state = alg.init(t.seed, t.num_workers)
  evaluate = lambda s: jax.device_get(evaluation.evaluate(w.model, alg.model(s),  # noqa: E731
                                                          w.test_batches))
  ev = evaluate(state)
  history = {"steps": [0], "test_accuracy": [float(ev["accuracy"])]}
  first_call_s = train_s = 0.0
  done, error, last = 0, None, (float(ev["accuracy"]), float(ev["loss"]))
  while done < t.steps:
    n = min(t.eval_every, t.steps - done)
    start = time.perf_counter()
    new_state, metrics = alg.run(state, w.shards, n)
    losses = np.asarray(jax.device_get(metrics.loss))
    elapsed = time.perf_counter() - start
    if done == 0 or n != t.eval_every:
      first_call_s += elapsed  # the first call of each length compiles
    else:
      train_s += elapsed
    if not (bool(metrics.finite) and np.isfinite(losses).all()):
      error = (f"non-finite loss or model between steps {done + 1} and {done + n}; stopping. "
               "Try a smaller learning rate.")
      say(f"{label}: {error}")
      break
    state, done = new_state, done + n
    ev = evaluate(state)
    last = (float(ev["accuracy"]), float(ev["loss"]))
    history["steps"].append(done)
    history["test_accuracy"].append(last[0])
  say(f"{label:<28} test_acc {last[0]:.4f} after {done} steps "
      f"({train_s + first_call_s:.1f}s, compile included)")
  return {**history, "final_test_accuracy": last[0], "final_test_loss": last[1],
          "steps_done": done, "train_s": train_s, "first_call_s": first_call_s, "error": error}


def links(w: Workers, net: clock.NetworkModel) -> clock.Links:
  """The workers' links under `net` (drawn from the task's seed)."""
  return clock.sample_links(net, w.task.num_workers, w.task.seed)


def comm_and_step(w: Workers, worker_links: clock.Links) -> tuple[float, float]:
  """(seconds of one averaging through the server, seconds of one lock-step step)."""
  ids = np.arange(w.task.num_workers)
  comm = clock.allreduce_time(worker_links, ids, up_bits=w.up_bits, down_bits=w.down_bits)
  return comm, float(np.max(worker_links.step_s))


def derived_delay(w: Workers, worker_links: clock.Links) -> int:
  """The D that hides one averaging behind local steps (`clock.delay_steps`)."""
  ids = np.arange(w.task.num_workers)
  return clock.delay_steps(worker_links, ids, up_bits=w.up_bits, down_bits=w.down_bits)


def times_at(w: Workers, worker_links: clock.Links, steps: list[int], *, period: int,
             delay: int = 0) -> list[float]:
  """The simulated clock at each of `steps` (0 at step 0), averaging every K with delay D."""
  comm, step = comm_and_step(w, worker_links)
  after = clock.periodic_times(w.task.steps, period, delay, step, comm)
  return [0.0 if k == 0 else float(after[k - 1]) for k in steps]
