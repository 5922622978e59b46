"""Readers (and writers) for the files federated datasets are published in. No TensorFlow.

Every reader yields ``(client_id: str, features: dict[str, np.ndarray])``
one client at a time, in the file's order, so a population larger than
memory streams through `data.file_cache` into memory-mapped arrays.

FedJAX SQLite (``federated_emnist_train.sqlite``, ``shakespeare_test.sqlite``, ...)
  One table ``federated_data(client_id BLOB, data BLOB, num_examples
  INTEGER)``, read in ``rowid`` order. ``data`` is zlib-compressed msgpack
  of a map from feature name to array, each array a msgpack extension:
  type 1 is a numeric ndarray, packed as ``(shape, dtype name, C-order
  bytes)``; type 3 a numpy scalar in the same form; type 4 an ndarray of
  bytes objects, packed as ``(shape, [bytes, ...])`` (Shakespeare's
  snippets, StackOverflow's texts). `write_fedjax_sqlite` writes the same
  format (the tests' small files, or your own data for FedJAX users).

LEAF JSON directories (``<dir>/train/*.json``, ``<dir>/test/*.json``)
  Each file is ``{"users": [...], "num_samples": [...], "user_data": {user:
  {"x": [...], "y": [...]}}}``; a user's examples may span several files (they
  are appended in file-name order).

TFF SQLite files (``emnist_all.sqlite``, ``cifar100.sqlite``): see `data.tff_sqlite`.

Your own data
  A mapping ``client id -> {feature: array}`` (`from_mapping`), or a
  directory of ``<client id>.npz`` files, one per client (`read_npz_dir`).
  Every feature of a client must have the same leading length.

References:
  FedJAX's SQLite format: google/fedjax, ``fedjax/core/sqlite_federated_data.py``
  and ``fedjax/core/serialization.py`` (the format, not the code, is used here).
  Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018 (arXiv 1812.01097).
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import zlib
from collections.abc import Iterator, Mapping

import msgpack
import numpy as np

ClientIter = Iterator[tuple[str, dict[str, np.ndarray]]]

_NDARRAY, _SCALAR, _BYTES_NDARRAY = 1, 3, 4
_COLUMNS = {"client_id": "BLOB", "data": "BLOB", "num_examples": "INTEGER"}


def _array_from_ext(code: int, data: bytes):
  if code in (_NDARRAY, _SCALAR):
    shape, dtype, buffer = msgpack.unpackb(data, raw=True)
    arr = np.frombuffer(buffer, dtype=np.dtype(dtype.decode())).reshape(shape)
    return arr[()] if code == _SCALAR else arr
  if code == _BYTES_NDARRAY:
    shape, flat = msgpack.unpackb(data, raw=True)
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape)
  raise ValueError(f"unknown msgpack extension type {code} (FedJAX uses 1, 3 and 4)")


def _array_to_ext(arr) -> msgpack.ExtType:
  arr = np.asarray(arr)
  if arr.dtype.kind in "OS":
    flat = [bytes(v) for v in arr.reshape(-1)]
    return msgpack.ExtType(_BYTES_NDARRAY, msgpack.packb((list(arr.shape), flat),
                                                         use_bin_type=True))
  return msgpack.ExtType(_NDARRAY, msgpack.packb(
      (list(arr.shape), arr.dtype.name, np.ascontiguousarray(arr).tobytes()), use_bin_type=True))


def decode_client_blob(blob: bytes) -> dict[str, np.ndarray]:
  """A FedJAX ``data`` blob -> {feature: array} (zlib, then msgpack with array extensions)."""
  features = msgpack.unpackb(zlib.decompress(blob), ext_hook=_array_from_ext, raw=False)
  if not isinstance(features, dict):
    raise ValueError(f"expected a map of features, got {type(features).__name__}")
  return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in features.items()}


def encode_client_blob(features: Mapping[str, np.ndarray]) -> bytes:
  """Inverse of `decode_client_blob`."""
  return zlib.compress(msgpack.packb({k: _array_to_ext(v) for k, v in features.items()},
                                     use_bin_type=True))


def missing_file_error(path, url: str | None, how: str = "") -> FileNotFoundError:
  """The error for a dataset file that is not on disk: what, where from, where to put it."""
  where = f" Download it from {url}" if url else ""
  return FileNotFoundError(f"{path}: no such file.{where} and place it at exactly this path "
                           f"(or pass --data_dir=DIR holding it).{(' ' + how) if how else ''}")


def _open_sqlite(path, url: str | None) -> sqlite3.Connection:
  path = pathlib.Path(path)
  if not path.is_file():
    raise missing_file_error(path, url)
  conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
  try:
    cols = {row[1]: row[2].upper() for row in conn.execute("PRAGMA table_info(federated_data)")}
  except sqlite3.DatabaseError as e:
    conn.close()
    raise ValueError(f"{path}: not a readable SQLite database ({e})") from None
  if not cols:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    conn.close()
    raise ValueError(f"{path}: no table 'federated_data' (FedJAX's format); tables found: "
                     f"{', '.join(tables) or 'none'}")
  for name, kind in _COLUMNS.items():
    if name not in cols:
      conn.close()
      raise ValueError(f"{path}: table federated_data has no column {name!r} (columns: "
                       f"{', '.join(cols)}; expected client_id BLOB, data BLOB, "
                       "num_examples INTEGER)")
    if cols[name] != kind:
      conn.close()
      raise ValueError(f"{path}: column federated_data.{name} has type {cols[name]!r}, "
                       f"expected {kind}")
  return conn


def decode_client_id(raw) -> str:
  return raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray, memoryview)) \
      else str(raw)


def fedjax_sqlite_sizes(path, url: str | None = None) -> tuple[list[str], np.ndarray]:
  """(client ids, num_examples) of a FedJAX SQLite file, in rowid order, without reading data."""
  conn = _open_sqlite(path, url)
  try:
    rows = conn.execute("SELECT client_id, num_examples FROM federated_data ORDER BY rowid")
    ids, sizes = [], []
    for cid, n in rows:
      ids.append(decode_client_id(cid))
      sizes.append(n)
  finally:
    conn.close()
  return ids, np.asarray(sizes, np.int64)


def read_fedjax_sqlite(path, url: str | None = None) -> ClientIter:
  """Yields ``(client_id, features)`` from a FedJAX SQLite file in rowid order.

  Raises:
    FileNotFoundError: naming the file and `url` to download it from.
    ValueError: naming the file (and client) for a missing table or column, a
      wrong column type, a blob that does not decompress or decode, or
      features whose lengths disagree with each other or with num_examples.
  """
  conn = _open_sqlite(path, url)
  try:
    cursor = conn.execute("SELECT client_id, data, num_examples FROM federated_data "
                          "ORDER BY rowid")
    for raw_id, blob, n in cursor:
      cid = decode_client_id(raw_id)
      try:
        features = decode_client_blob(bytes(blob))
      except (zlib.error, ValueError, TypeError, msgpack.ExtraData,
              msgpack.FormatError, msgpack.StackError) as e:
        raise ValueError(f"{path}: client {cid!r}: its data blob does not decompress and "
                         f"decode as zlib(msgpack) ({type(e).__name__}: {e})") from None
      check_client(features, cid, str(path), expected=n)
      yield cid, features
  finally:
    conn.close()


def new_sqlite(path, *tables: str) -> sqlite3.Connection:
  """A new SQLite file at `path` (replacing it) with ``CREATE TABLE <each of tables>``."""
  path = pathlib.Path(path)
  path.unlink(missing_ok=True)
  conn = sqlite3.connect(path)
  for table in tables:
    conn.execute(f"CREATE TABLE {table}")
  return conn


def write_fedjax_sqlite(path, clients: Mapping[str, Mapping[str, np.ndarray]]) -> None:
  """Writes clients in FedJAX's SQLite format (replacing `path`)."""
  conn = new_sqlite(path, "federated_data (client_id BLOB NOT NULL PRIMARY KEY, "
                    "data BLOB NOT NULL, num_examples INTEGER NOT NULL)")
  try:
    for cid, feats in clients.items():
      n = len(next(iter(feats.values()))) if feats else 0
      conn.execute("INSERT INTO federated_data VALUES (?, ?, ?)",
                   (str(cid).encode(), encode_client_blob(feats), n))
    conn.commit()
  finally:
    conn.close()


def check_client(features: Mapping[str, np.ndarray], cid: str, source: str,
                 expected: int | None = None) -> int:
  """A client's example count; ValueError (naming it) when its features' lengths disagree."""
  lengths = {k: len(v) for k, v in features.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"{source}: client {cid!r}: features have different lengths "
                     f"({', '.join(f'{k}={n}' for k, n in lengths.items())}); refusing to "
                     "truncate")
  n = next(iter(lengths.values()), 0)
  if expected is not None and n != expected:
    raise ValueError(f"{source}: client {cid!r}: num_examples says {expected} but its "
                     f"features hold {n}")
  return n


def read_leaf_json(directory, split: str, url: str | None = None) -> ClientIter:
  """Yields ``(user, {"x": array, "y": array})`` from LEAF's ``<directory>/<split>/*.json``.

  A user whose examples span several files is yielded once, with them
  concatenated in file-name order. The whole split is held as arrays
  (float32 features) until the last file is read: about 2.5 GB for all of
  FEMNIST.
  """
  folder = pathlib.Path(directory) / split
  files = sorted(folder.glob("*.json"))
  if not files:
    raise missing_file_error(folder / "*.json", url,
                             "LEAF writes them with its preprocess.sh (data/<name>/data/"
                             f"{split}/); copy that folder.")
  # Each file's users become compact arrays as it is parsed (FEMNIST's floats as float32),
  # so the split costs its arrays, not Python lists of floats; a user is yielded after the
  # last file, joined across files.
  users: dict[str, dict[str, list]] = {}
  for f in files:
    try:
      blob = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{f}: not valid JSON ({e})") from None
    for key in ("users", "user_data"):
      if key not in blob:
        raise ValueError(f"{f}: no {key!r} key (LEAF's format: users, num_samples, "
                         "user_data)")
    for u in blob["users"]:
      data = blob["user_data"].get(u)
      if data is None or "x" not in data or "y" not in data:
        raise ValueError(f"{f}: user {u!r} has no user_data with 'x' and 'y'")
      if len(data["x"]) != len(data["y"]):
        raise ValueError(f"{f}: user {u!r}: x has {len(data['x'])} examples but y has "
                         f"{len(data['y'])}; refusing to truncate")
      slot = users.setdefault(str(u), {"x": [], "y": []})
      for k in ("x", "y"):
        arr = np.asarray(data[k])
        slot[k].append(arr.astype(np.float32) if arr.dtype == np.float64 else arr)
    del blob
  for u, data in users.items():
    out = {}
    for k, parts in data.items():
      parts = [a for a in parts if len(a)]
      out[k] = (parts[0] if len(parts) == 1 else np.concatenate(parts)) if parts else \
          np.zeros((0,))
    yield u, out


def from_mapping(clients: Mapping[str, Mapping[str, np.ndarray]],
                 source: str = "clients") -> ClientIter:
  """Yields a dict of client id -> {feature: array} as a reader does (checked)."""
  for cid, feats in clients.items():
    feats = {k: np.asarray(v) for k, v in feats.items()}
    check_client(feats, str(cid), source)
    yield str(cid), feats


def read_npz_dir(directory) -> ClientIter:
  """Yields ``(file stem, arrays)`` from ``<directory>/*.npz``, one client per file, by name."""
  files = sorted(pathlib.Path(directory).glob("*.npz"))
  if not files:
    raise FileNotFoundError(f"{directory}: no .npz files; write one <client id>.npz per "
                            "client (np.savez(path, x=..., y=...))")
  for f in files:
    with np.load(f, allow_pickle=False) as z:
      feats = {k: z[k] for k in z.files}
    check_client(feats, f.stem, str(f))
    yield f.stem, feats
