"""Flag values that are a positive integer or a word (shared by the runners)."""

from __future__ import annotations


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
