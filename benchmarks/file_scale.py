r"""A StackOverflow-sized population through the file cache: build, set-up, memory, pipeline.

::

  .venv/bin/python -m benchmarks.file_scale --output_dir=results/file_scale   # full size
  .venv/bin/python -m benchmarks.file_scale --so_fraction=0.01                   # a quick look

The real StackOverflow files cannot be downloaded here, so this generates a
population of the same shape: 342,477 clients (`--so_fraction` of them) whose
sizes are lognormal with the real mean, 135.8 M / 342,477 = 396.5 sentences
per client, and log-std `--so_sigma` (1.2: a median of ~193 and a tail past
10^4), each sentence 20 token ids in the 10,004-id vocabulary, stored as
the StackOverflow preprocessing stores them (int32 x and y, [n, 20] each).
It is written through `data.file_cache.cached_ragged`, the path the real
files take after decoding, and then, each phase in a fresh process so its
peak memory is its own:

* ``build``: the cache, once (seconds, GB written, peak RSS);
* ``open``: the set-up of a later run: map the cache and build the host
  store (seconds, peak RSS);
* ``pipeline``: the host store's cohort preparation for `--so_rounds` rounds
  of Reddi et al.'s protocol (50 clients, at most 1,000 examples each):
  gather from the memory-mapped files, pad to the cohort's bucket, transfer
  (examples per second, peak RSS);
* ``tokenize``: the first build's own rate on the real path, from a small
  FedJAX SQLite file of StackOverflow-like sentences: read, decompress,
  decode and map words to ids (examples per second);
* ``rounds``: the StackOverflow LSTM's rounds on this CPU with a small
  cohort (`--so_round_clients` clients of at most `--so_round_examples`), through
  the same store: examples per second the round consumes and the device's
  wait for each cohort.

The cache (about 22 GB at full size) and the files this runner wrote in
``--so_dir`` are deleted at the end unless ``--so_keep`` (nothing else in
that folder is touched); with ``--so_keep`` a second run skips the build.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import json
import pathlib
import resource
import shutil
import subprocess
import sys
import time

from absl import flags

from benchmarks import _flags

SO_CLIENTS, SO_EXAMPLES, SEQ, VOCAB = 342_477, 135_818_730, 20, 10_004

_FRACTION = flags.DEFINE_float("so_fraction", 1.0,
                               "Fraction of StackOverflow's 342,477 clients.")
_SIGMA = flags.DEFINE_float("so_sigma", 1.2, "Log-std of the lognormal client sizes.")
_DIR = flags.DEFINE_string("so_dir", "/tmp/fedjax_comp_file_scale", "Where the population "
                           "and its cache go.")
_ROUNDS = flags.DEFINE_integer("so_rounds", 20, "Pipeline rounds to time.")
_ROUND_CLIENTS = flags.DEFINE_integer("so_round_clients", 4,
                                      "Clients per LSTM round (CPU-sized).")
_ROUND_EXAMPLES = flags.DEFINE_integer("so_round_examples", 64, "Cap per client in LSTM rounds.")
_KEEP = flags.DEFINE_bool("so_keep", False, "Keep the cache (about 22 GB at full size).")
_PHASE = flags.DEFINE_string("so_phase", None, "Internal: run one phase in this process.")


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spec(directory: pathlib.Path) -> pathlib.Path:
  """The population's description (the cache's source file: its key)."""
  n = max(1, round(SO_CLIENTS * _FRACTION.value))
  spec = {"num_clients": n, "mean": SO_EXAMPLES / SO_CLIENTS, "so_sigma": _SIGMA.value,
          "seq_len": SEQ, "vocab": VOCAB, "seed": 0}
  path = directory / "population.json"
  if not path.exists() or json.loads(path.read_text()) != spec:
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
  return path


def _sizes(spec: dict):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([spec["seed"], 1])
  sigma = spec["so_sigma"]
  mu = np.log(spec["mean"]) - sigma**2 / 2  # the lognormal's mean is spec["mean"]
  return np.maximum(np.round(rng.lognormal(mu, sigma, spec["num_clients"])), 1).astype(np.int64)


def _clients(spec: dict):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([spec["seed"], 2])
  for i, n in enumerate(_sizes(spec)):
    t = rng.integers(3, spec["vocab"], (int(n), spec["seq_len"] + 1), dtype=np.int32)
    t[:, 0] = 1  # BOS
    yield f"u{i:07d}", {"x": t[:, :-1], "y": t[:, 1:]}


def _population(path):
  from fedjax_comp.data import file_cache  # pylint: disable=g-import-not-at-top
  spec = json.loads(path.read_text())
  return file_cache.cached_ragged([path], "so_scale", lambda: _clients(spec))


def _read_and_tokenize() -> dict:
  """First-build throughput of the real path: FedJAX SQLite -> zlib+msgpack -> word ids."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fedjax_comp.data import formats, text  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  words = [f"w{i}" for i in range(20_000)]
  vocab = words[:10_000]
  # Zipf-like word choice, ~14 words per sentence; 200 users of 400 sentences.
  weights = 1.0 / np.arange(1, len(words) + 1)
  weights /= weights.sum()
  clients = {}
  for u in range(200):
    lengths = rng.integers(5, 24, 400)
    picks = rng.choice(len(words), int(lengths.sum()), p=weights)
    cuts = np.cumsum(lengths)[:-1]
    clients[f"u{u}"] = {"tokens": np.array(
        [" ".join(words[j] for j in part).encode() for part in np.split(picks, cuts)],
        dtype=object)}
  path = pathlib.Path(_DIR.value) / "stackoverflow_sample.sqlite"
  path.parent.mkdir(parents=True, exist_ok=True)
  formats.write_fedjax_sqlite(path, clients)
  ids = text.WordIds(vocab, SEQ)
  t = time.perf_counter()
  n = 0
  for _, feats in formats.read_fedjax_sqlite(path):
    n += len(ids(feats)["x"])
  return {"read_decode_tokenize_examples_per_s": n / (time.perf_counter() - t),
          "examples": n}


def _phase(name: str) -> dict:
  if name == "tokenize":
    return _read_and_tokenize()
  path = _spec(pathlib.Path(_DIR.value))
  t = time.perf_counter()
  pop = _population(path)
  map_s = time.perf_counter() - t
  if name == "build":
    size = sum(f.stat().st_size for f in pop.path.iterdir())
    return {"build_s": time.perf_counter() - t, "clients": pop.num_clients,
            "examples": int(pop.offsets[-1]), "cache_gb": size / 1e9,
            "largest_client": int(pop.sizes().max()), "median_client":
            float(__import__("numpy").median(pop.sizes())), "peak_rss_mb": _rss_mb()}
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from fedjax_comp import algorithms, models  # pylint: disable=g-import-not-at-top
  from fedjax_comp.client_update import LocalSchedule  # pylint: disable=g-import-not-at-top
  from fedjax_comp.data.host_store import HostStore  # pylint: disable=g-import-not-at-top
  rounds_phase = name == "rounds"
  cap = _ROUND_EXAMPLES.value if rounds_phase else 1000
  t = time.perf_counter()
  store = HostStore(pop, max_examples=cap, min_bucket=16, say=None)
  store_s = time.perf_counter() - t
  if name == "open":
    return {"map_cache_s": map_s, "host_store_s": store_s, "peak_rss_mb": _rss_mb()}
  model = models.get_model("stackoverflow_lstm", (SEQ,), VOCAB)
  per_round = _ROUND_CLIENTS.value if rounds_phase else 50
  algorithm = algorithms.build(
      "fedavg", model, client_lr=10**-0.5, server_optimizer=optax.sgd(1.0),
      schedule=LocalSchedule(epochs=1, batch_size=16), clients_per_round=per_round)
  state = algorithm.init(0)
  bound = store.bind(algorithm, jax.eval_shape(model.init, jax.random.key(0)))
  bound._sync(state)  # pylint: disable=protected-access
  if name == "pipeline":
    examples, times, buckets = 0, [], []
    for r in range(_ROUNDS.value):
      t = time.perf_counter()
      ids, bucket, data = bound._prepare(r)  # pylint: disable=protected-access
      jax.block_until_ready(data)
      times.append(time.perf_counter() - t)
      examples += int(np.minimum(store.sizes[ids], bucket).sum())
      buckets.append(bucket)
    return {"pipeline_s_per_round": float(np.median(times)),
            "pipeline_examples_per_s": examples / sum(times),
            "pipeline_tokens_per_s": examples * SEQ / sum(times),
            "examples_per_round": examples / len(times), "buckets": sorted(set(buckets)),
            "peak_rss_mb": _rss_mb()}
  step = bound.compile(state)
  rows = []
  for _ in range(_ROUNDS.value // 4 or 1):
    t = time.perf_counter()
    ids = bound._round_ids(bound._round)  # pylint: disable=protected-access
    state, out = step(state)
    jax.block_until_ready(state.params)
    used = int(np.minimum(store.sizes[ids], bound.last_bucket).sum())
    rows.append((time.perf_counter() - t, bound.data_wait_s, used))
  a = np.array(rows)
  return {"round_s": float(np.median(a[:, 0])), "data_wait_s": float(np.median(a[:, 1])),
          "round_examples_per_s": float(a[:, 2].sum() / a[:, 0].sum()),
          "round_clients": per_round, "round_cap": cap, "peak_rss_mb": _rss_mb()}


def main() -> int:
  if _PHASE.value:
    print(json.dumps(_phase(_PHASE.value)))
    return 0
  out = pathlib.Path(_flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/file_scale",
                                             overwrite=True, resumable=False))
  result = {"so_fraction": _FRACTION.value, "so_sigma": _SIGMA.value}
  for phase in ("build", "open", "pipeline", "rounds", "tokenize"):
    args = [sys.executable, "-m", "benchmarks.file_scale", f"--so_phase={phase}",
            f"--so_fraction={_FRACTION.value}", f"--so_sigma={_SIGMA.value}",
            f"--so_dir={_DIR.value}", f"--so_rounds={_ROUNDS.value}",
            f"--so_round_clients={_ROUND_CLIENTS.value}",
            f"--so_round_examples={_ROUND_EXAMPLES.value}"]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
    result[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{phase}: {result[phase]}", flush=True)
  p, r = result["pipeline"], result["rounds"]
  result["pipeline_over_round_consumption"] = (p["pipeline_examples_per_s"]
                                               / r["round_examples_per_s"])
  (out / "file_scale.json").write_text(json.dumps(result, indent=1))
  print(f"pipeline feeds {result['pipeline_over_round_consumption']:.0f}x what the LSTM round "
        f"consumes on this CPU; results: {out}/file_scale.json")
  if not _KEEP.value:  # only what this runner wrote: --so_dir may hold other things
    d = pathlib.Path(_DIR.value)
    for name in ("population.json", "stackoverflow_sample.sqlite"):
      (d / name).unlink(missing_ok=True)
    for cache in (d / ".fedjax_comp_cache").glob("so_scale-*"):
      shutil.rmtree(cache, ignore_errors=True)
  return 0


if __name__ == "__main__":
  _flags.main(main)
