"""Plots for the runners (matplotlib, non-interactive backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def line_plot(path: str | os.PathLike, series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
              *, xlabel: str, ylabel: str, title: str = "", logx: bool = False) -> None:
  """One line per ``(label, xs, ys)``, saved as a PNG."""
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for label, xs, ys in series:
    ax.plot(xs, ys, marker="." if len(xs) < 60 else None, label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if logx:
    ax.set_xscale("log")
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  if len(series) > 1 or series and series[0][0]:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
