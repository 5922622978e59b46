"""The pass/fail rule: a figure against its baseline, direction and tolerance."""

from __future__ import annotations

import dataclasses
import math

HIGHER = "higher_is_better"
LOWER = "lower_is_better"


def allowed_bound(baseline: float, direction: str, tolerance: float) -> float:
  """The worst value that still passes."""
  if direction == HIGHER:
    return baseline * (1 - tolerance)
  if direction == LOWER:
    return baseline * (1 + tolerance)
  raise ValueError(f"direction must be {HIGHER!r} or {LOWER!r}, got {direction!r}")


def within(measured: float, baseline: float, direction: str, tolerance: float) -> bool:
  """Whether `measured` is no worse than the allowed bound (the bound itself passes)."""
  bound = allowed_bound(baseline, direction, tolerance)
  if not math.isfinite(measured):
    return False
  return measured >= bound if direction == HIGHER else measured <= bound


def better(a: float, b: float, direction: str) -> float:
  return max(a, b) if direction == HIGHER else min(a, b)


@dataclasses.dataclass(frozen=True)
class Row:
  """One figure's verdict; `baseline` is None when the baseline file lacks the figure."""
  figure: str
  measured: float
  baseline: float | None = None
  direction: str | None = None
  tolerance: float | None = None
  attempts: int = 1

  @property
  def bound(self) -> float | None:
    if self.baseline is None:
      return None
    return allowed_bound(self.baseline, self.direction, self.tolerance)

  @property
  def passed(self) -> bool:
    return self.baseline is not None and within(self.measured, self.baseline, self.direction,
                                                self.tolerance)

  def message(self) -> str:
    if self.baseline is None:
      return (f"REGRESSION: {self.figure} = {self.measured:.3g} has no baseline; "
              "add it with --update_baseline")
    op, sign = (">", "+") if self.direction == LOWER else ("<", "-")
    tries = f"; best of {self.attempts} measurements" if self.attempts > 1 else ""
    return (f"REGRESSION: {self.figure} = {self.measured:.3g} {op} allowed {self.bound:.3g} "
            f"(baseline {self.baseline:.3g}, tolerance {sign}{self.tolerance:.0%}, "
            f"{self.direction}{tries})")


def compare(measured: dict[str, float], baseline: dict,
            attempts: dict[str, int] | None = None) -> list[Row]:
  """One `Row` per measured figure, against the baseline file's ``figures`` entries."""
  rows = []
  for name, value in measured.items():
    entry = baseline.get("figures", {}).get(name)
    tries = (attempts or {}).get(name, 1)
    if entry is None:
      rows.append(Row(name, value, attempts=tries))
    else:
      rows.append(Row(name, value, float(entry["value"]), entry["direction"],
                      float(entry["tolerance"]), tries))
  return rows


def format_table(rows: list[Row]) -> str:
  lines = [f"{'figure':<36} {'measured':>9} {'baseline':>9} {'allowed':>11}  result", "-" * 76]
  for r in rows:
    if r.baseline is None:
      lines.append(f"{r.figure:<36} {r.measured:9.3g} {'-':>9} {'-':>11}  FAIL (no baseline)")
      continue
    op = ">=" if r.direction == HIGHER else "<="
    note = f" (best of {r.attempts})" if r.attempts > 1 else ""
    lines.append(f"{r.figure:<36} {r.measured:9.3g} {r.baseline:9.3g} {op:>2} {r.bound:8.3g}  "
                 f"{'PASS' if r.passed else 'FAIL'}{note}")
  return "\n".join(lines)
