"""Federated datasets as padded per-client arrays that `vmap` over clients.

A `ClientArrays` holds clients' examples as named features in one block::

  features["x"]  [num_clients, max_examples, *x_shape]   the input (float32 or int32 tokens)
  features["y"]  [num_clients, max_examples, *y_shape]   the target (int32)
  num_examples   [num_clients]                           int32

Client i's examples are ``features[k][i, :num_examples[i]]``; the rest is
zero padding, masked out of every loss and step count. The same class
describes one client (drop the leading axis), which is what the client
update sees under `vmap`. A model reads the features it needs
(`models.Model`).
"""

from __future__ import annotations

import dataclasses
import functools
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

  features: dict[str, jax.Array]
  num_examples: jax.Array

  @property
  def num_clients(self) -> int:
    return self.num_examples.shape[0]

  @property
  def max_examples(self) -> int:
    return jax.tree.leaves(self.features)[0].shape[self.num_examples.ndim]

  def mask(self) -> jax.Array:
    """True for real examples, False for padding; shape ``[*clients, max_examples]``."""
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
  x = np.zeros((k, cap, *examples.x.shape[1:]), examples.x.dtype)
  y = np.zeros((k, cap, *examples.y.shape[1:]), np.int32)
  x[rows, cols] = examples.x[flat]
  y[rows, cols] = examples.y[flat]
  return ClientArrays(features={"x": x, "y": y}, num_examples=sizes.astype(np.int32))


def padded_clients(population, sizes: np.ndarray) -> ClientArrays:
  """Every client of a host-store population (``gather(ids, bucket)``), padded to the largest
  of `sizes` (its capped sizes): the device store's form of a ragged or lazy population."""
  feats = population.gather(np.arange(len(sizes)), int(sizes.max()))
  return ClientArrays(features=feats, num_examples=sizes.astype(np.int32))


@dataclasses.dataclass(frozen=True)
class FederatedDataset:
  """A partitioned train split (client i owns ``train[client_indices[i]]``) and a test split.

  `clients` packs it into padded arrays (the device store's form) on first
  use; `ragged` into concatenated arrays with offsets (the host store's);
  `padded_bytes` says what the padded form would cost before building it.
  """

  name: str
  train: Examples
  client_indices: tuple[np.ndarray, ...]
  test: Examples
  num_classes: int
  max_examples: int | None = None  # cap on a client's examples (its first ones are kept)

  @property
  def num_clients(self) -> int:
    return len(self.client_indices)

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train.x.shape[1:])

  def sizes(self) -> np.ndarray:
    """Examples per client, after the cap."""
    sizes = np.array([len(ix) for ix in self.client_indices], np.int64)
    return sizes if self.max_examples is None else np.minimum(sizes, self.max_examples)

  def padded_bytes(self) -> int:
    """Bytes of `clients` (every client padded to the largest), computed without building it."""
    per_example = (int(np.prod(self.train.x.shape[1:], dtype=np.int64)) * self.train.x.itemsize
                   + int(np.prod(self.train.y.shape[1:], dtype=np.int64)) * 4)
    return self.num_clients * (int(self.sizes().max()) * per_example + 4)

  @functools.cached_property
  def clients(self) -> ClientArrays:
    """Every client padded to the largest (numpy; built on first use)."""
    return to_client_arrays(self.train, self.client_indices, self.max_examples)

  def ragged(self):
    """The clients as `RaggedClients` (uncapped: the host store applies the cap)."""
    from fedjax_comp.data.ragged import RaggedClients  # pylint: disable=g-import-not-at-top
    return RaggedClients.from_indices(self.train, self.client_indices)


DATASETS = ("synthetic", "synthetic_iid", "mnist1d", "digits", "char_text", "mnist", "emnist",
            "fashion_mnist", "cifar10", "cifar100")


def load_source(name: str, *, num_clients: int, seed: int, data_dir: str | None = None,
                synthetic_alpha: float = 1.0, synthetic_beta: float = 1.0,
                synthetic_sizes: str = "capped", mnist1d_samples: int = 50_000) -> SourceData:
  """Loads a named source's central train and test splits (see `DATASETS`)."""
  if name == "synthetic":
    return sources.synthetic(synthetic_alpha, synthetic_beta, num_clients=num_clients,
                             seed=seed, sizes=synthetic_sizes)
  if name == "synthetic_iid":
    return sources.synthetic(0.0, 0.0, num_clients=num_clients, seed=seed, iid=True,
                             sizes=synthetic_sizes)
  if name == "mnist1d":
    return sources.mnist1d(num_samples=mnist1d_samples)
  if name == "digits":
    return sources.digits(seed=seed)
  if name == "char_text":
    return sources.char_text(num_clients=num_clients, seed=seed)
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
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"max_examples must be >= 1, got {max_examples}")
  parts = tuple(np.asarray(p, np.int64) for p in parts)
  if sum(len(p) for p in parts) == 0:
    raise ValueError("empty dataset: the partition gave no client any example")
  return FederatedDataset(name=name, train=train, client_indices=parts, test=source.test,
                          num_classes=source.num_classes, max_examples=max_examples)


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
