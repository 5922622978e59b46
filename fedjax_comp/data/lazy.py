"""Lazy populations: a client's examples made from (seed, client id) when it is sampled.

`SyntheticPopulation` is FedProx's Synthetic(alpha, beta) with one random
stream per client, so a population of 1,000,000 clients costs its size
table (8 bytes a client) until clients are drawn, and any client's data is
the same whichever store, round or process asks for it. It has the host
store's population interface (``num_clients``, ``sizes()``,
``gather(ids, bucket)``) and `materialize` builds the eager `SourceData`
(`sources.synthetic` is that).

Client sizes (``sizes=``, total examples before the test hold-out):

=============  ==============================================================
``capped``     lognormal, median 50, log-std 0.75, clipped to [10, 250] (the
               suite's default: padded arrays stay small at 10,000 clients)
``fedprox``    ``floor(lognormal(4, 2)) + 50``, uncapped: FedProx's code
               (`litian96/FedProx`, data/synthetic_*/generate_synthetic.py)
``heavy``      lognormal with mean ~50 and log-std 1.2 (median ~24), at
               least 1, uncapped: the heavy tail of real federated datasets;
               at 1,000,000 clients the largest holds ~5,000-10,000
=============  ==============================================================
"""

from __future__ import annotations

import numpy as np

from fedjax_comp.data.examples import Examples, SourceData

DIM, CLASSES = 60, 10
SIZE_SPECS = ("capped", "fedprox", "heavy")
_SIZES_STREAM, _CLIENT_STREAM, _SHARED_STREAM = 0x53495A45, 0x434C4E54, 0x53484152


def client_sizes(kind: str, num_clients: int, seed: int) -> np.ndarray:
  """Total examples of every client (int64), from one vectorised draw."""
  if kind not in SIZE_SPECS:
    raise ValueError(f"unknown synthetic sizes {kind!r}; valid: {', '.join(SIZE_SPECS)}")
  rng = np.random.default_rng([seed, _SIZES_STREAM])
  if kind == "capped":
    sizes = np.clip(np.round(np.exp(rng.normal(np.log(50), 0.75, num_clients))), 10, 250)
  elif kind == "fedprox":
    sizes = np.floor(rng.lognormal(4, 2, num_clients)) + 50
  else:
    sigma = 1.2
    sizes = np.maximum(np.round(rng.lognormal(np.log(50) - sigma**2 / 2, sigma, num_clients)), 1)
  return sizes.astype(np.int64)


class SyntheticPopulation:
  """Synthetic(alpha, beta) clients generated on demand.

  Client k: u_k ~ N(0, alpha), B_k ~ N(0, beta) (variances; FedProx's code
  draws them with standard deviations alpha and beta, the same at 0 and 1);
  W_k in R^{10x60}, b_k in R^10 with entries ~ N(u_k, 1); v_k with entries
  ~ N(B_k, 1); x ~ N(v_k, Sigma), Sigma_jj = j^-1.2; y = argmax(W_k x + b_k).
  ``iid=True``: one shared W, b ~ N(0, 1) and v = 0 (Synthetic-IID).

  Alpha cannot change any label: u_k adds the same u_k (sum(x) + 1) to every
  logit. Only beta (how far apart the clients' inputs lie) and the
  independent W_k shape the data, and since every client has its own W_k,
  one global model fits a pooled population less well the more clients it
  has (WORKSPACE.md: about 0.85 test accuracy at 30 clients, 0.35 at 1,000,
  0.15 at 10,000, against 0.10 chance; Synthetic-IID stays above 0.8).

  A fraction `test_fraction` of each client's examples (its last ones, at
  least one stays in train) is held out: `test_examples` returns them.

  References:
    Li et al. 2020, Federated Optimization in Heterogeneous Networks (arXiv
    1812.06127), section 5.1 and appendix C.1.
  """

  def __init__(self, alpha: float, beta: float, *, num_clients: int, seed: int,
               iid: bool = False, sizes: str = "capped", test_fraction: float = 0.2):
    if alpha < 0 or beta < 0:
      raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if num_clients < 1:
      raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 0 <= test_fraction < 1:
      raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    self.alpha, self.beta, self.iid, self.seed = float(alpha), float(beta), iid, int(seed)
    self.num_clients = int(num_clients)
    self.total = client_sizes(sizes, self.num_clients, self.seed)
    self.num_test = np.minimum(np.floor(self.total * test_fraction).astype(np.int64),
                               self.total - 1)
    self._scale = np.arange(1, DIM + 1) ** -0.6  # sqrt of Sigma_jj = j^-1.2
    if iid:
      shared = np.random.default_rng([self.seed, _SHARED_STREAM])
      self._shared = (shared.normal(0, 1, (CLASSES, DIM)), shared.normal(0, 1, CLASSES))

  def sizes(self) -> np.ndarray:
    """Train examples per client."""
    return self.total - self.num_test

  @property
  def nbytes(self) -> int:
    return int(self.total.nbytes + self.num_test.nbytes)

  def example_bytes(self) -> int:
    return DIM * 4 + 4

  def client(self, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All of client k's examples (train first, then its held-out test ones)."""
    rng = np.random.default_rng([self.seed, _CLIENT_STREAM, int(k)])
    if self.iid:
      w, b = self._shared
      v = np.zeros(DIM)
    else:
      u = rng.normal(0, np.sqrt(self.alpha))
      w = rng.normal(u, 1, (CLASSES, DIM))
      b = rng.normal(u, 1, CLASSES)
      v = rng.normal(rng.normal(0, np.sqrt(self.beta)), 1, DIM)
    x = v + rng.normal(0, 1, (int(self.total[k]), DIM)) * self._scale
    y = np.argmax(x @ w.T + b, axis=1)
    return x.astype(np.float32), y.astype(np.int32)

  def gather(self, ids: np.ndarray, bucket: int) -> dict[str, np.ndarray]:
    """Clients `ids`' first ``min(train size, bucket)`` train examples, zero-padded."""
    x = np.zeros((len(ids), bucket, DIM), np.float32)
    y = np.zeros((len(ids), bucket), np.int32)
    for j, k in enumerate(np.asarray(ids)):
      n = int(min(self.total[k] - self.num_test[k], bucket))
      cx, cy = self.client(k)
      x[j, :n], y[j, :n] = cx[:n], cy[:n]
    return {"x": x, "y": y}

  def test_examples(self, ids) -> Examples:
    """The held-out examples of clients `ids`, concatenated (their owners as groups)."""
    xs, ys, owners = [], [], []
    for k in np.asarray(ids):
      cx, cy = self.client(k)
      t = int(self.num_test[k])
      if t:
        xs.append(cx[-t:])
        ys.append(cy[-t:])
        owners.append(np.full(t, k, np.int64))
    if not xs:
      return Examples(np.zeros((0, DIM), np.float32), np.zeros((0,), np.int32))
    return Examples(np.concatenate(xs), np.concatenate(ys), np.concatenate(owners))

  def materialize(self) -> SourceData:
    """Every client's examples as one `SourceData` (natural groups; test = the held-out ones)."""
    need = int(self.total.sum()) * self.example_bytes()
    from fedjax_comp.data.stores import host_memory_budget  # pylint: disable=g-import-not-at-top
    if need > host_memory_budget():
      raise ValueError(
          f"synthetic: {self.num_clients:,} clients hold {int(self.total.sum()):,} examples, "
          f"{need / 2**30:.1f} GiB in memory, over the budget of "
          f"{host_memory_budget() / 2**30:.1f} GiB; use --client_store=host, which generates "
          "each sampled client on demand")
    parts = {"train": ([], [], []), "test": ([], [], [])}
    for k in range(self.num_clients):
      cx, cy = self.client(k)
      n = int(self.total[k] - self.num_test[k])
      for split, sl in (("train", slice(0, n)), ("test", slice(n, None))):
        parts[split][0].append(cx[sl])
        parts[split][1].append(cy[sl])
        parts[split][2].append(np.full(len(cy[sl]), k, np.int64))
    train, test = (Examples(*(np.concatenate(a) for a in parts[s])) for s in ("train", "test"))
    return SourceData(train=train, test=test, num_classes=CLASSES)


class LazyDataset:
  """A `SyntheticPopulation` behind `FederatedDataset`'s interface.

  The host store reads clients straight from the population (`ragged`);
  `clients` materializes and pads them for the device store. The central
  test split is the held-out examples of the first `test_clients` clients
  (clients are independent draws, so this samples the pooled test
  distribution without generating a million clients).
  """

  def __init__(self, name: str, population: SyntheticPopulation, *,
               max_examples: int | None = None, test_clients: int = 2000):
    self.name, self.population, self.max_examples = name, population, max_examples
    self.num_classes = CLASSES
    self.test = population.test_examples(range(min(population.num_clients, test_clients)))
    self._clients = None

  @property
  def num_clients(self) -> int:
    return self.population.num_clients

  @property
  def input_shape(self) -> tuple[int, ...]:
    return (DIM,)

  def sizes(self) -> np.ndarray:
    sizes = self.population.sizes()
    return sizes if self.max_examples is None else np.minimum(sizes, self.max_examples)

  def padded_bytes(self) -> int:
    return self.num_clients * (int(self.sizes().max()) * self.population.example_bytes() + 4)

  def ragged(self) -> SyntheticPopulation:
    return self.population

  @property
  def clients(self):
    """Every client padded to the largest (generated on first use)."""
    if self._clients is None:
      from fedjax_comp.data.federated import padded_clients  # pylint: disable=g-import-not-at-top
      self._clients = padded_clients(self.population, self.sizes())
    return self._clients
