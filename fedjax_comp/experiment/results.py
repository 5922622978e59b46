"""Run records: ``result.json`` per run and ``metrics.jsonl`` with one line per round.

Layout of ``<output_dir>``::

  result.json     {"name", "succeeded", "wall_time", "metrics", "extras"}
  metrics.jsonl   one JSON object per round, appended and flushed as it happens
  *.png           the runner's plots

``metrics.jsonl`` is written as the run goes, so a run that stops early
(non-finite loss, Ctrl-C) keeps every round it finished, and ``result.json``
is written with ``succeeded=false`` and the reason.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import time
from collections.abc import Mapping
from typing import Any

import numpy as np


def _jsonable(value: Any) -> Any:
  """Numpy/JAX scalars and arrays to plain JSON; non-finite floats to null."""
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
    return _jsonable(np.asarray(value).tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def environment() -> dict[str, Any]:
  """Versions and the device, for ``extras``."""
  import jax  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  return {
      "jax_version": jax.__version__, "flax_version": flax.__version__,
      "optax_version": optax.__version__, "python": platform.python_version(),
      "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
      "num_devices": len(devices), "cpu_count": os.cpu_count(),
      "prng_impl": "threefry2x32",
      "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
  }


class ResultFileError(ValueError):
  """A result or metrics file that is missing, truncated or not what it should be."""


class RunRecorder:
  """Writes one run's ``metrics.jsonl`` as it goes and its ``result.json`` at the end.

  With ``resume_round=r`` it continues an interrupted run: lines for rounds
  after r (logged after the last checkpoint, so about to be run again) and a
  half-written last line are dropped, and new lines are appended, so every
  round appears exactly once.
  """

  def __init__(self, output_dir: str | os.PathLike, name: str, *,
               resume_round: int | None = None):
    self.dir = pathlib.Path(output_dir)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.name = name
    self.start = time.time()
    path = self.dir / "metrics.jsonl"
    if resume_round is None:
      self._jsonl = open(path, "w", encoding="utf-8")
      return
    kept = [r for r in read_metrics(self.dir, allow_truncated_tail=True)
            if r.get("round", 0) <= resume_round] if path.exists() else []
    rounds = [r.get("round") for r in kept]
    if rounds != list(range(1, len(rounds) + 1)) or len(rounds) != resume_round:
      first = next((i for i, r in enumerate(rounds, 1) if r != i), len(rounds) + 1)
      raise ResultFileError(
          f"{path} does not hold every round up to the checkpoint's round {resume_round}: "
          f"round {first} is missing (or out of order); the checkpoint and the records "
          "disagree, so the run cannot be resumed: start it again with --overwrite")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)
    self._jsonl = open(path, "a", encoding="utf-8")

  def log(self, record: Mapping[str, Any]) -> None:
    self._jsonl.write(json.dumps(_jsonable(record)) + "\n")
    self._jsonl.flush()

  def finish(self, *, succeeded: bool, metrics: Mapping[str, Any],
             extras: Mapping[str, Any]) -> pathlib.Path:
    self._jsonl.close()
    result = {"name": self.name, "succeeded": succeeded,
              "wall_time": time.time() - self.start,
              "metrics": _jsonable(metrics), "extras": _jsonable(extras)}
    path = self.dir / "result.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # never leave half a result.json
    return path


def read_metrics(output_dir: str | os.PathLike, *,
                 allow_truncated_tail: bool = False) -> list[dict[str, Any]]:
  """The records of ``<output_dir>/metrics.jsonl``.

  Raises `ResultFileError` naming the file and line if it is missing or a
  line is not JSON; with `allow_truncated_tail`, a broken *last* line (a run
  killed mid-write) is dropped instead.
  """
  path = pathlib.Path(output_dir) / "metrics.jsonl"
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except OSError as e:
    raise ResultFileError(f"cannot read {path}: {e.strerror or e}") from e
  except UnicodeDecodeError as e:
    raise ResultFileError(f"{path} is not a text metrics file (bad UTF-8 at byte "
                          f"{e.start})") from e
  out = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    except ValueError as e:
      if allow_truncated_tail and i == len(lines) - 1:
        break
      raise ResultFileError(f"{path}: line {i + 1} is not a JSON record ({e}); the file is "
                            "corrupt or was truncated") from e
    out.append(record)
  return out


def read_result(output_dir: str | os.PathLike) -> dict[str, Any]:
  """``<output_dir>/result.json``, checked; `ResultFileError` with the reason if it is bad."""
  path = pathlib.Path(output_dir)
  path = path if path.suffix == ".json" else path / "result.json"
  try:
    result = json.loads(path.read_text(encoding="utf-8"))
  except OSError as e:
    raise ResultFileError(f"cannot read {path}: {e.strerror or e}") from e
  except (ValueError, UnicodeDecodeError) as e:
    raise ResultFileError(f"{path} is not valid JSON ({e}); the file is corrupt or was "
                          "truncated") from e
  missing = [k for k in ("name", "succeeded", "metrics", "extras")
             if not isinstance(result, dict) or k not in result]
  if missing:
    raise ResultFileError(f"{path} is not a fedjax_comp result: missing {', '.join(missing)}")
  return result
