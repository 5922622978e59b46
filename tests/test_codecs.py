"""The codec conformance suite: every registered codec (and the listed compositions) runs here.

Adding a codec to `codecs.REGISTRY` with its example specs is all it takes
to put it through these checks.
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_comp import codecs as C
from fedjax_comp import kernels as K

SPECS = [e for info in C.REGISTRY.values() for e in info.examples] + list(C.COMPOSITE_EXAMPLES)
UNBIASED = [s for s in SPECS if C.is_unbiased(s)]


@functools.cache
def parse(spec):
  """One codec object per spec, so its jitted round trip compiles once per test worker."""
  return C.parse(spec)


MIXED = "mixed"  # float16, bfloat16 and float32 leaves in one tree


def make_params(dtype=jnp.float32):
  """A small model-like pytree: a dense kernel, a conv kernel, a bias, a scalar.

  ``dtype=MIXED`` gives the leaves float16, bfloat16, float32 and float16, so
  one compile checks that every low-precision dtype survives the round trip.
  """
  if dtype == MIXED:
    kernel, bias, conv, scale = jnp.float16, jnp.bfloat16, jnp.float32, jnp.float16
  else:
    kernel = bias = conv = scale = dtype
  return {"dense": {"kernel": jnp.zeros((37, 5), kernel), "bias": jnp.zeros((5,), bias)},
          "conv": jnp.zeros((3, 3, 2, 4), conv), "scale": jnp.zeros((), scale)}


_input_fns = {}


def codec_input(codec, key, dtype=jnp.float32):
  """A random input for `codec`: a delta, or a structured codec's z."""
  if (codec, dtype) not in _input_fns:
    _input_fns[codec, dtype] = jax.jit(lambda k: _codec_input(codec, k, dtype))
  return _input_fns[codec, dtype](key)


def _codec_input(codec, key, dtype):
  x = C.codec_input(codec, make_params(dtype), key)
  leaves, treedef = jax.tree.flatten(x)
  ks = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
  return jax.tree.unflatten(treedef, [
      (jax.random.normal(k, l.shape) * 2 + 0.5).astype(l.dtype) for k, l in zip(ks, leaves)])


def _roundtrip(codec, key, x):
  payload, _ = codec.encode(key, x, codec.init(x))
  return codec.decode(key, payload), payload


_jitted = {}


def roundtrip(codec, key, x):
  """decode(encode(x)), jitted once per codec (eager dispatch of the kernels is slow)."""
  if codec not in _jitted:
    _jitted[codec] = jax.jit(lambda k, v: _roundtrip(codec, k, v))
  return _jitted[codec](key, x)


def batched_roundtrip(codec, keys, xs, in_axes=(0, 0)):
  return jax.jit(jax.vmap(lambda k, v: _roundtrip(codec, k, v)[0], in_axes=in_axes))(keys, xs)


def reference(codec, key, x):
  """What decode should estimate: x itself, or the delta a structured z stands for."""
  return x if codec.structure is None else jax.jit(codec.structure.expand)(key, x)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", [jnp.float32, MIXED])
def test_roundtrip_shape_and_dtype(spec, dtype):
  codec = parse(spec)
  key = jax.random.key(0)
  x = codec_input(codec, key, dtype)
  y, _ = roundtrip(codec, key, x)
  ref = reference(codec, key, x)
  assert jax.tree.structure(y) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(y), jax.tree.leaves(ref)):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.all(np.isfinite(np.asarray(a, np.float32)))


@pytest.mark.parametrize("spec", SPECS)
def test_same_key_same_decode_and_vmap_equals_loop(spec):
  codec = parse(spec)
  keys = jax.random.split(jax.random.key(1), 4)
  xs = [codec_input(codec, k) for k in keys]
  loop = [roundtrip(codec, k, x)[0] for k, x in zip(keys, xs)]
  again = roundtrip(codec, keys[0], xs[0])[0]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), again, loop[0])
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *xs)
  batched = batched_roundtrip(codec, keys, stacked)
  for i in range(4):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-6),
                 batched, loop[i])


@pytest.mark.parametrize("spec", SPECS)
def test_reported_bits_equal_payload_size(spec):
  codec = parse(spec)
  key = jax.random.key(2)
  _, payload = roundtrip(codec, key, codec_input(codec, key))
  real = sum(np.asarray(l).nbytes * 8 for l in jax.tree.leaves(payload))
  assert C.uplink_bits(codec, make_params()) == real == C.payload_bits(payload)


def _leaf_sizes():
  return [math.prod(l.shape) for l in jax.tree.leaves(make_params())]


def test_hand_counted_bits():
  params = make_params()
  sizes = _leaf_sizes()
  n = sum(sizes)
  assert C.uplink_bits(C.identity(), params) == 32 * n == C.dense_bits(params)
  for b in range(1, 9):  # packed words + two float32 scales per leaf
    assert C.uplink_bits(C.quantize(bits=b), params) == sum(32 * b * -(-s // 32) + 64
                                                            for s in sizes)
  assert C.uplink_bits(C.hadamard(), params) == sum(32 * K.next_pow2(s) for s in sizes)
  assert C.uplink_bits(C.hadamard(flatten=True), params) == 32 * K.next_pow2(n)
  assert C.uplink_bits(C.parse("hadamard(flatten=true,block=64)"), params) == 32 * 64 * -(-n // 64)
  assert C.uplink_bits(C.subsample(p=0.25), params) == sum(32 * math.ceil(s / 4) for s in sizes)
  # low_rank(k): B is k x d2 per matrix, vectors in full; A costs nothing.
  assert C.uplink_bits(C.low_rank(rank=2), params) == 32 * (2 * 5 + 5 + 2 * 4 + 1)
  assert C.uplink_bits(C.low_rank(rank=2, train="both"), params) == 32 * (
      37 * 2 + 2 * 5 + 5 + 18 * 2 + 2 * 4 + 1)
  assert C.uplink_bits(C.low_rank(rank=2, vectors="frozen"), params) == 32 * (2 * 5 + 2 * 4)
  # Composition: subsample then one flattened rotation then 2-bit codes.
  kept = sum(math.ceil(s / 16) for s in sizes)
  spec = "subsample(p=1/16),hadamard(flatten=true),quantize(bits=2)"
  assert C.uplink_bits(C.parse(spec), params) == 32 * 2 * -(-K.next_pow2(kept) // 32) + 64


@pytest.mark.parametrize("spec", UNBIASED)
def test_unbiased(spec):
  """Mean of T decodes (fresh keys) is within 5 sigma/sqrt(T) of x, per coordinate.

  A coordinate whose rounding is a rare event (probability p << 1/T) may show
  sd = 0 in T trials while its mean is off by p * jump; the 10 R / T term
  covers p up to 10/T (R = the largest single-trial deviation seen).
  """
  codec = parse(spec)
  x = codec_input(codec, jax.random.key(3))
  trials = 2000
  keys = jax.random.split(jax.random.key(4), trials)
  ys = batched_roundtrip(codec, keys, x, in_axes=(0, None))
  for y, ref in zip(jax.tree.leaves(ys), jax.tree.leaves(x)):
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    mean, sd = y.mean(0), y.std(0)
    rare = 10 * np.abs(y - ref).max() / trials
    # Dither bias (2^-25 of a step, step <= the leaf's range) and float32 rounding.
    slack = 1e-5 * (1 + np.abs(ref).max())
    assert np.all(np.abs(mean - ref) <= 5 * sd / math.sqrt(trials) + rare + slack), spec


def test_unbiasedness_check_catches_a_biased_codec():
  codec = C.quantize(bits=1, stochastic=False)
  x = codec_input(codec, jax.random.key(3))
  ys = batched_roundtrip(codec, jax.random.split(jax.random.key(4), 50), x, in_axes=(0, None))
  y, ref = np.asarray(ys["dense"]["kernel"]), np.asarray(x["dense"]["kernel"])
  rare = 10 * np.abs(y - ref).max() / 50
  assert np.any(np.abs(y.mean(0) - ref) > 5 * y.std(0) / math.sqrt(50) + rare + 1e-5)


def test_low_rank_update_has_rank_k_and_only_b_is_sent():
  codec = C.low_rank(rank=2)
  key = jax.random.key(5)
  z = codec_input(codec, key)
  assert z["dense"]["kernel"].a is None and z["dense"]["kernel"].b.shape == (2, 5)
  delta, _ = roundtrip(codec, key, z)
  assert np.linalg.matrix_rank(np.asarray(delta["dense"]["kernel"])) <= 2
  assert np.linalg.matrix_rank(np.asarray(delta["conv"]).reshape(18, 4)) <= 2
  np.testing.assert_array_equal(delta["dense"]["bias"], z["dense"]["bias"])  # sent in full
  # z0 is zero, so the starting update is zero.
  z0 = codec.structure.init(key, make_params())
  assert all(np.all(np.asarray(l) == 0) for l in jax.tree.leaves(codec.structure.expand(key, z0)))


def test_mask_update_is_zero_off_the_mask():
  codec = C.random_mask(p=0.25)
  key = jax.random.key(6)
  z = codec_input(codec, key)
  delta, _ = roundtrip(codec, key, z)
  leaf_key = jax.random.fold_in(key, 1)  # "dense/kernel" is leaf 1 in flatten order
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(make_params())[0]]
  i = names.index("['dense']['kernel']")
  idx = np.asarray(C.mask_indices(jax.random.fold_in(key, i), (37, 5), 0.25))
  d = np.asarray(delta["dense"]["kernel"]).reshape(-1)
  off = np.ones(d.size, bool)
  off[idx] = False
  assert np.all(d[off] == 0) and np.count_nonzero(d[idx]) == len(idx) == math.ceil(37 * 5 / 4)
  del leaf_key


@pytest.mark.parametrize("bad,match", [
    ("quantize(bits=0)", "bits must be an integer in 1..8"),
    ("quantize(bits=9)", "bits must be an integer in 1..8"),
    ("quantize(bits=2.5)", "bits must be an integer in 1..8"),
    ("subsample(p=0)", r"p must be a number in \(0, 1\]"),
    ("subsample(p=1.5)", r"p must be a number in \(0, 1\]"),
    ("random_mask(p=-0.1)", r"p must be a number in \(0, 1\]"),
    ("low_rank(rank=0)", "rank must be an integer >= 1"),
    ("low_rank(rank=2,train=c)", "train must be one of a, b, both"),
    ("hadamard(block=48)", "block must be 0 or a power of two"),
    ("quantise(bits=2)", "unknown codec 'quantise'.*valid codecs: drive, eden, ef, ef21, hadamard, identity"),
    ("quantize(bit=2)", "no parameter 'bit'; valid parameters: bits, stochastic"),
    ("quantize(2)", "parameters are param=value"),
    ("hadamard,,quantize", "empty stage"),
    ("quantize(bits=2", "unbalanced"),
    ("hadamard,low_rank(rank=1)", "only the first codec stage may be structured"),
])
def test_bad_specs(bad, match):
  with pytest.raises(ValueError, match=match):
    C.parse(bad)


def test_rank_above_min_dim_names_the_weight():
  with pytest.raises(ValueError, match=r"rank must be in 1..min\(d1, d2\) = 1..4 .*\(3, 3, 2, 4\)"):
    C.uplink_bits(C.low_rank(rank=5), make_params())


@pytest.mark.parametrize("spec", [s for s in SPECS if s != "identity"])  # identity sends anything
def test_non_float_input_is_rejected(spec):
  codec = parse(spec)
  params = jax.tree.map(lambda l: l.astype(jnp.int32), make_params())
  with pytest.raises(ValueError, match="floating-point"):
    x = C.codec_input(codec, params, jax.random.key(0))
    codec.encode(jax.random.key(0), x, codec.init(x))


@pytest.mark.parametrize("spec", [s for s in SPECS if s != "identity"])
def test_non_finite_input_decodes_non_finite(spec):
  """The documented policy: NaN/Inf never turns into a finite-looking update."""
  codec = parse(spec)
  key = jax.random.key(7)
  x = codec_input(codec, key)
  leaves, treedef = jax.tree.flatten(x)
  leaves[0] = leaves[0].reshape(-1).at[0].set(jnp.nan).reshape(leaves[0].shape)
  y, _ = roundtrip(codec, key, jax.tree.unflatten(treedef, leaves))
  assert not all(np.all(np.isfinite(np.asarray(l, np.float32))) for l in jax.tree.leaves(y))


def test_structured_codec_rejects_a_plain_delta():
  codec = C.low_rank(rank=1)
  with pytest.raises(ValueError, match="structure=codec.structure"):
    codec.encode(jax.random.key(0), make_params(), ())


# ---------------------------------------------------------------- a codec added from outside


@flax.struct.dataclass
class Flipped:
  data: jax.Array  # the leaf times random signs, in the leaf's shape and dtype


def sign_flip() -> C.Codec:
  """Multiplies each leaf by Rademacher signs from its key (decode multiplies again)."""

  def flip(key, x):
    return x * K.rademacher(key, x.shape, x.dtype)

  return C.per_leaf(lambda key, x: Flipped(flip(key, x)), lambda key, f: flip(key, f.data),
                    Flipped, name="sign_flip")


@pytest.fixture
def registered_sign_flip():
  """`sign_flip` in the registry for one test, removed afterwards."""
  info = C.register("sign_flip", sign_flip, examples=("sign_flip", "sign_flip,quantize(bits=4)"),
                    unbiased=True)
  try:
    yield info
  finally:
    del C.REGISTRY["sign_flip"]


def test_a_codec_registered_from_outside_parses_and_round_trips(registered_sign_flip):
  assert C.REGISTRY["sign_flip"] is registered_sign_flip
  assert C.parse_stages("sign_flip,quantize(bits=4)") == [("sign_flip", {}), ("quantize",
                                                                              {"bits": 4})]
  codec = parse("sign_flip")
  key = jax.random.key(8)
  x = codec_input(codec, key)
  y, payload = roundtrip(codec, key, x)
  jax.tree.map(np.testing.assert_array_equal, y, x)  # signs square to one: exact
  # Leaf i is flipped with the key fold_in(key, i), as in every per-leaf codec.
  leaves = jax.tree.leaves(payload)
  for i, (sent, leaf) in enumerate(zip(leaves, jax.tree.leaves(x))):
    signs = K.rademacher(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
    np.testing.assert_array_equal(sent, leaf * signs)
  assert C.uplink_bits(codec, make_params()) == C.dense_bits(make_params())
  # Registering enrolls it in the conformance properties, alone and composed.
  for spec in registered_sign_flip.examples:
    test_roundtrip_shape_and_dtype(spec, jnp.float16)
    test_same_key_same_decode_and_vmap_equals_loop(spec)
    test_reported_bits_equal_payload_size(spec)
    test_unbiased(spec)
    test_non_float_input_is_rejected(spec)
    test_non_finite_input_decodes_non_finite(spec)


def test_registration_is_undone_after_the_test():
  assert "sign_flip" not in C.REGISTRY
  with pytest.raises(ValueError, match="unknown codec 'sign_flip'"):
    C.parse("sign_flip")


def _needs_a_scale(scale):
  del scale
  return C.identity()


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="2fast"), "name must be an identifier"),
    (dict(name="sign flip"), "name must be an identifier"),
    (dict(name=None), "name must be an identifier"),
    (dict(name="quantize"), "name 'quantize' is already registered; registered codecs: drive, eden, ef, ef21, hadamard"),
    (dict(name="none"), "name 'none' is reserved"),
    (dict(name="Identity"), "name 'Identity' is reserved"),
    (dict(factory="sign_flip"), "factory for 'toy' must be callable"),
    (dict(factory=_needs_a_scale), "factory for 'toy': parameter 'scale' must be a keyword"),
    (dict(examples=()), "examples for 'toy' must be a non-empty sequence of spec strings"),
    (dict(examples="toy"), "examples for 'toy' must be a non-empty sequence of spec strings"),
    (dict(examples=("toy", 3)), "examples for 'toy' must be a non-empty sequence"),
    (dict(examples=("quantize(bits=2)",)), "examples for 'toy': example .* does not use 'toy'"),
    (dict(examples=("toy(bits=2)",)), "examples for 'toy': codec 'toy' has no parameter 'bits'"),
    (dict(unbiased="yes"), "unbiased for 'toy' must be true or false"),
])
def test_register_refuses_bad_input(kwargs, match):
  args = {**dict(name="toy", factory=sign_flip, examples=("toy",), unbiased=True), **kwargs}
  before = dict(C.REGISTRY)
  with pytest.raises(ValueError, match=match):
    C.register(args.pop("name"), args.pop("factory"), **args)
  assert C.REGISTRY == before
