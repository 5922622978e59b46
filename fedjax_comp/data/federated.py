"""Federated datasets as padded per-client arrays that `vmap` over clients.

A `ClientArrays` holds every client's examples in one block::

  x            [num_clients, max_examples, *feature_shape]   float32
  y            [num_clients, max_examples]                   int32
  num_examples [num_clients]                                 int32

Client i's examples are ``x[i, :num_examples[i]]``; the rest is zero padding,
masked out of every loss and step count. The same class describes one client
(drop the leading axis), which is what `client_update` sees under `vmap`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_comp.data import partition as partition_lib
from fedjax_comp.data import sources
from fedjax_comp.data.examples import Examples, SourceData


@flax.struct.dataclass
class ClientArrays:
  """Padded examples of many clients (or of one, without the leading axis)."""

  x: jax.Array
  y: jax.Array
  num_examples: jax.Array

  @property
  def num_clients(self) -> int:
    return self.num_examples.shape[0]

  @property
  def max_examples(self) -> int:
    return self.y.shape[-1]

  def mask(self) -> jax.Array:
    """True for real examples, False for padding; shape of `y`."""
    return jnp.arange(self.max_examples) < self.num_examples[..., None]

  def select(self, client_ids: jax.Array) -> ClientArrays:
    """The clients `client_ids`, in that order (a gather; works under jit)."""
    return jax.tree.map(lambda a: a[client_ids], self)


def to_client_arrays(examples: Examples, client_indices: Sequence[np.ndarray],
                     max_examples: int | None = None) -> ClientArrays:
  """Packs per-client index lists into padded numpy `ClientArrays`.

  Args:
    examples: the central split the indices point into.
    client_indices: one index array per client.
    max_examples: cap on examples per client; a larger client keeps its first
      `max_examples` (partitioners return them in random order). Default: the
      largest client's size, no cap.
  """
  sizes = np.array([len(ix) for ix in client_indices], np.int64)
  if sizes.size == 0 or sizes.sum() == 0:
    raise ValueError("empty dataset: the partition gave no client any example")
  cap = int(sizes.max()) if max_examples is None else int(max_examples)
  if cap < 1:
    raise ValueError(f"max_examples must be >= 1, got {max_examples}")
  sizes = np.minimum(sizes, cap)
  k = len(client_indices)
  rows = np.repeat(np.arange(k), sizes)
  cols = np.concatenate([np.arange(s) for s in sizes])
  flat = np.concatenate([np.asarray(ix)[:s] for ix, s in zip(client_indices, sizes)])
  x = np.zeros((k, cap, *examples.x.shape[1:]), np.float32)
  y = np.zeros((k, cap), np.int32)
  x[rows, cols] = examples.x[flat]
  y[rows, cols] = examples.y[flat]
  return ClientArrays(x=x, y=y, num_examples=sizes.astype(np.int32))


@dataclasses.dataclass(frozen=True)
class FederatedDataset:
  """Clients' train arrays plus the central held-out test split."""

  name: str
  clients: ClientArrays
  test: Examples
  num_classes: int

  @property
  def num_clients(self) -> int:
    return self.clients.num_clients

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.clients.x.shape[2:])


DATASETS = ("synthetic", "synthetic_iid", "mnist1d", "digits", "mnist", "emnist",
            "fashion_mnist", "cifar10", "cifar100")


def load_source(name: str, *, num_clients: int, seed: int, data_dir: str | None = None,
                synthetic_alpha: float = 1.0, synthetic_beta: float = 1.0,
                mnist1d_samples: int = 50_000) -> SourceData:
  """Loads a named source's central train and test splits (see `DATASETS`)."""
  if name == "synthetic":
    return sources.synthetic(synthetic_alpha, synthetic_beta, num_clients=num_clients,
                             seed=seed)
  if name == "synthetic_iid":
    return sources.synthetic(0.0, 0.0, num_clients=num_clients, seed=seed, iid=True)
  if name == "mnist1d":
    return sources.mnist1d(num_samples=mnist1d_samples)
  if name == "digits":
    return sources.digits(seed=seed)
  if name.split("/")[0] in DATASETS:
    from fedjax_comp.data import tfds_images  # pylint: disable=g-import-not-at-top
    return tfds_images.load_tfds_images(name, data_dir=data_dir)
  raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")


def partition_source(source: SourceData, partition: str, *, num_clients: int, seed: int,
                     alpha: float = 0.5, shards_per_client: int = 2,
                     max_examples: int | None = None, name: str = "") -> FederatedDataset:
  """Splits a source's train split into clients (see `partition_lib.PARTITIONS`)."""
  train = source.train
  if train.y.size == 0:
    raise ValueError(f"empty dataset {name!r}: its train split has 0 examples")
  if partition == "iid":
    parts = partition_lib.iid(train.y.size, num_clients, seed)
  elif partition == "dirichlet":
    parts = partition_lib.dirichlet(train.y, num_clients, alpha, seed)
  elif partition == "shards":
    parts = partition_lib.shards(train.y, num_clients, seed, shards_per_client)
  elif partition == "natural":
    parts = partition_lib.natural(train.groups, num_clients)
  else:
    raise ValueError(f"unknown partition {partition!r}; valid partitions: "
                     f"{', '.join(partition_lib.PARTITIONS)}")
  if source.test.y.size == 0:
    raise ValueError(f"empty dataset {name!r}: its test split has 0 examples")
  return FederatedDataset(name=name, clients=to_client_arrays(train, parts, max_examples),
                          test=source.test, num_classes=source.num_classes)


def load_federated(name: str, partition: str, *, num_clients: int, seed: int = 0,
                   alpha: float = 0.5, shards_per_client: int = 2,
                   max_examples: int | None = None, data_dir: str | None = None,
                   **source_kwargs) -> FederatedDataset:
  """Loads dataset `name` and partitions it into `num_clients` clients.

  Args:
    name: one of `DATASETS`.
    partition: one of ``iid``, ``dirichlet``, ``shards``, ``natural``.
    num_clients: number of clients.
    seed: seed of the partition (and of generated sources).
    alpha: Dirichlet concentration for ``dirichlet``.
    shards_per_client: shards per client for ``shards``.
    max_examples: optional cap on examples per client.
    data_dir: TFDS data directory, for the TFDS image datasets.
    **source_kwargs: passed to `load_source` (e.g. ``synthetic_alpha``).

  Returns:
    A `FederatedDataset` with numpy arrays on the host.

  Example:
    >>> data = load_federated("digits", "shards", num_clients=50)
    >>> data.clients.x.shape
    (50, 28, 8, 8)
  """
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  source = load_source(name, num_clients=num_clients, seed=seed, data_dir=data_dir,
                       **source_kwargs)
  return partition_source(source, partition, num_clients=num_clients, seed=seed,
                          alpha=alpha, shards_per_client=shards_per_client,
                          max_examples=max_examples, name=name)


def sample_clients(key: jax.Array, num_clients: int, clients_per_round: int) -> jax.Array:
  """`clients_per_round` distinct client ids, uniformly at random (jit-able).

  The ids whose i.i.d. random 32-bit scores are at least the
  `clients_per_round`-th largest score: a uniformly random subset, returned
  in increasing id order (a round's result does not depend on the order).
  Only ties at the threshold (probability below m * n / 2**32) would favour
  smaller ids. One single-operand sort costs about 1 ms for 10,000 clients
  on a CPU, where `jax.random.choice(..., replace=False)` and `lax.top_k`
  (both index-carrying sorts) take 3.6-6 ms.
  """
  if not 1 <= clients_per_round <= num_clients:
    raise ValueError(
        f"clients_per_round must be in [1, num_clients={num_clients}], got {clients_per_round}")
  if clients_per_round == num_clients:
    return jnp.arange(num_clients, dtype=jnp.int32)
  scores = jax.random.bits(key, (num_clients,), jnp.uint32)
  threshold = jnp.sort(scores)[num_clients - clients_per_round]
  (ids,) = jnp.nonzero(scores >= threshold, size=clients_per_round)
  return ids.astype(jnp.int32)
