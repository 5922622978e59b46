#!/usr/bin/env python
r"""Paired A/B of the rotated codecs' kernels: what each choice in DRIVE/EDEN costs.

::

  .venv/bin/python scripts/ab_rotated_codecs.py              # d = 2^21
  .venv/bin/python scripts/ab_rotated_codecs.py --log2_dim=20 --repeats=15

On one vector of d float32 coordinates it alternates, per row, the chosen
implementation with the alternative and prints both medians and their ratio
(`benchmarks._timing.Pair`, median of per-pair quotients):

1. the centroid lookup after `kernels.unpack` (the decode): ``jnp.take`` of
   the table against the chain of selects ``where(codes >= j, c_j, q)``
   (XLA:CPU fuses the unpack into every select and recomputes it);
2. ``sum(a * b)`` over the vector: `kernels.row_dot` (a dot product)
   against ``jnp.sum(a * b, axis=-1)`` (one slow YNNPACK reduction);
3. encode + decode of ``drive`` and ``eden`` at 1, 2, 4 and 0.5 bits with
   the native kernels (`fedjax_comp.native`: the FWHT and, for whole bits,
   the quantizer) against XLA's;
4. the FWHT alone, native against XLA, and numpy's memcpy of the same
   vector for scale;
5. the leaderboard's shape: 10 clients' updates of the MLP (15,210
   coordinates) encoded, decoded and summed in one jitted vmap, native
   kernels against XLA's, for DRIVE, EDEN-2 and the 256x sketch;
6. EDEN's fractional bits (b = 1/2): the encode with one coordinate per
   stratum of 2 picked by selects (`rotated_codes.keep_coordinates`)
   against the same encode with the gather ``y[:, idx]``;
7. whole-bit DRIVE/EDEN with the native quantizer (`native.rotated_quantize`
   and `rotated_dequantize`) against XLA's (``rotated_codes.native_ok``
   off), the native FWHT in both: encode alone, encode + decode, and the
   leaderboard's shape of section 5 (forced: below
   ``rotated_codes.NATIVE_MIN_LENGTH`` the codecs keep XLA's);
8. EDEN's fractional bits (b = 1/2) with the native quantizer (its equal
   strata need no weights), dequantizer and `kernels.scatter_ascending`
   against XLA's (``rotated_codes.native_ok`` off,
   ``kernels.NATIVE_SCATTER_MIN`` infinite), on the vector and on 4
   clients of 2^18 (vmapped); the two agree to float32 rounding of the
   scale (the native sums are double).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _cpu  # noqa: E402,F401  (first: XLA device flags)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._throughput_setup import memcpy_seconds  # noqa: E402
from benchmarks import _ab  # noqa: E402
from benchmarks._timing import Pair  # noqa: E402
from fedjax_comp import codecs, kernels, native  # noqa: E402
from fedjax_comp.codecs import rotated_codes  # noqa: E402
from fedjax_comp.codecs.rotated_codes import lloyd_max  # noqa: E402


def select_chain(table: np.ndarray, codes: jax.Array) -> jax.Array:
  q = jnp.full(codes.shape, table[0])
  for j in range(1, len(table)):
    q = jnp.where(codes >= j, table[j], q)
  return q


def jit_with_fwht(fn, use_native: bool, example):
  """`fn` jitted (and traced now, on `example`) with `kernels.fwht`'s native path on or off."""
  real = native.available
  kernels.native.available = real if use_native else (lambda: False)
  try:
    jitted = jax.jit(lambda v: fn(v))  # a fresh function: no trace shared with the other side
    jax.block_until_ready(jitted(example))
  finally:
    kernels.native.available = real
  return jitted


def jit_with_quantizer(fn, use_native: bool, example):
  """`fn` jitted with the rotated codecs' native quantizer on or off (the FWHT native in both).

  On means at every length, below `rotated_codes.NATIVE_MIN_LENGTH` too.
  """
  real = rotated_codes.native_ok
  rotated_codes.native_ok = (lambda length: native.available()) if use_native else (
      lambda length: False)
  try:
    jitted = jax.jit(lambda v: fn(v))
    jax.block_until_ready(jitted(example))
  finally:
    rotated_codes.native_ok = real
  return jitted


def make_cohort(codec, client_keys):
  """xs [clients, d] -> the sum of every client's decoded update (one vmap)."""
  def cohort(xs):
    def one(k, v):
      payload, _ = codec.encode(k, v, codec.init(v))
      return codec.decode(k, payload)
    return jnp.sum(jax.vmap(one)(client_keys, xs), axis=0)
  return cohort


def row(label: str, chosen, other, args, repeats: int) -> None:
  pair = Pair(lambda: chosen(*args), lambda: other(*args), repeats=repeats, span_s=0.05)
  ratio = pair.ratio()
  print(f"{label:<34} {pair.medians[0] * 1e3:8.2f} ms  vs {pair.medians[1] * 1e3:8.2f} ms"
        f"   chosen/other {ratio:.2f}", flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--log2_dim", type=int, default=21)
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args(argv)
  if not 10 <= args.log2_dim <= 24:
    parser.error(f"--log2_dim must be in [10, 24], got {args.log2_dim}")
  if args.repeats < 3:
    parser.error(f"--repeats must be >= 3, got {args.repeats}")
  d = 2**args.log2_dim
  key = jax.random.key(1)
  x = jax.random.normal(jax.random.key(0), (d,), jnp.float32)
  print(f"d = 2^{args.log2_dim}, {jax.device_count()} device(s), native FWHT "
        f"{'built' if native.available() else 'NOT built'}; memcpy "
        f"{memcpy_seconds(x, 21) * 1e3:.3f} ms")
  print("1. centroid lookup after unpack: take (chosen) vs select chain")
  for bits in (1, 2, 4):
    table = np.asarray(lloyd_max(bits)[0], np.float32)
    codes = jax.random.randint(key, (d,), 0, 2**bits).astype(jnp.uint32)
    words = kernels.pack(codes, bits)
    take = jax.jit(lambda w, t=jnp.asarray(table), b=bits: jnp.take(t, kernels.unpack(w, b, d),
                                                                     mode="clip"))
    chain = jax.jit(lambda w, t=table, b=bits: select_chain(t, kernels.unpack(w, b, d)))
    row(f"   b = {bits}", take, chain, (words,), args.repeats)
  print("2. sum(a * b): kernels.row_dot (chosen) vs jnp.sum")
  b = jax.random.normal(key, (1, d))
  row("   [1, d]", jax.jit(kernels.row_dot),
      jax.jit(lambda u, v: jnp.sum(u * v, axis=-1, keepdims=True)), (x[None], b), args.repeats)
  if not native.available():
    print("3-7 skipped: the native kernels are not built")
    return 0
  print("3. encode + decode: native kernels (chosen) vs XLA's")
  for spec in ("drive", "eden(bits=1)", "eden(bits=2)", "eden(bits=4)", "eden(bits=0.5)"):
    codec = codecs.parse(spec)

    def roundtrip(v, c=codec):
      payload, _ = c.encode(key, v, c.init(v))
      return c.decode(key, payload)

    row(f"   {spec}", jit_with_fwht(roundtrip, True, x), jit_with_fwht(roundtrip, False, x),
        (x,), args.repeats)
  print("4. the FWHT alone: native (chosen) vs XLA's")
  row("   fwht", jit_with_fwht(kernels.fwht, True, x), jit_with_fwht(kernels.fwht, False, x),
      (x,), args.repeats)
  print("5. 10 clients x 15,210 (the leaderboard's round): native kernels (chosen) vs XLA's")
  deltas = jax.random.normal(jax.random.key(2), (10, 15210), jnp.float32)
  client_keys = jax.random.split(key, 10)
  for spec in ("drive", "eden(bits=2)",
               "subsample(p=1/16),hadamard(flatten=true,block=1024),quantize(bits=2)"):
    cohort = make_cohort(codecs.parse(spec), client_keys)
    row(f"   {spec[:32]}", jit_with_fwht(cohort, True, deltas),
        jit_with_fwht(cohort, False, deltas), (deltas,), args.repeats)
  print("6. eden(bits=0.5) encode: selects over strata (chosen) vs the gather")
  codec = codecs.parse("eden(bits=0.5)")
  encode = lambda v, c=codec: c.encode(key, v, c.init(v))[0].words
  chosen = jax.jit(lambda v: encode(v))
  jax.block_until_ready(chosen(x))
  keep = rotated_codes.keep_coordinates
  rotated_codes.keep_coordinates = lambda y, idx: y[:, idx]
  try:
    gather = jax.jit(lambda v: encode(v))  # traced now, with the gather
    jax.block_until_ready(gather(x))
  finally:
    rotated_codes.keep_coordinates = keep
  row("   encode", chosen, gather, (x,), args.repeats)
  print("7. native quantizer (rotated_codes.cc, chosen) vs XLA's, the native FWHT in both")
  for spec in ("drive", "eden(bits=2)", "eden(bits=4)", "eden(bits=2,scale=mse)"):
    codec = codecs.parse(spec)

    def encode_only(v, c=codec):
      return c.encode(key, v, c.init(v))[0]

    def roundtrip(v, c=codec):
      return c.decode(key, encode_only(v, c))

    row(f"   {spec} encode", jit_with_quantizer(encode_only, True, x),
        jit_with_quantizer(encode_only, False, x), (x,), args.repeats)
    row(f"   {spec} encode + decode", jit_with_quantizer(roundtrip, True, x),
        jit_with_quantizer(roundtrip, False, x), (x,), args.repeats)
  for spec in ("drive", "eden(bits=2)"):
    cohort = make_cohort(codecs.parse(spec), client_keys)
    row(f"   10 x 15,210 {spec}", jit_with_quantizer(cohort, True, deltas),
        jit_with_quantizer(cohort, False, deltas), (deltas,), args.repeats)
  print("8. eden(bits=0.5): native quantizer, dequantizer and scatter (chosen) vs XLA's")
  codec = codecs.parse("eden(bits=0.5)")
  xla = {(rotated_codes, "native_ok"): lambda length: False,
         (kernels, "NATIVE_SCATTER_MIN"): float("inf")}
  many = jax.random.normal(jax.random.key(3), (4, 2**18), jnp.float32)
  for label, fn, example in (
      ("   encode + decode", lambda v, c=codec: c.decode(key, c.encode(key, v, c.init(v))[0]), x),
      ("   4 x 2^18", make_cohort(codec, client_keys[:4]), many)):
    chosen, out = _ab.jit_patched(fn, {}, example)
    other, out_other = _ab.jit_patched(fn, xla, example)
    out, out_other = np.asarray(out), np.asarray(out_other)
    if np.max(np.abs(out - out_other)) > 1e-5 * np.max(np.abs(out_other)):
      print(f"{label}: the two decodes differ beyond float32 rounding of the scale")
      return 1
    row(label, chosen, other, (example,), args.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
