// The fast Walsh-Hadamard transform as an XLA FFI kernel for the CPU.
//
// y[r] = post * (scale * H_n (pre * x[r])) for every row r of a [rows, n]
// float32 array (pre and post: floats, or signs packed 32 to a word, or none), H_n the unnormalized Sylvester Hadamard matrix (n a power of
// two). XLA:CPU runs `kernels.fwht`'s butterflies as one fusion per one or
// two stages, about ten passes over memory for n = 2^20; this kernel makes
// one pass for rows of up to 2^16 floats and two for longer ones:
//
//   a row of n <= 2^16 floats (256 KiB, in L2) is done whole: blocks of
//   kBlock floats (8 KiB, in L1) get their first log2(kBlock) stages, then
//   the longer strides sweep the row, then scale and post;
//   a longer row is first done in units of kUnit floats the same way (with
//   pre), then viewed as an [n / kUnit, kUnit] matrix whose columns still
//   need H_(n / kUnit): groups of kCols columns are gathered into a
//   contiguous buffer, transformed there, and written back with scale and
//   post.
//
// Each sweep does up to three stages in registers (radix 8); the first three
// stages are shuffles within one 8-float vector.
//
// Work is split into independent items (rows, units, column groups) run by
// `fedjax_comp::ParallelFor` (parallel_for.h). Every item's arithmetic is
// fixed, so the result does not depend on the number of threads.
//
// Built on first use by fedjax_comp/native/__init__.py (a C++17 compiler and
// jaxlib's FFI headers); without a compiler `kernels.fwht` keeps its XLA path.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;

namespace {

#ifndef FWHT_BLOCK
#define FWHT_BLOCK 2048
#endif
#ifndef FWHT_COLS
#define FWHT_COLS 64
#endif
constexpr int64_t kBlock = FWHT_BLOCK;  // floats per phase-1 block: 8 KiB, in L1
constexpr int64_t kCols = FWHT_COLS;    // columns per phase-2 item
constexpr int64_t kRowInCache = 1 << 16;  // longest row done in one pass: 256 KiB, in L2
#ifndef FWHT_UNIT
#define FWHT_UNIT (1 << 14)
#endif
constexpr int64_t kUnit = FWHT_UNIT;  // phase-1 unit of longer rows: 64 KiB
constexpr bool Pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }
static_assert(Pow2(kBlock) && Pow2(kCols) && Pow2(kUnit) && Pow2(kRowInCache));
static_assert(kBlock >= 32 && kCols >= 32, "sign bits come in words of 32 coordinates");
static_assert(kBlock <= kUnit && kUnit < kRowInCache && kCols <= kUnit);

// H_8 on 8 consecutive floats (the three stages of stride 1, 2, 4), as
// three (shuffle, multiply-add) pairs on one 8-float vector: stage s adds to
// each element its partner (index xor s) and flips the sign of the element
// whose bit s is set. Multiplying by +-1 is exact, so this is the plain
// butterfly bit for bit.
typedef float V8 __attribute__((vector_size(32)));
typedef int I8 __attribute__((vector_size(32)));

// Literal indices: __builtin_shufflevector needs constants (clang; GCC >= 12).
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define FWHT_SHUFFLE8(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define FWHT_SHUFFLE8(v, ...) __builtin_shuffle(v, I8{__VA_ARGS__})
#endif

inline void H8(float* x) {
  V8 v;
  __builtin_memcpy(&v, x, sizeof(v));
  v = FWHT_SHUFFLE8(v, 1, 0, 3, 2, 5, 4, 7, 6) + v * V8{1, -1, 1, -1, 1, -1, 1, -1};
  v = FWHT_SHUFFLE8(v, 2, 3, 0, 1, 6, 7, 4, 5) + v * V8{1, 1, -1, -1, 1, 1, -1, -1};
  v = FWHT_SHUFFLE8(v, 4, 5, 6, 7, 0, 1, 2, 3) + v * V8{1, 1, 1, 1, -1, -1, -1, -1};
  __builtin_memcpy(x, &v, sizeof(v));
}

// log2(R) butterfly stages on R rows of `width` floats (row k at p[k]), in
// place, in registers: the stages of stride 1, 2, 4 between the rows.
template <int R>
inline void Butterflies(float* const* p, int64_t width) {
  float* __restrict p0 = p[0];
  float* __restrict p1 = p[1];
  if constexpr (R == 2) {
#pragma GCC ivdep
    for (int64_t j = 0; j < width; ++j) {
      float u = p0[j], v = p1[j];
      p0[j] = u + v; p1[j] = u - v;
    }
  } else {
    float* __restrict p2 = p[2];
    float* __restrict p3 = p[3];
    if constexpr (R == 4) {
#pragma GCC ivdep
      for (int64_t j = 0; j < width; ++j) {
        float s1 = p0[j] + p1[j], d1 = p0[j] - p1[j], s2 = p2[j] + p3[j], d2 = p2[j] - p3[j];
        p0[j] = s1 + s2; p1[j] = d1 + d2; p2[j] = s1 - s2; p3[j] = d1 - d2;
      }
    } else {
      float* __restrict p4 = p[4];
      float* __restrict p5 = p[5];
      float* __restrict p6 = p[6];
      float* __restrict p7 = p[7];
#pragma GCC ivdep
      for (int64_t j = 0; j < width; ++j) {
        float a0 = p0[j] + p1[j], a1 = p0[j] - p1[j], a2 = p2[j] + p3[j], a3 = p2[j] - p3[j];
        float a4 = p4[j] + p5[j], a5 = p4[j] - p5[j], a6 = p6[j] + p7[j], a7 = p6[j] - p7[j];
        float b0 = a0 + a2, b1 = a1 + a3, b2 = a0 - a2, b3 = a1 - a3;
        float b4 = a4 + a6, b5 = a5 + a7, b6 = a4 - a6, b7 = a5 - a7;
        p0[j] = b0 + b4; p1[j] = b1 + b5; p2[j] = b2 + b6; p3[j] = b3 + b7;
        p4[j] = b0 - b4; p5[j] = b1 - b5; p6[j] = b2 - b6; p7[j] = b3 - b7;
      }
    }
  }
}

// The stages of stride h, 2h, ... < n of x[0:n], in place, up to three per
// sweep over the data (radix 8 in registers).
inline void Stages(float* x, int64_t h, int64_t n) {
  float* p[8];
  while (h < n) {
    const int r = 8 * h <= n ? 8 : 4 * h <= n ? 4 : 2;
    for (int64_t i = 0; i < n; i += r * h) {
      for (int t = 0; t < r; ++t) p[t] = x + i + t * h;
      if (r == 8) Butterflies<8>(p, h);
      else if (r == 4) Butterflies<4>(p, h);
      else Butterflies<2>(p, h);
    }
    h *= r;
  }
}

// A per-coordinate multiplier: floats, or signs as bits (bit j of word j / 32
// set: -1), or none.
struct Mult {
  const float* f = nullptr;
  const uint32_t* bits = nullptr;
  // The multiplier from coordinate j on (j a multiple of 32 for bits).
  Mult At(int64_t j) const {
    return Mult{f ? f + j : nullptr, bits ? bits + j / 32 : nullptr};
  }
};

// y = x * m (y may be x).
inline void MultiplyIn(const float* x, Mult m, float* y, int64_t len) {
  if (m.f) {
    for (int64_t j = 0; j < len; ++j) y[j] = x[j] * m.f[j];
  } else if (m.bits) {
    for (int64_t k = 0; k < len / 32; ++k) {
      const uint32_t w = m.bits[k];
      for (int64_t t = 0; t < 32; ++t) {  // flip the sign bit: exact
        uint32_t u;
        __builtin_memcpy(&u, x + 32 * k + t, 4);
        u ^= ((w >> t) & 1u) << 31;
        __builtin_memcpy(y + 32 * k + t, &u, 4);
      }
    }
  } else if (y != x) {
    std::copy(x, x + len, y);
  }
}

// y = src * scale * m (y may be src).
inline void ScaleOut(const float* src, Mult m, float scale, float* y, int64_t len) {
  if (m.f) {
    for (int64_t j = 0; j < len; ++j) y[j] = src[j] * (scale * m.f[j]);
  } else if (m.bits) {
    for (int64_t k = 0; k < len / 32; ++k) {
      const uint32_t w = m.bits[k];
      for (int64_t t = 0; t < 32; ++t) {
        float v = src[32 * k + t] * scale;
        uint32_t u;
        __builtin_memcpy(&u, &v, 4);
        u ^= ((w >> t) & 1u) << 31;
        __builtin_memcpy(y + 32 * k + t, &u, 4);
      }
    }
  } else {
    for (int64_t j = 0; j < len; ++j) y[j] = src[j] * scale;
  }
}

// All stages of one block of len <= kBlock floats (in L1): y = H_len(pre * x).
// x may be y (the kernel runs in place).
void Block(const float* x, Mult pre, float* y, int64_t len) {
  MultiplyIn(x, pre, y, len);
  if (len >= 8) {
    for (int64_t i = 0; i < len; i += 8) H8(y + i);
    Stages(y, 8, len);
  } else {  // len < 8: radix-2 stages
    for (int64_t h = 1; h < len; h *= 2)
      for (int64_t i = 0; i < len; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          float u = y[j], v = y[j + h];
          y[j] = u + v; y[j + h] = u - v;
        }
  }
}

// A whole row of n <= kRowInCache floats in one go while it sits in L2:
// blocks in L1, then the strides >= kBlock, then scale and post.
void Row(const float* x, Mult pre, Mult post, float scale, float* y, int64_t n) {
  const int64_t blk = std::min(n, kBlock);
  for (int64_t b = 0; b < n; b += blk) Block(x + b, pre.At(b), y + b, blk);
  if (n > blk) Stages(y, blk, n);
  if (post.f || post.bits || scale != 1.0f) ScaleOut(y, post, scale, y, n);
}

// Phase 2 on columns [c0, c0 + kCols) of a row viewed as [m, ld]: H_m along
// the first axis, then scale and post. The columns are gathered into a
// contiguous [m, kCols] buffer first: in place, the butterflies' partners lie
// a power of two times ld floats apart, which maps them all to the same
// cache sets (measured 4x slower at n = 2^20).
void Phase2(float* __restrict y, int64_t m, int64_t ld, int64_t c0, Mult post, float scale,
            float* __restrict buf) {
  for (int64_t r = 0; r < m; ++r) std::copy(y + r * ld + c0, y + r * ld + c0 + kCols, buf + r * kCols);
  // Row stride h in the [m, kCols] buffer is a float stride of h * kCols.
  Stages(buf, kCols, m * kCols);
  for (int64_t r = 0; r < m; ++r)
    ScaleOut(buf + r * kCols, post.At(r * ld + c0), scale, y + r * ld + c0, kCols);
}

// Row r's multiplier from P rows of `per_row` elements each (P = 0: none);
// P divides the number of rows of x, and row r takes row r / (rows / P), so a
// single row is shared by all and a batch of them (vmap's leading axis)
// applies to its own group of rows.
struct MultRows {
  const float* f = nullptr;
  const uint32_t* bits = nullptr;
  int64_t per_row = 0, group = 0;
  Mult Of(int64_t r) const {
    if (!group) return Mult{};
    const int64_t off = (r / group) * per_row;
    return Mult{f ? f + off : nullptr, bits ? bits + off : nullptr};
  }
};

// Resolves a multiplier given as floats or as sign words (at most one of
// them non-empty); false if the shapes do not fit.
bool Rows(ffi::Buffer<ffi::F32>& f, ffi::Buffer<ffi::U32>& bits, int64_t n, int64_t rows,
          MultRows* out) {
  const int64_t nf = static_cast<int64_t>(f.element_count());
  const int64_t nb = static_cast<int64_t>(bits.element_count());
  if (nf && nb) return false;
  const int64_t per_row = nf ? n : n / 32;
  const int64_t count = nf ? nf : nb;
  if (!count) return true;
  if (per_row == 0 || count % per_row) return false;
  const int64_t p = count / per_row;
  if (rows % p) return false;
  out->f = nf ? f.typed_data() : nullptr;
  out->bits = nf ? nullptr : bits.typed_data();
  out->per_row = per_row;
  out->group = rows / p;
  return true;
}

// Inputs: x [..., n]; pre and post as float rows [P, n] or as sign words
// [P, n / 32] (bit j of word j / 32 set: -1; n >= 32), empty when absent.
ffi::Error FwhtImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> pre_f,
                    ffi::Buffer<ffi::F32> post_f, ffi::Buffer<ffi::U32> pre_bits,
                    ffi::Buffer<ffi::U32> post_bits, ffi::ResultBuffer<ffi::F32> y,
                    float scale) {
  auto dims = x.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("fwht: x needs at least one axis");
  const int64_t n = dims.back();
  if (n <= 0 || (n & (n - 1)) != 0)
    return ffi::Error::InvalidArgument("fwht: the last axis must be a power of two");
  const int64_t rows = static_cast<int64_t>(x.element_count()) / n;
  if (rows == 0) return ffi::Error::Success();
  MultRows pre_rows, post_rows;
  if (!Rows(pre_f, pre_bits, n, rows, &pre_rows) || !Rows(post_f, post_bits, n, rows, &post_rows))
    return ffi::Error::InvalidArgument(
        "fwht: pre and post must be rows of n floats or n / 32 sign words, one kind each, "
        "their row count a divisor of x's");
  const float* in = x.typed_data();
  float* out = y->typed_data();
  if (n <= kRowInCache) {
    // One item per group of whole rows of about 16K floats (or one row).
    const int64_t per = std::max<int64_t>(1, (kBlock * 8) / n);
    const int64_t items = (rows + per - 1) / per;
    fedjax_comp::ParallelFor(pool, items, 1, [=](int64_t it) {
      for (int64_t r = it * per; r < std::min(rows, (it + 1) * per); ++r)
        Row(in + r * n, pre_rows.Of(r), post_rows.Of(r), scale, out + r * n, n);
    });
    return ffi::Error::Success();
  }
  // Longer rows: units of kUnit floats (each done by Row, in L2), then the
  // remaining strides as columns of the [m, kUnit] matrix.
  const int64_t m = n / kUnit;
  fedjax_comp::ParallelFor(pool, rows * m, 2, [=](int64_t it) {
    const int64_t r = it / m, b = it % m, off = r * n + b * kUnit;
    Row(in + off, pre_rows.Of(r).At(b * kUnit), Mult{}, 1.0f, out + off, kUnit);
  });
  constexpr int64_t groups = kUnit / kCols;
  fedjax_comp::ParallelFor(pool, rows * groups, 4, [=](int64_t it) {
    thread_local std::vector<float> buf;  // one per thread, grown as needed
    if (static_cast<int64_t>(buf.size()) < m * kCols) buf.resize(m * kCols);
    const int64_t r = it / groups;
    Phase2(out + r * n, m, kUnit, (it % groups) * kCols, post_rows.Of(r), scale, buf.data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompFwht, FwhtImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
