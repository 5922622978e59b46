"""Data sources that need no download: FedProx Synthetic, MNIST-1D, sklearn digits.

Each returns a `SourceData`: a train split (to be partitioned into clients) and
a held-out central test split. TFDS image datasets live in `tfds_images.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import sys
import time

import numpy as np

try:
  import fcntl
except ImportError:  # not POSIX: no lock, each process generates its own copy
  fcntl = None

from fedjax_comp.data.examples import Examples, SourceData



def synthetic(alpha: float, beta: float, *, num_clients: int, seed: int,
              sizes: str = "capped", test_fraction: float = 0.2,
              iid: bool = False) -> SourceData:
  """FedProx's Synthetic(alpha, beta) federated logistic-regression data, materialized.

  Every client's examples, with natural groups, from `lazy.SyntheticPopulation`
  (see there for the generator, the size distributions `sizes` and what
  alpha and beta do); a fraction `test_fraction` of each client's examples
  goes to the central test split. ``iid=True`` gives Synthetic-IID. Refuses
  (ValueError with the size) a population too large for host memory: the
  host store generates such clients on demand instead.

  References:
    Li et al. 2020, Federated Optimization in Heterogeneous Networks
    (arXiv 1812.06127), section 5.1.
  """
  from fedjax_comp.data.lazy import SyntheticPopulation  # pylint: disable=g-import-not-at-top
  return SyntheticPopulation(alpha, beta, num_clients=num_clients, seed=seed, iid=iid,
                             sizes=sizes, test_fraction=test_fraction).materialize()


def cache_dir() -> pathlib.Path:
  """$FEDJAX_COMP_CACHE, or ~/.cache/fedjax_comp: generated datasets, compiled programs."""
  root = os.environ.get("FEDJAX_COMP_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fedjax_comp")
  return pathlib.Path(root)


def mnist1d(*, num_samples: int = 50_000, seed: int = 42, train_split: float = 0.8,
            cache: bool = True) -> SourceData:
  """MNIST-1D, generated procedurally by the `mnist1d` package (no download).

  40 features, 10 classes. The package's generator is slow (about 0.7 ms per
  example on a CPU core), so the arrays are cached as .npz under
  ``$FEDJAX_COMP_CACHE`` (default ``~/.cache/fedjax_comp``) keyed by the
  generator's arguments. The default of 50,000 samples gives 40,000 train
  examples (20 per client over 2,000 clients) and 10,000 test examples.

  References:
    Greydanus and Kobak 2024, Scaling Down Deep Learning with MNIST-1D
    (arXiv 2011.14439).
  """
  if num_samples < 10:
    raise ValueError(f"num_samples must be >= 10, got {num_samples}")
  from mnist1d import data as mnist1d_data  # pylint: disable=g-import-not-at-top

  args = mnist1d_data.get_dataset_args()
  args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
  tag = hashlib.sha256(repr(sorted(vars(args).items())).encode()).hexdigest()[:16]
  path = cache_dir() / f"mnist1d_{tag}.npz"
  with _generation_lock(path if cache else None):
    arrays = _mnist1d_arrays(mnist1d_data, args, path, num_samples, cache)
  return SourceData(
      train=Examples(arrays["x"].astype(np.float32), arrays["y"].astype(np.int32)),
      test=Examples(arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int32)),
      num_classes=10)


@contextlib.contextmanager
def _generation_lock(path: pathlib.Path | None):
  """Holds an exclusive lock beside `path` (None: no lock): processes that need the same
  generated file (parallel test workers, two runners) wait for the first, then read its
  file, instead of each generating it (MNIST-1D: half a minute of one core each)."""
  if path is None or fcntl is None:
    yield
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path.with_suffix(".lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _mnist1d_arrays(mnist1d_data, args, path: pathlib.Path, num_samples: int,
                    cache: bool) -> dict:
  if cache and path.exists():
    arrays = dict(np.load(path))
  else:
    # The first run would otherwise be silent for half a minute.
    print(f"generating MNIST-1D ({num_samples:,} samples, about {num_samples * 0.7e-3:.0f} s "
          f"on one core, once; cached as {path})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    # The package seeds numpy's global generator; leave the caller's state as it was.
    state = np.random.get_state()
    try:
      raw = mnist1d_data.make_dataset(args)
    finally:
      np.random.set_state(state)
    print(f"generated MNIST-1D in {time.perf_counter() - start:.0f} s", file=sys.stderr,
          flush=True)
    arrays = {k: raw[k] for k in ("x", "y", "x_test", "y_test")}
    if cache:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
      np.savez(tmp, **arrays)
      os.replace(tmp, path)  # atomic: a reader without the lock never sees half a file
  return arrays


def digits(*, seed: int = 0, test_fraction: float = 0.2) -> SourceData:
  """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), scaled to [0, 1].

  A seeded random `test_fraction` of the images is the central test split.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  raw = datasets.load_digits()
  x = (raw.images / 16.0).astype(np.float32)
  y = raw.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  n_test = int(round(len(y) * test_fraction))
  test, train = order[:n_test], order[n_test:]
  return SourceData(train=Examples(x[train], y[train]), test=Examples(x[test], y[test]),
                    num_classes=10)


# Token convention of the text sources (shared with `models.lstm`): 0 padding,
# 1/2/3 beginning/end of sequence and out of vocabulary, characters from 4.
PAD, BOS, EOS, OOV = 0, 1, 2, 3
CHARS = "abcdefghijklmnopqrstuvwxyz .,"
_WORDS = ("the", "a", "of", "and", "to", "in", "is", "was", "he", "she", "it", "that", "for",
          "on", "with", "as", "his", "her", "they", "at", "be", "this", "from", "had", "not",
          "but", "what", "all", "were", "when", "we", "there", "can", "an", "your", "which",
          "their", "said", "if", "do", "will", "each", "about", "how", "up", "out", "them",
          "then", "many", "some", "so", "these", "would", "other", "into", "has", "more",
          "king", "queen", "lord", "love", "night", "sword", "crown", "heart", "death")


def char_text(*, num_clients: int, seed: int, seq_len: int = 40, sentences: int = 30,
              test_fraction: float = 0.2) -> SourceData:
  """Generated character-level text with natural clients, for next-character prediction.

  Each client (a "speaker") writes `sentences` sentences from a 70-word
  vocabulary with its own word preferences (a Dirichlet(0.3) draw over the
  words and its own favourite pair of words that often follow each other),
  so clients differ as Shakespeare's characters do. A sentence is
  ``[BOS] chars... [EOS]``, cut or padded with `PAD` to ``seq_len + 1``
  tokens; the example is ``x = tokens[:-1]``, ``y = tokens[1:]`` (int32,
  ``[seq_len]`` each). The vocabulary is the 4 special tokens plus
  `CHARS` (33 tokens). A fraction `test_fraction` of each client's
  sentences goes to the central test split.
  """
  if num_clients < 1 or seq_len < 2 or sentences < 2:
    raise ValueError(f"need num_clients >= 1, seq_len >= 2, sentences >= 2; got "
                     f"{num_clients}, {seq_len}, {sentences}")
  rng = np.random.default_rng(seed)
  index = {c: i + OOV + 1 for i, c in enumerate(CHARS)}
  xs, owners = [], []
  for client in range(num_clients):
    prefs = rng.dirichlet(np.full(len(_WORDS), 0.3))
    first, then = rng.choice(len(_WORDS), 2, replace=False)
    for _ in range(sentences):
      words, w = [], int(rng.choice(len(_WORDS), p=prefs))
      for _ in range(int(rng.integers(3, 9))):
        words.append(_WORDS[w])
        w = int(then) if w == first and rng.random() < 0.7 else int(rng.choice(len(_WORDS),
                                                                              p=prefs))
      text = " ".join(words) + rng.choice([".", ","])
      tokens = [BOS] + [index.get(c, OOV) for c in text] + [EOS]
      tokens = (tokens + [PAD] * (seq_len + 1))[:seq_len + 1]
      xs.append(tokens)
      owners.append(client)
  tokens = np.asarray(xs, np.int32)
  owners = np.asarray(owners, np.int64)
  position = np.arange(len(owners)) % sentences
  is_test = position >= sentences - max(1, int(round(sentences * test_fraction)))
  x, y = tokens[:, :-1], tokens[:, 1:]
  return SourceData(train=Examples(x[~is_test], y[~is_test], owners[~is_test]),
                    test=Examples(x[is_test], y[is_test], owners[is_test]),
                    num_classes=OOV + 1 + len(CHARS))
