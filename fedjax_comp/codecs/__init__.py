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

One job per module:

* `base`: the protocol (`Codec`, `Structure`), `per_leaf` (a codec from a
  leaf encoder and decoder) and `identity`.
* Sketched updates act on the delta after local training:
  `quantization` (``quantize(bits=b)``: unbiased stochastic quantization
  of each leaf between its min and max, codes bit-packed), `rotation`
  (``hadamard``: randomized Hadamard rotation H D x, per leaf or of the
  whole update), `subsampling` (``subsample(p=...)``: keep a stratified
  fraction p of each leaf's coordinates, rescaled to stay unbiased).
* Structured updates change local training (a `Structure`): `structured`
  (``low_rank(rank=k)``, ``random_mask(p=...)``).
* The methods that followed: `rotated_codes` (``drive``, ``eden(bits=b,
  scale=...)``: a rotation of the whole update, then Lloyd-Max codes and
  one scale), `norm_levels` (``qsgd(levels=s)``, with the Elias-coded
  length as `Codec.coded_bits`), `ternary` (``terngrad``, ``sign`` with a
  majority vote), `sparsification` (``top_k``, ``rand_k``),
  `power_iteration` (``powersgd(rank=r)``, warm start and error feedback as
  client state), `feedback` (``ef(<codec>)``, ``ef21(<codec>)``).
* `aggregation`: how the server combines the decoded updates
  (`Codec.aggregator`): the weighted mean, signSGD's majority vote, EF21's
  running mean.
* `composition`: ``chain(a, b, c)`` encodes a, then b, then c, and decodes
  in reverse. Only the first stage may be structured.
* `spec`: the registry (`REGISTRY`, `register`) and `parse`, which takes a
  chain as a spec string, e.g. ``"subsample(p=1/16),hadamard,quantize(bits=2)"``
  (the grammar is in `fedjax_comp.codecs.spec`).
* `bits`: exact uplink bits (`uplink_bits`, `payload_bits`, `dense_bits`); top-k's index
  lists by coding (`index_bits`).

Adding a codec means one file and one `register` line; registering enrolls
it in the conformance suite (tests/test_codecs.py).

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

References:
  Konečný et al., "Federated Learning: Strategies for Improving
  Communication Efficiency", 2016 (arXiv:1610.05492); each later method's
  module cites its paper.
"""

from fedjax_comp.codecs.aggregation import (Aggregator, majority_vote,
                                            population_running_mean, weighted_mean)
from fedjax_comp.codecs.base import (Codec, CodecState, FlatMeta, Payload, Structure, all_finite,
                                     check_float, flatten_update, identity, map_leaves,
                                     per_leaf, static_field, unflatten_update)
from fedjax_comp.codecs.bits import (abstract_payload, codec_input, dense_bits,
                                     matched_random_mask, payload_bits, uplink_bits)
from fedjax_comp.codecs.composition import chain
from fedjax_comp.codecs.rotated_codes import RotatedCodes, drive, eden
from fedjax_comp.codecs.feedback import ef, ef21
from fedjax_comp.codecs.power_iteration import Factors, powersgd
from fedjax_comp.codecs.norm_levels import QSGDLeaf, qsgd
from fedjax_comp.codecs.quantization import Quantized, quantize
from fedjax_comp.codecs.rotation import FlatRotated, Rotated, hadamard
from fedjax_comp.codecs.sparsification import (RandK, Sparse, index_bits, index_coding, rand_k,
                                               top_k)
from fedjax_comp.codecs.spec import (COMPOSITE_EXAMPLES, REGISTRY, CodecInfo, is_unbiased, parse,
                                     parse_stages, register)
from fedjax_comp.codecs.structured import (Frozen, LowRank, Masked, low_rank, mask_indices,
                                           random_mask)
from fedjax_comp.codecs.subsampling import Subsampled, kept_count, subsample
from fedjax_comp.codecs.ternary import Signs, Ternary, sign, terngrad

__all__ = [
    "COMPOSITE_EXAMPLES", "REGISTRY", "Aggregator", "all_finite", "Codec", "CodecInfo", "CodecState",
    "Factors", "FlatMeta", "FlatRotated", "Frozen", "LowRank", "Masked", "Payload", "QSGDLeaf",
    "Quantized", "RandK", "Rotated", "RotatedCodes", "Signs", "Sparse", "Structure",
    "Subsampled", "Ternary", "abstract_payload", "chain", "check_float", "codec_input",
    "dense_bits", "drive", "eden", "ef", "ef21", "flatten_update", "hadamard", "identity",
    "index_bits", "index_coding",
    "is_unbiased", "kept_count", "low_rank", "majority_vote", "matched_random_mask",
    "map_leaves", "mask_indices",
    "parse", "parse_stages", "payload_bits", "per_leaf", "population_running_mean",
    "powersgd", "qsgd", "quantize", "rand_k", "random_mask", "register", "sign",
    "static_field", "subsample", "terngrad", "top_k", "unflatten_update", "uplink_bits",
    "weighted_mean",
]
