"""FedProx: FedAvg whose clients minimise f_i(w) + mu/2 ||w - w_t||^2.

The proximal term keeps a client's local model near the round's server
model w_t, which limits client drift on heterogeneous data; mu = 0 is FedAvg
(the same program). Typical mu: 0.001, 0.01, 0.1, 1. The server side is
FedAvg's (example-weighted mean, then the server optimizer).

References:
  Li et al. 2020, Federated Optimization in Heterogeneous Networks (arXiv
  1812.06127), section 3.
"""

from __future__ import annotations

import math

import optax

from fedjax_comp.algorithms import base
from fedjax_comp.algorithms.fed_avg import fed_avg
from fedjax_comp.client_update import LocalSchedule
from fedjax_comp.models import Model


def fed_prox(model: Model, client_optimizer: optax.GradientTransformation,
             server_optimizer: optax.GradientTransformation,
             schedule: LocalSchedule = LocalSchedule(), *, mu: float,
             **kwargs) -> base.FederatedAlgorithm:
  """FedProx with proximal weight `mu` >= 0; other arguments as `fed_avg`'s."""
  if not (isinstance(mu, (int, float)) and not isinstance(mu, bool) and math.isfinite(mu)
          and mu >= 0):
    raise ValueError(f"fedprox_mu must be a finite number >= 0, got {mu!r}")
  return fed_avg(model, client_optimizer, server_optimizer, schedule, prox_mu=float(mu),
                 name="fedprox", **kwargs)
