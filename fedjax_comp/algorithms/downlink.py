"""Downlink compression: the server broadcasts a compressed model change, clients train from its decode.

Every client holds the same copy W_hat of the model, rebuilt from what the
server broadcasts. At the end of round t, with the server's new model
W_{t+1}, the server sends one payload to every client of the next round::

  feedback (EF21-P):  c = C(W_{t+1} - W_hat)      # the clients' copy's distance to the model
  plain:              c = C(W_{t+1} - W_t)        # the last round's model change
  W_hat <- W_hat + c                              # on the server and every client

and clients train from W_hat (their delta is taken from W_hat; the server
applies the aggregate to its own W). With feedback, whatever C dropped
stays in ``W - W_hat`` and is sent later (error feedback on the server,
Gruntkowska et al. 2022's EF21-P); plain compression lets W_hat drift from W
by the sum of C's errors. The delta is "since the last round": the
simulation assumes every client follows every broadcast (it keeps W_hat
current), as in the bidirectional EF21-P setting; a cross-device client
that was offline would need the payloads it missed (not simulated).

C's randomness is drawn from ``stream(server_key(round_key(t)), DOWNLINK)``, which
every client regenerates. The initial model comes from the seed (0 bits).
Each client with data downloads C's payload bits per round
(`FederatedAlgorithm.downlink_bits`), which the network clock uses.

References:
  Gruntkowska, Tyurin, Richtarik, "EF21-P and Friends: Improved
  Theoretical Communication Complexity for Distributed Optimization with
  Bidirectional Compression", ICML 2023 (arXiv 2209.15218).
  Fatkhullin et al. 2021 (arXiv 2110.03294), EF21-BC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_comp import codecs, keys
from fedjax_comp.models import Params


def check_downlink_codec(codec: codecs.Codec) -> None:
  """Raises ValueError unless `codec` can compress a broadcast model change."""
  if codec.structure is not None:
    raise ValueError("downlink codec: a structured codec (low_rank, random_mask) reparametrizes "
                     "client training and cannot compress a broadcast; use a sketch "
                     "(e.g. 'hadamard,quantize(bits=4)' or 'eden(bits=2)')")
  if codec.stateful:
    raise ValueError("downlink codec: a stateful codec (ef, ef21, powersgd) is not supported "
                     "on the downlink; server-side error feedback is downlink_feedback=True")
  if codec.aggregator is not None:
    raise ValueError(f"downlink codec: {codec.aggregator.name} is an aggregation rule for "
                     "uploads; a broadcast has one sender")


def downlink_key(seed_key, round_num):
  """The downlink codec's key at the end of round `round_num`: a server stream, so it can
  never equal a client's key (client keys fold the id into the round key)."""
  return keys.stream(keys.server_key(keys.round_key(seed_key, round_num)), keys.Stream.DOWNLINK)


class Downlink:
  """The downlink codec's server-side state and update (module docstring)."""

  def __init__(self, codec: codecs.Codec, feedback: bool = True):
    check_downlink_codec(codec)
    if not isinstance(feedback, bool):
      raise ValueError(f"downlink_feedback must be true or false, got {feedback!r}")
    self.codec = codec
    self.feedback = feedback

  def init(self, params: Params) -> Params:
    """The clients' first copy: the initial model itself (regenerated from the seed)."""
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)

  def model(self, state) -> Params:
    """The model the clients train from (in the params' dtypes)."""
    return jax.tree.map(lambda h, p: h.astype(p.dtype), state.downlink, state.params)

  def update(self, old, new) -> Params:
    """The clients' copy after the broadcast at the end of `old`'s round."""
    ref = old.downlink if self.feedback else old.params
    target = jax.tree.map(lambda w, r: w.astype(jnp.float32) - r.astype(jnp.float32),
                          new.params, ref)
    key = downlink_key(old.seed_key, old.round)
    payload, _ = self.codec.encode(key, target, self.codec.init(target))
    change = self.codec.decode(key, payload)
    ok = codecs.all_finite(change)
    # A non-finite decode (an overflowing codec) is not broadcast: the copy stays.
    return jax.tree.map(lambda h, c: jnp.where(ok, h + c.astype(jnp.float32), h),
                        old.downlink, change)

  def bits(self, params: Params) -> int:
    """Bits each client downloads per round: the codec's payload for a model-shaped change."""
    as_sent = jax.tree.map(lambda p: jax.ShapeDtypeStruct(jnp.shape(p), jnp.float32), params)
    return codecs.uplink_bits(self.codec, as_sent)  # the change is encoded in float32
