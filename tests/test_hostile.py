"""Hostile inputs for every registered codec (hypothesis): odd shapes, half precision, extreme values.

The documented policy (`fedjax_comp.codecs`): decode(encode(x)) always has
x's shape and dtype and never crashes; a non-finite input always decodes to
a non-finite output (the round then refuses it); a finite input whose
magnitude leaves room for the codec's arithmetic (rotation sums, 1/p
rescaling: |x| <= finfo.max / (64 sqrt(n_pad))) decodes to a finite
output, and quantization alone is finite for any finite input. Beyond that
bound an estimate may overflow the dtype (it is not representable), which
the round likewise sees as non-finite.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedjax_comp import codecs as C
from fedjax_comp import kernels as K

# One example per registered codec (adding a codec to the registry adds it
# here), plus the compositions that stack every sketch.
SPECS = [info.examples[0] for info in C.REGISTRY.values()] + [
    "subsample(p=0.0625),hadamard,quantize(bits=2)", "random_mask(p=0.25),quantize(bits=4)"]
SHAPES = [(), (0,), (1,), (3,), (17,), (5, 7), (4099,), (70_000,)]
DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]
KINDS = ["normal", "zeros", "constant", "huge", "mixed_huge", "tiny", "denormal", "nan", "inf"]


@functools.cache
def parse(spec):
  return C.parse(spec)


@functools.cache
def roundtrip_fn(codec):
  def f(key, x):
    payload, _ = codec.encode(key, x, codec.init(x))
    return codec.decode(key, payload)
  return jax.jit(f)


def values(kind, shape, dtype, rng):
  fi = jnp.finfo(dtype)
  n = math.prod(shape)
  base = {
      "normal": rng.standard_normal(n),
      "zeros": np.zeros(n),
      "constant": np.full(n, 3.5),
      "huge": np.where(rng.random(n) < 0.5, -1.0, 1.0) * float(fi.max) * 0.9,
      "mixed_huge": np.where(rng.random(n) < 0.1, float(fi.max) * 0.5, rng.standard_normal(n)),
      "tiny": rng.standard_normal(n) * float(fi.tiny) * 4,
      "denormal": rng.standard_normal(n) * float(fi.tiny) / 8,
      "nan": np.where(np.arange(n) == n // 2, np.nan, rng.standard_normal(n)),
      "inf": np.where(np.arange(n) == n // 3, -np.inf, rng.standard_normal(n)),
  }[kind]
  return jnp.asarray(base.reshape(shape), dtype)


def fill(tree, kind, dtype, rng):
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, [values(kind, l.shape, dtype, rng) for l in leaves])


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_inputs_follow_the_policy(spec, data):
  codec = parse(spec)
  shape = data.draw(st.sampled_from(SHAPES), label="shape")
  dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
  kind = data.draw(st.sampled_from(KINDS), label="kind")
  seed = data.draw(st.integers(0, 2**16), label="seed")
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  params = {"w": jnp.zeros(shape, dtype)}
  if codec.structure is not None:
    if len(shape) >= 2 and "low_rank" in spec and min(shape) < 2:
      return
    x = fill(C.codec_input(codec, params, key), kind, dtype, rng)
    expect = jax.jit(codec.structure.expand)(key, x)
  else:
    x = expect = fill(params, kind, dtype, rng)
  y = roundtrip_fn(codec)(key, x)

  assert jax.tree.structure(y) == jax.tree.structure(expect)
  for a, b in zip(jax.tree.leaves(y), jax.tree.leaves(expect)):
    assert a.shape == b.shape and a.dtype == b.dtype
  xin = np.concatenate([np.asarray(l, np.float64).ravel() for l in jax.tree.leaves(x)] or [[]])
  out = np.concatenate([np.asarray(l, np.float64).ravel() for l in jax.tree.leaves(y)] or [[]])
  if xin.size == 0:
    return
  if not np.all(np.isfinite(xin)):
    assert not np.all(np.isfinite(out)), "a non-finite update must not decode to a finite one"
    return
  n_pad = K.next_pow2(max(math.prod(shape), 1))
  bound = float(jnp.finfo(dtype).max) / (64 * math.sqrt(n_pad))
  quantize_only = all(name == "quantize" for name, _ in C.parse_stages(spec))
  if quantize_only or np.abs(xin).max() <= bound:
    assert np.all(np.isfinite(out)), f"finite input decoded to non-finite ({kind}, {shape})"
