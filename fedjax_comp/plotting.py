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
  if len(series) > 3:  # long labels (codec specs): below the axes, not over the lines
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2))
  elif len(series) > 1 or series and series[0][0]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, bbox_inches="tight")
  plt.close(fig)


def scatter_plot(path: str | os.PathLike, points: Sequence[tuple[str, float, float]], *,
                 xlabel: str, ylabel: str, title: str = "", logx: bool = False,
                 logy: bool = False) -> None:
  """One labelled point per ``(label, x, y)``, saved as a PNG."""
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for label, x, y in points:
    ax.scatter([x], [y])
    ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def bar_plot(path: str | os.PathLike, groups: Sequence[tuple[str, Sequence[str], Sequence[float]]],
             *, ylabel: str, title: str = "") -> None:
  """Grouped bars: one panel per ``(group, labels, values)``, saved as a PNG."""
  fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4), dpi=120, squeeze=False)
  for ax, (group, labels, values) in zip(axes[0], groups):
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), labels, rotation=70, fontsize=6)
    ax.set_title(group, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
