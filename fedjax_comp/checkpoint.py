"""Checkpoints of a federated run: the server state and the runner's bookkeeping, in one file.

A checkpoint is one msgpack file (flax serialization; never pickle) holding

* the `ServerState`: params, optimizer state, round counter and the seed
  key's raw data (all randomness of later rounds derives from it, so a
  resumed run replays exactly the rounds an uninterrupted one would);
* ``meta``: whatever JSON the runner needs to continue (cumulative uplink
  bits, evaluation history, elapsed time, its config).

It is written to a temporary file, flushed to disk and renamed over the old
one, so a run killed at any instant leaves either the previous checkpoint or
the new one, never half of one. A truncated, corrupt or mismatched file
raises `CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import flax.serialization
import jax
import numpy as np

from fedjax_comp import keys
from fedjax_comp.fedavg import ServerState

FORMAT = 1


class CheckpointError(ValueError):
  """A checkpoint that cannot be used (corrupt, truncated, or from another setup)."""


def save(path: str | os.PathLike, state: ServerState, meta: dict[str, Any]) -> None:
  """Atomically writes `state` and JSON-able `meta` to `path`."""
  path = pathlib.Path(path)
  state = jax.device_get(state)
  record = {
      "format": FORMAT,
      "state": {
          "params": flax.serialization.to_state_dict(state.params),
          "opt_state": flax.serialization.to_state_dict(state.opt_state),
          "round": np.asarray(state.round),
          "seed_key": np.asarray(jax.random.key_data(state.seed_key)),
      },
      "meta": json.dumps(meta),
  }
  data = flax.serialization.msgpack_serialize(record)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def load(path: str | os.PathLike, template: ServerState) -> tuple[ServerState, dict[str, Any]]:
  """Reads a checkpoint written by `save`; `template` gives the state's structure.

  Raises:
    CheckpointError: the file is unreadable, truncated, corrupt, of another
      format, or its arrays do not match `template` (another model,
      optimizer or codec).
  """
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
  try:
    record = flax.serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several unrelated types on bad bytes
    raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
                          f"{e}); delete it to start over") from e
  if not isinstance(record, dict) or record.get("format") != FORMAT or "state" not in record:
    raise CheckpointError(f"{path} is not a fedjax_comp checkpoint (format {FORMAT})")
  s = record["state"]
  try:
    params = flax.serialization.from_state_dict(template.params, s["params"])
    opt_state = flax.serialization.from_state_dict(template.opt_state, s["opt_state"])
    _check_like(template.params, params)
    _check_like(template.opt_state, opt_state)
    seed_key = jax.random.wrap_key_data(np.asarray(s["seed_key"], np.uint32),
                                        impl=keys.PRNG_IMPL)
    state = ServerState(params=params, opt_state=opt_state,
                        round=jax.numpy.int32(int(s["round"])), seed_key=seed_key)
    meta = json.loads(record["meta"])
  except (KeyError, ValueError, TypeError) as e:
    raise CheckpointError(f"checkpoint {path} does not match this run's model, optimizer or "
                          f"codec ({type(e).__name__}: {e})") from e
  return state, meta


def _check_like(template, restored) -> None:
  for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(restored)):
    if np.shape(a) != np.shape(b) or np.asarray(b).dtype != np.asarray(a).dtype:
      raise ValueError(f"array of shape {np.shape(b)} {np.asarray(b).dtype} where "
                       f"{np.shape(a)} {np.asarray(a).dtype} was expected")
  if len(jax.tree.leaves(template)) != len(jax.tree.leaves(restored)):
    raise ValueError("different number of arrays")
