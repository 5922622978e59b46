"""Ragged clients: every client's examples concatenated per feature, plus offsets.

What the host store keeps (`data.host_store`): no padding to the largest
client, so a population of heavy-tailed client sizes costs what its
examples cost. The arrays may be memory-mapped files (`save`, `load`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from fedjax_comp.data.examples import Examples
from fedjax_comp.data.federated import ClientArrays


@dataclasses.dataclass(frozen=True)
class RaggedClients:
  """Clients' examples concatenated per feature, with offsets: client i owns
  ``features[k][offsets[i]:offsets[i + 1]]``. Arrays may be `np.memmap`s."""

  features: Mapping[str, np.ndarray]
  offsets: np.ndarray  # int64 [num_clients + 1]

  @property
  def num_clients(self) -> int:
    return len(self.offsets) - 1

  def sizes(self) -> np.ndarray:
    return np.diff(self.offsets)

  @property
  def nbytes(self) -> int:
    return sum(int(v.nbytes) for v in self.features.values()) + int(self.offsets.nbytes)

  @classmethod
  def from_indices(cls, examples: Examples,
                   client_indices: Sequence[np.ndarray]) -> "RaggedClients":
    """From a partition: client i's examples are ``examples[client_indices[i]]``."""
    flat = (np.concatenate([np.asarray(ix, np.int64) for ix in client_indices])
            if len(client_indices) else np.zeros((0,), np.int64))
    offsets = np.concatenate([[0], np.cumsum([len(ix) for ix in client_indices])])
    return cls({"x": examples.x[flat], "y": examples.y[flat]}, offsets.astype(np.int64))

  @classmethod
  def from_client_arrays(cls, clients: ClientArrays) -> "RaggedClients":
    """From padded arrays (drops the padding)."""
    n = np.asarray(clients.num_examples, np.int64)
    mask = np.arange(clients.max_examples)[None, :] < n[:, None]
    feats = {k: np.asarray(v)[mask] for k, v in clients.features.items()}
    return cls(feats, np.concatenate([[0], np.cumsum(n)]).astype(np.int64))

  def save(self, directory) -> None:
    """Writes ``<k>.npy`` per feature and ``offsets.npy`` (readable by `load`, memory-mapped)."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for k, v in self.features.items():
      np.save(d / f"feature_{k}.npy", v)
    np.save(d / "offsets.npy", self.offsets)

  @classmethod
  def load(cls, directory, mmap: bool = True) -> "RaggedClients":
    d = pathlib.Path(directory)
    mode = "r" if mmap else None
    feats = {p.stem[len("feature_"):]: np.load(p, mmap_mode=mode)
             for p in sorted(d.glob("feature_*.npy"))}
    return cls(feats, np.load(d / "offsets.npy"))

  def gather(self, ids: np.ndarray, bucket: int) -> dict[str, np.ndarray]:
    """Clients `ids`' first ``min(size, bucket)`` examples, zero-padded to `bucket`."""
    start = self.offsets[ids]
    count = np.minimum(self.offsets[ids + 1] - start, bucket)
    rows = np.repeat(np.arange(len(ids)), count)
    cols = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    src = np.repeat(start, count) + cols
    out = {}
    for k, v in self.features.items():
      a = np.zeros((len(ids), bucket, *v.shape[1:]), v.dtype)
      a[rows, cols] = v[src]
      out[k] = a
    return out
