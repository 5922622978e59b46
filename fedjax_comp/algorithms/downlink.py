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
by the sum of C's errors. The delta is "since the last round": one
payload per round, the same for every client.

What a client downloads (`CatchUp`): a client that trained in round s holds
round s's copy; sampled again in round r it needs the r - s payloads it
missed, or the copy itself in float32 where that is smaller::

  bits_i(r) = min((r - s_i) * payload_bits, copy_bits)

so under partial participation (10 of 100 clients a round: a client misses
about 9 broadcasts between turns) compression saves far less downlink than
its payload's ratio suggests. A client never sampled holds the initial model,
regenerated from the seed (0 bits), i.e. s_i = 1. These per-client bits feed
the traffic totals and the network clock. (A server could instead send each
returning client one compressed catch-up C(W_hat - W_hat_i), but then
clients would hold different copies, which this simulation does not track.)

A round whose decode is not finite broadcasts nothing (the copy stays), but
the ledger still counts its payload for returning clients: a rare
overcount, on the safe side.

C's randomness is drawn from ``stream(server_key(round_key(t)), DOWNLINK)``, which
every client regenerates.

References:
  Gruntkowska, Tyurin, Richtarik, "EF21-P and Friends: Improved
  Theoretical Communication Complexity for Distributed Optimization with
  Bidirectional Compression", ICML 2023 (arXiv 2209.15218).
  Fatkhullin et al. 2021 (arXiv 2110.03294), EF21-BC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_comp import codecs, keys
from fedjax_comp.models import Params


def check_downlink_codec(codec: codecs.Codec) -> None:
  """Raises ValueError unless `codec` can compress a broadcast model change."""
  if codec.structure is not None:
    raise ValueError("downlink_codec: a structured codec (low_rank, random_mask) reparametrizes "
                     "client training and cannot compress a broadcast; use a sketch "
                     "(e.g. 'hadamard,quantize(bits=4)' or 'eden(bits=2)')")
  if codec.stateful:
    raise ValueError("downlink_codec: a stateful codec (ef, ef21, powersgd) is not supported "
                     "on the downlink; server-side error feedback is downlink_feedback=True")
  if codec.aggregator is not None:
    raise ValueError(f"downlink_codec: {codec.aggregator.name} is an aggregation rule for "
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


class CatchUp:
  """What each client of a round downloads to hold the clients' copy (host side; module docstring).

  Args:
    payload_bits: one broadcast's bits (`Downlink.bits`).
    copy_bits: the copy's bits in float32, what a client downloads instead
      when that is fewer than the payloads it missed.
    synced: a `state()` to continue from (a resumed run).
  """

  def __init__(self, payload_bits: int, copy_bits: int, synced: dict | None = None):
    if payload_bits < 0 or copy_bits < 0:
      raise ValueError(f"payload_bits and copy_bits must be >= 0, got {payload_bits}, {copy_bits}")
    self.payload_bits = int(payload_bits)
    self.copy_bits = int(copy_bits)
    self._synced: dict[int, int] = {}
    if synced:
      self._synced = dict(zip((int(i) for i in synced["ids"]), (int(r) for r in synced["rounds"])))

  def round(self, round_num: int, ids, steps) -> np.ndarray:
    """int64 bits per entry of `ids` for round `round_num` (0 where `steps` is 0: no data);
    the clients that trained then hold this round's copy."""
    ids, steps = np.asarray(ids).reshape(-1), np.asarray(steps).reshape(-1)
    if ids.shape != steps.shape:
      raise ValueError(f"ids and steps must have the same length, got {ids.shape}, {steps.shape}")
    bits = np.zeros(ids.shape, np.int64)
    for j, (i, n) in enumerate(zip(ids.tolist(), steps.tolist())):
      if n > 0:
        missed = round_num - self._synced.get(i, 1)
        if missed < 0:
          raise ValueError(f"client {i} already holds round {self._synced[i]}'s copy, "
                           f"later than round {round_num}")
        bits[j] = min(missed * self.payload_bits, self.copy_bits)
    for i, n in zip(ids.tolist(), steps.tolist()):
      if n > 0:
        self._synced[i] = round_num
    return bits

  def state(self) -> dict:
    """The round whose copy each client that ever trained holds (JSON-able)."""
    ids = sorted(self._synced)
    return {"ids": ids, "rounds": [self._synced[i] for i in ids]}
