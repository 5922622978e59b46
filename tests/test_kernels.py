"""Kernel checks: FWHT against a dense float64 Hadamard, exact packing, quantizer properties."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_comp import kernels as K
from fedjax_comp import native

# Both FWHT paths: XLA's butterflies and the native FFI kernel (built on first use).
IMPLS = ["xla", pytest.param("native", marks=pytest.mark.skipif(
    not native.available(), reason="the native FWHT did not build (no C++ compiler?)"))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("d", [1, 2, 4, 8, 16, 32, 64, 512, 4096])
def test_fwht_matches_dense_hadamard_in_float64(d, impl):
  x = np.random.default_rng(d).standard_normal((3, d))
  ref = x @ K.hadamard_matrix(d).T / math.sqrt(d)
  with jax.enable_x64(True):
    y64 = np.asarray(K.fwht(jnp.asarray(x, jnp.float64)))
    assert y64.dtype == np.float64
  np.testing.assert_allclose(y64, ref, rtol=0, atol=1e-12)
  y32 = np.asarray(K.fwht(jnp.asarray(x, jnp.float32), impl=impl))
  # float32 error grows ~ log2(d) ulps of the norm: a loose but real bound.
  np.testing.assert_allclose(y32, ref, rtol=0, atol=1e-6 * (1 + math.log2(d)) * 4)


def test_fwht_is_an_involution_and_orthonormal():
  x = jax.random.normal(jax.random.key(0), (5, 1024))
  y = K.fwht(x)
  np.testing.assert_allclose(K.fwht(y), x, atol=2e-6)
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_fwht_blocked_path_equals_unblocked(impl):
  # More rows than one lax.map block (2^20 / 512 = 2048 rows), and a ragged count.
  x = jax.random.normal(jax.random.key(1), (2 * 2048 + 3, 512))
  ref = np.asarray(x) @ K.hadamard_matrix(512) / math.sqrt(512)
  np.testing.assert_allclose(K.fwht(x, impl=impl), ref, atol=1e-5)


def _numpy_fwht(x):
  """Textbook butterflies in float64: the reference for lengths too big for a dense H."""
  v, h, d = np.array(x, np.float64), 1, x.shape[-1]
  while h < d:
    v = v.reshape(v.shape[0], -1, 2, h)
    v = np.stack([v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]], axis=2)
    h *= 2
  return v.reshape(x.shape) / math.sqrt(d)


@pytest.mark.parametrize("impl", IMPLS)
def test_fwht_split_path_for_long_rows(impl):
  # Rows above 2^16 (XLA: split as H_(d/b) (x) H_b; native: two-phase) and pre/post.
  x = np.random.default_rng(0).standard_normal((2, 2**17)).astype(np.float32)
  signs = np.sign(np.random.default_rng(1).standard_normal(2**17)).astype(np.float32)
  scale = np.random.default_rng(2).standard_normal(2**17).astype(np.float32)
  np.testing.assert_allclose(K.fwht(jnp.asarray(x), impl=impl), _numpy_fwht(x), atol=2e-6)
  np.testing.assert_allclose(
      K.fwht(jnp.asarray(x), pre=jnp.asarray(signs), post=jnp.asarray(scale), impl=impl),
      _numpy_fwht(x * signs) * scale, atol=1e-5)


@pytest.mark.parametrize("d", [4, 2048, 2**13])
def test_native_fwht_under_vmap_with_per_client_signs_equals_a_loop(d):
  # vmap hands the kernel batched x and batched pre/post (one sign vector per
  # client, as rotate draws them); each client must get exactly its own.
  if not native.available():
    pytest.skip("the native FWHT did not build")
  x = jax.random.normal(jax.random.key(2), (5, 3, d))
  signs = K.rademacher(jax.random.key(3), (5, d))
  f = lambda v, s: K.fwht(v, pre=s, post=-s, impl="native")
  looped = np.stack([np.asarray(f(x[i], signs[i])) for i in range(5)])
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(f))(x, signs)), looped)
  # Shared signs with a batched x take the same single row for every client.
  shared = np.stack([np.asarray(f(x[i], signs[0])) for i in range(5)])
  np.testing.assert_array_equal(np.asarray(jax.vmap(lambda v: f(v, signs[0]))(x)), shared)
  np.testing.assert_allclose(looped[:, 0], np.asarray(K.fwht(x[:, 0] * signs, impl="xla")) * -signs,
                             atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("d", [8, 32, 2048, 2**17])
def test_fwht_sign_words_are_exactly_the_float_signs(d, impl):
  # pre_signs/post_signs (packed bits, read by the native kernel) must give
  # exactly what the same signs as floats give: flipping a sign is exact.
  keys = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(keys[0], (3, d))
  words = jax.vmap(lambda k: K.rademacher_words(k, d))(keys)  # one sign vector per row
  signs = K.signs_from_words(words, d)
  np.testing.assert_array_equal(signs, np.stack([K.rademacher(k, (d,)) for k in keys]))
  f = jax.vmap(lambda v, w: K.fwht(v, pre_signs=w, post_signs=w, impl=impl))
  g = jax.vmap(lambda v, s: K.fwht(v, pre=s, post=s, impl=impl))
  np.testing.assert_array_equal(np.asarray(f(x, words)), np.asarray(g(x, signs)))
  with pytest.raises(ValueError, match="not both"):
    K.fwht(x, pre=signs[0], pre_signs=words[0])


def test_native_fwht_gradients_equal_autodiff_of_the_xla_butterflies():
  # The native path is an FFI call with a hand-written VJP (H is symmetric:
  # the cotangent of x is the same call with pre and post swapped).
  if not native.available():
    pytest.skip("the native FWHT did not build")
  keys = jax.random.split(jax.random.key(5), 5)
  x, c = jax.random.normal(keys[0], (3, 4096)), jax.random.normal(keys[1], (3, 4096))
  p, q = jax.random.normal(keys[2], (4096,)), jax.random.normal(keys[3], (4096,))
  words = K.rademacher_words(keys[4], 4096)

  def grads(impl):
    f = lambda x, p, q: jnp.sum(K.fwht(x, pre=p, post=q, impl=impl) * c)
    g = lambda x: jnp.sum(K.fwht(x, pre_signs=words, post_signs=words, impl=impl) ** 2)
    return (*jax.grad(f, argnums=(0, 1, 2))(x, p, q), jax.grad(g)(x))

  for got, want in zip(grads("native"), grads("xla")):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)


def test_fwht_names_a_misshapen_multiplier():
  with pytest.raises(ValueError, match=r"pre must have shape \(8,\)"):
    K.fwht(jnp.ones((2, 8)), pre=jnp.ones((2, 8)))
  with pytest.raises(ValueError, match="post_signs must be uint32 words of shape"):
    K.fwht(jnp.ones((2, 64)), post_signs=jnp.ones((2,), jnp.int32))


def test_native_fwht_switch_and_a_failed_build_fall_back(monkeypatch, tmp_path):
  monkeypatch.setenv("FEDJAX_COMP_CACHE", str(tmp_path))  # the failed build's folder lands here
  build = native.available.__wrapped__  # uncached: the real check, run again
  monkeypatch.setenv("FEDJAX_COMP_NATIVE", "0")
  assert build() is False
  monkeypatch.setenv("FEDJAX_COMP_NATIVE", "1")
  monkeypatch.setattr(native, "_compiler", lambda: "/bin/false")
  assert build() is False
  with pytest.raises(ValueError, match="impl must be"):
    K.fwht(jnp.ones((2, 8)), impl="fast")
  with jax.enable_x64(True), pytest.raises(RuntimeError, match="float32"):
    K.fwht(jnp.ones((2, 8), jnp.float64), impl="native")


def test_fwht_rejects_bad_length_and_dtype():
  with pytest.raises(ValueError, match="power-of-two"):
    K.fwht(jnp.ones((3, 12)))
  with pytest.raises(ValueError, match="floating-point"):
    K.fwht(jnp.ones((3, 16), jnp.int32))


@pytest.mark.parametrize("block", [None, 64])
def test_rotate_pads_and_unrotate_crops(block):
  key = jax.random.key(2)
  x = jax.random.normal(key, (4, 1000))
  y = K.rotate(key, x, block)
  assert y.shape == (4, 1024)
  np.testing.assert_allclose(K.unrotate(key, y, 1000, block), x, atol=3e-6)
  # A different key gives a different rotation (signs from the key).
  assert not np.allclose(K.rotate(jax.random.key(3), x, block), y)


def test_rademacher_signs_are_balanced():
  s = np.asarray(K.rademacher(jax.random.key(0), (100_000,)))
  assert set(np.unique(s)) == {-1.0, 1.0}
  assert abs(s.mean()) < 5 / math.sqrt(len(s))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 1000])
def test_pack_unpack_is_exact(bits, n):
  codes = jax.random.randint(jax.random.key(bits * 1000 + n), (3, n), 0, 2**bits).astype(jnp.uint32)
  words = K.pack(codes, bits)
  assert words.dtype == jnp.uint32
  assert words.shape == (3, bits, -(-n // 32))  # exactly b words per 32 codes
  np.testing.assert_array_equal(K.unpack(words, bits, n), codes)


def test_pack_uses_every_bit():
  # All-ones codes fill every word completely: no packing waste.
  for bits in range(1, 9):
    words = K.pack(jnp.full((64,), 2**bits - 1, jnp.uint32), bits)
    assert np.all(np.asarray(words) == 0xFFFFFFFF), bits


def test_quantize_constant_vector_decodes_exactly():
  x = jnp.full((2, 7), 3.25)
  for bits in (1, 3, 8):
    codes, lo, hi = K.quantize(jax.random.key(0), x, bits)
    np.testing.assert_array_equal(K.dequantize(codes, lo, hi, bits), x)


def test_stochastic_codes_are_floor_or_ceil_and_deterministic_is_nearest():
  x = jax.random.normal(jax.random.key(0), (4, 257))
  bits = 3
  codes, lo, hi = K.quantize(jax.random.key(1), x, bits)
  step = (hi - lo)[:, None] / 7
  t = (x - lo[:, None]) / step
  assert np.all((codes >= np.floor(t) - 1e-4) & (codes <= np.ceil(t) + 1e-4))
  det, lo, hi = K.quantize(None, x, bits, stochastic=False)
  err = np.abs(K.dequantize(det, lo, hi, bits) - x)
  assert np.all(err <= step / 2 + 1e-5)


def test_quantize_is_unbiased_and_variance_bounded():
  """Mean over T independent dithers is within 5 sigma/sqrt(T) plus the 2^-25-step dither bias."""
  x = jax.random.normal(jax.random.key(0), (64,)) ** 3  # a few large entries
  bits, trials = 2, 4000
  keys = jax.random.split(jax.random.key(1), trials)
  xh = jax.vmap(lambda k: K.dequantize(*K.quantize(k, x, bits), bits))(keys)
  step = float((x.max() - x.min()) / 3)
  xh = np.asarray(xh, np.float64)
  mean, sd = xh.mean(0), xh.std(0)
  assert np.all(sd <= step / 2 + 1e-6)  # Bernoulli between adjacent levels
  # 5 sigma of the mean, the dither's 2^-25-step bias, float32 rounding of x_hat.
  tol = 5 * sd / math.sqrt(trials) + step * 2**-24 + 1e-6 * np.abs(np.asarray(x)) + 1e-7
  assert np.all(np.abs(mean - np.asarray(x)) <= tol)


def test_deterministic_quantize_fails_the_unbiasedness_check():
  # The check above can fail: round-to-nearest is biased at a mid-step value.
  x = jnp.array([0.0, 0.3, 1.0])
  xh = K.dequantize(*K.quantize(None, x, 1, stochastic=False), 1)
  assert abs(float(xh[1]) - 0.3) > 0.25


def test_quantize_huge_nan_inf_policy():
  codes, lo, hi = K.quantize(jax.random.key(0), jnp.array([3e38, -3e38, 0.0]), 1)
  out = K.dequantize(codes, lo, hi, 1)
  assert np.all(np.isfinite(out)) and out[0] == 3e38 and out[1] == -3e38
  for bad in (jnp.nan, jnp.inf):
    for n in (3, 20_000):  # long vectors: XLA's vectorized min/max can drop a NaN
      x = jnp.zeros(n).at[n // 2].set(bad)
      out = K.dequantize(*K.quantize(jax.random.key(0), x, 4), 4)
      assert np.all(np.isnan(out))  # never finite garbage


@pytest.mark.parametrize("bits", [0, 9, 2.5, -1])
def test_bad_bits(bits):
  with pytest.raises(ValueError, match="bits must be an integer in 1..8"):
    K.quantize(jax.random.key(0), jnp.ones(4), bits)


def test_quantize_rejects_integer_input():
  with pytest.raises(ValueError, match="floating-point"):
    K.quantize(jax.random.key(0), jnp.ones(4, jnp.int32), 2)


@pytest.mark.parametrize("n,k", [(10, 3), (16, 4), (7, 7), (1000, 63), (5, 1)])
def test_stratified_indices_one_per_stratum_and_unbiased_weights(n, k):
  idx, sizes = K.stratified_indices(jax.random.key(n * k), n, k)
  idx, sizes = np.asarray(idx), np.asarray(sizes)
  assert len(np.unique(idx)) == k and idx.min() >= 0 and idx.max() < n
  assert sizes.sum() == n  # the strata partition [0, n)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
  assert np.all((idx >= starts) & (idx < starts + sizes))


def test_stratified_inclusion_probability():
  n, k, trials = 10, 3, 6000
  keys = jax.random.split(jax.random.key(0), trials)
  idx, sizes = jax.vmap(lambda key: K.stratified_indices(key, n, k))(keys)
  counts = np.bincount(np.asarray(idx).ravel(), minlength=n) / trials
  expect = np.repeat(1 / np.asarray(sizes[0]), np.asarray(sizes[0]).astype(int))
  assert np.all(np.abs(counts - expect) < 5 * np.sqrt(expect * (1 - expect) / trials))


def test_suresh_vnmse_bounds():
  """vNMSE of stochastic quantization under the Suresh et al. bounds, with and without rotation."""
  d, trials = 1024, 50
  x = jax.random.normal(jax.random.key(0), (d,))
  x = x.at[:4].mul(30.0)  # a few large entries: where rotation helps
  keys = jax.random.split(jax.random.key(1), trials)
  for bits in (1, 2, 4):
    k = 2**bits

    def plain(key):
      return K.dequantize(*K.quantize(key, x, bits), bits)

    def rotated(key):
      kr, kq = jax.random.split(key)
      y = K.rotate(kr, x)
      return K.unrotate(kr, K.dequantize(*K.quantize(kq, y, bits), bits), d)

    norm2 = float(jnp.sum(x**2))
    v_plain = float(jnp.mean(jnp.sum((jax.vmap(plain)(keys) - x) ** 2, -1))) / norm2
    v_rot = float(jnp.mean(jnp.sum((jax.vmap(rotated)(keys) - x) ** 2, -1))) / norm2
    assert v_plain <= d / (2 * (k - 1) ** 2), (bits, v_plain)
    assert v_rot <= (2 * math.log(d) + 2) / (k - 1) ** 2, (bits, v_rot)
    assert v_rot < v_plain  # rotation spreads the large entries


# ----------------------------------------------------------- the benchmark's kernel subjects


def test_benchmark_subjects_are_the_kernels_and_round_trip():
  from benchmarks import _throughput_setup as subjects  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (3, 256))
  np.testing.assert_array_equal(subjects.copy(x), -x)
  assert subjects.fwht is K.fwht
  words, lo, hi = jax.jit(subjects.quantize_pack(2))(jax.random.key(1), x)
  codes, lo2, hi2 = K.quantize(jax.random.key(1), x, 2)
  np.testing.assert_array_equal(words, K.pack(codes, 2))
  x_hat = jax.jit(subjects.unpack_dequantize(2, 256))(words, lo, hi)
  np.testing.assert_allclose(x_hat, K.dequantize(codes, lo2, hi2, 2), rtol=1e-6)  # fusion: ulps
  assert np.all(np.abs(x_hat - x) <= ((hi - lo) / 3)[:, None] + 1e-6)  # within one step


def test_measure_kernels_ratios_are_to_the_copy_of_the_same_run():
  from benchmarks import _throughput_setup as subjects  # pylint: disable=g-import-not-at-top
  logged = []
  m = subjects.measure_kernels([(2, 64), (1, 128)], [1], repeats=1, say=lambda *_: None,
                               log=logged.append)
  assert {"copy@2x64", "fwht@2x64", "rotate@2x64", "dense_hadamard@2x64", "quantize_pack/1@2x64",
          "unpack_dequantize/1@2x64", "codec_roundtrip/1@1x128"} <= set(m)
  assert "codec_roundtrip/1@2x64" not in m  # one vector only
  for shape in ("2x64", "1x128"):
    copy_s = m[f"copy@{shape}"]["sec"]
    for name, e in m.items():
      if name.endswith(f"@{shape}"):
        assert e["ratio_to_copy"] == pytest.approx(e["sec"] / copy_s)
    best = min(m[f"memcpy@{shape}"]["sec"], m[f"copy_donated@{shape}"]["sec"])
    for name, e in m.items():
      if name.endswith(f"@{shape}"):
        assert e["ratio_to_best_copy"] == pytest.approx(e["sec"] / best)
    assert f"fwht_donated@{shape}" in m
  assert m["codec_roundtrip/1@1x128"]["bits_per_coordinate"] == (128 + 64) / 128
  assert len(logged) == len(m)


@pytest.mark.parametrize("call,message", [
    (lambda r: r.parse_shape("1024"), "--shapes entries are BATCHxDIM"),
    (lambda r: r.parse_shape("4x1000"), "dim a power of two, got '4x1000'"),
    (lambda r: r.parse_shape("0x1024"), "batch must be >= 1"),
    (lambda r: r.parse_bits("9"), "--bits entries must be integers in 1..8, got '9'"),
    (lambda r: r.parse_bits("two"), "--bits entries must be integers in 1..8, got 'two'"),
    (lambda r: r.parse_count("repeats", "0", 1), "--repeats must be an integer >= 1, got '0'"),
    (lambda r: r.parse_count("seed", "-1", 0, 2**32 - 1), r"--seed must be an integer in \[0, "),
    (lambda r: r.check_memory([(2**20, 2**20)], 2**30), r"--shapes: 1048576x1048576 needs about "
                                                        r"16384\.00 GiB"),
])
def test_kernels_runner_bad_flags_name_the_flag(call, message):
  from benchmarks import kernels as runner  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=message):
    call(runner)
  assert runner.parse_shape(" 4X1024 ") == (4, 1024) and runner.parse_bits("8") == 8


@pytest.mark.skipif(not native.available(), reason="the native kernels did not build")
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_fused_quantizer_is_the_xla_quantizer_bit_for_bit(bits):
  # kernels.quantize_pack / unpack_dequantize (native at n >= NATIVE_MIN_LENGTH)
  # against quantize + pack / unpack + dequantize, under vmap, with a short
  # row (33: a partial word group) and a row holding a NaN (decodes to NaN).
  rng = np.random.default_rng(bits)
  for n in (33, K.NATIVE_MIN_LENGTH + 1):
    x = (rng.standard_normal((3, n)) * 3 + 1).astype(np.float32)
    x[2, n // 2] = np.nan
    keys = jax.random.split(jax.random.key(bits), 3)
    words, lo, hi = jax.jit(jax.vmap(lambda k, v: K.quantize_pack(k, v, bits)))(keys, x)
    codes, lo_ref, hi_ref = jax.vmap(lambda k, v: K.quantize(k, v, bits))(keys, x)
    np.testing.assert_array_equal(lo, lo_ref)
    np.testing.assert_array_equal(hi, hi_ref)
    np.testing.assert_array_equal(words[:2], jax.vmap(lambda c: K.pack(c, bits))(codes[:2]))
    if n >= K.NATIVE_MIN_LENGTH:
      assert not np.any(np.asarray(words[2]))  # a NaN row sends zero words
    y = np.asarray(jax.jit(jax.vmap(lambda w, a, b: K.unpack_dequantize(w, a, b, bits, n)))(
        words, lo, hi))
    # numpy's float32 (1 - w) lo + w hi, rounded op by op: the native kernel
    # matches it exactly; XLA's fused path may contract into FMAs (1 ulp).
    w = np.asarray(jax.vmap(lambda v: K.unpack(v, bits, n))(words)).astype(np.float32) * (
        np.float32(1.0 / (2**bits - 1)))
    lo_, hi_ = np.asarray(lo)[:2, None], np.asarray(hi)[:2, None]
    ref = (np.float32(1) - w[:2]) * lo_ + w[:2] * hi_
    if n >= K.NATIVE_MIN_LENGTH:
      np.testing.assert_array_equal(y[:2], ref)
    np.testing.assert_allclose(y[:2], ref, rtol=3e-7, atol=1e-6)
    assert np.all(np.isnan(y[2]))


def test_xla_quantizer_divides_by_multiplying_by_the_reciprocal():
  # The native quantizer computes t = (x/2 - lo/2) * scale * (1 / denom) * levels,
  # which is how XLA:CPU lowers kernels.quantize's division today (exact
  # division differs on about a quarter of the values). Were that to change,
  # the two paths' codes would part: this pins it.
  x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 7
  lo, denom = np.float32(x.min()), np.float32(0.5 * x.max() - 0.5 * x.min())
  t = jax.jit(lambda v, l, d: (0.5 * v - 0.5 * l) * np.float32(1.0) / d * np.float32(15.0))(
      x, lo, denom)  # lo and denom traced, as kernels.quantize computes them
  ref = (np.float32(0.5) * x - np.float32(0.5) * lo) * np.float32(1.0) * (
      np.float32(1.0) / denom) * np.float32(15.0)
  if jax.default_backend() == "cpu":
    np.testing.assert_array_equal(t, ref)


needs_native = pytest.mark.skipif(not native.available(),
                                  reason="the native kernels did not build (no C++ compiler?)")


@needs_native
def test_native_random_bits_are_jax_threefry_bits_bit_for_bit():
  # threefry.cc against jax.random.bits: vector body, scalar tail, a chunk
  # boundary (2^14 words), keys from split and fold_in, and under vmap.
  keys = [jax.random.key(0), jax.random.key(2**32 - 1), jax.random.fold_in(jax.random.key(7), 3)]
  for key in keys:
    assert K.native_random_bits(key)
    for n in (1, 7, 15, 16, 17, 1000, 2**14 + 9):
      got = jax.jit(lambda k, n=n: K.random_bits(k, n))(key)
      np.testing.assert_array_equal(got, jax.random.bits(key, (n,), jnp.uint32))
  batch = jax.random.split(jax.random.key(5), 6)
  got = jax.jit(jax.vmap(lambda k: K.random_bits(k, 333)))(batch)
  np.testing.assert_array_equal(got, jax.vmap(lambda k: jax.random.bits(k, (333,), jnp.uint32))(batch))
  # Signs unpacked from the native words are the XLA path's signs.
  np.testing.assert_array_equal(K.rademacher(keys[0], (3, 77)), K.signs_from_words(
      jax.random.bits(keys[0], (-(-231 // 32),), jnp.uint32), 231).reshape(3, 77))


def test_random_bits_keeps_jax_for_keys_and_counters_the_kernel_does_not_reproduce():
  rbg = jax.random.key(3, impl="rbg")
  assert not K.native_random_bits(rbg)
  np.testing.assert_array_equal(K.random_bits(rbg, 50), jax.random.bits(rbg, (50,), jnp.uint32))
  with jax.threefry_partitionable(False):  # other counters: JAX's own draw
    key = jax.random.key(3)
    assert not K.native_random_bits(key)
    np.testing.assert_array_equal(K.random_bits(key, 50), jax.random.bits(key, (50,), jnp.uint32))


@needs_native
def test_native_stratified_indices_equal_the_xla_arithmetic(monkeypatch):
  # Divisible and ragged strata, k = 1, strata longer than 2^24 (u * size
  # rounds in float32) and the largest n, on one key and under vmap.
  cases = [(10, 3), (2**20, 2**15), (1000003, 4099), (15210, 476), (2**31 - 1, 1), (2**31 - 1, 3),
           (5 * 2**24 + 3, 17)]
  keys = jax.random.split(jax.random.key(11), 4)
  native_out = {c: jax.jit(jax.vmap(lambda k, c=c: K.stratified_indices(k, *c)))(keys)
                for c in cases}
  monkeypatch.setattr(K, "native_random_bits", lambda key: False)
  for c in cases:
    want = jax.jit(jax.vmap(lambda k, c=c: K.stratified_indices(k, *c)))(keys)
    for got, ref in zip(native_out[c], want):
      np.testing.assert_array_equal(got, ref, err_msg=str(c))


@needs_native
def test_native_all_finite_finds_every_nan_and_inf():
  n = 2**17 + 13  # two work items and a scalar tail
  base = np.random.default_rng(0).standard_normal(n).astype(np.float32)
  base[:4] = [np.finfo(np.float32).max, -np.finfo(np.float32).max, 1e-45, -0.0]
  assert bool(K.all_finite(jnp.asarray(base)))
  for bad in (np.nan, np.inf, -np.inf, np.float32(np.nan) * -1):
    for pos in (0, 31, 2**16 - 1, 2**16, n - 9, n - 1):
      x = base.copy()
      x[pos] = bad
      assert not bool(jax.jit(K.all_finite)(jnp.asarray(x))), (bad, pos)
  rows = np.tile(base[:40000], (3, 1))
  rows[1, 39999] = np.inf
  np.testing.assert_array_equal(jax.vmap(native.all_finite)(jnp.asarray(rows)), [True, False, True])
  np.testing.assert_array_equal(native.all_finite(jnp.zeros((2, 0))), [True, True])


@needs_native
def test_native_scatter_ascending_is_xla_scatter():
  # scatter.cc against zeros(n).at[idx].set(v): ranges with no index, an
  # index on a work-item boundary (2^16), indices from n on dropped, vmap.
  n = 2**17 + 5
  idx = jnp.array([[0, 1, 2**16 - 1, 2**16, n - 1, n, n + 7],
                   [3, 70000, 70001, 100000, n + 1, n + 2, n + 3]], jnp.int32)
  vals = jnp.arange(1, 15, dtype=jnp.float32).reshape(2, 7) * jnp.array([1, -1] * 3 + [1.0])
  vals = vals.at[0, 2].set(-0.0).at[1, 1].set(jnp.nan)
  got = jax.jit(jax.vmap(lambda i, v: K.scatter_ascending(i, v, n)))(idx, vals)
  want = jax.vmap(lambda i, v: jnp.zeros((n,), jnp.float32).at[i].set(v))(idx, vals)
  np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
  # A row that does not ascend is refused, also where the disorder crosses
  # a work item (2^16 outputs) or hides behind an index past the item.
  for bad in ([5, 5], [70000, 5], [3, 100000, 5, 6], list(range(0, 2**17, 2)) + [1]):
    with pytest.raises(Exception, match="strictly ascending"):
      jax.block_until_ready(native.scatter_ascending(jnp.array(bad, jnp.int32),
                                                     jnp.ones(len(bad), jnp.float32), n))


@needs_native
def test_native_scatter_and_finiteness_keep_gradients():
  # random_mask trains through its expand (a scatter): the native scatter's
  # custom JVP gives XLA's gradient, and the finiteness test none at all.
  n = K.NATIVE_SCATTER_MIN + 5
  idx = jnp.arange(3, n, 7, dtype=jnp.int32)
  w = jax.random.normal(jax.random.key(0), (n,))
  loss = lambda v: jnp.sum(jnp.sin(K.scatter_ascending(idx, v, n)) * w)
  v = jax.random.normal(jax.random.key(1), idx.shape)
  want = jnp.cos(v) * w[idx]
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(v), want, rtol=1e-6)
  np.testing.assert_allclose(jax.jvp(loss, (v,), (jnp.ones_like(v),))[1], jnp.sum(want), rtol=1e-4)
  poisoned = lambda x: jnp.sum(jnp.where(K.all_finite(x), x, 0.0) ** 2)
  np.testing.assert_allclose(jax.grad(poisoned)(w), 2 * w, rtol=1e-6)
