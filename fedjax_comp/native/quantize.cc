// Konečný's stochastic quantizer fused with bit packing, and its inverse, as
// XLA FFI kernels for the CPU (`kernels.quantize_pack`,
// `kernels.unpack_dequantize`); TernGrad's and QSGD's the same way (below).
//
// Encode, per row of x [rows, n] with b-bit codes (1 <= b <= 8), the same
// arithmetic as `kernels.quantize` then `kernels.pack`:
//   pass 1: min, max and whether every x is finite;
//   pass 2, per run of 8 words: each code from x, its dither (murmur3's
//     finalizer of index * 0x9E3779B9 + the row's seed, 24 bits, centred)
//     and the row's step, ORed into its field's words in registers.
// XLA:CPU materializes the codes, then packs them: three passes more.
// Decode: each code's field bits gathered from the words, then
// ``(1 - w) lo + w hi`` with ``w = code * (1 / (2^b - 1))``.
// A row holding a NaN or an infinity gets lo = hi = NaN and zero words (its
// decode is all NaN, as on the XLA path). The codes, lo and hi equal the XLA
// path's bit for bit but for the sign of a zero min or max (which of +-0 a
// reduction returns depends on its order); the decode equals numpy's
// op-by-op float32, which XLA's jitted decode can miss by an ulp where it
// contracts into FMAs.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "pack.h"
#include "parallel_for.h"
#include "scan.h"
#include "vec.h"

namespace ffi = xla::ffi;
using namespace fedjax_comp;  // NOLINT: the vector helpers of vec.h

namespace {

constexpr int64_t kChunk = 1 << 15;  // coordinates per pass-1 item
constexpr int64_t kWords = 1 << 10;  // word columns per pass-2 item

// Pass 1 over x[0:len]: min, max, all finite.
void MinMax(const float* x, int64_t len, float* lo, float* hi, bool* finite) {
  const float inf = std::numeric_limits<float>::infinity();
  V8 mn = Splat(inf), mx = Splat(-inf);
  I8 bad = I8{};
  const V8 fmax = Splat(std::numeric_limits<float>::max());
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    V8 v;
    std::memcpy(&v, x + j, sizeof(v));
    const V8 a = reinterpret_cast<V8>(reinterpret_cast<I8>(v) & (I8{} + 0x7fffffff));
    bad |= ~(a <= fmax);
    mn = Select(v < mn, v, mn);
    mx = Select(v > mx, v, mx);
  }
  float l = inf, h = -inf;
  bool ok = true;
  for (int k = 0; k < 8; ++k) {
    l = std::min(l, mn[k]);
    h = std::max(h, mx[k]);
    ok &= !bad[k];
  }
  for (; j < len; ++j) {
    ok &= std::fabs(x[j]) <= std::numeric_limits<float>::max();
    l = std::min(l, x[j]);
    h = std::max(h, x[j]);
  }
  *lo = l;
  *hi = h;
  *finite = ok;
}

// The row's mapping x -> t = (0.5 x - 0.5 lo) * scale * inv * levels, as
// `kernels.quantize` computes it.
struct Step {
  float half_lo, scale, inv, levels;
};

Step RowStep(float lo, float hi, int bits) {
  const float half_range = 0.5f * hi - 0.5f * lo;
  const float scale = half_range > 0x1p100f ? 0x1p-100f : 1.0f;
  const float denom = half_range > 0 ? half_range * scale : 1.0f;
  return Step{0.5f * lo, scale, 1.0f / denom, static_cast<float>((1 << bits) - 1)};
}

// `kernels.dither` of coordinates i0 .. i0 + 7 (one), for the row's seed.
inline W8 Fmix(W8 h);
inline V8 Dither8(int64_t i0, uint32_t seed) {
  const W8 idx = SplatW(static_cast<uint32_t>(i0)) + W8{0, 1, 2, 3, 4, 5, 6, 7};
  const W8 h = Fmix(idx * SplatW(0x9E3779B9u) + SplatW(seed));
  return __builtin_convertvector(reinterpret_cast<I8>(h >> 8), V8) * Splat(0x1p-24f) +
         Splat(0x1p-25f);
}
inline float Dither1(int64_t i, uint32_t seed) {
  uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B9u + seed;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return static_cast<float>(static_cast<int32_t>(h >> 8)) * 0x1p-24f + 0x1p-25f;
}

inline W8 Fmix(W8 h) {
  h ^= h >> 16;
  h *= SplatW(0x85EBCA6Bu);
  h ^= h >> 13;
  h *= SplatW(0xC2B2AE35u);
  return h ^ (h >> 16);
}

// 8 codes from x[i0 .. i0 + 8) (indices i0 + lane), all valid.
inline W8 Codes8(const float* x, int64_t i0, const Step& s, uint32_t seed) {
  V8 v;
  std::memcpy(&v, x + i0, sizeof(v));
  const V8 t = (Splat(0.5f) * v - Splat(s.half_lo)) * Splat(s.scale) * Splat(s.inv) *
               Splat(s.levels);
  const V8 dither = Dither8(i0, seed);
  // t >= 0, and t <= levels but for rounding (with XLA's flush-to-zero a
  // nonzero range is >= 2^-126, so 1 / denom is finite); the clamp keeps the
  // conversion defined even if that ever failed (inf, NaN).
  const V8 tc = Select(t < Splat(s.levels + 1.0f), t, Splat(s.levels + 1.0f));
  const I8 ti = __builtin_convertvector(tc, I8);  // truncation is floor
  const V8 fl = __builtin_convertvector(ti, V8);
  I8 code = ti - ((tc - fl) > dither);  // a true comparison is -1
  const I8 top = I8{} + static_cast<int32_t>(s.levels);
  code = SelectI(code > top, top, code);
  code = SelectI(code < 0, I8{}, code);
  return reinterpret_cast<W8>(code);
}

inline uint32_t Code1(const float* x, int64_t i, const Step& s, uint32_t seed) {
  const float t = (0.5f * x[i] - s.half_lo) * s.scale * s.inv * s.levels;
  const float dither = Dither1(i, seed);
  const float tc = t < s.levels + 1.0f ? t : s.levels + 1.0f;  // as Codes8
  const int32_t ti = static_cast<int32_t>(tc);
  int32_t code = ti + ((tc - static_cast<float>(ti)) > dither ? 1 : 0);
  code = std::min(code, static_cast<int32_t>(s.levels));
  return static_cast<uint32_t>(std::max(code, 0));
}

ffi::Error QuantizePackImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::U32> seeds, ffi::ResultBuffer<ffi::U32> words,
                            ffi::ResultBuffer<ffi::F32> lo_out, ffi::ResultBuffer<ffi::F32> hi_out,
                            int64_t bits) {
  auto dims = x.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("quantize_pack: x needs [..., n]");
  const int64_t n = dims.back(), groups = (n + 31) / 32;
  if (bits < 1 || bits > 8 || n < 1)
    return ffi::Error::InvalidArgument("quantize_pack: bits in 1..8 and n >= 1");
  const int64_t rows = static_cast<int64_t>(x.element_count()) / n;
  if (static_cast<int64_t>(seeds.element_count()) != rows ||
      static_cast<int64_t>(words->element_count()) != rows * bits * groups ||
      static_cast<int64_t>(lo_out->element_count()) != rows ||
      static_cast<int64_t>(hi_out->element_count()) != rows)
    return ffi::Error::InvalidArgument("quantize_pack: seeds or outputs do not match x");
  if (rows == 0) return ffi::Error::Success();
  const float* in = x.typed_data();
  const uint32_t* seed = seeds.typed_data();
  uint32_t* out = words->typed_data();
  float* lo = lo_out->typed_data();
  float* hi = hi_out->typed_data();

  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<float> part_lo(rows * chunks), part_hi(rows * chunks);
  std::vector<char> part_ok(rows * chunks);
  fedjax_comp::ParallelFor(pool, rows * chunks, 2, [&](int64_t it) {
    const int64_t r = it / chunks, c = it % chunks, j0 = c * kChunk;
    bool ok;
    MinMax(in + r * n + j0, std::min(kChunk, n - j0), &part_lo[it], &part_hi[it], &ok);
    part_ok[it] = ok;
  });
  std::vector<Step> steps(rows);
  std::vector<char> row_ok(rows);
  for (int64_t r = 0; r < rows; ++r) {
    float l = std::numeric_limits<float>::infinity(), h = -l;
    bool ok = true;
    for (int64_t c = 0; c < chunks; ++c) {
      l = std::min(l, part_lo[r * chunks + c]);
      h = std::max(h, part_hi[r * chunks + c]);
      ok &= part_ok[r * chunks + c] != 0;
    }
    lo[r] = ok ? l : std::numeric_limits<float>::quiet_NaN();
    hi[r] = ok ? h : std::numeric_limits<float>::quiet_NaN();
    row_ok[r] = ok;
    steps[r] = RowStep(l, h, static_cast<int>(bits));
  }

  const int64_t items_per_row = (groups + kWords - 1) / kWords;
  fedjax_comp::ParallelFor(pool, rows * items_per_row, 1, [&](int64_t it) {
    const int64_t r = it / items_per_row, g0 = (it % items_per_row) * kWords;
    const int64_t g1 = std::min(groups, g0 + kWords);
    const float* xr = in + r * n;
    uint32_t* wr = out + r * bits * groups;
    if (!row_ok[r]) {
      for (int64_t b = 0; b < bits; ++b) std::fill(wr + b * groups + g0, wr + b * groups + g1, 0u);
      return;
    }
    const Step s = steps[r];
    const uint32_t sd = seed[r];
    PackRange(n, groups, bits, g0, g1, wr, [&](int64_t i0) { return Codes8(xr, i0, s, sd); },
              [&](int64_t i) { return Code1(xr, i, s, sd); });
  });
  return ffi::Error::Success();
}

ffi::Error UnpackDequantizeImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> words,
                                ffi::Buffer<ffi::F32> lo_in, ffi::Buffer<ffi::F32> hi_in,
                                ffi::ResultBuffer<ffi::F32> y, int64_t bits) {
  auto dims = y->dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("unpack_dequantize: y needs [..., n]");
  const int64_t n = dims.back(), groups = (n + 31) / 32;
  if (bits < 1 || bits > 8 || n < 1)
    return ffi::Error::InvalidArgument("unpack_dequantize: bits in 1..8 and n >= 1");
  const int64_t rows = static_cast<int64_t>(y->element_count()) / n;
  if (static_cast<int64_t>(words.element_count()) != rows * bits * groups ||
      static_cast<int64_t>(lo_in.element_count()) != rows ||
      static_cast<int64_t>(hi_in.element_count()) != rows)
    return ffi::Error::InvalidArgument("unpack_dequantize: words, lo or hi do not match y");
  if (rows == 0) return ffi::Error::Success();
  const float inv = static_cast<float>(1.0 / ((1 << bits) - 1));
  const uint32_t* in = words.typed_data();
  const float* lo = lo_in.typed_data();
  const float* hi = hi_in.typed_data();
  float* out = y->typed_data();
  const int64_t items_per_row = (n + kChunk - 1) / kChunk;
  fedjax_comp::ParallelFor(pool, rows * items_per_row, 2, [&](int64_t it) {
    const int64_t r = it / items_per_row, i0 = (it % items_per_row) * kChunk;
    const int64_t i1 = std::min(n, i0 + kChunk);
    const uint32_t* wr = in + r * bits * groups;
    float* yr = out + r * n;
    const float l = lo[r], h = hi[r];
    const bool bad = !(std::fabs(l) <= std::numeric_limits<float>::max() &&
                       std::fabs(h) <= std::numeric_limits<float>::max());
    if (bad) {
      std::fill(yr + i0, yr + i1, std::numeric_limits<float>::quiet_NaN());
      return;
    }
    UnpackRange(
        wr, groups, bits, i0, i1,
        [&](int64_t i, W8 code) {
          const V8 w = __builtin_convertvector(reinterpret_cast<I8>(code), V8) * Splat(inv);
          const V8 v = (Splat(1.0f) - w) * Splat(l) + w * Splat(h);
          std::memcpy(yr + i, &v, sizeof(v));
        },
        [&](int64_t i, uint32_t code) {
          const float w = static_cast<float>(code) * inv;
          yr[i] = (1.0f - w) * l + w * h;
        });
  });
  return ffi::Error::Success();
}


// TernGrad (`codecs.terngrad`): per row s = max |x| (NaN if a value is not
// finite); code 0 (-s), 1 (0) or 2 (+s), kept (not 1) with probability
// |x| / s against the same dither; 2-bit codes packed.
ffi::Error TernaryPackImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::U32> seeds, ffi::ResultBuffer<ffi::U32> words,
                           ffi::ResultBuffer<ffi::F32> scale_out) {
  auto dims = x.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("ternary_pack: x needs [..., n]");
  const int64_t n = dims.back(), groups = (n + 31) / 32;
  if (n < 1) return ffi::Error::InvalidArgument("ternary_pack: n >= 1");
  const int64_t rows = static_cast<int64_t>(x.element_count()) / n;
  if (static_cast<int64_t>(seeds.element_count()) != rows ||
      static_cast<int64_t>(words->element_count()) != rows * 2 * groups ||
      static_cast<int64_t>(scale_out->element_count()) != rows)
    return ffi::Error::InvalidArgument("ternary_pack: seeds or outputs do not match x");
  if (rows == 0) return ffi::Error::Success();
  const float* in = x.typed_data();
  const uint32_t* seed = seeds.typed_data();
  uint32_t* out = words->typed_data();
  float* scale = scale_out->typed_data();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<float> part_lo(rows * chunks), part_hi(rows * chunks);
  std::vector<char> part_ok(rows * chunks);
  fedjax_comp::ParallelFor(pool, rows * chunks, 2, [&](int64_t it) {
    const int64_t r = it / chunks, j0 = (it % chunks) * kChunk;
    bool ok;
    MinMax(in + r * n + j0, std::min(kChunk, n - j0), &part_lo[it], &part_hi[it], &ok);
    part_ok[it] = ok;
  });
  std::vector<float> inv(rows);
  std::vector<char> row_ok(rows);
  for (int64_t r = 0; r < rows; ++r) {
    float top = 0.0f;  // max |x| (kernels: initial 0)
    bool ok = true;
    for (int64_t c = 0; c < chunks; ++c) {
      top = std::max(top, std::max(std::fabs(part_lo[r * chunks + c]),
                                   std::fabs(part_hi[r * chunks + c])));
      ok &= part_ok[r * chunks + c] != 0;
    }
    scale[r] = ok ? top : std::numeric_limits<float>::quiet_NaN();
    row_ok[r] = ok;
    inv[r] = 1.0f / (top > 0 ? top : 1.0f);  // XLA:CPU divides by multiplying so
  }
  const int64_t items_per_row = (groups + kWords - 1) / kWords;
  fedjax_comp::ParallelFor(pool, rows * items_per_row, 1, [&](int64_t it) {
    const int64_t r = it / items_per_row, g0 = (it % items_per_row) * kWords;
    const int64_t g1 = std::min(groups, g0 + kWords);
    const float* xr = in + r * n;
    uint32_t* wr = out + r * 2 * groups;
    if (!row_ok[r]) {
      for (int64_t b = 0; b < 2; ++b) std::fill(wr + b * groups + g0, wr + b * groups + g1, 0u);
      return;
    }
    const float iv = inv[r];
    const uint32_t sd = seed[r];
    auto code8 = [&](int64_t i0) {
      const V8 v = Load(xr + i0);
      const V8 a = reinterpret_cast<V8>(reinterpret_cast<I8>(v) & (I8{} + 0x7fffffff));
      const I8 keep = (a * Splat(iv)) > Dither8(i0, sd);
      const I8 sign = SelectI(v < Splat(0.0f), I8{}, I8{} + 2);
      return reinterpret_cast<W8>(SelectI(keep, sign, I8{} + 1));
    };
    auto code1 = [&](int64_t i) {
      const float v = xr[i];
      if (!(std::fabs(v) * iv > Dither1(i, sd))) return 1u;
      return v < 0.0f ? 0u : 2u;
    };
    PackRange(n, groups, 2, g0, g1, wr, code8, code1);
  });
  return ffi::Error::Success();
}

// TernGrad's decode: (code - 1) * s.
ffi::Error TernaryUnpackImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> words,
                             ffi::Buffer<ffi::F32> scale_in, ffi::ResultBuffer<ffi::F32> y) {
  auto dims = y->dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("ternary_unpack: y needs [..., n]");
  const int64_t n = dims.back(), groups = (n + 31) / 32;
  if (n < 1) return ffi::Error::InvalidArgument("ternary_unpack: n >= 1");
  const int64_t rows = static_cast<int64_t>(y->element_count()) / n;
  if (static_cast<int64_t>(words.element_count()) != rows * 2 * groups ||
      static_cast<int64_t>(scale_in.element_count()) != rows)
    return ffi::Error::InvalidArgument("ternary_unpack: words or scale do not match y");
  const uint32_t* in = words.typed_data();
  const float* scale = scale_in.typed_data();
  float* out = y->typed_data();
  const int64_t items_per_row = (n + kChunk - 1) / kChunk;
  fedjax_comp::ParallelFor(pool, rows * items_per_row, 2, [&](int64_t it) {
    const int64_t r = it / items_per_row, i0 = (it % items_per_row) * kChunk;
    const int64_t i1 = std::min(n, i0 + kChunk);
    const uint32_t* wr = in + r * 2 * groups;
    float* yr = out + r * n;
    const float sc = scale[r];
    UnpackRange(
        wr, groups, 2, i0, i1,
        [&](int64_t i, W8 code) {
          const V8 v = (__builtin_convertvector(reinterpret_cast<I8>(code), V8) - Splat(1.0f)) *
                       Splat(sc);
          std::memcpy(yr + i, &v, sizeof(v));
        },
        [&](int64_t i, uint32_t code) { yr[i] = (static_cast<float>(code) - 1.0f) * sc; });
  });
  return ffi::Error::Success();
}
// ---- QSGD (`codecs.norm_levels.qsgd`): s levels of |x| / ||bucket|| with signs ----
//
// Encode, per row of x [rows, n] in buckets of `size` coordinates (the last
// one short), with s = levels and w-bit codes:
//   pass 1, per bucket (or per 2^15 slice of a longer one, combined in
//     slice order): max |x|, whether every x is finite, sum x^2 in double;
//   pass 2, per run of 8 word columns: t = |x| / ||bucket|| * s, the level
//     floor(t) + (frac(t) > dither) (at most s), the code level * sign + s,
//     ORed into its field's words in registers.
// The dither is `kernels.dither` over the [buckets, size] view: the
// bucket's seed and the coordinate's position in its bucket.
// The XLA path computes ||bucket|| as max|x| * sqrt(sum (x / max|x|)^2) in
// float32, in an order XLA picks; here the sum is a double and t is
// (|x| * pre * inv) * r with inv = 1 / (pre * max|x|), r = s * max|x| /
// ||bucket|| (pre = 2^64 for a subnormal max, so inv stays finite). The norms
// agree to float32 rounding and a code differs only where t lands within
// rounding of its dither: not bit for bit, so the codec uses this kernel
// only from `norm_levels.NATIVE_MIN_LENGTH` coordinates (the leaderboard's
// leaves stay on the XLA path). pre is a power of two that keeps 1 / (pre *
// max|x|) a normal float (flush-to-zero would zero it). A bucket holding a
// NaN or an infinity gets norm NaN (it decodes to NaN); one whose norm
// exceeds float32's range, norm inf (it decodes non-finite too).
// Decode: x = (code - s) * (norm / s), one pass.

struct Bucket {
  float pre, inv, r;
};

// Position p of coordinate i in its bucket, and the bucket: i = b * size + p.
struct BucketOf {
  int64_t size;
  int shift;  // log2(size) for a power of two, else -1
  inline int64_t operator()(int64_t i) const { return shift >= 0 ? i >> shift : i / size; }
};

inline BucketOf MakeBucketOf(int64_t size) {
  int shift = -1;
  if ((size & (size - 1)) == 0)
    for (shift = 0; (int64_t{1} << shift) < size; ++shift) {
    }
  return BucketOf{size, shift};
}

// The level code of one coordinate (as QsgdCodes8, lane by lane).
inline uint32_t QsgdCode1(float v, const Bucket& bk, float dither, int32_t levels) {
  const float levels_f = static_cast<float>(levels);
  const float t = ((std::fabs(v) * bk.pre) * bk.inv) * bk.r;
  const float tc = t < levels_f + 1.0f ? t : levels_f + 1.0f;  // NaN -> levels + 1
  const int32_t ti = static_cast<int32_t>(tc);
  const int32_t level = std::min(ti + ((tc - static_cast<float>(ti)) > dither ? 1 : 0), levels);
  return static_cast<uint32_t>(v < 0.0f ? levels - level : levels + level);
}

inline W8 QsgdCodes8(V8 v, const Bucket& bk, V8 dither, int32_t levels) {
  const V8 a = reinterpret_cast<V8>(reinterpret_cast<I8>(v) & (I8{} + 0x7fffffff));
  const V8 t = ((a * Splat(bk.pre)) * Splat(bk.inv)) * Splat(bk.r);
  const V8 cap = Splat(static_cast<float>(levels) + 1.0f);
  const V8 tc = Select(t < cap, t, cap);
  const I8 ti = __builtin_convertvector(tc, I8);  // truncation is floor (t >= 0)
  const V8 fl = __builtin_convertvector(ti, V8);
  I8 level = ti - ((tc - fl) > dither);  // a true comparison is -1
  const I8 top = I8{} + levels;
  level = SelectI(level > top, top, level);
  return reinterpret_cast<W8>(SelectI(v < Splat(0.0f), top - level, top + level));
}

ffi::Error QsgdPackImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::U32> seeds,
                        ffi::ResultBuffer<ffi::U32> words, ffi::ResultBuffer<ffi::F32> norms_out,
                        int64_t levels, int64_t size, int64_t bits) {
  auto dims = x.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("qsgd_pack: x needs [..., n]");
  const int64_t n = dims.back(), groups = (n + 31) / 32;
  if (n < 1 || size < 1 || levels < 1 || levels > 127 || bits < 1 || bits > 8 ||
      (int64_t{1} << bits) < 2 * levels + 1)
    return ffi::Error::InvalidArgument(
        "qsgd_pack: n, size >= 1, levels in 1..127, 2 levels < 2^bits");
  const int64_t rows = static_cast<int64_t>(x.element_count()) / n;
  const int64_t nb = (n + size - 1) / size;
  if (static_cast<int64_t>(seeds.element_count()) != rows * nb ||
      static_cast<int64_t>(words->element_count()) != rows * bits * groups ||
      static_cast<int64_t>(norms_out->element_count()) != rows * nb)
    return ffi::Error::InvalidArgument("qsgd_pack: seeds, words or norms do not match x");
  if (rows == 0) return ffi::Error::Success();
  const float* in = x.typed_data();
  const uint32_t* seed = seeds.typed_data();
  uint32_t* out = words->typed_data();
  float* norms = norms_out->typed_data();

  // Pass 1: pieces of at most kChunk coordinates, never straddling a bucket;
  // short buckets are grouped so an item holds about kChunk coordinates.
  const int64_t slices = (size + kChunk - 1) / kChunk;  // per bucket
  const int64_t per_item = slices == 1 ? std::max<int64_t>(1, kChunk / size) : 1;  // buckets
  const int64_t items_per_row = slices == 1 ? (nb + per_item - 1) / per_item : nb * slices;
  std::vector<float> part_top(rows * nb * slices);
  std::vector<double> part_sq(rows * nb * slices);
  std::vector<char> part_ok(rows * nb * slices);
  fedjax_comp::ParallelFor(pool, rows * items_per_row, 2, [&](int64_t it) {
    const int64_t r = it / items_per_row, k = it % items_per_row;
    const int64_t p0 = slices == 1 ? k * per_item : k;  // piece index within the row
    const int64_t p1 = slices == 1 ? std::min(nb, p0 + per_item) : p0 + 1;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / slices, s = p % slices;
      const int64_t j0 = std::min(b * size + s * kChunk, n);  // the last bucket may be short
      const int64_t j1 = std::min({b * size + size, j0 + kChunk, n});
      bool ok;
      Scan(in + r * n + j0, j1 - j0, &part_top[r * nb * slices + p], &ok,
           &part_sq[r * nb * slices + p]);
      part_ok[r * nb * slices + p] = ok;
    }
  });
  std::vector<Bucket> buckets(rows * nb);
  for (int64_t q = 0; q < rows * nb; ++q) {
    float top = 0.0f;
    double sq = 0.0;
    bool ok = true;
    for (int64_t s = 0; s < slices; ++s) {
      top = std::max(top, part_top[q * slices + s]);
      sq += part_sq[q * slices + s];
      ok &= part_ok[q * slices + s] != 0;
    }
    const double norm = std::sqrt(sq);
    norms[q] = ok ? static_cast<float>(norm) : std::numeric_limits<float>::quiet_NaN();
    Bucket bk{1.0f, 0.0f, 0.0f};
    if (ok && top > 0.0f) {
      // 1 / top must stay a normal float: XLA runs with flush-to-zero, and
      // 1 / top for top > 2^126 is subnormal, which would zero the bucket.
      bk.pre = top < std::numeric_limits<float>::min() ? 0x1p64f : top > 0x1p64f ? 0x1p-64f : 1.0f;
      bk.inv = 1.0f / (top * bk.pre);
      bk.r = static_cast<float>(static_cast<double>(levels) * top / norm);
    }
    buckets[q] = bk;
  }

  const BucketOf bucket_of = MakeBucketOf(size);
  const int32_t lv = static_cast<int32_t>(levels);
  const int64_t items2 = (groups + kWords - 1) / kWords;
  fedjax_comp::ParallelFor(pool, rows * items2, 1, [&](int64_t it) {
    const int64_t r = it / items2, g0 = (it % items2) * kWords;
    const int64_t g1 = std::min(groups, g0 + kWords);
    const float* xr = in + r * n;
    const Bucket* bks = buckets.data() + r * nb;
    const uint32_t* sd = seed + r * nb;
    auto code1 = [&](int64_t i) {
      const int64_t b = bucket_of(i);
      return QsgdCode1(xr[i], bks[b], Dither1(i - b * size, sd[b]), lv);
    };
    auto code8 = [&](int64_t i0) {
      const int64_t b = bucket_of(i0);
      if (bucket_of(i0 + 7) != b) {  // straddles a bucket boundary: lane by lane
        W8 c;
        for (int k = 0; k < 8; ++k) c[k] = code1(i0 + k);
        return c;
      }
      return QsgdCodes8(Load(xr + i0), bks[b], Dither8(i0 - b * size, sd[b]), lv);
    };
    PackRange(n, groups, bits, g0, g1, out + r * bits * groups, code8, code1);
  });
  return ffi::Error::Success();
}

// QSGD's decode: (code - s) * (norm / s) per coordinate.
ffi::Error QsgdUnpackImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> words,
                          ffi::Buffer<ffi::F32> norms_in, ffi::ResultBuffer<ffi::F32> y,
                          int64_t levels, int64_t size, int64_t bits) {
  auto dims = y->dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("qsgd_unpack: y needs [..., n]");
  const int64_t n = dims.back(), groups = (n + 31) / 32;
  if (n < 1 || size < 1 || levels < 1 || levels > 127 || bits < 1 || bits > 8 ||
      (int64_t{1} << bits) < 2 * levels + 1)
    return ffi::Error::InvalidArgument(
        "qsgd_unpack: n, size >= 1, levels in 1..127, 2 levels < 2^bits");
  const int64_t rows = static_cast<int64_t>(y->element_count()) / n;
  const int64_t nb = (n + size - 1) / size;
  if (static_cast<int64_t>(words.element_count()) != rows * bits * groups ||
      static_cast<int64_t>(norms_in.element_count()) != rows * nb)
    return ffi::Error::InvalidArgument("qsgd_unpack: words or norms do not match y");
  const uint32_t* in = words.typed_data();
  const float* norms = norms_in.typed_data();
  float* out = y->typed_data();
  const float lv = static_cast<float>(levels);
  const BucketOf bucket_of = MakeBucketOf(size);
  const int64_t items_per_row = (n + kChunk - 1) / kChunk;
  fedjax_comp::ParallelFor(pool, rows * items_per_row, 2, [&](int64_t it) {
    const int64_t r = it / items_per_row, i0 = (it % items_per_row) * kChunk;
    const int64_t i1 = std::min(n, i0 + kChunk);
    const float* nr = norms + r * nb;
    float* yr = out + r * n;
    auto scale = [&](int64_t b) { return nr[b] / lv; };
    UnpackRange(
        in + r * bits * groups, groups, bits, i0, i1,
        [&](int64_t i, W8 code) {
          const I8 signed_level = reinterpret_cast<I8>(code) - static_cast<int32_t>(levels);
          const V8 lvl = __builtin_convertvector(signed_level, V8);
          const int64_t b = bucket_of(i);
          V8 v;
          if (bucket_of(i + 7) == b) {
            v = lvl * Splat(scale(b));
          } else {
            for (int k = 0; k < 8; ++k) v[k] = lvl[k] * scale(bucket_of(i + k));
          }
          std::memcpy(yr + i, &v, sizeof(v));
        },
        [&](int64_t i, uint32_t code) {
          yr[i] = static_cast<float>(static_cast<int32_t>(code) - static_cast<int32_t>(levels)) *
                  scale(bucket_of(i));
        });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompQuantizePack, QuantizePackImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("bits"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompUnpackDequantize, UnpackDequantizeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("bits"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompTernaryPack, TernaryPackImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompTernaryUnpack, TernaryUnpackImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompQsgdPack, QsgdPackImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("levels")
                                  .Attr<int64_t>("size")
                                  .Attr<int64_t>("bits"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompQsgdUnpack, QsgdUnpackImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("levels")
                                  .Attr<int64_t>("size")
                                  .Attr<int64_t>("bits"));
