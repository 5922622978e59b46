"""The published federated datasets, read from the files researchers download.

Nothing is downloaded: each dataset names the files it expects under
``--data_dir`` and where they come from, and a missing file's error says
both. A split is read once into a memory-mapped cache next to its file
(`data.file_cache`), so later runs start in seconds and a population larger
than memory costs only the cohorts it sends.

==================== ============================================ ==================
``--dataset``         files under ``--data_dir``                   clients / classes
==================== ============================================ ==================
``emnist_federated``  federated_emnist_{train,test}.sqlite          3,400 writers, 62
                      (FedJAX); ``emnist_federated:digits``: the
                      federated_emnist_digitsonly_* files, 10
``shakespeare``       shakespeare_{train,test}.sqlite (FedJAX)      715 roles, 90 ids
``stackoverflow``     stackoverflow_{train,test}.sqlite (FedJAX),   342,477 users,
                      and stackoverflow.word_count (TFF's) if you   10,004 ids
                      have it (else the vocabulary is counted
                      from the train split, once)
``cifar100_federated``  cifar100.sqlite (TFF's, decompressed from     500 clients, 100
                      its .sqlite.lzma; Pachinko allocation)
``emnist_tff``        emnist_all.sqlite (TFF's); ``:digits`` too    3,400 writers, 62
``leaf_femnist``      LEAF's train/*.json, test/*.json              LEAF's writers, 62
``leaf_shakespeare``  LEAF's train/*.json, test/*.json              LEAF's roles, 90
``client_npz``        train/<client>.npz, test/<client>.npz         yours (x, y)
==================== ============================================ ==================

Your own clients in memory: `FileDataset.from_clients(train, test)` with
``{client id: {"x": ..., "y": ...}}`` mappings (or ``client_npz`` files).

Train and test splits are federated: the same writers (or roles) hold
examples in both. `FileDataset.test` is the test split of every test
client (or of a seeded sample of ``test_clients`` of them), with each
example's client in ``groups`` so evaluation reports the per-client average
beside the example-weighted accuracy (`evaluation.evaluate` on
``batch_for_eval(test, by_client=True)``). StackOverflow's test split is
large (about 16.6 M examples): it is sampled to 1,000 test clients unless
``test_clients`` says otherwise.

References:
  FedJAX (Ro et al. 2021, arXiv 2108.02117) and its files under
  https://storage.googleapis.com/gresearch/fedjax/; LEAF (Caldas et al.
  2018, arXiv 1812.01097).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Callable, Mapping

import numpy as np

from fedjax_comp.data import file_cache, formats, text, tff_sqlite
from fedjax_comp.data.examples import Examples
from fedjax_comp.data.ragged import RaggedClients

FEDJAX_URL = "https://storage.googleapis.com/gresearch/fedjax"
TFF_URL = "https://storage.googleapis.com/tff-datasets-public"
LEAF_URL = "https://github.com/TalwalkarLab/leaf (run its preprocess.sh)"


@dataclasses.dataclass(frozen=True)
class FileSpec:
  """How to read one published dataset."""

  kind: str  # "fedjax_sqlite", "tff_sqlite", "leaf_json" or "npz_dir"
  files: Callable[[str], tuple[str, str]]  # variant -> (train, test) names under data_dir
  url: Callable[[str], str | None]  # file name -> where it is published
  preprocess: Callable[[dict], dict]
  num_classes: Callable[[str], int]
  variants: tuple[str, ...] = ("",)
  splits: Callable[[str], tuple[str, str]] | None = None  # tff_sqlite: split names
  shapes: dict | None = None  # tff_sqlite: per-example shape of each feature read


def _emnist_files(variant: str) -> tuple[str, str]:
  name = "digitsonly_" if variant == "digits" else ""
  return f"federated_emnist_{name}train.sqlite", f"federated_emnist_{name}test.sqlite"


SPECS: dict[str, FileSpec] = {
    "emnist_federated": FileSpec(
        "fedjax_sqlite", _emnist_files, lambda f: f"{FEDJAX_URL}/emnist/{f}", text.emnist,
        lambda v: 10 if v == "digits" else 62, variants=("", "digits")),
    "shakespeare": FileSpec(
        "fedjax_sqlite", lambda v: ("shakespeare_train.sqlite", "shakespeare_test.sqlite"),
        lambda f: f"{FEDJAX_URL}/shakespeare/{f}", text.shakespeare,
        lambda v: text.SHAKESPEARE_VOCAB),
    "stackoverflow": FileSpec(
        "fedjax_sqlite", lambda v: ("stackoverflow_train.sqlite", "stackoverflow_test.sqlite"),
        lambda f: f"{FEDJAX_URL}/stackoverflow/{f}", None, lambda v: 0),
    "cifar100_federated": FileSpec(
        "tff_sqlite", lambda v: ("cifar100.sqlite", "cifar100.sqlite"),
        lambda f: f"{TFF_URL}/{f}.lzma", text.cifar100, lambda v: 100,
        splits=lambda v: ("train", "test"), shapes={"image": (32, 32, 3), "label": ()}),
    "emnist_tff": FileSpec(
        "tff_sqlite", lambda v: ("emnist_all.sqlite", "emnist_all.sqlite"),
        lambda f: f"{TFF_URL}/{f}.lzma", text.emnist, lambda v: 10 if v == "digits" else 62,
        variants=("", "digits"),
        splits=lambda v: ("digits_only_train", "digits_only_test") if v == "digits"
        else ("all_train", "all_test"), shapes={"pixels": (28, 28), "label": ()}),
    "leaf_femnist": FileSpec("leaf_json", lambda v: ("train", "test"), lambda f: LEAF_URL,
                             text.leaf_femnist, lambda v: 62),
    "leaf_shakespeare": FileSpec("leaf_json", lambda v: ("train", "test"), lambda f: LEAF_URL,
                                 text.leaf_shakespeare, lambda v: text.SHAKESPEARE_VOCAB),
    "client_npz": FileSpec("npz_dir", lambda v: ("train", "test"), lambda f: None,
                           lambda feats: feats, lambda v: 0),
}
FILE_DATASETS = tuple(SPECS)


def _reader(spec: FileSpec, data_dir: pathlib.Path, name: str, variant: str, split: str):
  if spec.kind == "fedjax_sqlite":
    path = data_dir / name
    return path, lambda: formats.read_fedjax_sqlite(path, spec.url(name))
  if spec.kind == "tff_sqlite":
    path = data_dir / name
    split_name = spec.splits(variant)[0 if split == "train" else 1]
    return path, lambda: tff_sqlite.read_tff_sqlite(path, split_name, spec.shapes, spec.url(name))
  if spec.kind == "leaf_json":
    folder = data_dir / name
    if not any(folder.glob("*.json")):
      raise formats.missing_file_error(folder / "*.json", spec.url(name),
                                       f"LEAF writes them into data/<dataset>/data/{name}/.")
    return folder, lambda: formats.read_leaf_json(data_dir, name, spec.url(name))
  folder = data_dir / name
  if not any(folder.glob("*.npz")):
    raise FileNotFoundError(f"{folder}: no .npz files; write one <client id>.npz per client "
                            "(np.savez(path, x=..., y=...)) under train/ and test/")
  return folder, lambda: formats.read_npz_dir(folder)


SO_WORDS, SO_SEQ_LEN = 10_000, 20
SO_TEST_CLIENTS = 1000  # the default evaluation sample of StackOverflow's large test split
SO_WORD_COUNTS = "stackoverflow.word_count"


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A dataset's client preprocessing, what it depends on beyond the split, and its classes."""

  preprocess: Callable[[dict], dict]
  depends_on: tuple[pathlib.Path, ...]
  num_classes: int  # 0: the labels say
  note: str = ""


def _stackoverflow_words(data_dir: pathlib.Path, say) -> tuple[list[str], pathlib.Path, str]:
  counts = data_dir / SO_WORD_COUNTS
  if counts.exists():
    return (text.read_word_counts(counts, SO_WORDS), counts,
            f"vocabulary: the first {SO_WORDS:,} words of {counts}")
  train = data_dir / _spec("stackoverflow", "").files("")[0]
  if not train.exists():
    raise formats.missing_file_error(train, f"{FEDJAX_URL}/stackoverflow/{train.name}")
  root = file_cache.cache_root(train)
  cached = root / f"stackoverflow-vocab-{file_cache.cache_key([train], 'vocab')}.txt"
  if not cached.exists():
    if say:
      say(f"no {counts}: counting the {SO_WORDS:,} most frequent words of {train} (once; "
          f"place {SO_WORD_COUNTS} from {TFF_URL}/stackoverflow.word_count.tar.bz2 to use "
          "the published vocabulary)")
    words = text.count_words((s for _, feats in formats.read_fedjax_sqlite(train)
                              for s in feats["tokens"]), SO_WORDS)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text("\n".join(words), encoding="utf-8")
    os.replace(tmp, cached)
  words = cached.read_text(encoding="utf-8").split("\n") if cached.stat().st_size else []
  return words, train, (f"vocabulary: the {len(words):,} most frequent words of {train} "
                        f"(no {SO_WORD_COUNTS} in {data_dir})")


def prepare(dataset: str, data_dir, say=None) -> Prepared:
  """The preprocessing of `dataset` (StackOverflow's needs its vocabulary first)."""
  name, _, variant = dataset.partition(":")
  spec = _spec(name, variant)
  if data_dir is None:
    raise ValueError(f"--dataset={dataset} reads files: pass --data_dir=DIR holding "
                     f"{' and '.join(sorted(set(spec.files(variant))))}")
  if name == "stackoverflow":
    words, source, note = _stackoverflow_words(pathlib.Path(data_dir).expanduser(), say)
    ids = text.WordIds(words, SO_SEQ_LEN)
    return Prepared(ids, (source,), ids.vocab_size, note)
  return Prepared(spec.preprocess, (), spec.num_classes(variant))


def read_split(dataset: str, data_dir, split: str, say=None,
               prepared: Prepared | None = None) -> file_cache.CachedPopulation:
  """One split of a file dataset, preprocessed and cached (``dataset`` may be ``name:variant``)."""
  name, _, variant = dataset.partition(":")
  spec = _spec(name, variant)
  prepared = prepared or prepare(dataset, data_dir, say)
  data_dir = pathlib.Path(data_dir).expanduser()
  train_name, test_name = spec.files(variant)
  file = {"train": train_name, "test": test_name}[split]
  source, clients = _reader(spec, data_dir, file, variant, split)
  if not source.exists():
    how = ("TFF publishes it compressed: decompress it with `unxz -k FILE.sqlite.lzma`."
           if spec.kind == "tff_sqlite" else "")
    raise formats.missing_file_error(source, spec.url(file), how)

  def preprocessed():
    for cid, feats in clients():
      yield cid, prepared.preprocess(feats)

  tag = f"{name}-{variant or 'all'}-{split}"
  return file_cache.cached_ragged([source, *prepared.depends_on], tag, preprocessed, say=say)


def _spec(name: str, variant: str) -> FileSpec:
  if name not in SPECS:
    raise ValueError(f"unknown file dataset {name!r}; valid: {', '.join(FILE_DATASETS)}")
  spec = SPECS[name]
  if variant not in spec.variants:
    raise ValueError(f"unknown variant {variant!r} of {name}; valid: "
                     f"{', '.join(repr(v) for v in spec.variants)}")
  return spec


def _num_classes(n: int, train, test, dataset: str = "") -> int:
  top = max(int(p.value_range.get("y", [0, 0])[1]) for p in (train, test))
  if n == 0:  # your own data: the labels say
    return top + 1
  if top >= n:
    raise ValueError(f"{dataset}: labels in {train.path} / {test.path} reach {top}, but the "
                     f"dataset has {n} classes: the files do not match the dataset name")
  return n


class FileDataset:
  """A file dataset behind `FederatedDataset`'s interface (host store first).

  Args:
    dataset: a name in `FILE_DATASETS`, optionally ``name:variant``.
    data_dir: the folder holding its files.
    max_examples: cap on a client's train examples (its first ones are kept).
    test_clients: evaluate on a seeded sample of this many test clients
      (None: all of them).
    seed: the sample's seed.
  """

  def __init__(self, dataset: str, data_dir, *, max_examples: int | None = None,
               test_clients: int | None = None, seed: int = 0, say=None):
    if dataset.partition(":")[0] == "stackoverflow" and test_clients is None:
      test_clients = SO_TEST_CLIENTS
      if say:
        say(f"stackoverflow: evaluating on a seeded sample of {SO_TEST_CLIENTS:,} test clients "
            "(its test split holds about 16.6 M examples; --test_clients to change it)")
    prepared = prepare(dataset, data_dir, say)
    if say and prepared.note:
      say(f"{dataset}: {prepared.note}")
    self._finish(dataset, read_split(dataset, data_dir, "train", say, prepared),
                 read_split(dataset, data_dir, "test", say, prepared), prepared.num_classes,
                 max_examples, test_clients, seed, prepared.note, say)

  @classmethod
  def from_clients(cls, train: Mapping[str, Mapping[str, np.ndarray]],
                   test: Mapping[str, Mapping[str, np.ndarray]], *, name: str = "clients",
                   num_classes: int | None = None, max_examples: int | None = None,
                   test_clients: int | None = None, seed: int = 0,
                   say=None) -> "FileDataset":
    """Your own federated data, in memory: ``{client id: {"x": [n, ...], "y": [n, ...]}}``
    for the train and the test clients (checked like a file's; empty clients dropped).

    Example:
      >>> data = FileDataset.from_clients({"a": {"x": xa, "y": ya}, ...}, {...})
    """
    pops = []
    for split, clients in (("train", train), ("test", test)):
      kept = {c: f for c, f in formats.from_mapping(clients, f"{name} {split}")
              if len(next(iter(f.values()), ()))}
      dropped = len(clients) - len(kept)
      if not kept:
        raise ValueError(f"{name} {split}: no client with examples")
      keys = sorted(next(iter(kept.values())))
      pop = RaggedClients({k: np.concatenate([f[k] for f in kept.values()]) for k in keys},
                          np.concatenate([[0], np.cumsum([len(f[keys[0]]) for f in
                                                          kept.values()])]).astype(np.int64))
      object.__setattr__(pop, "ids", list(kept))
      object.__setattr__(pop, "dropped_empty", dropped)
      object.__setattr__(pop, "path", f"{name} {split}")
      y = pop.features.get("y", np.zeros(0))
      object.__setattr__(pop, "value_range", {"y": [0, int(y.max(initial=0))]})
      pops.append(pop)
    self = cls.__new__(cls)
    self._finish(name, *pops, num_classes or 0, max_examples, test_clients, seed, "", say)
    return self

  def _finish(self, dataset, train, test, num_classes, max_examples, test_clients, seed,
              note, say):
    self.name, self.max_examples, self.note = dataset, max_examples, note
    self.train_population, self.test_population = train, test
    for split, pop in (("train", train), ("test", test)):
      if pop.num_clients == 0:
        raise ValueError(f"{pop.path}: the {split} split has no client with examples")
      if set(pop.features) != {"x", "y"}:
        raise ValueError(f"{dataset} {split}: clients need features x and y, found "
                         f"{', '.join(sorted(pop.features))}")
      if say and pop.dropped_empty:
        say(f"{dataset} {split}: dropped {pop.dropped_empty} clients with no examples")
    self.num_classes = _num_classes(num_classes, train, test, dataset)
    ids = np.arange(test.num_clients)
    if test_clients is not None and test_clients < len(ids):
      if test_clients < 1:
        raise ValueError(f"test_clients must be >= 1, got {test_clients}")
      ids = np.sort(np.random.default_rng([seed, 0x54455354]).choice(
          len(ids), test_clients, replace=False))
    self.test_ids = ids

  @property
  def num_clients(self) -> int:
    return self.train_population.num_clients

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train_population.features["x"].shape[1:])

  def sizes(self) -> np.ndarray:
    sizes = self.train_population.sizes()
    return sizes if self.max_examples is None else np.minimum(sizes, self.max_examples)

  def padded_bytes(self) -> int:
    x, y = self.train_population.features["x"], self.train_population.features["y"]
    per_example = x[:1].nbytes + y[:1].nbytes
    return self.num_clients * (int(self.sizes().max()) * per_example + 4)

  def ragged(self):
    return self.train_population

  @functools.cached_property
  def clients(self):
    from fedjax_comp.data.federated import padded_clients  # pylint: disable=g-import-not-at-top
    return padded_clients(self.train_population, self.sizes())

  @functools.cached_property
  def test(self) -> Examples:
    """The sampled test clients' examples, concatenated; ``groups`` is each one's client."""
    pop = self.test_population
    parts = [np.arange(pop.offsets[i], pop.offsets[i + 1]) for i in self.test_ids]
    rows = np.concatenate(parts)
    owners = np.repeat(self.test_ids, [len(p) for p in parts])
    return Examples(np.asarray(pop.features["x"][rows]), np.asarray(pop.features["y"][rows]),
                    owners)
