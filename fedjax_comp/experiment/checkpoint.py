"""Checkpoints of a run: any algorithm's state, the clients' rows and the loop's bookkeeping.

A checkpoint is one file::

  b"fedjax_comp checkpoint 2\\n" + sha256(payload) as 64 hex digits + b"\\n" + payload

where the payload is flax's msgpack serialization (never pickle) of
``{"tree": <state dict of any pytree>, "meta": <JSON text>}``. Typed PRNG
keys are stored as their raw key data and rewrapped on load. The checksum
makes a damaged file (flipped bytes, a truncated copy) fail loudly with
`CheckpointError` instead of resuming into a different run.

It is written to a temporary file, flushed to disk and renamed over the old
one, so a run killed at any instant leaves either the previous checkpoint or
the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any

import flax.serialization
import jax
import numpy as np

from fedjax_comp import keys
from fedjax_comp.sharding import fetch

MAGIC = b"fedjax_comp checkpoint 2\n"


class CheckpointError(ValueError):
  """A checkpoint that cannot be used (damaged, truncated, or from another setup)."""


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _unwrap_keys(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def save(path: str | os.PathLike, tree: Any, meta: dict[str, Any]) -> None:
  """Atomically writes the pytree `tree` (a state, rows, ...) and JSON-able `meta`."""
  path = pathlib.Path(path)
  host = jax.tree.map(np.asarray, fetch(_unwrap_keys(tree)))
  payload = flax.serialization.msgpack_serialize(
      {"tree": flax.serialization.to_state_dict(host), "meta": json.dumps(meta)})
  data = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
  """The checkpoint's meta, after checking the file (`CheckpointError` if damaged)."""
  return _read(pathlib.Path(path))["meta_dict"]


def _read(path: pathlib.Path) -> dict[str, Any]:
  try:
    data = path.read_bytes()
  except OSError as e:
    raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
  if not data.startswith(MAGIC):
    raise CheckpointError(f"{path} is not a fedjax_comp checkpoint (format 2); delete it or "
                          "choose another --output_dir")
  header_end = len(MAGIC) + 64
  digest, payload = data[len(MAGIC):header_end], data[header_end + 1:]
  if data[header_end:header_end + 1] != b"\n" or hashlib.sha256(
      payload).hexdigest().encode() != digest:
    raise CheckpointError(f"checkpoint {path} is damaged: its checksum does not match its "
                          "contents (flipped or missing bytes); delete it to start over")
  try:
    record = flax.serialization.msgpack_restore(payload)
    record["meta_dict"] = json.loads(record["meta"])
  except Exception as e:  # msgpack raises several unrelated types on bad bytes
    raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
  return record


def load(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
  """Reads a checkpoint written by `save`; `template` gives the tree's structure and shapes.

  Raises:
    CheckpointError: the file is unreadable, damaged, of another format, or
      its arrays do not match `template` (another model, algorithm or codec).
  """
  path = pathlib.Path(path)
  record = _read(path)
  flat_template = _unwrap_keys(template)
  try:
    tree = flax.serialization.from_state_dict(flat_template, record["tree"])
    _check_like(flat_template, tree)
  except (KeyError, ValueError, TypeError) as e:
    raise CheckpointError(f"checkpoint {path} does not match this run's model, algorithm or "
                          f"codec ({type(e).__name__}: {e})") from e
  tree = jax.tree.map(
      lambda t, x: jax.random.wrap_key_data(np.asarray(x, np.uint32), impl=keys.PRNG_IMPL)
      if _is_key(t) else x, template, tree)
  return tree, record["meta_dict"]


def _check_like(template, restored) -> None:
  a_leaves, b_leaves = jax.tree.leaves(template), jax.tree.leaves(restored)
  if len(a_leaves) != len(b_leaves):
    raise ValueError(f"{len(b_leaves)} arrays where {len(a_leaves)} were expected")
  for a, b in zip(a_leaves, b_leaves):
    if np.shape(a) != np.shape(b) or np.asarray(b).dtype != np.dtype(a.dtype):
      raise ValueError(f"array of shape {np.shape(b)} {np.asarray(b).dtype} where "
                       f"{np.shape(a)} {np.dtype(a.dtype)} was expected")
