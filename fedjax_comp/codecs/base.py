"""The codec protocol: `Codec`, `Structure`, the per-leaf helper `per_leaf`, and `identity`.

A codec is a factory returning a `Codec` of pure functions, written for one
client and `vmap`ped over clients by the round (optax style)::

  state          = codec.init(x_like)
  payload, state = codec.encode(key, x, state)      # on the client
  x_hat          = codec.decode(key, payload)       # on the server

Most codecs act on each leaf of the update on its own; `per_leaf` builds
such a codec from a leaf encoder and a leaf decoder, as optax's
``stateless_with_tree_map`` builds a transformation from a per-leaf map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import flax.struct
import jax
import jax.numpy as jnp

from fedjax_comp import kernels
from fedjax_comp.models import Params

Payload = Any  # a pytree of arrays (flax structs with static metadata)
CodecState = Any  # a pytree of arrays; () for a stateless codec
LeafPayload = TypeVar("LeafPayload")  # one leaf's payload node (a flax struct)


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
  """An uplink codec: pure functions of one client's update.

  `key` is the client's codec stream (``keys.stream(client_key,
  Stream.CODEC)``). The server rebuilds it from (seed, round, client id), so
  shared randomness (rotation signs, subsample indices, masks, the low-rank
  A) is regenerated, never sent, and costs 0 uplink bits.
  """

  init: Callable[[Any], CodecState]
  encode: Callable[[jax.Array, Any, CodecState], tuple[Payload, CodecState]]
  decode: Callable[[jax.Array, Payload], Any]
  structure: Structure | None = None  # set by structured codecs (first stage)
  # How the server combines the cohort's decoded updates; None is the
  # example-weighted mean (`codecs.aggregation`). Only a chain's last stage
  # may set it (a majority vote needs the signs themselves).
  aggregator: Any = None
  # True when `init` returns per-client arrays (a residual, a warm start):
  # the algorithm keeps them as the client's row between rounds.
  stateful: bool = False
  # ``age(state, rounds_missed) -> state``: what a client's state becomes
  # while it is not sampled (e.g. a residual decays); None keeps it as is.
  age: Callable[[CodecState, jax.Array], CodecState] | None = None
  # ``coded_bits(payload) -> int32``: the exact length of the payload under
  # a variable-length code (QSGD's Elias coding), when the codec has one.
  coded_bits: Callable[[Payload], jax.Array] | None = None


def static_field(**kwargs):
  """A payload field that is protocol, not payload: static, known to both sides, 0 bits."""
  return flax.struct.field(pytree_node=False, **kwargs)


def check_float(x: jax.Array, codec: str) -> None:
  """Raises ValueError naming `codec` unless `x` has a floating-point dtype."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"codec {codec!r} needs floating-point inputs, got dtype {x.dtype}")


def map_leaves(fn: Callable[[jax.Array, Any], Any], key: jax.Array, tree: Any,
               is_leaf: Callable[[Any], bool] | None = None) -> Any:
  """fn(key_i, leaf_i) over the leaves (or `is_leaf` nodes), with key_i = fold_in(key, i)."""
  leaves, treedef = jax.tree.flatten(tree, is_leaf=is_leaf)
  out = [fn(jax.random.fold_in(key, i), leaf) for i, leaf in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def per_leaf(encode_leaf: Callable[[jax.Array, jax.Array], LeafPayload],
             decode_leaf: Callable[[jax.Array, LeafPayload], jax.Array],
             payload_type: type, *, name: str) -> Codec:
  """A stateless codec that encodes and decodes each leaf of the update on its own.

  Leaf i (in `jax.tree.flatten` order) uses key ``fold_in(key, i)`` on both
  sides, so the server regenerates the client's per-leaf randomness. Encode
  checks that every leaf is floating-point (ValueError naming `name`), then
  maps `encode_leaf` over the leaves; decode maps `decode_leaf` over the
  payload's nodes of type `payload_type`, which keeps the tree structure.

  Args:
    encode_leaf: ``(key_i, leaf) -> node``, a `payload_type` instance.
    decode_leaf: ``(key_i, node) -> leaf``, with the leaf's shape and dtype.
    payload_type: the class of the nodes `encode_leaf` returns (a flax struct).
    name: the codec's name, for error messages.

  Returns:
    A `Codec` with an empty state.

  Examples:
    A codec that sends each leaf negated (not useful, but complete)::

      @flax.struct.dataclass
      class Negated:
        data: jax.Array

      def negate() -> Codec:
        return per_leaf(lambda key, x: Negated(-x), lambda key, n: -n.data,
                        Negated, name="negate")
  """
  if not isinstance(payload_type, type):
    raise ValueError(f"per_leaf: payload_type must be a class, got {payload_type!r}")
  if not isinstance(name, str) or not name:
    raise ValueError(f"per_leaf: name must be a non-empty string, got {name!r}")

  def encode_one(key, x):
    check_float(x, name)
    return encode_leaf(key, x)

  def is_node(node) -> bool:
    return isinstance(node, payload_type)

  return Codec(
      init=lambda x: (),
      encode=lambda key, x, state: (map_leaves(encode_one, key, x), state),
      decode=lambda key, payload: map_leaves(decode_leaf, key, payload, is_node),
  )


def identity() -> Codec:
  """Sends the update as it is: 32 bits per float32 parameter."""
  return Codec(
      init=lambda x: (),
      encode=lambda key, x, state: (x, state),
      decode=lambda key, payload: payload,
  )


@flax.struct.dataclass
class FlatMeta:
  """How a flattened update goes back into its tree: protocol, not payload (0 bits)."""

  treedef: Any = static_field()
  shapes: tuple = static_field()
  dtypes: tuple = static_field()

  @property
  def size(self) -> int:
    return sum(math.prod(s) for s in self.shapes)


def flatten_update(x: Any, codec: str) -> tuple[jax.Array, FlatMeta]:
  """The update's leaves as one float32 vector (ValueError naming `codec` for non-floats)."""
  leaves, treedef = jax.tree.flatten(x)
  for leaf in leaves:
    check_float(leaf, codec)
  vec = (jnp.concatenate([jnp.reshape(l, -1).astype(jnp.float32) for l in leaves])
         if leaves else jnp.zeros((0,), jnp.float32))
  return vec, FlatMeta(treedef=treedef, shapes=tuple(tuple(l.shape) for l in leaves),
                       dtypes=tuple(jnp.dtype(l.dtype).name for l in leaves))


def unflatten_update(vec: jax.Array, meta: FlatMeta) -> Any:
  """Inverse of `flatten_update`: the vector's pieces in the leaves' shapes and dtypes."""
  out, start = [], 0
  for shape, dt in zip(meta.shapes, meta.dtypes):
    n = math.prod(shape)
    out.append(vec[start:start + n].reshape(shape).astype(jnp.dtype(dt)))
    start += n
  return jax.tree.unflatten(meta.treedef, out)


def all_finite(tree: Any) -> jax.Array:
  """bool []: every leaf of `tree` is free of NaN and Inf (True for an empty tree)."""
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.array([kernels.all_finite(x) for x in leaves])) if leaves else (
      jnp.bool_(True))


def poison_unless_finite(values: jax.Array, x: jax.Array) -> jax.Array:
  """`values`, or all NaN if `x` holds a NaN or Inf (so a non-finite update never decodes finite)."""
  return jnp.where(kernels.all_finite(x), values, jnp.nan).astype(values.dtype)
