"""Models by name; each carries its loss, metrics and round chunk sizes (`base.Model`).

=============  ==========================================================
name           model
=============  ==========================================================
``logistic``   multinomial logistic regression (`vision`)
``mlp``        two hidden ReLU layers of 100 (`vision`)
``2nn``        McMahan et al. 2017's 2NN (`vision`)
``cnn``        McMahan et al. 2017's CNN (`vision`)
``cifar_cnn``  a small CIFAR CNN (`vision`)
``char_lstm``  a character-level LSTM language model (`lstm`)
``emnist_cr``, ``emnist_dense``, ``shakespeare_lstm``, ``stackoverflow_lstm``,
``stackoverflow_transformer``, ``cifar100_resnet18``: the published
               benchmark models, with their parameter counts (`published`)
=============  ==========================================================

Adding a model: a function ``build(input_shape, num_classes) -> Model`` (for
a flax classifier, `vision.classifier` does the rest) and one `register`
line, here or in your own module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from fedjax_comp.models import lstm, published, vision
from fedjax_comp.models.base import (Batch, MetricSums, Model, Params, classification,
                                     next_token, num_params)
from fedjax_comp.models.layers import Dense, PatchConv, dense, max_pool_2x2

Builder = Callable[[tuple[int, ...], int], Model]
_REGISTRY: dict[str, Builder] = {}


def register(name: str, build: Builder) -> None:
  """Makes `get_model(name, ...)` call ``build(input_shape, num_classes)``."""
  if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_]+", name)):
    raise ValueError(f"register: name must be letters, digits and '_', got {name!r}")
  if name in _REGISTRY:
    raise ValueError(f"register: a model named {name!r} is already registered")
  if not callable(build):
    raise ValueError(f"register: build must be callable, got {build!r}")
  _REGISTRY[name] = build


for _name, _build in (("logistic", vision.logistic), ("mlp", vision.mlp),
                      ("2nn", vision.two_nn), ("cnn", vision.cnn),
                      ("cifar_cnn", vision.cifar_cnn), ("char_lstm", lstm.char_lstm),
                      ("emnist_cr", published.emnist_cr),
                      ("emnist_dense", lambda s, c: vision.two_nn(s, c)._replace(
                          name="emnist_dense")),
                      ("shakespeare_lstm", published.shakespeare_lstm),
                      ("stackoverflow_lstm", published.stackoverflow_lstm),
                      ("stackoverflow_transformer", published.stackoverflow_transformer),
                      ("cifar100_resnet18", published.cifar100_resnet18)):
  register(_name, _build)
MODELS = tuple(_REGISTRY)  # the built-in models


def model_names() -> tuple[str, ...]:
  """Every registered model, user-registered ones included."""
  return tuple(_REGISTRY)


def get_model(name: str, input_shape: Sequence[int], num_classes: int) -> Model:
  """Builds the named model for inputs of `input_shape` and `num_classes` outputs.

  Args:
    name: a registered model (`model_names()`).
    input_shape: the shape of one example's ``x``, without the batch axis.
    num_classes: the number of output logits (classes, or the vocabulary).

  Raises:
    ValueError: for an unknown name, a bad class count, or inputs the model
      cannot take.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  return _REGISTRY[name](tuple(int(d) for d in input_shape), int(num_classes))


__all__ = ["Batch", "Dense", "MODELS", "MetricSums", "Model", "Params", "PatchConv",
           "classification", "dense", "get_model", "max_pool_2x2", "model_names",
           "next_token", "num_params", "register"]
