"""Runner flags in groups: each config dataclass's fields become flags of the same names.

A knob is declared once, as a field of a frozen config dataclass (its
default and help in the field's metadata, `fedjax_comp.experiment.configs`);
``group = define(ConfigClass)`` defines its absl flags (once per process, so
runners that share a group share its flags) and ``group.config()`` builds the
validated config from the flag values. `main` wraps a runner's main: usage
errors (a ValueError) print one line and exit with status 1, stray
positional arguments are refused, and the runner's help lists every flag it
accepts (each group's module becomes a key module of the runner).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import types
import typing
from collections.abc import Callable

from absl import app, flags

_GROUPS: dict[type, "Group"] = {}


def _parse_int_or_word(name: str, words: tuple[str, ...]):
  def parse(text):
    if text is None or str(text).strip().lower() in words:
      return None
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"--{name} must be a positive integer or {words[0]!r}, got {text!r}"
                       ) from None
  return parse


def _parse_number(name: str, kind: type):
  def parse(text):
    if text is None:
      return None
    try:
      return kind(text)
    except ValueError:
      what = "an integer" if kind is int else "a number"
      raise ValueError(f"--{name} must be {what}, got {text!r}") from None
  return parse


def _base_type(annotation):
  """int for `int`, `int | None`, 'int | None'; the same for float, str, bool."""
  text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0]
  for t in (bool, int, float, str):
    if text.split("|")[0].strip() == t.__name__:
      return t
  return annotation


class Group:
  """The flags of one config class."""

  def __init__(self, cls: type):
    self.cls = cls
    self.holders, self.parsers = {}, {}
    for f in dataclasses.fields(cls):
      help_text = f.metadata.get("help", f.name)
      kind = _base_type(f.type)
      words = f.metadata.get("words")
      if words:  # an integer or a word such as 'auto' / 'inf'
        default = words[0] if f.default is None else str(f.default)
        self.holders[f.name] = flags.DEFINE_string(f.name, default, help_text)
        self.parsers[f.name] = _parse_int_or_word(f.name, words)
      elif kind is bool:
        self.holders[f.name] = flags.DEFINE_bool(f.name, f.default, help_text)
      else:  # numbers are read as text and parsed here: a bad value gets our one-line error
        default = None if f.default is None else str(f.default)
        self.holders[f.name] = flags.DEFINE_string(f.name, default, help_text)
        if kind in (int, float):
          self.parsers[f.name] = _parse_number(f.name, kind)

  def config(self, preset: dict | None = None, **fixed):
    """The validated config from the flags.

    `preset` values replace the defaults of flags not given on the command
    line (default: the values of ``--task``'s preset, when this runner has
    that flag and it is set); `fixed` values win over everything.
    """
    if preset is None:
      preset = task_preset()
    values = {}
    for name, holder in self.holders.items():
      if preset and name in preset and not flags.FLAGS[name].present:
        values[name] = preset[name]
        continue
      value = holder.value
      if name in self.parsers:
        value = self.parsers[name](value)
      values[name] = value
    values.update(fixed)
    return self.cls(**values)


def task_preset() -> dict:
  """The knob values of ``--task``'s preset (`experiment.tasks`), for the server
  optimizer given on the command line (or the preset's own); {} without a task."""
  if "task" not in flags.FLAGS or flags.FLAGS["task"].value in (None, "none"):
    return {}
  from fedjax_comp.experiment import tasks  # pylint: disable=g-import-not-at-top
  given = "server_optimizer" in flags.FLAGS and flags.FLAGS["server_optimizer"].present
  data, train = tasks.get_task(flags.FLAGS["task"].value).values(
      flags.FLAGS["server_optimizer"].value if given else None)
  return {**data, **train}


def define(cls: type) -> Group:
  """The flag group of config class `cls` (defined on first call, shared afterwards)."""
  if cls not in _GROUPS:
    _GROUPS[cls] = Group(cls)
  return _GROUPS[cls]


OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where results go (default: the "
                                 "runner's).")
RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --output_dir from its "
                           "checkpoint.")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a finished or interrupted run in "
                              "--output_dir (without it, such a directory is refused).")


def check_output_dir(path: str, *, resume: bool = False, overwrite: bool = False,
                     resumable: bool = True) -> str:
  """Creates `path` and checks it is a writable directory, before any work.

  A directory that already holds a run (``metrics.jsonl`` or a checkpoint)
  is refused unless `resume` or `overwrite` says what to do with it.
  """
  p = pathlib.Path(path)
  for parent in [p, *p.parents]:
    if parent.exists() and not parent.is_dir():
      raise ValueError(f"--output_dir={path}: {parent} is a file, not a directory")
  try:
    p.mkdir(parents=True, exist_ok=True)
    probe = p / f".write_test_{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"--output_dir={path} is not writable: {e.strerror or e}") from e
  held = [n for n in ("metrics.jsonl", "checkpoint.msgpack", "result.json") if (p / n).exists()]
  if held and not (resume or overwrite):
    raise ValueError(f"--output_dir={path} already holds a run ({', '.join(held)}); pass "
                     + ("--resume to continue it, " if resumable else "")
                     + "--overwrite to replace it, or another --output_dir")
  if overwrite and not resume:
    for n in held:
      (p / n).unlink()
  return str(p)


def main(fn: Callable[[], int | None]) -> None:
  """Runs ``fn()`` as an absl program: one line and exit status 1 on a usage error.

  The runner's ``--help`` lists every flag of this module's groups, which
  are the only groups a runner process defines.
  """
  main_module = sys.argv[0]
  for flag in flags.FLAGS.get_key_flags_for_module(__name__) + (
      flags.FLAGS.get_flags_for_module(__name__)):
    flags.FLAGS.register_key_flag_for_module(main_module, flag)

  def absl_main(argv):
    if len(argv) > 1:
      _die(f"unexpected positional arguments: {' '.join(argv[1:])} (flags are written "
           "--name=value)")
    try:
      status = fn()
    except ValueError as e:
      _die(str(e))
    sys.exit(status or 0)

  app.run(absl_main)


def _die(message: str) -> None:
  prog = pathlib.Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "runner"
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(1)
