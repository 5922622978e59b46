"""Uplink codecs: how a client's update is encoded, counted and decoded (Konečný et al. 2016).

A codec is a factory returning a `Codec` of pure functions, written for one
client and `vmap`ped over clients by the round (optax style)::

  state          = codec.init(x_like)
  payload, state = codec.encode(key, x, state)      # on the client
  x_hat          = codec.decode(key, payload)       # on the server

`key` is the client's codec stream (``keys.stream(client_key,
Stream.CODEC)``). The server rebuilds it from (seed, round, client id), so
shared randomness (rotation signs, subsample indices, masks, the low-rank A)
is regenerated, never sent, and costs 0 uplink bits. The payload is a
pytree of flax structs: arrays (packed words, scales, kept values) are its
data and are all that is counted by `payload_bits`; shapes, dtypes and
tree structure are static fields, known to both sides.

Sketched updates act on the delta after local training:

* ``quantize(bits=b)``: unbiased stochastic quantization of each leaf to b
  bits between its min and max, codes bit-packed (`kernels`).
* ``hadamard``: randomized Hadamard rotation H D x, per leaf or (``flatten``)
  of the whole update as one vector; zero-padded to a power of two, or to a
  multiple of ``block``.
* ``subsample(p=...)``: keep a fraction p of each leaf's coordinates
  (stratified: one per stratum of about 1/p), rescaled to stay unbiased.

Structured updates change local training (a `Structure`): the client
trains a small variable z instead of the full delta, and z is the upload.

* ``low_rank(rank=k)``: each weight-matrix update is H = A B, with A (d1 x k)
  regenerated from the key and only B (k x d2) trained from zero. Conv
  kernels ``[h, w, in, out]`` are ``(h w in) x out`` matrices. Variants:
  ``train=b`` (default), ``train=a`` (B fixed, A trained from 0) and
  ``train=both`` (A starts random, both trained and sent). Biases and other
  vectors are trained and sent in full (``vectors=full``) or frozen
  (``vectors=frozen``).
* ``random_mask(p=...)``: a seeded subset of each leaf's coordinates
  (stratified, as ``subsample``); only those are trained, and only their
  values are sent.

Composition: ``chain(a, b, c)`` encodes a, then b, then c, and decodes in
reverse; each stage sees the previous stage's payload as its input pytree.
Only the first stage may be structured. On the command line, `parse`
takes the same thing as a spec string::

  spec   := "none" | stage ("," stage)*
  stage  := name | name "(" [param "=" value ("," param "=" value)*] ")"
  value  := integer | float | fraction "a/b" | true | false | word

  e.g.  "subsample(p=1/16),hadamard,quantize(bits=2)"
        "random_mask(p=0.25),quantize(bits=4)"
        "hadamard(flatten=true,block=1024),quantize(bits=2,stochastic=false)"

Input policy (checked by tests/test_hostile.py with hypothesis):

* decode(encode(x)) has x's shape and dtype for any float dtype (float16,
  bfloat16, float32), any shape (size 0 and 1 included); non-float inputs
  raise ValueError.
* A client update holding NaN or Inf decodes to a non-finite update, never
  to finite garbage (quantization sends an all-NaN leaf, subsampling
  poisons the kept values), so the round sees it, refuses the aggregate,
  and the runner stops naming the round.
* A finite input decodes to a finite output when its magnitude leaves room
  for the codec's arithmetic, ``|x| <= finfo(dtype).max / (64 sqrt(n_pad))``
  (rotation sums, 1/p rescaling); quantization alone is finite for any
  finite input (its scale arithmetic cannot overflow). Beyond that bound
  an unbiased estimate may not be representable in the dtype and overflows
  to inf, which the round treats as any non-finite update.
* Denormals may be flushed to zero (XLA's CPU default); zeros and constant
  vectors round-trip exactly through quantization.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_comp import kernels
from fedjax_comp.models import Params

Payload = Any  # a pytree of arrays (flax structs with static metadata)
CodecState = Any  # a pytree of arrays (empty for every codec here)


class Structure(NamedTuple):
  """How a structured codec reparametrizes local training.

  ``init(key, params) -> z0`` gives the trainable variable (the update is
  ``expand(key, z0) == 0`` at the start), and ``expand(key, z) -> delta``
  the params-shaped model update it stands for. The client trains z on
  ``loss(params + expand(key, z))`` and uploads the final z.
  """

  init: Callable[[jax.Array, Params], Any]
  expand: Callable[[jax.Array, Any], Params]


class Codec(NamedTuple):
  init: Callable[[Any], CodecState]
  encode: Callable[[jax.Array, Any, CodecState], tuple[Payload, CodecState]]
  decode: Callable[[jax.Array, Payload], Any]
  structure: Structure | None = None  # set by structured codecs (first stage)


def _static(**kwargs):
  return flax.struct.field(pytree_node=False, **kwargs)


def _dtype(name: str):
  return jnp.dtype(name)


def _check_float(x, codec: str):
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"codec {codec!r} needs floating-point inputs, got dtype {x.dtype}")


def _map_leaves(fn, key, tree, is_leaf=None):
  """fn(key_i, leaf_i) over the leaves (or `is_leaf` nodes), with key_i = fold_in(key, i)."""
  leaves, treedef = jax.tree.flatten(tree, is_leaf=is_leaf)
  out = [fn(jax.random.fold_in(key, i), leaf) for i, leaf in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def _is(cls):
  return lambda node: isinstance(node, cls)


# ---------------------------------------------------------------- identity


def identity() -> Codec:
  """Sends the update as it is: 32 bits per float32 parameter."""
  return Codec(
      init=lambda x: (),
      encode=lambda key, x, state: (x, state),
      decode=lambda key, payload: payload,
  )


# ---------------------------------------------------------------- quantize


@flax.struct.dataclass
class Quantized:
  words: jax.Array  # uint32 [bits, ceil(n / 32)], see kernels.pack
  lo: jax.Array  # float32 [], the leaf's min
  hi: jax.Array  # float32 [], the leaf's max
  shape: tuple = _static()
  dtype: str = _static()


def quantize(bits: int = 8, stochastic: bool = True) -> Codec:
  """Each leaf to `bits`-bit codes between its min and max (unbiased if `stochastic`).

  Payload per leaf: ``32 * bits * ceil(n / 32)`` bits of packed codes plus
  two float32 scales.
  """
  kernels._check_bits(bits)
  if not isinstance(stochastic, bool):
    raise ValueError(f"quantize: stochastic must be true or false, got {stochastic!r}")

  def enc_leaf(key, x):
    _check_float(x, "quantize")
    codes, lo, hi = kernels.quantize(key, x.reshape(-1), bits, stochastic=stochastic)
    return Quantized(words=kernels.pack(codes, bits), lo=lo, hi=hi, shape=tuple(x.shape),
                     dtype=jnp.dtype(x.dtype).name)

  def dec_leaf(key, q):
    n = math.prod(q.shape)
    codes = kernels.unpack(q.words, bits, n)
    return kernels.dequantize(codes, q.lo, q.hi, bits, _dtype(q.dtype)).reshape(q.shape)

  return Codec(
      init=lambda x: (),
      encode=lambda key, x, state: (_map_leaves(enc_leaf, key, x), state),
      decode=lambda key, p: _map_leaves(dec_leaf, key, p, _is(Quantized)),
  )


# ---------------------------------------------------------------- hadamard


@flax.struct.dataclass
class Rotated:
  data: jax.Array  # [rotated_length(n, block)] in the leaf's dtype
  shape: tuple = _static()
  dtype: str = _static()


@flax.struct.dataclass
class FlatRotated:
  data: jax.Array  # float32 [rotated_length(total, block)]
  treedef: Any = _static()
  shapes: tuple = _static()
  dtypes: tuple = _static()


def hadamard(flatten: bool = False, block: int = 0) -> Codec:
  """Randomized Hadamard rotation H D x (signs from the key), zero-padded.

  Args:
    flatten: rotate the whole update as one vector instead of each leaf.
    block: rotate in independent blocks of this power-of-two length, so
      padding is to a multiple of `block` rather than to a power of two;
      0 means one block per vector.
  """
  if not isinstance(flatten, bool):
    raise ValueError(f"hadamard: flatten must be true or false, got {flatten!r}")
  if not (isinstance(block, int) and (block == 0 or kernels.is_pow2(block))):
    raise ValueError(f"hadamard: block must be 0 or a power of two, got {block!r}")
  blk = block or None

  def enc_leaf(key, x):
    _check_float(x, "hadamard")
    y = kernels.rotate(key, x.reshape(-1), blk)
    dt = x.dtype if x.dtype != jnp.float64 else jnp.float32
    return Rotated(data=y.astype(dt), shape=tuple(x.shape), dtype=jnp.dtype(x.dtype).name)

  def dec_leaf(key, r):
    x = kernels.unrotate(key, r.data, math.prod(r.shape), blk)
    return x.astype(_dtype(r.dtype)).reshape(r.shape)

  def enc_flat(key, x):
    leaves, treedef = jax.tree.flatten(x)
    for leaf in leaves:
      _check_float(leaf, "hadamard")
    vec = jnp.concatenate([jnp.reshape(l, -1).astype(jnp.float32) for l in leaves]
                          ) if leaves else jnp.zeros((0,), jnp.float32)
    return FlatRotated(data=kernels.rotate(key, vec, blk), treedef=treedef,
                       shapes=tuple(tuple(l.shape) for l in leaves),
                       dtypes=tuple(jnp.dtype(l.dtype).name for l in leaves))

  def dec_flat(key, r):
    total = sum(math.prod(s) for s in r.shapes)
    vec = kernels.unrotate(key, r.data, total, blk)
    out, start = [], 0
    for shape, dt in zip(r.shapes, r.dtypes):
      n = math.prod(shape)
      out.append(vec[start:start + n].reshape(shape).astype(_dtype(dt)))
      start += n
    return jax.tree.unflatten(r.treedef, out)

  if flatten:
    return Codec(init=lambda x: (), encode=lambda key, x, state: (enc_flat(key, x), state),
                 decode=dec_flat)
  return Codec(
      init=lambda x: (),
      encode=lambda key, x, state: (_map_leaves(enc_leaf, key, x), state),
      decode=lambda key, p: _map_leaves(dec_leaf, key, p, _is(Rotated)),
  )


# ---------------------------------------------------------------- subsample


@flax.struct.dataclass
class Subsampled:
  values: jax.Array  # [k] the kept coordinates, unscaled, in the leaf's dtype
  shape: tuple = _static()
  dtype: str = _static()


def _check_p(p, codec: str):
  if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p <= 1):
    raise ValueError(f"{codec}: p must be a number in (0, 1], got {p!r}")


def kept_count(n: int, p: float) -> int:
  """Coordinates `subsample`/`random_mask` keep out of n: ceil(p n), at least 1 if n > 0."""
  return min(n, max(1 if n else 0, math.ceil(p * n - 1e-9)))


def subsample(p: float = 0.25) -> Codec:
  """Keeps a fraction `p` of each leaf's coordinates, rescaled so the estimate is unbiased."""
  _check_p(p, "subsample")

  def enc_leaf(key, x):
    _check_float(x, "subsample")
    flat = x.reshape(-1)
    n = flat.shape[0]
    k = kept_count(n, p)
    if k == 0:
      return Subsampled(values=flat, shape=tuple(x.shape), dtype=jnp.dtype(x.dtype).name)
    idx, _ = kernels.stratified_indices(key, n, k)
    # A NaN/Inf anywhere poisons the kept values (it must not vanish unseen).
    values = jnp.where(jnp.all(jnp.isfinite(flat)), flat[idx], jnp.nan)
    return Subsampled(values=values.astype(x.dtype), shape=tuple(x.shape),
                      dtype=jnp.dtype(x.dtype).name)

  def dec_leaf(key, s):
    n = math.prod(s.shape)
    k = s.values.shape[0]
    if k == 0:
      return jnp.zeros(s.shape, _dtype(s.dtype))
    idx, sizes = kernels.stratified_indices(key, n, k)
    vals = s.values.astype(jnp.float32) * sizes
    return jnp.zeros((n,), jnp.float32).at[idx].set(vals).astype(_dtype(s.dtype)).reshape(s.shape)

  return Codec(
      init=lambda x: (),
      encode=lambda key, x, state: (_map_leaves(enc_leaf, key, x), state),
      decode=lambda key, p_: _map_leaves(dec_leaf, key, p_, _is(Subsampled)),
  )


# ---------------------------------------------------------------- structured updates


@flax.struct.dataclass
class LowRank:
  """One matrix's trainable factors; only the non-None ones are trained and sent."""

  a: jax.Array | None  # [d1, k] (train=a or both)
  b: jax.Array | None  # [k, d2] (train=b or both)
  shape: tuple = _static()
  dtype: str = _static()


@flax.struct.dataclass
class Frozen:
  """A leaf that is neither trained nor sent (no data)."""

  shape: tuple = _static()
  dtype: str = _static()


@flax.struct.dataclass
class Masked:
  values: jax.Array  # [k] the trained coordinates
  shape: tuple = _static()
  dtype: str = _static()


_STRUCT_NODES = (LowRank, Frozen, Masked)


def _is_struct_node(node) -> bool:
  return isinstance(node, _STRUCT_NODES)


def _structured_codec(name: str, init_leaf, expand_leaf) -> Codec:
  """A structured stage: the upload is z itself; decode expands it to a delta."""

  def init(key, params):
    return _map_leaves(init_leaf, key, params)

  def expand(key, z):
    return _map_leaves(expand_leaf, key, z, _is_struct_node)

  def encode(key, z, state):
    for node in jax.tree.leaves(z, is_leaf=_is_struct_node):
      if not _is_struct_node(node) and jnp.ndim(node) >= 2:
        raise ValueError(
            f"codec {name!r} trains a structured update, but got a plain params-shaped "
            "delta: build the client update with "
            "make_client_update(..., structure=codec.structure)")
      if not _is_struct_node(node):
        _check_float(node, name)
    return z, state

  return Codec(init=lambda x: (), encode=encode, decode=expand,
               structure=Structure(init=init, expand=expand))


def low_rank(rank: int = 1, train: str = "b", vectors: str = "full") -> Codec:
  """Low-rank structured updates H = A B of every weight matrix (rank `rank`).

  Args:
    rank: k, with 1 <= k <= min(d1, d2) for every matrix of the model.
    train: "b" (A fixed from the key, B trained from zero; the paper's
      choice), "a" (B fixed, A trained from zero) or "both" (A starts random,
      both trained and sent).
    vectors: "full" (biases and other non-matrix leaves trained and sent in
      full) or "frozen" (left at the server's value, nothing sent).
  """
  if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
    raise ValueError(f"low_rank: rank must be an integer >= 1, got {rank!r}")
  if train not in ("a", "b", "both"):
    raise ValueError(f"low_rank: train must be one of a, b, both; got {train!r}")
  if vectors not in ("full", "frozen"):
    raise ValueError(f"low_rank: vectors must be one of full, frozen; got {vectors!r}")

  def dims(shape):
    return math.prod(shape[:-1]), shape[-1]

  def factors(key, shape):
    d1, d2 = dims(shape)
    ka, kb = jax.random.split(key)
    # Var 1/d1 (1/d2): A^T A ~ I, so A A^T G is G projected onto a random
    # k-dimensional subspace, at the client's learning rate.
    a = jax.random.normal(ka, (d1, rank), jnp.float32) / math.sqrt(d1)
    b = jax.random.normal(kb, (rank, d2), jnp.float32) / math.sqrt(d2)
    return a, b

  def init_leaf(key, x):
    _check_float(x, "low_rank")
    shape, dt = tuple(x.shape), jnp.dtype(x.dtype).name
    if x.ndim < 2:
      return x * 0 if vectors == "full" else Frozen(shape=shape, dtype=dt)
    d1, d2 = dims(shape)
    if rank > min(d1, d2):
      raise ValueError(f"low_rank: rank must be in 1..min(d1, d2) = 1..{min(d1, d2)} for a "
                       f"weight of shape {shape} (as a {d1}x{d2} matrix); got rank={rank}")
    a, _ = factors(key, shape)
    za = jnp.zeros((d1, rank), x.dtype) if train == "a" else (
        a.astype(x.dtype) if train == "both" else None)
    zb = jnp.zeros((rank, d2), x.dtype) if train in ("b", "both") else None
    return LowRank(a=za, b=zb, shape=shape, dtype=dt)

  def expand_leaf(key, z):
    if isinstance(z, Frozen):
      return jnp.zeros(z.shape, _dtype(z.dtype))
    if not isinstance(z, LowRank):
      return z  # a vector sent in full
    fa, fb = factors(key, z.shape)
    a = z.a.astype(jnp.float32) if z.a is not None else fa
    b = z.b.astype(jnp.float32) if z.b is not None else fb
    # For train=both the update is A' B' - A0 B0, and B0 = 0.
    return (a @ b).reshape(z.shape).astype(_dtype(z.dtype))

  return _structured_codec("low_rank", init_leaf, expand_leaf)


def random_mask(p: float = 0.25) -> Codec:
  """Trains and sends only a seeded fraction `p` of each leaf's coordinates."""
  _check_p(p, "random_mask")

  def init_leaf(key, x):
    _check_float(x, "random_mask")
    n = math.prod(x.shape)
    return Masked(values=jnp.zeros((kept_count(n, p),), x.dtype), shape=tuple(x.shape),
                  dtype=jnp.dtype(x.dtype).name)

  def expand_leaf(key, z):
    n = math.prod(z.shape)
    k = z.values.shape[0]
    if k == 0:
      return jnp.zeros(z.shape, _dtype(z.dtype))
    idx, _ = kernels.stratified_indices(key, n, k)
    return jnp.zeros((n,), z.values.dtype).at[idx].set(z.values).reshape(z.shape).astype(
        _dtype(z.dtype))

  return _structured_codec("random_mask", init_leaf, expand_leaf)


def mask_indices(key: jax.Array, shape, p: float) -> jax.Array:
  """The flat indices `random_mask(p)` trains for a leaf of `shape` under `key` (for tests/analysis)."""
  n = math.prod(shape)
  return kernels.stratified_indices(key, n, kept_count(n, p))[0]


# ---------------------------------------------------------------- composition


def chain(*codecs: Codec) -> Codec:
  """Composes codecs: encode runs them in order, decode in reverse.

  Stage i uses key ``fold_in(key, i)``. Only the first stage may be
  structured; the chain's `structure` is that stage's, keyed the same way.
  """
  if not codecs:
    return identity()
  for i, c in enumerate(codecs[1:], 1):
    if c.structure is not None:
      raise ValueError(f"only the first codec stage may be structured (low_rank, random_mask); "
                       f"stage {i} is")
  if len(codecs) == 1:
    return codecs[0]
  fold = jax.random.fold_in

  def init(x):
    states = []
    for c in codecs:
      s = c.init(x)
      states.append(s)
      x = jax.eval_shape(lambda x, s, c=c: c.encode(jax.random.key(0), x, s)[0], x, s)
    return tuple(states)

  def encode(key, x, state):
    new_states = []
    for i, (c, s) in enumerate(zip(codecs, state)):
      x, s = c.encode(fold(key, i), x, s)
      new_states.append(s)
    return x, tuple(new_states)

  def decode(key, payload):
    for i in reversed(range(len(codecs))):
      payload = codecs[i].decode(fold(key, i), payload)
    return payload

  structure = None
  if codecs[0].structure is not None:
    s0 = codecs[0].structure
    structure = Structure(init=lambda key, params: s0.init(fold(key, 0), params),
                          expand=lambda key, z: s0.expand(fold(key, 0), z))
  return Codec(init=init, encode=encode, decode=decode, structure=structure)


# ---------------------------------------------------------------- registry and specs


@dataclasses.dataclass(frozen=True)
class CodecInfo:
  factory: Callable[..., Codec]
  examples: tuple[str, ...]  # specs the conformance suite runs
  unbiased: bool  # E[decode(encode(x))] == x (up to a documented bound)


# Adding a codec: one line here; tests/test_codecs.py runs every example.
REGISTRY: dict[str, CodecInfo] = {
    "identity": CodecInfo(identity, ("identity",), unbiased=True),
    "quantize": CodecInfo(quantize, ("quantize(bits=1)", "quantize(bits=3)", "quantize(bits=8)"),
                          unbiased=True),
    "hadamard": CodecInfo(hadamard, ("hadamard", "hadamard(flatten=true,block=64)"),
                          unbiased=True),
    "subsample": CodecInfo(subsample, ("subsample(p=0.25)", "subsample(p=1/3)"), unbiased=True),
    "low_rank": CodecInfo(low_rank, ("low_rank(rank=2)", "low_rank(rank=1,train=both)"),
                          unbiased=False),
    "random_mask": CodecInfo(random_mask, ("random_mask(p=0.25)",), unbiased=False),
}
# Compositions the conformance suite also runs.
COMPOSITE_EXAMPLES = (
    "hadamard,quantize(bits=2)",
    "subsample(p=0.0625),hadamard,quantize(bits=2)",
    "hadamard(flatten=true),quantize(bits=4,stochastic=false)",
    "random_mask(p=0.25),quantize(bits=4)",
    "low_rank(rank=2),hadamard,quantize(bits=4)",
)

_NONE = ("", "none", "identity")
_STAGE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)


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


def _value(text: str):
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
  kwargs = {}
  if args is not None and args.strip():
    for item in _split_top(args):
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
      kwargs[k] = _value(v)
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


def parse(spec: str) -> Codec:
  """A codec from a spec string (see the module docstring for the grammar)."""
  stages = parse_stages(spec)
  if not stages:
    return identity()
  return chain(*[REGISTRY[name].factory(**kwargs) for name, kwargs in stages])


# ---------------------------------------------------------------- bit accounting


def codec_input(codec: Codec, params: Params, key: jax.Array | None = None):
  """What a client passes to `codec.encode` for a model like `params`: the
  delta itself, or a structured codec's trainable variable z (abstract if
  `key` is None)."""
  if codec.structure is None:
    return params
  if key is None:
    return jax.eval_shape(lambda p: codec.structure.init(jax.random.key(0), p), params)
  return codec.structure.init(key, params)


def uplink_bits(codec: Codec, params: Params) -> int:
  """Exact bits one client uploads with `codec` for a model shaped like `params`.

  Traces the encoder abstractly (`jax.eval_shape`), so nothing runs; the
  payload's static shapes and dtypes give the count: packed words, scales
  and padding included.
  """
  x = codec_input(codec, params)

  def run(x):
    return codec.encode(jax.random.key(0), x, codec.init(x))[0]

  return payload_bits(jax.eval_shape(run, x))


def payload_bits(payload: Payload) -> int:
  """Exact bits of one client's payload, from its arrays' sizes and dtypes.

  Works on concrete arrays or on `jax.ShapeDtypeStruct`s (from
  `jax.eval_shape`), and counts in Python ints, never in float32. Static
  fields (shapes, dtypes, tree structure) are protocol, not payload.
  """
  return sum(int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize * 8
             for leaf in jax.tree.leaves(payload))


def dense_bits(params: Params) -> int:
  """Bits of `params` as 32-bit floats: the uncompressed reference."""
  return 32 * sum(int(np.prod(np.shape(l), dtype=np.int64)) for l in jax.tree.leaves(params))
