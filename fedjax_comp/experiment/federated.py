"""A federated experiment from a config: data, model, algorithm, client store, clock, loop.

::

  cfg = configs.FederatedConfig()                      # the main job's defaults
  exp = setup(cfg)                                     # everything, ready to run
  state, history = run(cfg, "results/fedavg")          # or: the loop with exp's pieces

`setup` chooses the client store: ``--client_store=device`` keeps the padded
population on the device(s) (refused, with the size, over its memory
budget); ``host`` keeps it ragged in host memory and sends each round's
cohort; ``auto`` is device while the padded population and its per-client
rows fit the budget, else host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from fedjax_comp import algorithms, codecs, evaluation, models, sharding
from fedjax_comp.algorithms import engine
from fedjax_comp.client_update import LocalSchedule
from fedjax_comp.data import federated, lazy
from fedjax_comp.data.federated_files import FILE_DATASETS, FileDataset
from fedjax_comp.data.host_store import HostStore
from fedjax_comp.data.stores import DeviceStore, memory_budget, row_stack_shapes, tree_bytes
from fedjax_comp.experiment import clock as clock_lib
from fedjax_comp.experiment import loop, results, tasks
from fedjax_comp.experiment.configs import FederatedConfig


@dataclasses.dataclass
class Experiment:
  """The pieces of one experiment, built and ready for `loop.run_rounds`."""

  cfg: FederatedConfig
  data: federated.FederatedDataset
  model: models.Model
  codec: codecs.Codec
  algorithm: algorithms.FederatedAlgorithm
  state: Any
  rounds: Any  # a bound client store
  store: str  # "device" or "host"
  store_reason: str
  evaluate: Callable[[Any], dict]
  clock: clock_lib.RoundClock | None
  mesh: Any

  def chunk_used(self) -> int:
    """The chunk the round runs with (a power of two with fixed-order sums)."""
    ndev = 1 if self.mesh is None else self.mesh.size
    return engine.layout(self.algorithm.clients_per_round, self.algorithm.client_chunk, ndev,
                         self.algorithm.reproducible)[0]

  def index_bits(self) -> dict[str, int]:
    """Bits of a client's upload's index lists by coding (top-k's; `codecs.index_bits`)."""
    one = codecs.index_bits(codecs.abstract_payload(self.codec, sharding.fetch(self.state.params)))
    payloads = 2 if self.cfg.train.algorithm == "scaffold" else 1  # scaffold sends Δy and Δc
    return {coding: payloads * bits for coding, bits in one.items()}

  def _index_note(self) -> str:
    return "".join(f"; of which {bits:,} bits of index list as {coding}"
                   for coding, bits in sorted(self.index_bits().items()))

  def describe(self) -> list[str]:
    d, t = self.cfg.data, self.cfg.train
    sizes = self.data.sizes()
    up = self.algorithm.uplink_bits(sharding.fetch(self.state.params))
    dense = codecs.dense_bits(sharding.fetch(self.state.params))
    lines = [
        f"{d.dataset}/{'natural' if isinstance(self.data, FileDataset) else d.partition}: "
        f"{self.data.num_clients} clients, {int(sizes.sum())} train "
        f"/ {len(self.data.test.y)} test examples; {t.model} "
        f"({models.num_params(self.state.params):,} params); {t.algorithm}, "
        f"{t.clients_per_round} clients/round, chunk {self.chunk_used()}, "
        f"{1 if self.mesh is None else self.mesh.size} {jax.default_backend()} device(s)"
        f"{', fixed-order sums' if t.reproducible else ''}",
        f"client store: {self.store} ({self.store_reason})",
        f"codec {t.codec!r}: {up:,} uplink bits per client per round "
        f"({dense / up:.1f}x smaller than float32{self._index_note()})"
        if t.algorithm != "scaffold" else
        f"codec {t.codec!r}: {up:,} uplink bits per client per round (Δy and Δc)"]
    if t.downlink_codec.strip().lower() not in ("", "none"):
      down = self.algorithm.downlink_bits(sharding.fetch(self.state.params))
      how = "distance to the clients' copy, EF21-P" if t.downlink_feedback else "last change"
      lines.append(f"downlink codec {t.downlink_codec!r}: {down:,} bits per broadcast "
                   f"({dense / down:.1f}x smaller than float32; sends the model's {how}); a "
                   f"sampled client downloads the broadcasts it missed, or the float32 model "
                   f"if fewer bits")
    if self.clock is not None:
      m = self.clock.links.medians()
      lines.append(f"network {self.cfg.network.network}: {self.clock.net.describe()}; realised "
                   f"medians: uplink {m['uplink_bps'] / 1e6:.3g} Mb/s, latency "
                   f"{m['latency_s'] * 1e3:.3g} ms")
    else:
      lines.append("network none: no simulated clock")
    return lines


def load_data(cfg: FederatedConfig, say=None):
  """The experiment's clients: a `FederatedDataset`, or for Synthetic(alpha, beta) with
  natural clients a `lazy.LazyDataset` (clients generated when sampled)."""
  d = cfg.data
  if d.dataset.partition(":")[0] in FILE_DATASETS:
    return FileDataset(d.dataset, d.data_dir, max_examples=d.max_examples,
                       test_clients=d.test_clients, seed=cfg.train.seed, say=say)
  if d.dataset in ("synthetic", "synthetic_iid") and d.partition == "natural":
    iid = d.dataset == "synthetic_iid"
    population = lazy.SyntheticPopulation(
        0.0 if iid else d.synthetic_alpha, 0.0 if iid else d.synthetic_beta,
        num_clients=d.num_clients, seed=cfg.train.seed, iid=iid, sizes=d.synthetic_sizes)
    return lazy.LazyDataset(d.dataset, population, max_examples=d.max_examples)
  return federated.load_federated(
      d.dataset, d.partition, num_clients=d.num_clients, seed=cfg.train.seed,
      alpha=d.dirichlet_alpha, shards_per_client=d.shards_per_client,
      max_examples=d.max_examples, data_dir=d.data_dir, synthetic_alpha=d.synthetic_alpha,
      synthetic_beta=d.synthetic_beta)


# Client sizes whose largest is more than this many times the median make
# "auto" pick one client per chunk on a CPU (see heavy_tail_chunk).
HEAVY_TAIL_RATIO = 8


def heavy_tail_chunk(data, backend: str, say=None) -> int | None:
  """``client_chunk="auto"``: 1 for a heavy-tailed population on a CPU, else the model's.

  A vmapped chunk runs as many local steps as its largest client needs, so
  with sizes spread over orders of magnitude wide chunks mostly compute
  padding. One client per chunk runs each client's own steps: 300 clients of
  1 to 5,000 examples, 30 per round, the MLP: 116 ms a round against 537 ms
  at the MLP's chunk of 25 (docs/performance.md). Accelerators keep their
  wide chunks.
  """
  sizes = data.sizes()
  median = max(float(np.median(sizes)), 1.0)
  if backend != "cpu" or sizes.max() <= HEAVY_TAIL_RATIO * median:
    return None
  if say:
    say(f"client sizes are heavy-tailed (largest {int(sizes.max())}, median {median:g}): "
        "one client per chunk, so each runs only its own local steps (--client_chunk to "
        "override)")
  return 1


def _raw_sizes(data):
  """Examples per client before the cap."""
  if hasattr(data, "client_indices"):
    return np.array([len(ix) for ix in data.client_indices], np.int64)
  return data.ragged().sizes()


def _store(cfg, data, algorithm, params, mesh, say=None):
  kind, d = cfg.data.client_store, cfg.data
  budget = memory_budget(mesh if mesh is not None and mesh.size > 1 else None)
  need = data.padded_bytes() + tree_bytes(row_stack_shapes(algorithm, params, data.num_clients))
  need_gib = f"{need / 2**30:.2f} GiB"
  if kind == "auto":
    kind = "device" if need <= budget else "host"
    reason = (f"auto: the padded population and its rows take {need_gib}, "
              f"{'within' if kind == 'device' else 'over'} the device budget of "
              f"{budget / 2**30:.2f} GiB")
  else:
    reason = f"--client_store={kind}; padded population and rows {need_gib}"
  if kind == "device":
    over = int((data.sizes() < _raw_sizes(data)).sum())
    if over and say:
      say(f"device store: {over} of {data.num_clients} clients hold more than "
          f"max_examples={d.max_examples} examples; each keeps its first {d.max_examples} "
          "(in partition order)")
    if need > budget:
      raise ValueError(
          f"--client_store=device: the padded population and its per-client rows need "
          f"{need_gib} per device, over the device store's budget of {budget / 2**30:.2f} GiB; "
          "use --client_store=host (ragged in host memory, one cohort sent per round)")
    return DeviceStore(data.clients, mesh=mesh, memory_budget_bytes=budget).bind(
        algorithm, params), "device", reason
  host = HostStore(data.ragged(), mesh=mesh, max_examples=d.max_examples,
                   min_bucket=cfg.train.batch_size or 1, say=say)
  return host.bind(algorithm, params), "host", reason


def setup(cfg: FederatedConfig, *, say: Callable[[str], None] | None = print) -> Experiment:
  """Builds the data, model, algorithm, store, state, evaluation and clock of `cfg`."""
  t = cfg.train
  try:
    codec = codecs.parse(t.codec)
  except ValueError as e:
    raise ValueError(f"--codec: {e}") from e
  file_data = cfg.data.dataset.partition(":")[0] in FILE_DATASETS
  if t.clients_per_round > cfg.data.num_clients and not file_data:
    raise ValueError(f"--clients_per_round must be in [1, num_clients="
                     f"{cfg.data.num_clients}], got {t.clients_per_round}")
  data = load_data(cfg, say)
  if t.clients_per_round > data.num_clients:
    raise ValueError(f"--clients_per_round must be in [1, {data.num_clients}] (the clients "
                     f"of {cfg.data.dataset}), got {t.clients_per_round}")
  model = models.get_model(t.model, data.input_shape, data.num_classes)
  devices = jax.device_count()
  if t.reproducible:  # fixed-order sums split the cohort into a power-of-two number of blocks
    devices = 1 << (devices.bit_length() - 1)
  mesh = sharding.clients_mesh(devices) if devices > 1 else None
  _check_codec_fits(codec, model, t.codec)
  chunk = t.client_chunk or heavy_tail_chunk(data, jax.default_backend(), say)
  algorithm = algorithms.build(
      t.algorithm, model, client_lr=t.client_lr,
      server_optimizer=algorithms.server_optimizer(t.server_optimizer, t.server_lr,
                                                   eps=t.server_eps, beta2=t.server_beta2),
      schedule=LocalSchedule(epochs=t.local_epochs, batch_size=t.batch_size,
                             steps=t.local_steps),
      clients_per_round=t.clients_per_round, codec=codec, client_chunk=chunk,
      mesh=mesh, reproducible=t.reproducible, **t.hparams())
  if t.downlink_codec.strip().lower() not in ("", "none"):  # parsed and its kind checked above
    _check_codec_fits(codecs.parse(t.downlink_codec), model, t.downlink_codec, "--downlink_codec")
  state = sharding.replicate(algorithm.init(t.seed), mesh)  # on the mesh: no per-call reshard
  rounds, store, reason = _store(cfg, data, algorithm, sharding.fetch(state.params), mesh, say)
  batches = evaluation.batch_for_eval(data.test, by_client=file_data)
  net = cfg.network.model()
  clock = clock_lib.RoundClock(net, data.num_clients, t.seed) if net is not None else None
  exp = Experiment(cfg=cfg, data=data, model=model, codec=codec, algorithm=algorithm,
                   state=state, rounds=rounds, store=store, store_reason=reason,
                   # Params fetched first: on a multi-process mesh they are global arrays.
                   evaluate=lambda s: evaluation.evaluate(model, sharding.fetch(s.params),
                                                          batches),
                   clock=clock, mesh=mesh)
  if say:
    for line in exp.describe():
      say(line)
  return exp


def _check_codec_fits(codec, model, spec: str, flag: str = "--codec") -> None:
  """Traces the codec on the model's shapes: a rank or k the model cannot take fails here."""
  params = jax.eval_shape(model.init, jax.random.key(0))
  try:
    codecs.uplink_bits(codec, params)
  except ValueError as e:
    reason = str(e).split("\n")[0]  # without JAX's traceback note
    raise ValueError(f"{flag}={spec!r} does not fit model {model.name!r}: {reason}") from None


def summary(exp: Experiment, history: loop.History) -> dict[str, Any]:
  """The experiment-specific metrics of result.json (beyond the loop's)."""
  params = sharding.fetch(exp.state.params)
  target = exp.cfg.network.target_accuracy
  up = exp.algorithm.uplink_bits(params)
  task = {}
  if exp.cfg.train.task != "none":
    spec = tasks.get_task(exp.cfg.train.task)
    task = {"task": spec.name,
            "reference_accuracy": spec.reference_accuracy.get(exp.cfg.train.server_optimizer),
            "reference_source": spec.reference_source}
  return {
      **task,
      "algorithm": exp.algorithm.name, "codec": exp.cfg.train.codec,
      "compression_ratio": codecs.dense_bits(params) / up,
      "uplink_index_bits": exp.index_bits(),  # top-k's index lists: {"positions"|"bitmap": bits}
      "downlink_codec": exp.cfg.train.downlink_codec,
      # one broadcast against float32; the realised ratio counts the catch-up downloads
      "downlink_compression_ratio": codecs.dense_bits(params) / exp.algorithm.downlink_bits(params),
      # (clients with data over the run: each uploaded `up` bits, resumed rounds included)
      "downlink_realised_ratio": (
          codecs.dense_bits(params) * (history.total_uplink_bits // up)
          / history.total_downlink_bits if history.total_downlink_bits else None),
      "num_params": models.num_params(params), "client_store": exp.store,
      "target_accuracy": target,
      "rounds_to_target": history.to_target("accuracy", target),
      "sim_time_to_target_s": (history.to_target("accuracy", target, "sim_time_s")
                               if exp.clock is not None else None),
      "network": ({"preset": exp.cfg.network.network,
                   "model": dataclasses.asdict(exp.clock.net),
                   "realised_medians": exp.clock.links.medians()}
                  if exp.clock is not None else {"preset": "none"}),
  }


def run(cfg: FederatedConfig, output_dir: str | None, *, resume: bool = False,
        say: Callable[[str], None] | None = print, name: str = "fedavg",
        keep_cohorts: bool = False) -> tuple[Experiment, Any, loop.History]:
  """Sets up and runs `cfg` (records under `output_dir`); returns the experiment, state, history."""
  exp = setup(cfg, say=say)
  extras = {"config": dataclasses.asdict(cfg), "seed": cfg.train.seed,
            "client_chunk": exp.chunk_used(), "client_store": exp.store,
            "num_devices": 1 if exp.mesh is None else exp.mesh.size,
            **results.environment()}
  state, history = loop.run_rounds(
      exp.algorithm, exp.state, exp.rounds, num_rounds=cfg.train.rounds,
      evaluate=exp.evaluate, eval_every=cfg.run.eval_every, clock=exp.clock,
      output_dir=output_dir, run_name=name, checkpoint_every=cfg.run.checkpoint_every,
      resume=resume, config=cfg.checkpoint_key(),
      result_metrics=lambda h: summary(exp, h), extras=extras, keep_cohorts=keep_cohorts,
      say=say)
  exp.state = state
  return exp, state, history
