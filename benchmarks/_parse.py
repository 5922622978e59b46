"""Flag checks shared by the runners: positive-int-or-word values, the checks table, names."""

from __future__ import annotations

from collections.abc import Iterable

import fedjax_comp as fc


def raise_first_failed(checks: Iterable[tuple[bool, str]]) -> None:
  """Raises ValueError with the message of the first failed ``(ok, message)`` check."""
  for ok, message in checks:
    if not ok:
      raise ValueError(message)


def check_names(*, dataset: str, model: str, codec: str) -> "fc.codecs.Codec":
  """ValueError listing the valid values for an unknown dataset or model or a bad codec.

  Returns the parsed codec.
  """
  if dataset.split("/")[0].split(":")[0] not in fc.data.DATASETS:
    raise ValueError(f"unknown --dataset {dataset!r}; valid: {', '.join(fc.data.DATASETS)}")
  if model not in fc.MODELS:
    raise ValueError(f"unknown --model {model!r}; valid: {', '.join(fc.MODELS)}")
  try:
    return fc.codecs.parse(codec)
  except ValueError as e:
    raise ValueError(f"--codec: {e}") from e


def _positive_int_or_none(text: str, flag: str, none_words: tuple[str, ...]) -> int | None:
  """Parses a flag that is a positive integer or one of `none_words` (-> None)."""
  if text.strip().lower() in none_words:
    return None
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise ValueError(f"--{flag} must be a positive integer or {none_words[0]!r}, got {text!r}")
  return value


def parse_batch_size(text: str) -> int | None:
  return _positive_int_or_none(text, "batch_size", ("inf", "none", "full"))


def parse_chunk(text: str) -> int | None:
  return _positive_int_or_none(text, "client_chunk", ("auto",))
