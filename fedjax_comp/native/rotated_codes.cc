// DRIVE/EDEN's scalar quantizer of the rotated update, and its inverse, as
// XLA FFI kernels for the CPU (fedjax_comp/codecs/rotated_codes.py).
//
// Encode, on y [rows, m] (the rotated blocks) with b-bit codes:
//   pass 1, per row: top = max |y|, whether every y is finite, and
//     sum (y / top)^2 (in double);
//   pass 2, per row: unit = y / top, z = unit * (sqrt(m) / norm), the code
//     (how many Lloyd-Max boundaries z exceeds) into a byte scratch, and
//     <unit, q>, <q, q> for the centroid q of the code (in double);
//   pass 3: the codes packed in `kernels.pack`'s layout (code i = R * G + g,
//     R < 32, goes to word g of its field's rows, at bits (R % per_word) * w).
// XLA:CPU materializes each of these steps in a fresh buffer (the unit
// vector, the centroids, the codes): about 3x the memory traffic.
// Outputs: the packed words [code_bits, G] and per-row stats [rows, 4] =
// (top, sum unit^2, <unit, q>, <q, q>), from which the codec computes its
// scale exactly as its XLA path does; top is NaN for a row holding a NaN or
// an infinity.
//
// Decode: y[i] = table[code i] * scale[row of i], the input of the inverse
// rotation.
//
// Sums are taken per fixed chunk and combined in chunk order, so the result
// does not depend on the thread count. They are double sums, so they differ
// from the XLA path's float32 dot products in the last bits.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "pack.h"
#include "parallel_for.h"
#include "scan.h"
#include "vec.h"

namespace ffi = xla::ffi;
using namespace fedjax_comp;  // NOLINT: the vector helpers of vec.h

namespace {

constexpr int64_t kChunk = 1 << 15;  // coordinates per work item
constexpr size_t kKeptScratch = size_t{16} << 20;  // largest code scratch kept per thread

// Pass 2 over one chunk: codes (how many of the NB boundaries z exceeds),
// <unit, q>, <q, q>.
template <int NB>
void Codes(const float* __restrict src, int64_t len, float div, float c,
           const float* __restrict bnd, const float* __restrict tab,
           uint8_t* __restrict dst, double* uq, double* qq) {
  V8 vb[NB], vt[NB + 1];
  for (int b = 0; b < NB; ++b) vb[b] = Splat(bnd[b]);
  for (int b = 0; b <= NB; ++b) vt[b] = Splat(tab[b]);
  const V8 vdiv = Splat(div), vc = Splat(c);
  D4 s_uq[2] = {}, s_qq[2] = {};
  int64_t j = 0;
  // b = 4 (15 boundaries): a binary search, the last two levels' boundaries
  // and the centroids looked up by permutes (the boundaries ascend, so the
  // code, how many of them z exceeds, is the same count as the chain's).
  V8 l3 = Splat(0.0f), l4 = Splat(0.0f), t_lo = Splat(0.0f), t_hi = Splat(0.0f);
  if constexpr (NB == 15 && kFastLookup) {
    for (int k = 0; k < 4; ++k) l3[k] = bnd[1 + 4 * k];
    for (int k = 0; k < 8; ++k) {
      l4[k] = bnd[2 * k];
      t_lo[k] = tab[k];
      t_hi[k] = tab[8 + k];
    }
  }
  auto step = [&](int64_t at, V8* uq8, V8* qq8) {
    const V8 unit = Load(src + at) / vdiv;
    const V8 z = unit * vc;
    I8 code = I8{};
    V8 q = vt[0];
    if constexpr (NB == 15 && kFastLookup) {
      const I8 a3 = z > vb[7];
      code = a3 & 8;
      code |= (z > Select(a3, vb[11], vb[3])) & 4;
      code |= (z > Lookup8(l3, code >> 2)) & 2;
      code |= (z > Lookup8(l4, code >> 1)) & 1;
      q = Lookup16(t_lo, t_hi, code);
    } else {
      for (int b = 0; b < NB; ++b) {
        const I8 above = z > vb[b];  // all ones or zero per lane
        code -= above;
        q = Select(above, vt[b + 1], q);
      }
    }
    const U8 bytes = LowBytes(code);
    std::memcpy(dst + at, &bytes, 8);
    *uq8 += unit * q;
    *qq8 += q * q;
  };
  for (; j + 64 <= len; j += 64) {  // products summed in float over 8 vectors, then in double
    V8 uq8 = Splat(0.0f), qq8 = Splat(0.0f);
    for (int k = 0; k < 64; k += 8) step(j + k, &uq8, &qq8);
    AddProducts(uq8, Splat(1.0f), s_uq);
    AddProducts(qq8, Splat(1.0f), s_qq);
  }
  for (; j + 8 <= len; j += 8) {
    V8 uq8 = Splat(0.0f), qq8 = Splat(0.0f);
    step(j, &uq8, &qq8);
    AddProducts(uq8, Splat(1.0f), s_uq);
    AddProducts(qq8, Splat(1.0f), s_qq);
  }
  double u_sum = Sum(s_uq), q_sum = Sum(s_qq);
  for (; j < len; ++j) {  // rows shorter than 8
    const float unit = src[j] / div;
    const float z = unit * c;
    int code = 0;
    float q = tab[0];
    for (int b = 0; b < NB; ++b) {
      code += z > bnd[b];
      q = z > bnd[b] ? tab[b + 1] : q;
    }
    dst[j] = static_cast<uint8_t>(code);
    u_sum += static_cast<double>(unit) * q;
    q_sum += static_cast<double>(q) * q;
  }
  *uq = u_sum;
  *qq = q_sum;
}

ffi::Error QuantizeImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> y,
                        ffi::ResultBuffer<ffi::U32> words, ffi::ResultBuffer<ffi::F32> stats,
                        ffi::Span<const float> boundaries, ffi::Span<const float> table,
                        int64_t code_bits) {
  auto dims = y.dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("rotated_quantize: y needs [..., rows, m]");
  const int64_t m = dims[dims.size() - 1], nb = dims[dims.size() - 2];
  const int64_t total = nb * m, groups = (total + 31) / 32;
  const int64_t batch = total ? static_cast<int64_t>(y.element_count()) / total : 0;
  const int64_t levels = int64_t{1} << code_bits;
  if (code_bits < 1 || code_bits > 4 || static_cast<int64_t>(table.size()) != levels ||
      static_cast<int64_t>(boundaries.size()) != levels - 1)
    return ffi::Error::InvalidArgument("rotated_quantize: code_bits 1..4 with 2^b centroids "
                                       "and 2^b - 1 boundaries");
  if (static_cast<int64_t>(words->element_count()) != batch * code_bits * groups ||
      static_cast<int64_t>(stats->element_count()) != batch * nb * 4)
    return ffi::Error::InvalidArgument("rotated_quantize: output shapes do not match y");
  if (m <= 0 || m % std::min(m, kChunk))
    return ffi::Error::InvalidArgument("rotated_quantize: m must divide or be a multiple of 2^15");
  for (int64_t k = 0; k + 1 < levels - 1; ++k)
    if (!(boundaries[k] <= boundaries[k + 1]))  // Codes<15> searches them
      return ffi::Error::InvalidArgument("rotated_quantize: the boundaries must ascend");
  if (batch == 0) return ffi::Error::Success();
  const float* in = y.typed_data();
  uint32_t* out_words = words->typed_data();
  float* out_stats = stats->typed_data();
  const int64_t rows = batch * nb;
  const int64_t chunks = (m + kChunk - 1) / kChunk;  // per row
  const int64_t len = std::min(m, kChunk);

  // Pass 1: per (row, chunk) partials, combined per row in chunk order.
  std::vector<float> top(rows * chunks);
  std::vector<double> sq(rows * chunks);
  std::unique_ptr<bool[]> finite(new bool[rows * chunks]);
  fedjax_comp::ParallelFor(pool, rows * chunks, 2, [&](int64_t it) {
    Scan(in + it * len, len, &top[it], &finite[it], &sq[it]);
  });
  std::vector<float> row_top(rows), row_scale(rows);
  std::vector<double> row_energy(rows);
  for (int64_t r = 0; r < rows; ++r) {
    float t = 0.0f;
    double s = 0.0;
    bool ok = true;
    for (int64_t c = 0; c < chunks; ++c) {
      t = std::max(t, top[r * chunks + c]);
      s += sq[r * chunks + c];
      ok &= finite[r * chunks + c];
    }
    const float div = t > 0 ? t : 1.0f;
    // sum (y / top)^2 = sum y^2 / top^2; the norm of the unit vector.
    const double energy = s / (static_cast<double>(div) * div);
    const float norm = static_cast<float>(std::sqrt(energy));
    row_top[r] = ok ? t : std::numeric_limits<float>::quiet_NaN();
    row_energy[r] = energy;
    row_scale[r] = static_cast<float>(std::sqrt(static_cast<double>(m))) / (norm > 0 ? norm : 1.0f);
  }

  // Pass 2: codes (one byte each; PackRange reads none past total) and the dot products.
  // The calling thread's scratch, kept between calls: a fresh 1 MB buffer per
  // call pays its first-touch page faults every time (a third of the kernel).
  // Above kKeptScratch bytes a call allocates its own instead (not kept).
  thread_local std::vector<uint8_t> scratch;
  std::vector<uint8_t> own;
  const size_t need = static_cast<size_t>(batch * total);
  std::vector<uint8_t>& buf = need <= kKeptScratch ? scratch : own;
  if (buf.size() < need) buf.resize(need);
  uint8_t* const codes = buf.data();
  std::vector<double> uq(rows * chunks), qq(rows * chunks);
  float bnd[15], tab[16];
  std::copy(boundaries.begin(), boundaries.end(), bnd);
  std::copy(table.begin(), table.end(), tab);
  const int nbnd = static_cast<int>(levels - 1);
  fedjax_comp::ParallelFor(pool, rows * chunks, 2, [&](int64_t it) {
    const int64_t r = it / chunks, b = r / nb, i0 = (r % nb) * m + (it % chunks) * len;
    const float* src = in + it * len;
    uint8_t* dst = codes + b * total + i0;
    const float div = row_top[r] > 0 ? row_top[r] : 1.0f;  // NaN: the codes do not matter
    const float c = row_scale[r];
    double* u = &uq[it];
    double* q = &qq[it];
    switch (nbnd) {
      case 1: Codes<1>(src, len, div, c, bnd, tab, dst, u, q); break;
      case 3: Codes<3>(src, len, div, c, bnd, tab, dst, u, q); break;
      case 7: Codes<7>(src, len, div, c, bnd, tab, dst, u, q); break;
      default: Codes<15>(src, len, div, c, bnd, tab, dst, u, q); break;
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    double s_uq = 0.0, s_qq = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      s_uq += uq[r * chunks + c];
      s_qq += qq[r * chunks + c];
    }
    float* st = out_stats + r * 4;
    st[0] = row_top[r];
    st[1] = static_cast<float>(row_energy[r]);
    st[2] = static_cast<float>(s_uq);
    st[3] = static_cast<float>(s_qq);
  }

  // Pass 3: pack, one item per (batch, range of word columns g).
  const int64_t per_item = std::max<int64_t>(1024, kChunk / 32);
  const int64_t items_per_b = (groups + per_item - 1) / per_item;
  fedjax_comp::ParallelFor(pool, batch * items_per_b, 1, [&](int64_t it) {
    const int64_t b = it / items_per_b, g0 = (it % items_per_b) * per_item;
    PackBytes(codes + b * total, total, groups, code_bits, g0, std::min(groups, g0 + per_item),
              out_words + b * code_bits * groups);
  });
  return ffi::Error::Success();
}

// y [..., rows, m] = table[code] * scale[row], codes unpacked from words [..., code_bits, G].
ffi::Error DequantizeImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> words,
                          ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y,
                          ffi::Span<const float> table, int64_t code_bits) {
  auto dims = y->dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("rotated_dequantize: y needs [..., rows, m]");
  const int64_t m = dims[dims.size() - 1], nb = dims[dims.size() - 2];
  const int64_t total = nb * m, groups = (total + 31) / 32;
  const int64_t batch = total ? static_cast<int64_t>(y->element_count()) / total : 0;
  if (code_bits < 1 || code_bits > 4 || static_cast<int64_t>(table.size()) != (int64_t{1} << code_bits))
    return ffi::Error::InvalidArgument("rotated_dequantize: code_bits 1..4 with 2^b centroids");
  if (static_cast<int64_t>(words.element_count()) != batch * code_bits * groups ||
      static_cast<int64_t>(scale.element_count()) != batch * nb)
    return ffi::Error::InvalidArgument("rotated_dequantize: words or scale do not match y");
  if (batch == 0) return ffi::Error::Success();
  float tab[16];
  std::copy(table.begin(), table.end(), tab);
  const int levels = static_cast<int>(table.size());
  V8 vt[2] = {Splat(tab[0]), Splat(tab[1])};
  V8 t_lo = Splat(0.0f), t_hi = Splat(0.0f);  // the centroids, looked up by permutes
  for (int c = 0; c < levels; ++c) {
    if (c < 8) {
      t_lo[c] = tab[c];
    } else {
      t_hi[c - 8] = tab[c];
    }
  }
  const uint32_t* in = words.typed_data();
  const float* sc = scale.typed_data();
  float* out = y->typed_data();
  const int64_t items_per_b = (total + kChunk - 1) / kChunk;
  fedjax_comp::ParallelFor(pool, batch * items_per_b, 2, [&](int64_t it) {
    const int64_t b = it / items_per_b, i0 = (it % items_per_b) * kChunk;
    const int64_t i1 = std::min(total, i0 + kChunk);
    const uint32_t* wb = in + b * code_bits * groups;
    float* yb = out + b * total;
    const float* sb = sc + b * nb;
    // The block (row) of i, and its scale, kept until i leaves it: no
    // division per 8 codes.
    int64_t lo = 0, hi = 0;
    V8 vs = Splat(0.0f);
    UnpackRange(
        wb, groups, code_bits, i0, i1,
        [&](int64_t i, W8 code) {
          V8 q;
          const I8 c = reinterpret_cast<I8>(code);
          if (levels == 2) {
            q = Select(c > 0, vt[1], vt[0]);
          } else if (!kFastLookup) {
            q = Splat(tab[0]);
            for (int k = 1; k < levels; ++k) q = Select(c >= k, Splat(tab[k]), q);
          } else if (levels == 16) {
            q = Lookup16(t_lo, t_hi, c);
          } else {
            q = Lookup8(t_lo, c);
          }
          if (i < lo || i >= hi) {
            lo = i / m * m;
            hi = lo + m;
            vs = Splat(sb[lo / m]);
          }
          V8 s = vs;
          if (i + 8 > hi)  // a block ends among the 8 codes (m < 8, or unaligned)
            for (int k = 0; k < 8; ++k) s[k] = sb[(i + k) / m];
          const V8 out8 = q * s;
          std::memcpy(yb + i, &out8, sizeof(out8));
        },
        [&](int64_t i, uint32_t code) { yb[i] = tab[code] * sb[i / m]; });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompRotatedQuantize, QuantizeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const float>>("boundaries")
                                  .Attr<ffi::Span<const float>>("table")
                                  .Attr<int64_t>("code_bits"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompRotatedDequantize, DequantizeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const float>>("table")
                                  .Attr<int64_t>("code_bits"));
