"""Partitioners: split a central train split into per-client index lists.

Each returns a list of ``num_clients`` integer arrays of example indices.

=============  ===========================================================
name           partition
=============  ===========================================================
``iid``        a seeded random split into near-equal parts
``dirichlet``  label skew of Hsu et al. 2019: every client gets the same
               number of examples, with class proportions q ~ Dir(alpha·1)
``shards``     McMahan et al. 2017's pathological non-IID split: sort by
               label, cut ``num_clients * shards_per_client`` equal shards,
               give each client `shards_per_client` of them at random
``natural``    one client per natural group (writer, device) of the source
=============  ===========================================================
"""

from __future__ import annotations

import numpy as np

PARTITIONS = ("iid", "dirichlet", "shards", "natural")


def _check_num_clients(num_clients: int, num_examples: int) -> None:
  if num_examples == 0:
    raise ValueError("cannot partition an empty dataset (0 examples)")
  if not 1 <= num_clients <= num_examples:
    raise ValueError(
        f"num_clients must be in [1, {num_examples}] (the number of train "
        f"examples), got {num_clients}")


def iid(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
  """A uniformly random split into `num_clients` parts whose sizes differ by at most 1."""
  _check_num_clients(num_clients, num_examples)
  order = np.random.default_rng(seed).permutation(num_examples)
  return np.array_split(order, num_clients)


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int,
              examples_per_client: int | None = None) -> list[np.ndarray]:
  """Label-skewed split: client i draws its labels from q_i ~ Dir(alpha·1).

  Every client gets `examples_per_client` examples (default: as many as the
  data allows, ``len(labels) // num_clients``), sampled without replacement.
  When a class a client wants is used up, its remaining draws are spread over
  the classes still available, in proportion to q_i (uniformly if none of
  its classes remains). Small alpha gives clients few classes; alpha -> inf
  gives IID.

  References:
    Hsu, Qi and Brown 2019, Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification (arXiv 1909.06335).
  """
  labels = np.asarray(labels)
  _check_num_clients(num_clients, labels.size)
  if not alpha > 0:
    raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
  per_client = examples_per_client or labels.size // num_clients
  if not 1 <= per_client * num_clients <= labels.size:
    raise ValueError(
        f"examples_per_client * num_clients must be in [1, {labels.size}], got "
        f"{per_client} * {num_clients}")
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
  used = np.zeros(len(classes), np.int64)
  sizes = np.array([len(p) for p in pools])
  proportions = rng.dirichlet(np.full(len(classes), alpha), num_clients)
  clients = []
  for q in proportions:
    taken = []
    need = per_client
    while need > 0:
      available = sizes - used
      p = q * (available > 0)
      if p.sum() <= 0:
        p = (available > 0).astype(np.float64)
      counts = np.minimum(rng.multinomial(need, p / p.sum()), available)
      for c in np.flatnonzero(counts):
        taken.append(pools[c][used[c]:used[c] + counts[c]])
        used[c] += counts[c]
      need -= int(counts.sum())
    clients.append(rng.permutation(np.concatenate(taken)))
  return clients


def shards(labels: np.ndarray, num_clients: int, seed: int,
           shards_per_client: int = 2) -> list[np.ndarray]:
  """McMahan et al.'s pathological non-IID split (2 shards of one label run each).

  Examples are sorted by label (ties in random order), cut into
  ``num_clients * shards_per_client`` shards of ``len(labels) //
  num_shards`` examples (the remainder is dropped), and each client gets
  `shards_per_client` shards at random.

  Raises:
    ValueError: if there are more shards than examples.

  References:
    McMahan et al. 2017 (arXiv 1602.05629), section 3: 100 clients, 200
    shards of 300 MNIST examples.
  """
  labels = np.asarray(labels)
  if shards_per_client < 1:
    raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
  _check_num_clients(num_clients, labels.size)
  num_shards = num_clients * shards_per_client
  shard_size = labels.size // num_shards
  if shard_size < 1:
    raise ValueError(
        f"impossible partition: num_clients * shards_per_client = {num_shards} "
        f"shards but only {labels.size} examples; need at most {labels.size} shards")
  rng = np.random.default_rng(seed)
  shuffled = rng.permutation(labels.size)
  by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
  shard_list = by_label[:num_shards * shard_size].reshape(num_shards, shard_size)
  assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
  return [shard_list[a].reshape(-1) for a in assignment]


def natural(groups: np.ndarray | None, num_clients: int | None = None) -> list[np.ndarray]:
  """One client per natural group, in order of group id.

  Raises:
    ValueError: if the source has no natural groups, or `num_clients` is
      given and differs from the number of groups.
  """
  if groups is None:
    raise ValueError(
        "partition 'natural' needs a source with natural clients (e.g. "
        "'synthetic'); use 'iid', 'dirichlet' or 'shards' for this dataset")
  groups = np.asarray(groups)
  ids, inverse = np.unique(groups, return_inverse=True)
  if num_clients is not None and num_clients != ids.size:
    raise ValueError(
        f"partition 'natural' has {ids.size} clients in this source, but "
        f"num_clients={num_clients}; set num_clients to {ids.size}")
  order = np.argsort(inverse, kind="stable")
  return np.split(order, np.cumsum(np.bincount(inverse, minlength=ids.size))[:-1])
