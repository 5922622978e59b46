"""TFF's SQLite files (emnist_all.sqlite, cifar100.sqlite, ...), read without TensorFlow.

One serialized ``tf.train.Example`` per row of ``examples(split_name,
client_id, serialized_example_proto)`` (plus ``client_metadata(client_id,
split_name, num_examples)``). The Example proto is declared here with the
same messages and field numbers as TensorFlow's example.proto and
feature.proto, and parsed by the protobuf library (a dependency of
tensorflow-datasets), so no TensorFlow is needed. Rows are read in
``client_id`` order and grouped into clients.

References:
  TFF's ``tff.simulation.datasets.SqlClientData`` format (google-parfait/
  tensorflow-federated, python/simulation/datasets/sql_client_data_utils.py);
  TensorFlow's core/example/example.proto and feature.proto.
"""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Mapping

import numpy as np

from fedjax_comp.data.formats import (ClientIter, check_client, decode_client_id,
                                      missing_file_error, new_sqlite)


def _example_message():
  from google.protobuf import descriptor_pb2, descriptor_pool  # pylint: disable=g-import-not-at-top
  from google.protobuf import message_factory  # pylint: disable=g-import-not-at-top
  f = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(name="fedjax_comp/example.proto",
                                             package="fedjax_comp.tf", syntax="proto3")
  for name, kind in (("BytesList", f.TYPE_BYTES), ("FloatList", f.TYPE_FLOAT),
                     ("Int64List", f.TYPE_INT64)):
    proto.message_type.add(name=name).field.add(name="value", number=1, type=kind,
                                                label=f.LABEL_REPEATED)
  feature = proto.message_type.add(name="Feature")
  feature.oneof_decl.add(name="kind")
  for number, name, kind in ((1, "bytes_list", "BytesList"), (2, "float_list", "FloatList"),
                             (3, "int64_list", "Int64List")):
    feature.field.add(name=name, number=number, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                      type_name=f".fedjax_comp.tf.{kind}", oneof_index=0)
  features = proto.message_type.add(name="Features")
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
  entry.field.add(name="value", number=2, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                  type_name=".fedjax_comp.tf.Feature")
  features.field.add(name="feature", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                     type_name=".fedjax_comp.tf.Features.FeatureEntry")
  proto.message_type.add(name="Example").field.add(
      name="features", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
      type_name=".fedjax_comp.tf.Features")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("fedjax_comp.tf.Example"))


_EXAMPLE = None


def example_message():
  """The tf.train.Example message class (built once)."""
  global _EXAMPLE  # pylint: disable=global-statement
  if _EXAMPLE is None:
    _EXAMPLE = _example_message()
  return _EXAMPLE


def parse_example(blob: bytes) -> dict[str, np.ndarray]:
  """A serialized tf.train.Example -> {feature: 1-D array} (int64, float32 or bytes objects)."""
  ex = example_message().FromString(blob)
  out = {}
  for key, feat in ex.features.feature.items():
    kind = feat.WhichOneof("kind")
    if kind == "int64_list":
      out[key] = np.asarray(feat.int64_list.value, np.int64)
    elif kind == "float_list":
      out[key] = np.asarray(feat.float_list.value, np.float32)
    elif kind == "bytes_list":
      values = np.empty(len(feat.bytes_list.value), dtype=object)
      values[:] = list(feat.bytes_list.value)
      out[key] = values
    else:
      out[key] = np.zeros((0,), np.float32)
  return out


def serialize_example(features: Mapping[str, np.ndarray]) -> bytes:
  """Inverse of `parse_example` (ints -> int64_list, floats -> float_list, else bytes_list)."""
  ex = example_message()()
  for key, value in features.items():
    value = np.asarray(value).reshape(-1)
    feat = ex.features.feature[key]
    if value.dtype.kind in "iub":
      feat.int64_list.value.extend(value.astype(np.int64).tolist())
    elif value.dtype.kind == "f":
      feat.float_list.value.extend(value.astype(np.float32).tolist())
    else:
      feat.bytes_list.value.extend(bytes(v) for v in value)
  return ex.SerializeToString()


_TFF_COLUMNS = {"split_name": "TEXT", "client_id": "TEXT", "serialized_example_proto": "BLOB"}


def read_tff_sqlite(path, split: str, shapes: Mapping[str, tuple[int, ...]],
                    url: str | None = None) -> ClientIter:
  """Yields ``(client_id, features)`` of one split of a TFF SQLite file, grouped by client.

  Args:
    path: e.g. ``cifar100.sqlite`` (decompressed from TFF's ``.sqlite.lzma``).
    split: the ``split_name`` (``train``/``test`` for CIFAR-100, ``all_train`` ... for
      EMNIST).
    shapes: each feature's per-example shape (``{"image": (32, 32, 3), "label": ()}``);
      features not named are dropped, and a missing one is an error naming the client.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise missing_file_error(path, url, "TFF publishes it compressed: decompress it with "
                             "`unxz -k FILE.sqlite.lzma` or `lzma -dk`.")
  conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
  try:
    try:
      cols = {r[1]: r[2].upper() for r in conn.execute("PRAGMA table_info(examples)")}
    except sqlite3.DatabaseError as e:
      raise ValueError(f"{path}: not a readable SQLite database ({e})") from None
    missing = [c for c in _TFF_COLUMNS if c not in cols]
    if missing:
      raise ValueError(f"{path}: TFF's table examples(split_name TEXT, client_id TEXT, "
                       f"serialized_example_proto BLOB) is {'absent' if not cols else 'missing '}"
                       f"{', '.join(missing) if cols else ''}")
    splits = [r[0] for r in conn.execute("SELECT DISTINCT split_name FROM examples")]
    if split not in splits:
      raise ValueError(f"{path}: no split {split!r}; splits: {', '.join(map(str, splits))}")
    rows = conn.execute("SELECT client_id, serialized_example_proto FROM examples "
                        "WHERE split_name = ? ORDER BY client_id, rowid", (split,))
    current, parts = None, []

    def finish(cid, parts):
      feats = {}
      for k, shape in shapes.items():
        try:
          feats[k] = np.stack([p[k].reshape(shape) for p in parts])
        except KeyError:
          raise ValueError(f"{path}: client {cid!r}: an example has no feature {k!r} (it "
                           f"has {', '.join(sorted(parts[0]))})") from None
        except ValueError as e:
          raise ValueError(f"{path}: client {cid!r}: feature {k!r} does not have shape "
                           f"{shape} ({e})") from None
      return cid, feats

    for cid, blob in rows:
      cid = decode_client_id(cid)
      if cid != current and parts:
        yield finish(current, parts)
        parts = []
      current = cid
      try:
        parts.append(parse_example(bytes(blob)))
      except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"{path}: client {cid!r}: an example does not parse as a "
                         f"tf.train.Example ({type(e).__name__}: {e})") from None
    if parts:
      yield finish(current, parts)
  finally:
    conn.close()


def write_tff_sqlite(path, splits: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]
                     ) -> None:
  """Writes ``{split: {client: {feature: [N, ...]}}}`` in TFF's SQLite layout (tests, converters)."""
  conn = new_sqlite(path, "examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
                    "serialized_example_proto BLOB NOT NULL)",
                    "client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, "
                    "num_examples INTEGER NOT NULL)")
  try:
    for split, clients in splits.items():
      for cid, feats in clients.items():
        n = check_client(feats, cid, str(path))
        for i in range(n):
          conn.execute("INSERT INTO examples VALUES (?, ?, ?)",
                       (split, cid, serialize_example({k: v[i] for k, v in feats.items()})))
        conn.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (cid, split, n))
    conn.commit()
  finally:
    conn.close()
