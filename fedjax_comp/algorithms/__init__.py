"""Federated algorithms on one round engine, by name.

=============  ==========================================================
name           algorithm
=============  ==========================================================
``fedavg``     FedAvg with an optax server optimizer (`fed_avg`)
``fedprox``    FedProx: FedAvg plus a proximal term mu (`fed_prox`)
``scaffold``   SCAFFOLD option II, per-client control variates (`scaffold`)
=============  ==========================================================

`build(name, model, ...)` makes one from the runners' common arguments;
`register` adds your own (one file with its factory, one `register` line),
which also enrolls it in the conformance suite (tests/test_algorithms.py).
The worker-based baselines (`sync_sgd`, `periodic_averaging`) train a fixed
set of workers every step rather than sampled clients, and have their own
protocol (`algorithms.workers`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import optax

from fedjax_comp import codecs

from fedjax_comp.algorithms import downlink, engine, reference, workers
from fedjax_comp.algorithms.base import (ClientOutput, Cohort, CohortSums, FederatedAlgorithm,
                                         RoundMetrics, RoundOutput, ServerState, Weighted)
from fedjax_comp.algorithms.fed_avg import fed_avg
from fedjax_comp.algorithms.fed_prox import fed_prox
from fedjax_comp.algorithms.periodic_averaging import PeriodicState, periodic_averaging
from fedjax_comp.algorithms.scaffold import ScaffoldState, scaffold
from fedjax_comp.algorithms.server_optimizers import SERVER_OPTIMIZERS, server_optimizer
from fedjax_comp.algorithms.sync_sgd import SyncState, sync_sgd
from fedjax_comp.client_update import LocalSchedule


@dataclasses.dataclass(frozen=True)
class AlgorithmInfo:
  """A registered algorithm: how to build it from the common arguments, and its knobs.

  ``build(model, *, client_lr, server_optimizer, schedule, clients_per_round,
  codec, client_chunk, mesh, reproducible, **hparams)`` returns a `FederatedAlgorithm`;
  `hparams` maps each extra knob to its default; `examples` are the hparam
  settings the conformance suite runs.
  """

  build: Callable[..., FederatedAlgorithm]
  hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
  examples: tuple[dict[str, Any], ...] = ({},)


def _downlink(kw):
  spec = kw.pop("downlink_codec", None)
  if isinstance(spec, str):
    try:
      spec = codecs.parse(spec) if spec.strip().lower() not in ("", "none") else None
      if spec is not None:
        downlink.check_downlink_codec(spec)
    except ValueError as e:
      message = str(e).removeprefix("downlink_codec: ")
      raise ValueError(f"--downlink_codec: {message}") from e
  return {**kw, "downlink_codec": spec}


def _fedavg(model, *, client_lr, server_optimizer, schedule, **kw):
  return fed_avg(model, optax.sgd(client_lr), server_optimizer, schedule, **_downlink(kw))


def _fedprox(model, *, client_lr, server_optimizer, schedule, mu, **kw):
  return fed_prox(model, optax.sgd(client_lr), server_optimizer, schedule, mu=mu,
                  **_downlink(kw))


def _scaffold(model, *, client_lr, server_optimizer, schedule, **kw):
  return scaffold(model, client_lr, server_optimizer, schedule, **kw)


REGISTRY: dict[str, AlgorithmInfo] = {}


def register(name: str, info: AlgorithmInfo) -> None:
  """Adds an algorithm under `name` (letters, digits, '_'), enrolling it in the suite."""
  if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_]+", name)):
    raise ValueError(f"register: name must be letters, digits and '_', got {name!r}")
  if name in REGISTRY:
    raise ValueError(f"register: an algorithm named {name!r} is already registered")
  if not isinstance(info, AlgorithmInfo) or not callable(info.build):
    raise ValueError(f"register: info must be an AlgorithmInfo with a callable build, "
                     f"got {info!r}")
  REGISTRY[name] = info


_DOWNLINK = {"downlink_codec": None, "downlink_feedback": True}
register("fedavg", AlgorithmInfo(_fedavg, hparams=dict(_DOWNLINK)))
register("fedprox", AlgorithmInfo(_fedprox, hparams={"mu": 0.01, **_DOWNLINK},
                                  examples=({"mu": 0.1},)))
register("scaffold", AlgorithmInfo(_scaffold))
ALGORITHMS = tuple(REGISTRY)  # the built-in algorithms


def build(name: str, model, *, client_lr: float, server_optimizer: optax.GradientTransformation,
          schedule: LocalSchedule, clients_per_round: int, codec=None,
          client_chunk: int | None = None, mesh=None, reproducible: bool = False,
          **hparams) -> FederatedAlgorithm:
  """The registered algorithm `name`, built from the common arguments and its `hparams`."""
  if name not in REGISTRY:
    raise ValueError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(REGISTRY)}")
  info = REGISTRY[name]
  unknown = set(hparams) - set(info.hparams)
  if unknown:
    raise ValueError(f"algorithm {name!r} takes no {', '.join(sorted(unknown))}; its "
                     f"parameters: {', '.join(info.hparams) or '(none)'}")
  return info.build(model, client_lr=client_lr, server_optimizer=server_optimizer,
                    schedule=schedule, clients_per_round=clients_per_round, codec=codec,
                    client_chunk=client_chunk, mesh=mesh, reproducible=reproducible,
                    **{**info.hparams, **hparams})


__all__ = [
    "ALGORITHMS", "AlgorithmInfo", "ClientOutput", "Cohort", "CohortSums", "FederatedAlgorithm",
    "LocalSchedule", "PeriodicState", "REGISTRY", "RoundMetrics", "RoundOutput",
    "SERVER_OPTIMIZERS", "ScaffoldState", "ServerState", "SyncState", "Weighted", "build",
    "engine", "fed_avg", "fed_prox", "periodic_averaging", "reference", "register", "scaffold",
    "server_optimizer", "sync_sgd", "workers",
]
