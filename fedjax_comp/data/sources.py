"""Data sources that need no download: FedProx Synthetic, MNIST-1D, sklearn digits.

Each returns a `SourceData`: a train split (to be partitioned into clients) and
a held-out central test split. TFDS image datasets live in `tfds_images.py`.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np

from fedjax_comp.data.examples import Examples, SourceData

SYNTHETIC_DIM = 60
SYNTHETIC_CLASSES = 10


def synthetic(alpha: float, beta: float, *, num_clients: int, seed: int,
              median_examples: int = 50, size_sigma: float = 0.75,
              min_examples: int = 10, max_examples: int = 250,
              test_fraction: float = 0.2, iid: bool = False) -> SourceData:
  """FedProx's Synthetic(alpha, beta) federated logistic-regression data.

  For client k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k in R^{10x60} and
  b_k in R^10 have entries ~ N(u_k, 1); v_k has entries ~ N(B_k, 1);
  x ~ N(v_k, Sigma) with Sigma diagonal, Sigma_jj = j^-1.2; and
  y = argmax(W_k x + b_k). alpha controls how much the local models differ,
  beta how much the local inputs differ. ``iid=True`` gives Synthetic-IID:
  one shared W, b ~ N(0, 1) and v = 0.

  Client sizes are lognormal (median `median_examples`, log-std `size_sigma`),
  clipped to [min_examples, max_examples]. FedProx draws lognormal(4, 2) + 50
  with no cap; the cap keeps the padded [clients, max_examples] arrays small
  when there are 10,000+ clients. Every generated example belongs to its
  client (``groups``); a fraction `test_fraction` of each client's examples
  goes to the central test split instead.

  Args:
    alpha: spread of the local models, >= 0.
    beta: spread of the local input means, >= 0.
    num_clients: number of clients (devices), >= 1.
    seed: numpy seed.
    median_examples, size_sigma, min_examples, max_examples: client sizes.
    test_fraction: share of each client's examples held out for the test split.
    iid: generate Synthetic-IID instead.

  Returns:
    `SourceData` with 60 features, 10 classes and natural groups.

  References:
    Li et al. 2020, Federated Optimization in Heterogeneous Networks
    (arXiv 1812.06127), section 5.1.
  """
  if alpha < 0 or beta < 0:
    raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  if not 1 <= min_examples <= max_examples:
    raise ValueError(f"need 1 <= min_examples <= max_examples, got {min_examples}, {max_examples}")
  if not 0 <= test_fraction < 1:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  rng = np.random.default_rng(seed)
  k, d, c = num_clients, SYNTHETIC_DIM, SYNTHETIC_CLASSES
  sizes = np.exp(rng.normal(np.log(median_examples), size_sigma, k))
  sizes = np.clip(np.round(sizes), min_examples, max_examples).astype(np.int64)
  if iid:
    w = np.broadcast_to(rng.normal(0, 1, (1, c, d)), (k, c, d))
    b = np.broadcast_to(rng.normal(0, 1, (1, c)), (k, c))
    v = np.zeros((k, d))
  else:
    u = rng.normal(0, np.sqrt(alpha), (k, 1, 1))
    w = rng.normal(u, 1, (k, c, d))
    b = rng.normal(u[:, :, 0], 1, (k, c))
    v = rng.normal(rng.normal(0, np.sqrt(beta), (k, 1)), 1, (k, d))
  scale = np.arange(1, d + 1) ** -0.6  # sqrt of Sigma_jj = j^-1.2
  owner = np.repeat(np.arange(k), sizes)
  x = v[owner] + rng.normal(0, 1, (owner.size, d)) * scale
  # One small matmul per client: gathering W per example would need
  # [examples, 10, 60] floats (gigabytes at 10,000 clients).
  bounds = np.cumsum(sizes)[:-1]
  y = np.concatenate([np.argmax(xk @ w[i].T + b[i], axis=1)
                      for i, xk in enumerate(np.split(x, bounds))])
  # Hold out the last `test_fraction` of each client's examples, at least one
  # example stays in train.
  start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  position = np.arange(owner.size) - start[owner]
  n_test = np.minimum(np.floor(sizes * test_fraction).astype(np.int64), sizes - 1)
  is_test = position >= (sizes - n_test)[owner]
  x = x.astype(np.float32)
  y = y.astype(np.int32)
  return SourceData(
      train=Examples(x[~is_test], y[~is_test], owner[~is_test]),
      test=Examples(x[is_test], y[is_test], owner[is_test]),
      num_classes=c)


def _cache_dir() -> pathlib.Path:
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
  path = _cache_dir() / f"mnist1d_{tag}.npz"
  if cache and path.exists():
    arrays = dict(np.load(path))
  else:
    # The package seeds numpy's global generator; leave the caller's state as it was.
    state = np.random.get_state()
    try:
      raw = mnist1d_data.make_dataset(args)
    finally:
      np.random.set_state(state)
    arrays = {k: raw[k] for k in ("x", "y", "x_test", "y_test")}
    if cache:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
      np.savez(tmp, **arrays)
      os.replace(tmp, path)  # atomic: parallel test workers never see half a file
  return SourceData(
      train=Examples(arrays["x"].astype(np.float32), arrays["y"].astype(np.int32)),
      test=Examples(arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int32)),
      num_classes=10)


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
