"""Error feedback around any codec: ``ef(<codec>)`` and ``ef21(<codec>)``.

``ef`` (Seide et al. 2014; Stich et al. 2018; Karimireddy et al. 2019): the
client keeps a residual e_i of what its codec C has not yet delivered::

  p   = delta_i + e_i
  send C(p);  e_i <- p - C(p)

so nothing is lost, only delayed: over any run of a client's rounds the
sum of what it sent plus its residual equals the sum of its updates. A
biased C (top-k, sign) becomes a contraction whose error does not build up.

``ef21`` (Richtarik et al. 2021, arXiv 2106.05203): the client keeps g_i,
its last estimate of its own update, and sends only the compressed change::

  c_i = C(delta_i - g_i);  g_i <- g_i + c_i

The server keeps g, the mean of all N clients' g_i, and moves it by the
cohort's changes: ``g <- g + (1/N) sum_{i in cohort} c_i``, which is the
update it applies (`aggregation.population_running_mean`; this is EF21-PP,
Fatkhullin et al. 2021, arXiv 2110.03294, for partial participation; with
full participation it is EF21's ``g + mean_i c_i``).

Note that with ef21 the server's g weighs every client equally (EF21 is
defined for a uniform mean), not by example count as FedAvg's mean does,
and a client that never takes part (or holds no data) keeps g_i = 0 in it.

Stale state of unsampled clients. ``ef``: a client's residual waits for its
next round; ``decay`` multiplies it by ``decay`` per round missed (1 keeps
it, 0 drops it; `Codec.age`). ``ef21``: g_i is kept unchanged, because the
server's g is the mean of all g_i, stale ones included; decaying g_i on the
client alone would break that identity, so ``ef21`` has no decay.

Non-finite values: p (or delta_i - g_i) holding a NaN or Inf is made
all-NaN before C sees it, so the update decodes non-finite, the round
refuses it and, as for any refused round, no client's state is written:
a residual never absorbs a NaN silently.

`ef` and `ef21` wrap a stateless, unstructured codec whose aggregate is the
weighted mean; wrapping a stateful codec (``ef(powersgd)``, which has its
own feedback, or ``ef(ef(...))``), a structured one or ``sign`` (whose
majority vote discards the magnitudes a residual carries) is refused.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fedjax_comp.codecs.aggregation import population_running_mean
from fedjax_comp.codecs.base import Codec, all_finite
from fedjax_comp.codecs.power_iteration import check_decay


def _inner(codec: Any, wrapper: str) -> Codec:
  if isinstance(codec, str):
    from fedjax_comp.codecs.spec import parse  # pylint: disable=g-import-not-at-top
    codec = parse(codec)
  if not isinstance(codec, Codec):
    raise ValueError(f"{wrapper}: codec must be a Codec or a spec string, got {codec!r}")
  if codec.structure is not None:
    raise ValueError(f"{wrapper} cannot wrap a structured codec (low_rank, random_mask): it "
                     "trains in its own variables, so there is no update to feed back")
  if codec.stateful:
    raise ValueError(f"{wrapper} cannot wrap a codec that is already stateful (it keeps its own "
                     "per-client memory, e.g. powersgd's error feedback, or is a feedback "
                     "wrapper itself)")
  if codec.aggregator is not None:
    raise ValueError(f"{wrapper} cannot wrap a codec with its own aggregation rule "
                     f"({codec.aggregator.name}): the rule discards what the residual tracks")
  return codec


def _all_nan_unless_finite(tree):
  ok = all_finite(tree)
  return jax.tree.map(lambda a: jnp.where(ok, a, jnp.nan), tree)


def _zeros32(x):
  return jax.tree.map(lambda a: jnp.zeros(jnp.shape(a), jnp.float32), x)


def _cast_like(tree, like):
  return jax.tree.map(lambda a, b: a.astype(b.dtype), tree, like)


def ef(codec: Any = "none", decay: float = 1.0) -> Codec:
  """Error feedback: send C(delta + e), keep e <- delta + e - C(delta + e) (module docstring).

  Args:
    codec: the compressor C, a `Codec` or a spec (in a spec string, the
      wrapper's argument: ``ef(top_k(p=0.01))``, ``ef(hadamard,quantize(bits=1),decay=0.5)``).
    decay: the residual's factor per round missed, in [0, 1].

  Returns:
    A stateful `Codec` sending exactly C's payload.
  """
  inner = _inner(codec, "ef")
  check_decay(decay, "ef")

  def encode(key, x, e):
    p = _all_nan_unless_finite(jax.tree.map(lambda a, r: a.astype(jnp.float32) + r, x, e))
    payload, _ = inner.encode(key, _cast_like(p, x), inner.init(x))
    sent = inner.decode(key, payload)
    return payload, jax.tree.map(lambda a, c: a - c.astype(jnp.float32), p, sent)

  def age(e, missed):
    factor = jnp.asarray(decay, jnp.float32) ** missed.astype(jnp.float32)
    return jax.tree.map(lambda r: r * factor, e)

  return Codec(init=_zeros32, encode=encode, decode=inner.decode, stateful=True,
               age=None if decay == 1 else age, coded_bits=inner.coded_bits)


def ef21(codec: Any = "none") -> Codec:
  """EF21: send c = C(delta - g), keep g <- g + c; the server keeps the mean g (module docstring).

  Args:
    codec: the compressor C, a `Codec` or a spec (``ef21(top_k(p=0.01))``).

  Returns:
    A stateful `Codec` sending exactly C's payload, whose `aggregator` is
    `aggregation.population_running_mean`.
  """
  inner = _inner(codec, "ef21")

  def encode(key, x, g):
    diff = _all_nan_unless_finite(jax.tree.map(lambda a, r: a.astype(jnp.float32) - r, x, g))
    payload, _ = inner.encode(key, _cast_like(diff, x), inner.init(x))
    sent = inner.decode(key, payload)
    return payload, jax.tree.map(lambda r, c: r + c.astype(jnp.float32), g, sent)

  return Codec(init=_zeros32, encode=encode, decode=inner.decode, stateful=True,
               aggregator=population_running_mean(), coded_bits=inner.coded_bits)
