"""Centralized labeled splits, the form every source produces before partitioning."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Examples(NamedTuple):
  """One labeled split held on the host.

  Attributes:
    x: features, ``[num_examples, *feature_shape]`` float32.
    y: integer class labels, ``[num_examples]`` int32.
    groups: the natural owner of each example (a writer, a device), ``[num_examples]``
      int, or None when the source has no natural clients.
  """

  x: np.ndarray
  y: np.ndarray
  groups: np.ndarray | None = None


class SourceData(NamedTuple):
  """What a data source returns: a train split to partition and a central test split."""

  train: Examples
  test: Examples
  num_classes: int
