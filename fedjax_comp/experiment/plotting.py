"""Plots for the runners and scripts/plot.py (matplotlib, non-interactive backend).

Every figure uses matplotlib's constrained layout, so labels and legends get
their own room: a legend with more than three entries (codec specs are long)
goes below the axes, under the x label, never over it. A log x axis cannot
show x <= 0: such points are left out of the line (matplotlib would clip them
to a tiny positive x and draw a flat segment from it), and the x label says
how many were.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top,wrong-import-position

from fedjax_comp.experiment.clock import readable_unit  # pylint: disable=g-import-not-at-top

Series = tuple[str, Sequence[float], Sequence[float]]  # (label, xs, ys)
LEGEND_INSIDE_MAX = 3  # more entries than this: the legend goes below the axes


def positive_x(xs: Sequence[float], ys: Sequence[float]) -> tuple[list, list, int]:
  """The points with x > 0 (what a log x axis can show), and how many were dropped."""
  kept = [(x, y) for x, y in zip(xs, ys) if x is not None and math.isfinite(x) and x > 0]
  return [x for x, _ in kept], [y for _, y in kept], len(xs) - len(kept)


def line_figure(series: Sequence[Series], *, xlabel: str, ylabel: str, title: str = "",
                logx: bool = False, logy: bool = False) -> Figure:
  """One line per ``(label, xs, ys)``; the caller saves (`line_plot`) or inspects it."""
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120, layout="constrained")
  dropped = 0
  for label, xs, ys in series:
    if logx:
      xs, ys, n = positive_x(xs, ys)
      dropped += n
    ax.plot(xs, ys, marker="." if len(xs) < 60 else None, label=label)
  if logy:
    ax.set_yscale("log")
  if logx:
    ax.set_xscale("log")
    if dropped:
      xlabel += f" (log scale: {dropped} point{'s' * (dropped > 1)} at x <= 0 not shown)"
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  if len(series) > LEGEND_INSIDE_MAX:
    fig.legend(loc="outside lower center", fontsize=6)
  elif len(series) > 1 or series and series[0][0]:
    ax.legend(fontsize=8)
  return fig


def _save(fig: Figure, path: str | os.PathLike) -> None:
  fig.savefig(path)
  plt.close(fig)


def line_plot(path: str | os.PathLike, series: Sequence[Series], *, xlabel: str, ylabel: str,
              title: str = "", logx: bool = False, logy: bool = False) -> None:
  """`line_figure`, saved as a PNG at `path` (`logy`: values must be positive)."""
  _save(line_figure(series, xlabel=xlabel, ylabel=ylabel, title=title, logx=logx, logy=logy),
        path)


def accuracy_vs_time(path: str | os.PathLike, curve: Mapping, *, logx: bool = False) -> None:
  """Test accuracy against simulated time, in a readable unit.

  Args:
    path: the PNG to write.
    curve: ``{"title", "series": [[label, seconds, accuracies], ...]}``, as
      the latency and fl_vs_incenter runners keep in ``extras["curves"]``.
    logx: log time axis (runs that differ by orders of magnitude); the
      evaluation at t = 0 is then left out, and the label says so.
  """
  series = curve["series"]
  unit, scale = readable_unit(max((max(ts) for _, ts, _ in series if len(ts)), default=0.0))
  line_plot(path, [(label, [t / scale for t in ts], accs) for label, ts, accs in series],
            xlabel=f"simulated time ({unit})", ylabel="test accuracy", title=curve["title"],
            logx=logx)


def scatter_plot(path: str | os.PathLike, points: Sequence[tuple[str, float, float]], *,
                 xlabel: str, ylabel: str, title: str = "", logx: bool = False,
                 logy: bool = False) -> None:
  """One labelled point per ``(label, x, y)``, saved as a PNG."""
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120, layout="constrained")
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
  _save(fig, path)


def bar_plot(path: str | os.PathLike, groups: Sequence[tuple[str, Sequence[str], Sequence[float]]],
             *, ylabel: str, title: str = "") -> None:
  """Grouped bars: one panel per ``(group, labels, values)``, saved as a PNG."""
  fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4), dpi=120, squeeze=False,
                           layout="constrained")
  for ax, (group, labels, values) in zip(axes[0], groups):
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), labels, rotation=70, fontsize=6)
    ax.set_title(group, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
  if title:
    fig.suptitle(title)
  _save(fig, path)
