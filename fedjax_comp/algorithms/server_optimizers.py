"""Server optimizers: the server update is an optax transform of the pseudo-gradient.

The round averages the client deltas into H(t) and calls the server
optimizer on the pseudo-gradient -H(t), so plain SGD with learning rate eta
gives W(t+1) = W(t) + eta·H(t) (FedAvg; eta = 1 is McMahan et al.'s), and
adaptive optimizers give Reddi et al.'s FedAdam, FedYogi and FedAdagrad.

===============  ==========================================================
name             optax transform (defaults from Reddi et al. 2020)
===============  ==========================================================
``fedavg``       ``sgd(lr)``
``fedavgm``      ``sgd(lr, momentum=0.9)``
``fedadam``      ``adam(lr, b1=0.9, b2=0.99, eps=1e-3)``
``fedyogi``      ``yogi(lr, b1=0.9, b2=0.99, eps=1e-3)``
``fedadagrad``   ``adagrad(lr, initial_accumulator_value=1e-6, eps=1e-3)``
===============  ==========================================================

eps plays the role of Reddi et al.'s adaptivity tau = 1e-3 (``--server_eps``;
``--server_beta2`` sets Adam's and Yogi's b2, 0.999 in their code's runs). optax's Adam
applies bias correction (as TFF's Keras Adam does); Reddi et al.'s
pseudo-code does not. Adding one: a line in `_FACTORIES`.

References:
  Reddi et al. 2020, Adaptive Federated Optimization (arXiv 2003.00295).
"""

from __future__ import annotations

from collections.abc import Callable

import optax

_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "fedavg": lambda lr, eps, b2: optax.sgd(lr),
    "fedavgm": lambda lr, eps, b2: optax.sgd(lr, momentum=0.9),
    "fedadam": lambda lr, eps, b2: optax.adam(lr, b1=0.9, b2=b2, eps=eps),
    "fedyogi": lambda lr, eps, b2: optax.yogi(lr, b1=0.9, b2=b2, eps=eps),
    "fedadagrad": lambda lr, eps, b2: optax.adagrad(lr, initial_accumulator_value=1e-6,
                                                    eps=eps),
}
SERVER_OPTIMIZERS = tuple(_FACTORIES)
ADAPTIVE = ("fedadam", "fedyogi", "fedadagrad")


def server_optimizer(name: str, learning_rate: float, *, eps: float | None = None,
                     beta2: float | None = None) -> optax.GradientTransformation:
  """The named server optimizer (see `SERVER_OPTIMIZERS`) at `learning_rate` > 0.

  `eps` (default 1e-3) and `beta2` (default 0.99; Adam and Yogi) apply to
  the adaptive optimizers only.
  """
  if name not in _FACTORIES:
    raise ValueError(f"unknown server optimizer {name!r}; valid: {', '.join(SERVER_OPTIMIZERS)}")
  if not learning_rate > 0:
    raise ValueError(f"server learning rate must be > 0, got {learning_rate}")
  if eps is not None and not eps > 0:
    raise ValueError(f"server_eps must be > 0, got {eps}")
  if beta2 is not None and not 0 <= beta2 < 1:
    raise ValueError(f"server_beta2 must be in [0, 1), got {beta2}")
  return _FACTORIES[name](learning_rate, 1e-3 if eps is None else eps,
                          0.99 if beta2 is None else beta2)
