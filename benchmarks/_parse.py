"""Knob parsing shared by the runners: list-valued knobs, and flags a runner does not take.

`CodecList` is the ``--codecs`` flag group of `benchmarks.accuracy_vs_bits`
and `benchmarks.fl_vs_incenter`: one knob, so one class (absl flags are
global, and a process, such as the tests, may import both runners); each
runner sets its own default list in its ``__main__`` block.
"""

from __future__ import annotations

import dataclasses

from fedjax_comp import codecs
from fedjax_comp.experiment.configs import knob


@dataclasses.dataclass(frozen=True)
class CodecList:
  """The codecs a sweep compares."""

  codecs: str = knob("none", "Codec specs to compare, separated by ';' (a spec itself "
                     "contains commas); 'none' sends float32.")

  def __post_init__(self):
    self.specs()

  def specs(self, check=None) -> list[str]:
    """The specs, each passed to `check` (default: parsed); ValueError naming ``--codecs``."""
    return check_specs([s.strip() for s in self.codecs.split(";") if s.strip()],
                       check or _parse_codec)


def _parse_codec(spec: str):
  return codecs.parse(spec)


def check_specs(specs: list[str], check=_parse_codec) -> list[str]:
  """`specs` if non-empty and each passes ``check(spec)``; ValueError naming --codecs."""
  if not specs:
    raise ValueError("--codecs: give at least one codec spec ('none' for float32)")
  for spec in specs:
    try:
      check(spec)
    except ValueError as e:
      raise ValueError(f"--codecs: {e}") from e
  return specs


def parse_int_list(text: str, flag: str, *, low: int) -> list[int]:
  """``"0, 5,20"`` -> [0, 5, 20]; ValueError naming `flag` for a bad entry or one < low."""
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError as e:
    raise ValueError(f"--{flag} must be a comma-separated list of integers, got {text!r}") from e
  bad = [v for v in values if v < low]
  if bad:
    raise ValueError(f"--{flag} values must be >= {low}, got {bad}")
  return values


def parse_float_list(text: str, flag: str, *, low: float) -> list[float]:
  """``"10,100"`` -> [10.0, 100.0]; ValueError naming `flag` unless all are finite and >= low."""
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError as e:
    raise ValueError(f"--{flag} must be a comma-separated list of numbers, got {text!r}") from e
  bad = [v for v in values if not v >= low or v == float("inf")]
  if not values or bad:
    raise ValueError(f"--{flag} must be a non-empty list of finite values >= {low}, got {text!r}")
  return values


def refuse_present(names: tuple[str, ...], why: str) -> None:
  """ValueError if any of the flags `names` was given on the command line.

  For knobs of a shared flag group that a runner has no use for (its --help
  lists every flag of the groups it defines).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  given = [n for n in names if n in flags.FLAGS and flags.FLAGS[n].present]
  if given:
    raise ValueError(f"{', '.join('--' + n for n in given)}: {why}")
