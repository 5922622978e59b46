"""The codecs after Konečný: exact bits by hand, numpy references, feedback identities, the vote.

The conformance suite (tests/test_codecs.py) already runs every registered
example (round trip, same key, vmap == loop, bits == payload, unbiasedness,
hostile inputs); this file checks what is particular to each method.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_comp import codecs as C
from fedjax_comp import kernels as K
from fedjax_comp import native
from fedjax_comp.codecs import rotated_codes as eden_lib
from fedjax_comp.codecs import norm_levels as qsgd_lib
from tests.test_codecs import make_params

SIZES = [math.prod(l.shape) for l in jax.tree.leaves(make_params())]  # 72, 5, 185, 1
D = sum(SIZES)  # 263


def bits(spec):
  return C.uplink_bits(C.parse(spec), make_params())


def words(n):
  return -(-n // 32)


def test_hand_counted_bits_of_every_new_codec():
  assert D == 263 and K.next_pow2(D) == 512
  # DRIVE / EDEN: b bits per padded rotated coordinate + one float32 per block.
  assert bits("drive") == 512 + 32
  assert bits("drive(block=64)") == 320 + 5 * 32  # 263 -> 5 blocks of 64
  assert bits("eden(bits=2)") == 2 * 512 + 32
  assert bits("eden(bits=3)") == 32 * 3 * words(512) + 32
  assert bits("eden(bits=4,block=128)") == 4 * 384 + 3 * 32
  assert bits("eden(bits=0.5)") == 256 + 32  # 1 bit on half of the 512
  # QSGD: ceil(log2(2s + 1))-bit signed levels + one float32 per bucket, per leaf.
  assert qsgd_lib.code_bits(4) == 4 and qsgd_lib.code_bits(1) == 2 and qsgd_lib.code_bits(127) == 8
  assert bits("qsgd(levels=4)") == sum(32 * 4 * words(n) + 32 for n in SIZES)
  assert bits("qsgd(levels=1,bucket=16)") == sum(32 * 2 * words(n) + 32 * -(-n // 16)
                                                 for n in SIZES)
  # TernGrad: 2-bit codes + max|x| per leaf. sign: 1 bit per coordinate + the finite flag.
  assert bits("terngrad") == sum(64 * words(n) + 32 for n in SIZES)
  assert bits("sign") == 32 * words(D) + 32
  # top-k: 32-bit values + the smaller index list (ceil(log2 263) = 9 bits, or 263 bits).
  assert C.index_coding(27, D) == ("positions", 32 * words(27 * 9))
  assert bits("top_k(p=0.1)") == 27 * 32 + 256
  assert bits("top_k(k=3)") == 3 * 32 + 32
  assert C.index_coding(132, D) == ("bitmap", 288)
  assert bits("top_k(p=0.5)") == 132 * 32 + 288
  # rand-k: the values only (indices come from the shared key).
  assert bits("rand_k(p=0.25)") == 66 * 32
  assert bits("rand_k(k=7)") == 7 * 32
  # PowerSGD rank 2: conv [18, 4] -> 2 (18 + 4); dense [37, 5] -> 2 (37 + 5); vectors in full.
  assert bits("powersgd(rank=2)") == 32 * (2 * 22 + 2 * 42 + 5 + 1)
  assert bits("powersgd(rank=9)") == 32 * (4 * 22 + 5 * 42 + 5 + 1)  # rank capped at min(n, m)
  # Feedback wrappers send exactly the wrapped payload.
  assert bits("ef(top_k(p=0.1))") == bits("ef21(top_k(p=0.1))") == bits("top_k(p=0.1)")


def test_qsgd_elias_bits_by_hand():
  x = {"w": jnp.array([0.0, 3.0, 0.0, 0.0, -4.0])}  # ||x|| = 5: with s = 5 the levels are exact
  for elias, want in (("gamma", 32 + (3 + 1 + 3) + (3 + 1 + 5)),
                      ("omega", 32 + (3 + 1 + 3) + (3 + 1 + 6))):
    codec = C.qsgd(levels=5, elias=elias)
    payload, _ = codec.encode(jax.random.key(0), x, ())
    np.testing.assert_array_equal(codec.decode(jax.random.key(0), payload)["w"], x["w"])
    # nonzeros at 1 (gap 2) and 4 (gap 3), levels 3 and 4; gamma: 3, 3, 3, 5; omega: 3, 3, 3, 6
    assert int(codec.coded_bits(payload)) == want
    assert C.payload_bits(payload) == 32 * 4 + 32  # fixed length: 4-bit codes, one norm
  gamma = np.asarray(qsgd_lib.gamma_length(jnp.arange(1, 9)))
  omega = np.asarray(qsgd_lib.omega_length(jnp.array([1, 2, 3, 4, 7, 8, 16, 100])))
  np.testing.assert_array_equal(gamma, [1, 3, 3, 5, 5, 5, 5, 7])
  np.testing.assert_array_equal(omega, [1, 3, 3, 6, 6, 7, 11, 13])


def test_lloyd_max_centroids_match_the_published_table():
  """REFERENCES.md (EDEN's constants): positive halves of N(0,1)'s Lloyd-Max quantizers."""
  published = {1: [0.7979], 2: [0.4528, 1.5104],
               4: [0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326]}
  for b, half in published.items():
    c, edges = eden_lib.lloyd_max(b)
    np.testing.assert_allclose(c[2**(b - 1):], half, atol=6e-5)
    np.testing.assert_allclose(edges, (c[1:] + c[:-1]) / 2)
  # The asymptotic vNMSEs the issue quotes (EDEN, unbiased): 0.571, 0.133, 0.0096.
  assert abs(eden_lib.unbiased_vnmse(1) - (math.pi / 2 - 1)) < 1e-9
  assert abs(eden_lib.unbiased_vnmse(2) - 0.133) < 5e-4
  assert abs(eden_lib.unbiased_vnmse(4) - 0.0096) < 5e-5


@functools.cache
def _sylvester(d):
  h = np.ones((1, 1))
  while h.shape[0] < d:
    h = np.block([[h, h], [h, -h]])
  return h / math.sqrt(d)


def _numpy_eden(x, bits, scale, rng):
  """An independent EDEN in numpy: Sylvester Hadamard matrix, published centroids."""
  d = x.size
  h = _sylvester(d)
  half = {1: [0.7978845608], 2: [0.4527800399, 1.5104176087],
          4: [0.1283950167, 0.3880482345, 0.6567589958, 0.9423402689, 1.2562309480,
              1.6180460517, 2.0690167302, 2.7325888041]}[bits]
  centroids = np.array([-c for c in reversed(half)] + half)
  signs = rng.choice([-1.0, 1.0], size=d)
  y = h @ (signs * x)
  z = y * math.sqrt(d) / np.linalg.norm(y)
  q = centroids[np.searchsorted((centroids[1:] + centroids[:-1]) / 2, z)]
  s = {"unbiased": y @ y / (y @ q), "mse": (y @ q) / (q @ q),
       "one": np.linalg.norm(y) / math.sqrt(d)}[scale]
  return signs * (h @ (s * q))


@pytest.mark.parametrize("spec,bits,scale", [("drive", 1, "unbiased"), ("eden(bits=2)", 2, "unbiased"),
                                             ("eden(bits=4)", 4, "unbiased"),
                                             ("eden(bits=2,scale=mse)", 2, "mse"),
                                             ("eden(bits=1,scale=one)", 1, "one")])
def test_vnmse_matches_an_independent_numpy_reference(spec, bits, scale):
  """Mean vNMSE over T trials, ours vs numpy's, within 4 standard errors of their difference."""
  d, trials = 2048, 200
  rng = np.random.default_rng(0)
  x = rng.lognormal(size=d)
  ref = np.array([_numpy_eden(x, bits, scale, rng) for _ in range(trials)])
  ref_err = np.sum((ref - x) ** 2, axis=1) / (x @ x)
  codec = C.parse(spec)
  xs = jnp.asarray(x, jnp.float32)
  ours = np.asarray(jax.jit(jax.vmap(lambda k: codec.decode(k, codec.encode(k, xs, ())[0])))(
      jax.random.split(jax.random.key(1), trials)), np.float64)
  our_err = np.sum((ours - x) ** 2, axis=1) / (x @ x)
  se = math.sqrt(ref_err.var() / trials + our_err.var() / trials)
  assert abs(our_err.mean() - ref_err.mean()) <= 4 * se + 1e-4, (our_err.mean(), ref_err.mean())
  if scale == "unbiased":  # and both near the asymptotic value (d = 2048 is large)
    assert abs(our_err.mean() / eden_lib.unbiased_vnmse(bits) - 1) < 0.05
  else:  # the biased scales' vNMSE tends to the Lloyd-Max distortion
    assert abs(our_err.mean() / eden_lib.distortion(bits) - 1) < 0.05


def test_eden_is_unbiased_within_the_trial_noise_at_a_large_dimension():
  d, trials = 4096, 4000
  x = jax.random.normal(jax.random.key(5), (d,)) + 0.3
  for spec in ("drive", "eden(bits=2)", "eden(bits=0.5)"):
    codec = C.parse(spec)
    ys = jax.jit(jax.vmap(lambda k: codec.decode(k, codec.encode(k, x, ())[0])))(
        jax.random.split(jax.random.key(6), trials))
    mean = np.asarray(ys, np.float64).mean(0)
    vnmse = float(np.mean(np.sum((np.asarray(ys) - np.asarray(x)) ** 2, 1)) / np.sum(
        np.asarray(x) ** 2))
    # ||mean - x||^2 / ||x||^2 has expectation vNMSE / T for an unbiased codec.
    rel = np.sum((mean - np.asarray(x)) ** 2) / np.sum(np.asarray(x) ** 2)
    assert rel < 1.5 * vnmse / trials, (spec, rel, vnmse / trials)


@pytest.mark.parametrize("spec,where,bad", [
    ("drive", 0, np.inf), ("drive", 0, -np.inf), ("drive", 0, np.nan),
    ("eden(bits=2,block=256)", 999, np.inf),  # in a later block
    ("eden(bits=0.5)", 5, -np.inf), ("eden(bits=4,scale=mse)", 0, np.nan)])
def test_rotated_codecs_turn_any_non_finite_coordinate_into_a_nan_update(spec, where, bad):
  # The encoder reads finiteness off max|rotated y| (a bad coordinate reaches
  # every rotated coordinate of its block): every block's scale must be NaN.
  codec = C.parse(spec)
  x = jax.random.normal(jax.random.key(3), (1000,)).at[where].set(bad)
  key = jax.random.key(4)
  payload, _ = codec.encode(key, x, codec.init(x))
  assert np.all(np.isnan(np.asarray(payload.scale)))
  assert np.all(np.isnan(np.asarray(codec.decode(key, payload))))


needs_native = pytest.mark.skipif(not native.available(),
                                  reason="the native kernels did not build (no C++ compiler?)")


@needs_native
@pytest.mark.parametrize("bits,rows,m", [(1, 2, 4), (2, 3, 64), (3, 2, 1024), (4, 2, 1 << 16)])
def test_native_rotated_quantizer_matches_a_numpy_reference(bits, rows, m):
  # m = 4: the scalar tail; 2^16: two chunks of 2^15 per row (b = 4: the binary search and
  # the permuted lookups). Row 1 (if any) holds a NaN.
  rng = np.random.default_rng(bits)
  y = rng.standard_normal((2, rows, m)).astype(np.float32)  # a vmap batch of 2
  if rows > 1:
    y[1, 1, m // 2] = np.nan
  table, bounds = (np.asarray(a, np.float32) for a in eden_lib.lloyd_max(bits))
  words, stats = jax.vmap(lambda v: native.rotated_quantize(v, bounds, table, bits))(y)
  for b in range(2):
    top = np.max(np.abs(y[b]), axis=1, keepdims=True)
    unit = y[b] / top
    norm = np.sqrt(np.sum(unit.astype(np.float64)**2, axis=1, keepdims=True))
    z = unit * (np.float32(math.sqrt(m)) / norm.astype(np.float32))
    codes = np.sum(z[..., None] > bounds, axis=-1).astype(np.uint32)
    q = table[codes]
    ok = np.isfinite(top[:, 0])
    np.testing.assert_allclose(stats[b][ok], np.concatenate(
        [top, norm**2, np.sum(unit * q, 1, keepdims=True, dtype=np.float64),
         np.sum(q * q, 1, keepdims=True, dtype=np.float64)], axis=1)[ok], rtol=2e-6)
    assert np.all(np.isnan(stats[b][~ok, 0]))
    # Unpacked by `kernels.unpack` (the layout's reference). A z within float
    # rounding of a boundary may take either neighbouring code.
    ours = np.asarray(K.unpack(words[b], bits, rows * m)).reshape(rows, m)
    near = np.min(np.abs(z[..., None] - bounds), axis=-1) < 1e-5
    sure = ok[:, None] & ~near
    np.testing.assert_array_equal(ours[sure], codes[sure])
    assert np.all(np.abs(ours[ok].astype(int) - codes[ok]) <= 1) and np.mean(near) < 1e-3
    codes = ours
    # The inverse: centroid times the row's scale, exactly as numpy rounds it.
    scale = rng.standard_normal(rows).astype(np.float32)
    np.testing.assert_array_equal(native.rotated_dequantize(words[b], jnp.asarray(scale), m, table,
                                                            bits), table[codes] * scale[:, None])


@needs_native
def test_native_rotated_quantizer_refuses_boundaries_out_of_order():
  # b = 4 finds a code by binary search, which needs ascending boundaries.
  table, bounds = (np.asarray(a, np.float32) for a in eden_lib.lloyd_max(4))
  y = np.ones((1, 64), np.float32)
  with pytest.raises(Exception, match="boundaries must ascend"):
    jax.block_until_ready(native.rotated_quantize(y, bounds[::-1], table, 4))


@needs_native
@pytest.mark.parametrize("spec", ["drive", "eden(bits=3,block=256)", "eden(bits=4,scale=mse)",
                                  "eden(bits=2,scale=one)", "eden(bits=0.5)"])
def test_native_and_xla_rotated_codecs_agree(spec, monkeypatch):
  # The two paths share the rotation; their sums round differently, so the
  # scale agrees to float32 rounding and the codes (here) exactly. Rows of
  # 1e30 and 1e-30: no sum may overflow or underflow to a wrong scale.
  codec = C.parse(spec)
  x = jax.random.normal(jax.random.key(11), (3, 70000)) * jnp.array([1.0, 1e30, 1e-30])[:, None]
  keys = jax.random.split(jax.random.key(12), 3)
  round_trip = lambda: jax.jit(jax.vmap(lambda k, v: (
      lambda p: (p, codec.decode(k, p)))(codec.encode(k, v, ())[0])))(keys, x)
  native_payload, native_y = round_trip()
  monkeypatch.setattr(eden_lib, "native_ok", lambda length: False)
  xla_payload, xla_y = round_trip()
  np.testing.assert_array_equal(native_payload.words, xla_payload.words)
  assert np.all(np.isfinite(native_payload.scale)) and np.all(np.asarray(native_payload.scale) != 0)
  np.testing.assert_allclose(native_payload.scale, xla_payload.scale, rtol=1e-6)
  tol = 1e-6 * np.max(np.abs(np.asarray(xla_y)), axis=1, keepdims=True)
  assert np.all(np.abs(np.asarray(native_y) - np.asarray(xla_y)) <= tol)


@needs_native
@pytest.mark.parametrize("spec", ["terngrad", "quantize(bits=3)"])
def test_native_and_xla_ternary_and_quantize_codecs_agree(spec, monkeypatch):
  # From kernels.NATIVE_MIN_LENGTH on, both codecs encode in one native pass:
  # the same payload bit for bit, the same decode (terngrad exactly; quantize's
  # to an ulp, where XLA's fused decode contracts into FMAs). A NaN row stays NaN.
  codec = C.parse(spec)
  n = K.NATIVE_MIN_LENGTH + 77
  x = np.array(jax.random.normal(jax.random.key(13), (3, n)))
  x[1, 5] = np.nan
  keys = jax.random.split(jax.random.key(14), 3)
  round_trip = lambda: jax.jit(jax.vmap(lambda k, v: (
      lambda p: (p, codec.decode(k, p)))(codec.encode(k, v, ())[0])))(keys, jnp.asarray(x))
  native_payload, native_y = round_trip()
  monkeypatch.setattr(K, "native_quantizer", lambda n: False)
  xla_payload, xla_y = round_trip()
  for a, b in zip(jax.tree.leaves(native_payload), jax.tree.leaves(xla_payload)):
    np.testing.assert_array_equal(np.asarray(a)[[0, 2]], np.asarray(b)[[0, 2]])
  np.testing.assert_allclose(np.asarray(native_y)[[0, 2]], np.asarray(xla_y)[[0, 2]], rtol=3e-7)
  assert np.all(np.isnan(np.asarray(native_y)[1]))


@needs_native
@pytest.mark.parametrize("levels,bucket,n", [(4, 512, 10077), (1, 0, 4096), (127, 100, 20003),
                                             (3, 2**15 + 3, 70001)])
def test_native_qsgd_matches_the_xla_encoder_to_rounding(levels, bucket, n, monkeypatch):
  # quantize.cc's QSGD against the XLA encoder: norms to float32 rounding
  # (a double sum there), codes equal but where t lands within rounding of
  # its dither, a NaN bucket's norm NaN; the native decode is (code - s) *
  # (norm / s) in float32, op by op. Buckets: many, one whole leaf, 100
  # (runs of 8 straddle them), and longer than a work item (2^15).
  codec = C.qsgd(levels=levels, bucket=bucket)
  x = np.array(jax.random.normal(jax.random.key(levels), (3, n)) *
               jnp.exp(jax.random.normal(jax.random.key(1), (3, n))))
  x[1, n // 2] = np.nan
  keys = jax.random.split(jax.random.key(17), 3)

  def round_trip():
    payload, y = jax.jit(jax.vmap(lambda k, v: (
        lambda p: (p, codec.decode(k, p)))(codec.encode(k, v, ())[0])))(keys, jnp.asarray(x))
    (leaf,) = jax.tree.leaves(payload, is_leaf=lambda a: isinstance(a, qsgd_lib.QSGDLeaf))
    return leaf, y

  monkeypatch.setattr(qsgd_lib, "NATIVE_MIN_LENGTH", 1)  # the native kernels at any length
  native_q, native_y = round_trip()
  monkeypatch.setattr(qsgd_lib, "NATIVE_MIN_LENGTH", 2**40)
  xla_q, _ = round_trip()
  width = qsgd_lib.code_bits(levels)
  codes = lambda q: np.asarray(jax.vmap(lambda w: K.unpack(w, width, n))(q.words)).astype(int)
  nb = -(-n // (bucket or n))
  ok = np.ones((3, nb), bool)
  ok[1, (n // 2) // (bucket or n)] = False
  np.testing.assert_allclose(np.asarray(native_q.norms)[ok], np.asarray(xla_q.norms)[ok], rtol=1e-6)
  assert np.all(np.isnan(np.asarray(native_q.norms)[~ok]))
  c_native, c_xla = codes(native_q), codes(xla_q)
  good = np.repeat(ok, bucket or n, axis=1)[:, :n]
  differ = (c_native != c_xla) & good
  assert differ.sum() <= 1e-4 * good.sum() and np.all(np.abs(c_native - c_xla)[differ] == 1)
  scale = (np.asarray(native_q.norms) / np.float32(levels)).astype(np.float32)
  want = (c_native - levels).astype(np.float32) * np.repeat(scale, bucket or n, axis=1)[:, :n]
  np.testing.assert_array_equal(np.asarray(native_y), want)


@pytest.mark.parametrize("native_path", [True, False])
def test_qsgd_keeps_buckets_near_float32_max(native_path, monkeypatch):
  # 1 / max|x| is subnormal above 2^126 and flushed to zero on a CPU: both
  # encoders scale such a bucket by 2^-64 first, so it is quantized, not
  # zeroed (each coordinate within one level, norm / s, of x).
  monkeypatch.setattr(qsgd_lib, "NATIVE_MIN_LENGTH", 1 if native_path else 2**40)
  x = jnp.full((4096,), 1e38, jnp.float32).at[::3].set(-3e37)
  codec = C.qsgd(levels=4, bucket=2)
  payload = codec.encode(jax.random.key(0), x, ())[0]
  y = np.asarray(codec.decode(jax.random.key(0), payload), np.float64)
  norms = np.repeat(np.asarray(jax.tree.leaves(payload)[1], np.float64), 2)
  assert np.all(np.isfinite(norms)) and np.all(np.abs(y - np.asarray(x)) <= norms / 4 * 1.0001)


@needs_native
@pytest.mark.parametrize("spec", ["rand_k(p=0.01)", "subsample(p=0.3)", "top_k(p=0.02)",
                                  "eden(bits=0.5)", "random_mask(p=0.25)"])
def test_native_draws_finiteness_and_scatter_leave_codecs_bit_identical(spec, monkeypatch):
  # The native stratified draws, finiteness test and ascending scatter
  # (kernels.stratified_indices / all_finite / scatter_ascending) against
  # their XLA paths, in whole codecs above the native thresholds: the same
  # payloads and decodes bit for bit, and a NaN row still poisoned.
  codec = C.parse(spec)
  n = 2 * K.NATIVE_SCATTER_MIN + 77
  x = np.array(jax.random.normal(jax.random.key(15), (3, n)))
  x[1, n - 1] = np.nan
  keys = jax.random.split(jax.random.key(16), 3)
  structured = codec.structure is not None

  def round_trip():
    if structured:  # random_mask: the server expands the trained values at their positions
      def expand(k, v):
        z = codec.structure.init(k, v)
        return codec.structure.expand(k, z.replace(values=v[:z.values.shape[0]]))
      return None, jax.jit(jax.vmap(expand))(keys, jnp.asarray(x))
    return jax.jit(jax.vmap(lambda k, v: (lambda p: (p, codec.decode(k, p)))(
        codec.encode(k, v, codec.init(v))[0])))(keys, jnp.asarray(x))

  native_payload, native_y = round_trip()
  monkeypatch.setattr(K, "native_random_bits", lambda key: False)
  monkeypatch.setattr(K, "NATIVE_FINITE_MIN", float("inf"))
  monkeypatch.setattr(K, "NATIVE_SCATTER_MIN", float("inf"))
  xla_payload, xla_y = round_trip()
  for a, b in zip(jax.tree.leaves(native_payload), jax.tree.leaves(xla_payload)):
    np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
  np.testing.assert_array_equal(np.asarray(native_y).view(np.uint32),
                                np.asarray(xla_y).view(np.uint32))
  if not structured:  # every sent value of the NaN row is NaN (the rest of a sparse decode is 0)
    assert np.any(np.isnan(np.asarray(native_y)[1]))
    assert not np.any(np.isnan(np.asarray(native_y)[[0, 2]]))


@pytest.mark.parametrize("n,k", [(16, 8), (4096, 1024), (64, 8), (1000, 300), (64, 4), (7, 7)])
def test_kept_coordinates_are_the_gather_exactly(n, k):
  # Equal strata of <= 8 take the select path, the rest the gather.
  idx, _ = K.stratified_indices(jax.random.key(9), n, k)
  y = jax.random.normal(jax.random.key(10), (3, n))
  np.testing.assert_array_equal(eden_lib.keep_coordinates(y, idx),
                                np.asarray(y)[:, np.asarray(idx)])


def test_top_k_keeps_exactly_the_largest_and_ties_by_index():
  x = jnp.array([0.5, -3.0, 2.0, -2.0, 0.1, 2.0, 1.0])
  for select in (C.sparsification.top_k_mask, C.sparsification.top_k_mask_bisection):
    mask = np.asarray(select(x, 3))
    np.testing.assert_array_equal(mask, [False, True, True, True, False, False, False])
  big = jnp.asarray(np.random.default_rng(0).standard_normal(40), jnp.float32)
  for vec, spec, coding in ((x, "top_k(k=3)", "positions"), (big, "top_k(k=4)", "positions"),
                            (big, "top_k(k=20)", "bitmap")):
    codec = C.parse(spec)
    payload, _ = codec.encode(None, {"x": vec}, ())
    assert payload.coding == coding
    y = np.asarray(codec.decode(None, payload)["x"])
    v = np.asarray(vec)
    order = np.lexsort((np.arange(v.size), -np.abs(v)))[:payload.k]
    want = np.zeros(v.size, np.float32)
    want[order] = v[order]
    np.testing.assert_array_equal(y, want)


@needs_native
def test_native_top_k_selects_as_lax_top_k_does_ties_included():
  # The radix select against numpy's stable order (|x| descending, then index):
  # ties, signed zeros, infinities, heavy tails, k = 1 and k = d, and a vmap batch.
  rng = np.random.default_rng(1)
  cases = [(rng.standard_normal(d).astype(np.float32), k) for d, k in
           ((1, 1), (5, 2), (100, 33), (70000, 700), (70000, 70000))]
  cases += [(rng.integers(-3, 4, 1000).astype(np.float32), k) for k in (1, 300, 999)]
  cases.append((np.where(np.arange(64) % 2, -0.0, 0.0).astype(np.float32), 5))
  heavy = (rng.standard_normal(5000) * np.exp(rng.standard_normal(5000) * 10)).astype(np.float32)
  heavy[[3, 99]], heavy[7] = np.inf, -np.inf
  cases += [(heavy, 777), (heavy, 2)]
  for x, k in cases:
    want = np.sort(np.lexsort((np.arange(x.size), -np.abs(x)))[:k])
    np.testing.assert_array_equal(native.top_k_indices(jnp.asarray(x), k), want)
  batch = rng.standard_normal((3, 2000)).astype(np.float32)
  got = jax.vmap(lambda v: native.top_k_indices(v, 40))(batch)
  for row, x in zip(np.asarray(got), batch):
    np.testing.assert_array_equal(row, np.sort(np.argsort(-np.abs(x), kind="stable")[:40]))
  # Rows of 2^17 floats and more, fewer than the threads, split their passes
  # over chunks: ties spread over every chunk (integers), a NaN and
  # infinities, k = 1 and k = d; then 1, 2 and 5 such rows (5: rows in parallel).
  d = 3 * 2**16 + 5
  ties = rng.integers(-3, 4, d).astype(np.float32)
  ties[[0, d // 2, d - 1]] = [np.inf, np.nan, -np.inf]
  for x, k in [(ties, 1), (ties, 3), (ties, 50000), (ties, d), (heavy.repeat(40), 4321)]:
    magnitude = (x.view(np.uint32) & 0x7FFFFFFF).astype(np.int64)  # the kernel's order: NaN > inf
    want = np.sort(np.lexsort((np.arange(x.size), -magnitude))[:k])
    np.testing.assert_array_equal(native.top_k_indices(jnp.asarray(x), k), want)
  for rows in (1, 2, 5):
    batch = (rng.standard_normal((rows, d)) * 4).round().astype(np.float32)
    got = np.asarray(jax.vmap(lambda v: native.top_k_indices(v, 9999))(batch))
    for row, x in zip(got, batch):
      np.testing.assert_array_equal(row, np.sort(np.lexsort((np.arange(d), -np.abs(x)))[:9999]))


def test_wide_index_packing_round_trips_every_width():
  rng = np.random.default_rng(0)
  for width in (1, 5, 9, 17, 31, 32):
    v = rng.integers(0, 2**width, size=37, dtype=np.uint64).astype(np.uint32)
    w = C.sparsification.pack_fields(jnp.asarray(v), width)
    assert w.shape == (words(37 * width),)
    np.testing.assert_array_equal(C.sparsification.unpack_fields(w, width, 37), v)


def test_error_feedback_residual_identity_is_exact():
  """p = delta + e_old splits into what was sent and what is kept: C(p) + e_new == p, bit for bit."""
  codec = C.parse("ef(top_k(p=0.1))")
  x0 = make_params()
  e = codec.init(x0)
  sent_total = jax.tree.map(jnp.zeros_like, e)
  x_total = jax.tree.map(jnp.zeros_like, e)
  for t in range(5):
    leaves, treedef = jax.tree.flatten(x0)
    x = jax.tree.unflatten(treedef, [jax.random.normal(jax.random.key(10 * t + i), l.shape)
                                     for i, l in enumerate(leaves)])
    payload, e_new = codec.encode(jax.random.key(t), x, e)
    sent = codec.decode(jax.random.key(t), payload)
    jax.tree.map(lambda s, en, a, eo: np.testing.assert_array_equal(s + en, a + eo),
                 sent, e_new, x, e)
    sent_total = jax.tree.map(jnp.add, sent_total, sent)
    x_total = jax.tree.map(jnp.add, x_total, x)
    e = e_new
  # Nothing is lost, only delayed.
  jax.tree.map(lambda s, en, a: np.testing.assert_allclose(s + en, a, atol=1e-5),
               sent_total, e, x_total)


def test_ef21_state_tracks_what_was_sent():
  codec = C.parse("ef21(top_k(p=0.1))")
  g = codec.init(make_params())
  x = jax.tree.map(lambda l: jnp.ones(l.shape) * 2.0, make_params())
  total = jax.tree.map(jnp.zeros_like, g)
  for t in range(30):
    payload, g = codec.encode(jax.random.key(t), x, g)
    total = jax.tree.map(jnp.add, total, codec.decode(jax.random.key(t), payload))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, total)
  # A constant update is learned exactly once top-k has cycled through it.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, x)


def test_decay_ages_a_stale_residual():
  codec = C.parse("ef(top_k(p=0.1),decay=0.5)")
  e = jax.tree.map(lambda l: jnp.ones(l.shape), C.parse("ef(top_k(p=0.1))").init(make_params()))
  aged = codec.age(e, jnp.int32(3))
  jax.tree.map(lambda a: np.testing.assert_allclose(a, 0.125), aged)
  assert C.parse("ef(top_k(p=0.1))").age is None  # decay=1 keeps it: no ageing at all
  state = C.parse("powersgd(rank=1,decay=0.5)").init(make_params())
  aged = C.parse("powersgd(rank=1,decay=0.5)").age(
      jax.tree.map(lambda a: a + 1.0, state), jnp.int32(1))
  kernel = aged["dense"]["kernel"]
  np.testing.assert_allclose(kernel["e"], 0.5)
  np.testing.assert_allclose(kernel["q"], state["dense"]["kernel"]["q"] + 1.0)  # Q is kept


def test_powersgd_warm_starts_from_the_clients_previous_q():
  codec = C.powersgd(rank=2)
  x = {"w": jax.random.normal(jax.random.key(0), (12, 7))}
  s0 = codec.init(x)
  p1, s1 = codec.encode(None, x, s0)
  m = np.asarray(x["w"], np.float64)
  # One power iteration from the initial Q: P = orth(M Q0), Q1 = M^T P.
  p = np.linalg.qr(m @ np.asarray(s0["w"]["q"]))[0]
  np.testing.assert_allclose(np.abs(np.asarray(p1["w"].p)), np.abs(p), atol=1e-5)
  np.testing.assert_allclose(s1["w"]["q"], p1["w"].q, atol=0)
  # Residual: M = P Q^T + e.
  np.testing.assert_allclose(np.asarray(codec.decode(None, p1)["w"]) + s1["w"]["e"], m, atol=1e-5)
  # The next round starts from Q1, not from a fresh Q.
  x2 = {"w": jax.random.normal(jax.random.key(1), (12, 7))}
  p2, _ = codec.encode(None, x2, s1)
  m2 = np.asarray(x2["w"]) + np.asarray(s1["w"]["e"])
  want = np.linalg.qr(m2 @ np.asarray(s1["w"]["q"]))[0]
  np.testing.assert_allclose(np.abs(np.asarray(p2["w"].p)), np.abs(want), atol=1e-4)
  # Repeated rounds on the same matrix converge to its best rank-2 approximation.
  s = s0
  for _ in range(30):
    pay, s = codec.encode(None, x, jax.tree.map(lambda a: a, {"w": {**s["w"], "e": s0["w"]["e"]}}))
  u, sv, vt = np.linalg.svd(m)
  best = (u[:, :2] * sv[:2]) @ vt[:2]
  np.testing.assert_allclose(np.asarray(codec.decode(None, pay)["w"]), best, atol=1e-3)


def test_majority_vote_by_hand():
  vote = C.majority_vote()
  signs = np.array([[1, 1, -1, 1], [1, -1, -1, -1], [-1, 1, -1, 1]], np.float32)
  update, _ = vote.finalize((), jnp.asarray(signs.sum(0)), jnp.float32(3), 10)
  np.testing.assert_array_equal(update, [1, 1, -1, 1])
  update, _ = vote.finalize((), jnp.asarray(signs[:2].sum(0)), jnp.float32(2), 10)
  np.testing.assert_array_equal(update, [1, 0, -1, 0])  # ties are 0
  assert float(vote.weight(jnp.float32(57))) == 1.0  # one vote per client, whatever its size


def test_sign_of_an_exact_zero_is_a_fair_coin():
  codec = C.sign()
  x = {"w": jnp.zeros((4096,))}
  y = np.asarray(codec.decode(None, codec.encode(jax.random.key(0), x, ())[0])["w"])
  assert set(np.unique(y)) == {-1.0, 1.0} and abs(y.mean()) < 4 / math.sqrt(4096)
  x = {"w": jnp.array([0.5, -2.0, 1e-30])}
  np.testing.assert_array_equal(codec.decode(None, codec.encode(jax.random.key(0), x, ())[0])["w"],
                                [1.0, -1.0, 1.0])


def test_running_mean_moves_by_the_cohorts_changes_over_n():
  rule = C.population_running_mean()
  g = rule.init({"w": jnp.zeros(3)})
  g_new, state = rule.finalize(g, {"w": jnp.array([4.0, -8.0, 2.0])}, jnp.float32(2), 4)
  np.testing.assert_allclose(g_new["w"], [1.0, -2.0, 0.5])
  assert state is g_new


@pytest.mark.parametrize("bad,match", [
    ("eden(bits=3.5)", r"bits must be 1, 2, 3 or 4, or a fraction in \(0, 1\)"),
    ("eden(bits=0)", r"bits must be 1, 2, 3 or 4"),
    ("eden(bits=8)", r"bits must be 1, 2, 3 or 4"),
    ("eden(bits=0.5,scale=mse)", "fractional bits .* need scale=unbiased"),
    ("eden(scale=median)", "scale must be one of unbiased, mse, one"),
    ("drive(block=100)", "block must be 0 or a power of two"),
    ("qsgd(levels=0)", r"levels must be an integer in 1..127"),
    ("qsgd(levels=128)", r"levels must be an integer in 1..127"),
    ("qsgd(elias=delta)", "elias must be one of gamma, omega"),
    ("top_k(k=-1)", "k must be an integer >= 1"),
    ("top_k(p=0)", r"p must be a number in \(0, 1\]"),
    ("rand_k(p=2)", r"p must be a number in \(0, 1\]"),
    ("powersgd(rank=0)", "rank must be an integer >= 1"),
    ("powersgd(decay=1.5)", r"decay must be a number in \[0, 1\]"),
    ("ef(powersgd)", "already stateful"),
    ("ef(ef(top_k))", "already stateful"),
    ("ef21(ef(top_k))", "already stateful"),
    ("ef(low_rank(rank=1))", "cannot wrap a structured codec"),
    ("ef(sign)", "cannot wrap a codec with its own aggregation rule"),
    ("ef(top_k,decay=2)", r"decay must be a number in \[0, 1\]"),
    ("ef(top_k(q=1))", "no parameter 'q'"),
    ("sign,quantize(bits=2)", "sets the server's aggregation rule .* must be the last stage"),
    ("hadamard,ef(top_k)", "stage 1 keeps per-client state .* must be the first stage"),
    ("subsample(p=0.5),powersgd", "stage 1 keeps per-client state"),
])
def test_bad_specs_name_the_parameter_and_range(bad, match):
  with pytest.raises(ValueError, match=match):
    C.parse(bad)


def test_k_beyond_the_update_names_the_range():
  with pytest.raises(ValueError, match=r"top_k: k must be in 1..d = 1..263 for this update, got 264"):
    C.uplink_bits(C.top_k(k=264), make_params())
  with pytest.raises(ValueError, match=r"rand_k: k must be in 1..d = 1..263"):
    C.uplink_bits(C.rand_k(k=1000), make_params())
