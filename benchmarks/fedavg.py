r"""FedAvg (and FedAvgM/FedAdam/FedYogi/FedAdagrad) on a federated dataset.

The main job, the defaults (a few minutes on 2 CPU cores, no download)::

  python -m benchmarks.fedavg --output_dir=results/fedavg

Dirichlet(0.5)-partitioned MNIST-1D, 2,000 clients, 100 per round, the MLP,
5 local epochs of batch 10. Expect about 55-60% test accuracy after 300 rounds
(the MLP reaches about 65-70% trained centrally). McMahan et al.'s setting::

  python -m benchmarks.fedavg --dataset=mnist --partition=shards \
    --num_clients=100 --clients_per_round=10 --model=cnn --local_epochs=5 \
    --batch_size=10 --client_lr=0.05 --rounds=200 --data_dir=~/tensorflow_datasets

Compressed uplinks (Konečný et al. 2016) are a flag away; see
`fedjax_comp.codecs` for the spec grammar::

  python -m benchmarks.fedavg --codec='hadamard,quantize(bits=2)'
  python -m benchmarks.fedavg --codec='random_mask(p=0.25),quantize(bits=4)'

Writes ``result.json``, ``metrics.jsonl`` (one line per round, with the
round's and the cumulative uplink bytes), ``accuracy.png`` and
``checkpoint.msgpack`` (every ``--checkpoint_every`` rounds and after the
last) to ``--output_dir``. A killed run continues with ``--resume``, ending
bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import json
import math
import pathlib
import sys
import time

import jax
import numpy as np
import optax
from absl import app, flags

import fedjax_comp as fc
from fedjax_comp import checkpoint, plotting, results
from fedjax_comp.data import partition as partition_lib

from benchmarks._parse import parse_batch_size, parse_chunk  # noqa: F401  (re-exported)

_DATASET = flags.DEFINE_enum("dataset", "mnist1d", fc.data.DATASETS, "Dataset.", allow_override=True)
_PARTITION = flags.DEFINE_enum("partition", "dirichlet", partition_lib.PARTITIONS,
                               "How to split the train set into clients.", allow_override=True)
_ALPHA = flags.DEFINE_float("dirichlet_alpha", 0.5, "Dirichlet concentration (partition=dirichlet).", allow_override=True)
_SHARDS = flags.DEFINE_integer("shards_per_client", 2, "Shards per client (partition=shards).", allow_override=True)
_NUM_CLIENTS = flags.DEFINE_integer("num_clients", 2000, "Number of clients.", allow_override=True)
_PER_ROUND = flags.DEFINE_integer("clients_per_round", 100, "Clients sampled per round.", allow_override=True)
_ROUNDS = flags.DEFINE_integer("rounds", 300, "Rounds.", allow_override=True)
_EPOCHS = flags.DEFINE_integer("local_epochs", 5, "Local epochs E (ignored with --local_steps).", allow_override=True)
_STEPS = flags.DEFINE_integer("local_steps", None, "Fixed local steps K instead of epochs.", allow_override=True)
_BATCH = flags.DEFINE_string("batch_size", "10", "Local batch size B, or 'inf' for full batch.", allow_override=True)
_CLIENT_LR = flags.DEFINE_float("client_lr", 0.05, "Client SGD learning rate.", allow_override=True)
_SERVER_OPT = flags.DEFINE_enum("server_optimizer", "fedavg", fc.SERVER_OPTIMIZERS,
                                "Server optimizer on the pseudo-gradient -H.", allow_override=True)
_SERVER_LR = flags.DEFINE_float("server_lr", 1.0, "Server learning rate.", allow_override=True)
_MODEL = flags.DEFINE_enum("model", "mlp", fc.MODELS, "Model.", allow_override=True)
_CHUNK = flags.DEFINE_string("client_chunk", "auto", "Clients per vmapped block, or 'auto'.", allow_override=True)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the partition, sampling and training.", allow_override=True)
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "Evaluate every this many rounds.", allow_override=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/fedavg", "Where results go.", allow_override=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for image datasets.", allow_override=True)
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Cap on examples per client.", allow_override=True)
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 50, "Checkpoint the run every this many rounds (0: never; the last "
    "round is always checkpointed).", allow_override=True)
_RESUME = flags.DEFINE_bool(
    "resume", False, "Continue from <output_dir>/checkpoint.msgpack if it exists.",
    allow_override=True)
_CODEC = flags.DEFINE_string(
    "codec", "none", "Uplink codec spec, e.g. 'subsample(p=0.0625),hadamard,quantize(bits=2)' "
    "or 'low_rank(rank=4)'; 'none' sends float32. Codecs: " + ", ".join(sorted(fc.codecs.REGISTRY)), allow_override=True)


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str = "mnist1d"
  partition: str = "dirichlet"
  dirichlet_alpha: float = 0.5
  shards_per_client: int = 2
  num_clients: int = 2000
  clients_per_round: int = 100
  rounds: int = 300
  local_epochs: int = 5
  local_steps: int | None = None
  batch_size: int | None = 10  # None is B = inf
  client_lr: float = 0.05
  server_optimizer: str = "fedavg"
  server_lr: float = 1.0
  model: str = "mlp"
  client_chunk: int | None = None  # None: default for model and backend
  seed: int = 0
  eval_every: int = 10
  data_dir: str | None = None
  max_examples: int | None = None
  codec: str = "none"
  checkpoint_every: int = 50  # 0: only the last round
  source_kwargs: dict = dataclasses.field(default_factory=dict)

  def validate(self) -> None:
    """Raises ValueError naming the flag and its valid range."""
    checks = [
        (self.num_clients >= 1, f"--num_clients must be >= 1, got {self.num_clients}"),
        (1 <= self.clients_per_round <= self.num_clients,
         f"--clients_per_round must be in [1, num_clients={self.num_clients}], "
         f"got {self.clients_per_round}"),
        (self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}"),
        (self.local_epochs >= 1, f"--local_epochs must be >= 1, got {self.local_epochs}"),
        (self.local_steps is None or self.local_steps >= 1,
         f"--local_steps must be >= 1 (or unset for epochs), got {self.local_steps}"),
        (self.batch_size is None or self.batch_size >= 1,
         f"--batch_size must be >= 1 or 'inf', got {self.batch_size}"),
        (self.client_lr > 0 and math.isfinite(self.client_lr),
         f"--client_lr must be > 0, got {self.client_lr}"),
        (self.server_lr > 0 and math.isfinite(self.server_lr),
         f"--server_lr must be > 0, got {self.server_lr}"),
        (self.client_chunk is None or self.client_chunk >= 1,
         f"--client_chunk must be >= 1 or 'auto', got {self.client_chunk}"),
        (self.eval_every >= 1, f"--eval_every must be >= 1, got {self.eval_every}"),
        (self.checkpoint_every >= 0,
         f"--checkpoint_every must be >= 0 (0: last round only), got {self.checkpoint_every}"),
        (self.dirichlet_alpha > 0, f"--dirichlet_alpha must be > 0, got {self.dirichlet_alpha}"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)
    if self.dataset.split("/")[0].split(":")[0] not in fc.data.DATASETS:
      raise ValueError(f"unknown --dataset {self.dataset!r}; valid: {', '.join(fc.data.DATASETS)}")
    if self.model not in fc.MODELS:
      raise ValueError(f"unknown --model {self.model!r}; valid: {', '.join(fc.MODELS)}")
    try:
      fc.codecs.parse(self.codec)
    except ValueError as e:
      raise ValueError(f"--codec: {e}") from e
    if self.server_optimizer not in fc.SERVER_OPTIMIZERS:
      raise ValueError(f"unknown --server_optimizer {self.server_optimizer!r}; valid: "
                       f"{', '.join(fc.SERVER_OPTIMIZERS)}")


CHECKPOINT = "checkpoint.msgpack"
# Config fields a resumed run may change (everything else must match the checkpoint).
_RESUMABLE_CHANGES = ("rounds", "eval_every", "checkpoint_every")


def _config_for_checkpoint(cfg: Config) -> dict:
  d = dataclasses.asdict(cfg)
  for k in _RESUMABLE_CHANGES:
    d.pop(k)
  return json.loads(json.dumps(d, default=str))


def run(cfg: Config, output_dir: str, *, verbose: bool = True, resume: bool = False) -> dict:
  """Runs FedAvg with `cfg`, writing results to `output_dir`; returns result.json's content.

  With `resume`, continues from ``<output_dir>/checkpoint.msgpack`` (written
  every ``cfg.checkpoint_every`` rounds and after the last): the final
  parameters are bit-identical to an uninterrupted run's, and
  ``metrics.jsonl`` holds every round exactly once.
  """
  cfg.validate()
  say = print if verbose else (lambda *a, **k: None)
  data = fc.load_federated(cfg.dataset, cfg.partition, num_clients=cfg.num_clients,
                           seed=cfg.seed, alpha=cfg.dirichlet_alpha,
                           shards_per_client=cfg.shards_per_client,
                           max_examples=cfg.max_examples, data_dir=cfg.data_dir,
                           **cfg.source_kwargs)
  model = fc.get_model(cfg.model, data.input_shape, data.num_classes)
  backend = jax.default_backend()
  chunk = cfg.client_chunk or fc.aggregation.default_chunk(cfg.model, backend)
  mesh = fc.clients_mesh() if jax.device_count() > 1 else None
  codec = fc.codecs.parse(cfg.codec)
  client_update = fc.make_client_update(
      fc.masked_cross_entropy(model), optax.sgd(cfg.client_lr),
      local_epochs=cfg.local_epochs, batch_size=cfg.batch_size, local_steps=cfg.local_steps,
      structure=codec.structure)
  algorithm = fc.fed_avg(model.init, client_update,
                         fc.server_optimizer(cfg.server_optimizer, cfg.server_lr),
                         clients_per_round=cfg.clients_per_round, client_chunk=chunk,
                         codec=codec, mesh=mesh)
  clients = fc.replicate(data.clients, mesh)
  test_batches = fc.batch_for_eval(data.test.x, data.test.y)
  state = fc.replicate(algorithm.init(cfg.seed), mesh)  # lives on the mesh: no per-call reshard
  num_params = fc.num_params(state.params)
  uplink_bits = fc.uplink_bits(codec, state.params)  # from the payload's real arrays
  compression_ratio = fc.codecs.dense_bits(state.params) / uplink_bits
  say(f"{cfg.dataset}/{cfg.partition}: {data.num_clients} clients, "
      f"{int(data.clients.num_examples.sum())} train / {len(data.test.y)} test examples; "
      f"{cfg.model} ({num_params:,} params); {cfg.clients_per_round} clients/round, "
      f"chunk {chunk}, {jax.device_count()} {backend} device(s)")
  say(f"codec {cfg.codec!r}: {uplink_bits:,} uplink bits per client per round "
      f"({compression_ratio:.1f}x smaller than float32)")

  ckpt_path = pathlib.Path(output_dir) / CHECKPOINT
  history = {"round": [], "test_accuracy": []}
  round_time, error = 0.0, None
  total_uplink_bits = 0
  last_eval = None
  start_round = 0
  if resume and ckpt_path.exists():
    restored, meta = checkpoint.load(ckpt_path, jax.device_get(state))
    if meta.get("config") != _config_for_checkpoint(cfg):
      raise ValueError(f"--resume: {ckpt_path} was written with another configuration "
                       f"({meta.get('config')}); only {', '.join(_RESUMABLE_CHANGES)} may change")
    state = fc.replicate(restored, mesh)
    start_round = int(meta["round"])
    total_uplink_bits, round_time = int(meta["total_uplink_bits"]), float(meta["round_time"])
    history, last_eval = meta["history"], meta["last_eval"]
    last_eval = tuple(last_eval) if last_eval else None
    say(f"resuming from round {start_round} ({ckpt_path})")
  elif resume:
    say(f"--resume: no {ckpt_path} yet; starting from round 0")
  recorder = results.RunRecorder(output_dir, "fedavg",
                                 resume_round=start_round if resume else None)

  def save_checkpoint(r):
    checkpoint.save(ckpt_path, state, {
        "round": r, "total_uplink_bits": total_uplink_bits, "round_time": round_time,
        "history": history, "last_eval": list(last_eval) if last_eval else None,
        "config": _config_for_checkpoint(cfg)})

  t0 = time.perf_counter()
  round_fn = algorithm.round.lower(state, clients).compile()
  compile_s = time.perf_counter() - t0
  r = start_round
  for r in range(start_round + 1, cfg.rounds + 1):
    t = time.perf_counter()
    state, metrics = round_fn(state, clients)
    metrics = jax.device_get(metrics)
    round_time += time.perf_counter() - t
    # Every client with data uploads one payload (an empty client sends nothing).
    round_bits = uplink_bits * int(metrics.num_clients)
    total_uplink_bits += round_bits
    record = {"round": r, "train_loss": float(metrics.train_loss),
              "update_norm": float(metrics.update_norm),
              "num_clients": int(metrics.num_clients), "num_steps": int(metrics.num_steps),
              "uplink_bits": round_bits, "round_uplink_bytes": round_bits / 8,
              "total_uplink_bytes": total_uplink_bits / 8}
    if not (bool(metrics.finite) and np.isfinite(metrics.train_loss)):
      what = ("aggregate (the update was not applied)" if not metrics.finite
              else "client train loss")
      error = (f"non-finite {what} at round {r}; stopping. "
               f"Try a smaller --client_lr or --server_lr.")
      record["error"] = error
      recorder.log(record)
      say(f"stopping: {error}")
      break
    if r % cfg.eval_every == 0 or r == cfg.rounds:
      ev = jax.device_get(fc.evaluate(model, state.params, test_batches))
      last_eval = (float(ev.accuracy), float(ev.loss))
      record.update(test_accuracy=last_eval[0], test_loss=last_eval[1])
      history["round"].append(r)
      history["test_accuracy"].append(last_eval[0])
    recorder.log(record)
    if cfg.checkpoint_every and r % cfg.checkpoint_every == 0 and r < cfg.rounds:
      save_checkpoint(r)
    done = r - start_round
    rate = cfg.clients_per_round * r / max(round_time, 1e-9)
    eta = round_time / r * (cfg.rounds - r) if done else 0.0
    acc = f"{last_eval[0]:.4f}" if last_eval else "  -   "
    say(f"round {r:5d}/{cfg.rounds}  test_acc {acc}  train_loss {record['train_loss']:.4f}  "
        f"{rate:9.0f} client updates/s  eta {eta:5.0f}s")
  rounds_done = r if error is None else r - 1
  if error is None and rounds_done > start_round:
    save_checkpoint(rounds_done)  # the last round, always
  final = {
      "final_test_accuracy": last_eval[0] if last_eval else None,
      "final_test_loss": last_eval[1] if last_eval else None,
      "rounds": rounds_done,
      "rounds_per_sec": rounds_done / max(round_time, 1e-9),
      "client_updates_per_sec": cfg.clients_per_round * rounds_done / max(round_time, 1e-9),
      "compile_s": compile_s,
      "uplink_bits_per_client_round": uplink_bits,
      "total_uplink_bytes": total_uplink_bits / 8,
      "compression_ratio": compression_ratio,
      "codec": cfg.codec,
      "num_params": num_params,
  }
  if error:
    final["error"] = error
  extras = {"config": dataclasses.asdict(cfg), "seed": cfg.seed, "client_chunk": chunk,
            **results.environment()}
  if history["round"]:
    plotting.line_plot(f"{output_dir}/accuracy.png",
                       [(f"{cfg.model}, {cfg.server_optimizer}", history["round"],
                         history["test_accuracy"])],
                       xlabel="round", ylabel="test accuracy",
                       title=f"FedAvg on {cfg.dataset} ({cfg.partition})")
  path = recorder.finish(succeeded=error is None, metrics=final, extras=extras)
  say("\n".join([
      "", f"{'metric':<28} value", f"{'-' * 28} {'-' * 12}",
      *(f"{k:<28} {v:.4f}" if isinstance(v, float) else f"{k:<28} {v}"
        for k, v in final.items()),
      f"results: {path}"]))
  return json.loads(path.read_text())


def config_from_flags() -> Config:
  return Config(
      dataset=_DATASET.value, partition=_PARTITION.value, dirichlet_alpha=_ALPHA.value,
      shards_per_client=_SHARDS.value, num_clients=_NUM_CLIENTS.value,
      clients_per_round=_PER_ROUND.value, rounds=_ROUNDS.value, local_epochs=_EPOCHS.value,
      local_steps=_STEPS.value, batch_size=parse_batch_size(_BATCH.value),
      client_lr=_CLIENT_LR.value, server_optimizer=_SERVER_OPT.value,
      server_lr=_SERVER_LR.value, model=_MODEL.value, client_chunk=parse_chunk(_CHUNK.value),
      seed=_SEED.value, eval_every=_EVAL_EVERY.value, data_dir=_DATA_DIR.value,
      max_examples=_MAX_EXAMPLES.value, codec=_CODEC.value,
      checkpoint_every=_CHECKPOINT_EVERY.value)


def main(argv):
  del argv
  try:
    cfg = config_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  result = run(cfg, _OUTPUT_DIR.value, resume=_RESUME.value)
  if not result["succeeded"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
