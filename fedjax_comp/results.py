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


class RunRecorder:
  """Writes one run's ``metrics.jsonl`` as it goes and its ``result.json`` at the end."""

  def __init__(self, output_dir: str | os.PathLike, name: str):
    self.dir = pathlib.Path(output_dir)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.name = name
    self.start = time.time()
    self._jsonl = open(self.dir / "metrics.jsonl", "w", encoding="utf-8")

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


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
  path = pathlib.Path(output_dir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
