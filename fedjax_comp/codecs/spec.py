"""The codec registry and the spec grammar: codecs by name, from a command line.

`parse` builds a codec from a spec string; each stage names a registered
codec and sets its factory's keyword arguments::

  spec   := "none" | stage ("," stage)*
  stage  := name | name "(" [param "=" value ("," param "=" value)*] ")"
  value  := integer | float | fraction "a/b" | true | false | word

  e.g.  "subsample(p=1/16),hadamard,quantize(bits=2)"
        "random_mask(p=0.25),quantize(bits=4)"
        "hadamard(flatten=true,block=1024),quantize(bits=2,stochastic=false)"

A spec of several stages is their `chain`. Unknown names and parameters
raise ValueError listing the valid ones.

Adding a codec means one file and one `register` line: the built-ins are
registered at the bottom of this module, and a user's module may call
`register` for its own codec. Every registered codec's example specs run
through the conformance suite (tests/test_codecs.py iterates `REGISTRY`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Sequence

from fedjax_comp.codecs.base import Codec, identity
from fedjax_comp.codecs.composition import chain
from fedjax_comp.codecs.rotated_codes import drive, eden
from fedjax_comp.codecs.feedback import ef, ef21
from fedjax_comp.codecs.power_iteration import powersgd
from fedjax_comp.codecs.norm_levels import qsgd
from fedjax_comp.codecs.quantization import quantize
from fedjax_comp.codecs.rotation import hadamard
from fedjax_comp.codecs.structured import low_rank, random_mask
from fedjax_comp.codecs.sparsification import rand_k, top_k
from fedjax_comp.codecs.subsampling import subsample
from fedjax_comp.codecs.ternary import sign, terngrad


@dataclasses.dataclass(frozen=True)
class CodecInfo:
  factory: Callable[..., Codec]
  examples: tuple[str, ...]  # specs the conformance suite runs
  # E[decode(encode(x))] == x (up to a documented bound); a callable takes
  # the stage's parameters (defaults filled in), for codecs where it depends.
  unbiased: bool | Callable[[dict], bool]
  wraps: bool = False  # the factory's `codec` parameter is a spec: ``ef(top_k(p=0.01))``


REGISTRY: dict[str, CodecInfo] = {}

_NONE = ("", "none", "identity")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STAGE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)
_ASSIGN = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def register(name: str, factory: Callable[..., Codec], *, examples: Sequence[str],
             unbiased: bool | Callable[[dict], bool], wraps: bool = False) -> CodecInfo:
  """Adds a codec to `REGISTRY`, so `parse` knows it and the conformance suite runs it.

  Args:
    name: the name specs use: an identifier, not yet registered, not "none".
    factory: returns a `Codec`; spec parameters are its keyword arguments,
      so every parameter must be keyword-able and have a default.
    examples: one or more spec strings that use the codec; the conformance
      suite (tests/test_codecs.py) runs each of them.
    unbiased: whether E[decode(encode(x))] == x; the suite checks it if so.
      A callable gets the stage's parameters, defaults filled in, and says
      whether that configuration is unbiased.
    wraps: the codec wraps another: its factory takes a `codec` parameter,
      and in a spec the stage's bare arguments are the wrapped spec
      (``ef(hadamard,quantize(bits=1),decay=0.5)``).

  Returns:
    The registered `CodecInfo`.

  Raises:
    ValueError: naming the bad argument.

  Examples:
    >>> register("sign_flip", sign_flip, examples=("sign_flip", "sign_flip,quantize(bits=4)"),
    ...          unbiased=True)
    >>> codec = parse("sign_flip,quantize(bits=4)")
  """
  if not (isinstance(name, str) and _NAME.match(name)):
    raise ValueError(f"register: name must be an identifier (letters, digits, _), got {name!r}")
  if name in REGISTRY:
    raise ValueError(f"register: name {name!r} is already registered; registered codecs: "
                     f"{', '.join(sorted(REGISTRY))}")
  if name.lower() in _NONE and name != "identity":  # the built-in identity is the one exception
    raise ValueError(f"register: name {name!r} is reserved: the spec {name!r} means no codec")
  if not callable(factory):
    raise ValueError(f"register: factory for {name!r} must be callable, got {factory!r}")
  try:
    params = inspect.signature(factory).parameters.values()
  except (TypeError, ValueError) as e:
    raise ValueError(f"register: factory for {name!r} has no inspectable signature: {e}") from e
  for p in params:
    if p.kind not in _KEYWORD_KINDS or p.default is inspect.Parameter.empty:
      raise ValueError(f"register: factory for {name!r}: parameter {p.name!r} must be a keyword "
                       "argument with a default (specs set parameters by name, or not at all)")
  if isinstance(examples, str) or not isinstance(examples, Sequence) or not examples or not all(
      isinstance(e, str) for e in examples):
    raise ValueError(f"register: examples for {name!r} must be a non-empty sequence of spec "
                     f"strings, got {examples!r}")
  if not (isinstance(unbiased, bool) or callable(unbiased)):
    raise ValueError(f"register: unbiased for {name!r} must be true or false, got {unbiased!r}")
  if wraps and "codec" not in inspect.signature(factory).parameters:
    raise ValueError(f"register: a wrapper's factory ({name!r}) needs a 'codec' parameter")
  info = CodecInfo(factory, tuple(examples), unbiased, bool(wraps))
  REGISTRY[name] = info
  try:
    for example in info.examples:
      # A spec meaning no codec ("none", "identity") parses to no stages: identity.
      if name not in ([stage for stage, _ in parse_stages(example)] or ["identity"]):
        raise ValueError(f"example {example!r} does not use {name!r}")
  except ValueError as e:
    del REGISTRY[name]
    raise ValueError(f"register: examples for {name!r}: {e}") from e
  return info


def _split_top(s: str) -> list[str]:
  parts, depth, cur = [], 0, []
  for ch in s:
    if ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
      if depth < 0:
        raise ValueError(f"unbalanced ')' in codec spec {s!r}")
    if ch == "," and depth == 0:
      parts.append("".join(cur))
      cur = []
    else:
      cur.append(ch)
  if depth != 0:
    raise ValueError(f"unbalanced '(' in codec spec {s!r}")
  parts.append("".join(cur))
  return parts


def _value(text: str) -> bool | int | float | str:
  t = text.strip()
  low = t.lower()
  if low in ("true", "false"):
    return low == "true"
  if re.fullmatch(r"[+-]?\d+", t):
    return int(t)
  m = re.fullmatch(r"([+-]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)", t)
  if m:
    den = float(m.group(2))
    if den == 0:
      raise ValueError(f"division by zero in codec parameter value {t!r}")
    return float(m.group(1)) / den
  try:
    return float(t)
  except ValueError:
    return t


def _parse_stage(text: str, spec: str) -> tuple[str, dict]:
  m = _STAGE.match(text)
  if not m:
    raise ValueError(f"cannot parse codec stage {text.strip()!r} in spec {spec!r}; "
                     "expected name or name(param=value,...)")
  name, args = m.group(1), m.group(2)
  if name not in REGISTRY:
    raise ValueError(f"unknown codec {name!r} in spec {spec!r}; valid codecs: "
                     f"{', '.join(sorted(REGISTRY))}")
  valid = list(inspect.signature(REGISTRY[name].factory).parameters)
  kwargs, wrapped = {}, []
  if args is not None and args.strip():
    for item in _split_top(args):
      if REGISTRY[name].wraps and not _ASSIGN.match(item):
        wrapped.append(item)  # a stage of the wrapped spec
        continue
      if "=" not in item:
        raise ValueError(f"codec {name!r}: parameters are param=value, got {item.strip()!r}; "
                         f"valid parameters: {', '.join(valid) or '(none)'}")
      k, v = item.split("=", 1)
      k = k.strip()
      if k not in valid:
        raise ValueError(f"codec {name!r} has no parameter {k!r}; valid parameters: "
                         f"{', '.join(valid) or '(none)'}")
      if k in kwargs:
        raise ValueError(f"codec {name!r}: parameter {k!r} given twice")
      kwargs[k] = v.strip() if k == "codec" and REGISTRY[name].wraps else _value(v)
  if wrapped:
    if "codec" in kwargs:
      raise ValueError(f"codec {name!r}: the wrapped codec is given twice")
    kwargs["codec"] = ",".join(wrapped).strip()
  if REGISTRY[name].wraps and "codec" in kwargs:
    parse_stages(kwargs["codec"])  # the wrapped spec's errors, now
  return name, kwargs


def parse_stages(spec: str, *, with_defaults: bool = False) -> list[tuple[str, dict]]:
  """The ``(name, kwargs)`` of each stage of `spec` (``[]`` for none), without building codecs.

  With `with_defaults`, kwargs also hold the factory's defaults for the
  parameters the spec leaves out. Raises ValueError like `parse`.
  """
  if not isinstance(spec, str):
    raise ValueError(f"codec spec must be a string, got {type(spec).__name__}")
  if spec.strip().lower() in _NONE:
    return []
  stages = _split_top(spec)
  if any(not s.strip() for s in stages):
    raise ValueError(f"empty stage in codec spec {spec!r}")
  out = []
  for text in stages:
    name, kwargs = _parse_stage(text, spec)
    if with_defaults:
      params = inspect.signature(REGISTRY[name].factory).parameters
      kwargs = {**{k: p.default for k, p in params.items()}, **kwargs}
    out.append((name, kwargs))
  return out


def is_unbiased(spec: str) -> bool:
  """Whether every stage of `spec` is registered as unbiased for its parameters."""
  def stage(name, kwargs):
    flag = REGISTRY[name].unbiased
    return flag(kwargs) if callable(flag) else flag
  return all(stage(name, kw) for name, kw in parse_stages(spec, with_defaults=True))


def parse(spec: str) -> Codec:
  """A codec from a spec string (see the module docstring for the grammar).

  Examples:
    >>> codec = parse("subsample(p=1/16),hadamard,quantize(bits=2)")
    >>> parse("none")                 # identity()
  """
  stages = parse_stages(spec)
  if not stages:
    return identity()
  return chain(*[REGISTRY[name].factory(**kwargs) for name, kwargs in stages])


# The built-in codecs; tests/test_codecs.py runs every example.
register("identity", identity, examples=("identity",), unbiased=True)
register("quantize", quantize,
         examples=("quantize(bits=1)", "quantize(bits=3)", "quantize(bits=8)"), unbiased=True)
register("hadamard", hadamard, examples=("hadamard", "hadamard(flatten=true,block=64)"),
         unbiased=True)
register("subsample", subsample, examples=("subsample(p=0.25)", "subsample(p=1/3)"),
         unbiased=True)
register("low_rank", low_rank, examples=("low_rank(rank=2)", "low_rank(rank=1,train=both)"),
         unbiased=False)
register("random_mask", random_mask, examples=("random_mask(p=0.25)",), unbiased=False)
# With a randomized Hadamard rotation (not a uniform one) DRIVE and EDEN are
# unbiased only up to a bias orthogonal to x that shrinks with the number of
# coordinates a rotation mixes (fedjax_comp/codecs/rotated_codes.py): a block that is
# mostly padding is resolved by the suite, so only block=0 is checked.
register("drive", drive, examples=("drive", "drive(block=64)"),
         unbiased=lambda kw: kw["block"] == 0)
register("eden", eden, examples=("eden(bits=2)", "eden(bits=4,block=128)", "eden(bits=0.5)",
                                 "eden(bits=2,scale=mse)", "eden(bits=3,scale=one,block=64)"),
         unbiased=lambda kw: kw["scale"] == "unbiased" and kw["block"] == 0)
register("qsgd", qsgd, examples=("qsgd(levels=1,bucket=16)",
                                 "qsgd(levels=127,bucket=64,elias=omega)"), unbiased=True)
register("terngrad", terngrad, examples=("terngrad",), unbiased=True)
register("sign", sign, examples=("sign",), unbiased=False)
register("top_k", top_k, examples=("top_k(p=0.5)", "top_k(k=3)"),
         unbiased=False)
register("rand_k", rand_k, examples=("rand_k(p=0.25)", "rand_k(k=7)"), unbiased=True)
register("powersgd", powersgd, examples=("powersgd(rank=1)", "powersgd(rank=2,decay=0.5)"),
         unbiased=False)
register("ef", ef, examples=("ef(top_k(p=0.1))", "ef(hadamard,quantize(bits=1),decay=0.5)"),
         unbiased=False, wraps=True)
register("ef21", ef21, examples=("ef21(top_k(p=0.1))",), unbiased=False, wraps=True)

# Compositions the conformance suite also runs.
COMPOSITE_EXAMPLES = (
    "hadamard,quantize(bits=2)",
    "subsample(p=0.0625),hadamard,quantize(bits=2)",
    "hadamard(flatten=true),quantize(bits=4,stochastic=false)",
    "random_mask(p=0.25),quantize(bits=4)",
    "low_rank(rank=2),hadamard,quantize(bits=4)",
    "subsample(p=0.5),eden(bits=2)",
    "hadamard,sign",
    "ef(rand_k(p=0.5)),quantize(bits=8)",
)
