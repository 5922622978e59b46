"""``chain``: codecs composed in stages (encode left to right, decode right to left)."""

from __future__ import annotations

import jax

from fedjax_comp.codecs.base import Codec, Structure, identity


def chain(*codecs: Codec) -> Codec:
  """Composes codecs: encode runs them in order, decode in reverse.

  Each stage sees the previous stage's payload as its input pytree. Stage i
  uses key ``fold_in(key, i)``. Only the first stage may be structured; the
  chain's `structure` is that stage's, keyed the same way. Only the first
  stage may keep per-client state (its state would not line up with an
  input that earlier stages re-randomize each round). Only the last
  stage may set an aggregation rule; the chain's is that stage's, as is its
  `coded_bits` (the payload is the last stage's).

  Args:
    *codecs: the stages; none gives `identity`, one gives that codec itself.

  Returns:
    A `Codec` whose state is the tuple of the stages' states.

  Examples:
    >>> codec = chain(subsample(p=1 / 16), hadamard(), quantize(bits=2))
    >>> # the same as codecs.parse("subsample(p=1/16),hadamard,quantize(bits=2)")
  """
  if not codecs:
    return identity()
  for i, c in enumerate(codecs[1:], 1):
    if c.structure is not None:
      raise ValueError(f"only the first codec stage may be structured (low_rank, random_mask); "
                       f"stage {i} is")
  for i, c in enumerate(codecs[1:], 1):
    if c.stateful:
      raise ValueError(f"codec stage {i} keeps per-client state (ef, ef21, powersgd), so it must "
                       "be the first stage: an earlier stage's rotation, indices or mask change "
                       "every round, and the state would no longer line up with its input")
  for i, c in enumerate(codecs[:-1]):
    if c.aggregator is not None:
      raise ValueError(f"codec stage {i} sets the server's aggregation rule "
                       f"({c.aggregator.name}), so it must be the last stage: the rule needs "
                       "its decoded values (e.g. a majority vote needs the signs themselves)")
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
  age = None
  if any(c.age is not None for c in codecs):
    def age(state, missed):
      return tuple(s if c.age is None else c.age(s, missed) for c, s in zip(codecs, state))

  return Codec(init=init, encode=encode, decode=decode, structure=structure,
               aggregator=codecs[-1].aggregator, stateful=any(c.stateful for c in codecs),
               age=age, coded_bits=codecs[-1].coded_bits)
