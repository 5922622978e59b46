// Exact top-k by magnitude as an XLA FFI kernel for the CPU
// (fedjax_comp/codecs/sparsification.py's `top_k`).
//
// For each row of x [rows, d] (float32): the indices, ascending, of the k
// largest |x|; among equal magnitudes at the k-th, the lowest indices (what
// `lax.top_k`'s stable order selects). NaN ranks above +-inf (the codec
// poisons such an update anyway).
//
// A radix select on the 31 magnitude bits of each float (order-preserving
// for |x| as unsigned integers), instead of a sort:
//   pass A: a histogram of the top 11 bits finds the bin holding the k-th
//     largest, and how many of it are needed;
//   pass B: the indices above that bin are collected (in order), and the
//     bin's members kept as candidates (key, index);
//   the candidates' lower 20 bits are resolved the same way in two digits of
//     10 bits, giving the exact k-th key T and how many of T to take;
//   the two ascending lists (above the bin; candidates above T, then the
//     first of those equal to T) are merged.
// Two passes over the row; the rest touches only the candidates. Pass B
// compares 8 floats at a time and, with AVX2, packs the lanes above or in
// the bin to the lists by a shuffle, without a branch. Rows are independent
// work items (`fedjax_comp::ParallelFor`); with at most half as many rows as
// threads, each row's two passes split over chunks instead.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"
#include "vec.h"

namespace ffi = xla::ffi;
using fedjax_comp::I8;

namespace {

constexpr int64_t kChunk = 1 << 16;  // floats per chunk of a row split over threads

// Bit t set where lane t of the comparison mask c is true (all ones).
inline uint32_t Mask8(I8 c) {
#if defined(__AVX__)
  return static_cast<uint32_t>(_mm256_movemask_ps(reinterpret_cast<__m256>(c)));
#else
  uint32_t m = 0;
  for (int t = 0; t < 8; ++t) m |= (static_cast<uint32_t>(c[t]) & 1u) << t;
  return m;
#endif
}

inline uint32_t Key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u & 0x7fffffffu;
}

// The bin (of `bins`) holding the `need`-th largest, counting from the top;
// on return `need` is how many of that bin are still needed.
int FindBin(const uint32_t* hist, int bins, int64_t* need) {
  int64_t above = 0;
  int b = bins - 1;
  for (; b > 0; --b) {
    if (above + hist[b] >= *need) break;
    above += hist[b];
  }
  *need -= above;
  return b;
}

constexpr int kTopBits = 11, kShift = 20;
constexpr int kTopBins = 1 << kTopBits;

// Pass A over x[0:len]: adds the histogram of the keys' top 11 bits to hist,
// from four interleaved histograms (independent increments; a short range
// goes straight into hist, where zeroing the four would cost more).
void HistogramTop(const float* x, int64_t len, uint32_t* hist) {
  if (len < 4 * kTopBins) {
    for (int64_t j = 0; j < len; ++j) ++hist[Key(x[j]) >> kShift];
    return;
  }
  thread_local std::vector<uint32_t> h4(4 * kTopBins);
  std::fill(h4.begin(), h4.end(), 0u);
  int64_t j = 0;
  for (; j + 4 <= len; j += 4)
    for (int t = 0; t < 4; ++t) ++h4[t * kTopBins + (Key(x[j + t]) >> kShift)];
  for (; j < len; ++j) ++h4[Key(x[j]) >> kShift];
  for (int b = 0; b < kTopBins; ++b)
    hist[b] += h4[b] + h4[kTopBins + b] + h4[2 * kTopBins + b] + h4[3 * kTopBins + b];
}

#if defined(__AVX2__)
// For each 8-bit mask, the lanes whose bit is set, in order (the rest 0):
// the permutation that packs a vector's selected lanes to its front.
struct PackTable {
  alignas(32) int32_t lanes[256][8];
};
constexpr PackTable MakePackTable() {
  PackTable t{};
  for (int m = 0; m < 256; ++m) {
    int o = 0;
    for (int b = 0; b < 8; ++b)
      if (m >> b & 1) t.lanes[m][o++] = b;
  }
  return t;
}
constexpr PackTable kPack = MakePackTable();
#endif

// Pass B over x[j0:j1]: the indices above top_bin to ab, the bin's members
// (key, index) to ck, ci, each in index order; ab holds exactly cap_a of
// them and ck, ci cap_c (the counts pass A found). Eight floats at a time:
// two comparisons give the lanes above and in the bin as bit masks. With
// AVX2 and hits on 2% of the range or more, a shuffle packs each mask's
// lanes to the front of a vector stored whole (no branch; the count
// advances by the mask's popcount) while 8 slots remain; otherwise only the
// set bits are visited.
void Collect(const float* x, int64_t j0, int64_t j1, uint32_t top_bin, int32_t* ab,
             int64_t cap_a, uint32_t* ck, int32_t* ci, int64_t cap_c) {
  int64_t na = 0, nc = 0;
  int64_t i = j0;
  const bool has_above = top_bin + 1 < kTopBins;  // else no bin lies above
#if defined(__AVX2__)
  // Only where hits are dense enough (2% of the range or more): the stores
  // cost every group, where the branch skips the groups without a hit
  // cheaply when hits are rare (0.1%: 1.2x slower packed; 4.5%: 0.65x).
  if ((cap_a + cap_c) * 50 >= j1 - j0) {
    const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
    // key > floor - 1, i.e. key >= floor (keys are >= 0; (top + 1) << 20 - 1
    // is INT32_MAX for the top bin, which no key exceeds).
    const __m256i below_bin = _mm256_set1_epi32(static_cast<int32_t>((top_bin << kShift) - 1u));
    const __m256i below_next =
        _mm256_set1_epi32(static_cast<int32_t>(((top_bin + 1) << kShift) - 1u));
    __m256i index = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(i)),
                                     _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i eight = _mm256_set1_epi32(8);
    for (; i + 8 <= j1 && na + 8 <= cap_a && nc + 8 <= cap_c;
         i += 8, index = _mm256_add_epi32(index, eight)) {
      const __m256i key =
          _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), magnitude);
      const __m256i in_or_up = _mm256_cmpgt_epi32(key, below_bin);
      const __m256i up = _mm256_cmpgt_epi32(key, below_next);
      const unsigned up_mask = _mm256_movemask_ps(_mm256_castsi256_ps(up));
      const unsigned in_mask =
          _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(up, in_or_up)));
      const __m256i pack_up =
          _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[up_mask]));
      const __m256i pack_in =
          _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[in_mask]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ab + na),
                          _mm256_permutevar8x32_epi32(index, pack_up));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ci + nc),
                          _mm256_permutevar8x32_epi32(index, pack_in));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ck + nc),
                          _mm256_permutevar8x32_epi32(key, pack_in));
      na += __builtin_popcount(up_mask);
      nc += __builtin_popcount(in_mask);
    }
  }
#endif
  const I8 magnitude = I8{} + 0x7fffffff;
  const I8 bin_floor = I8{} + static_cast<int32_t>(top_bin << kShift);
  const I8 next_floor = I8{} + (has_above ? static_cast<int32_t>((top_bin + 1) << kShift) : 0);
  for (; i + 8 <= j1; i += 8) {
    I8 v;
    std::memcpy(&v, x + i, sizeof(v));
    const I8 key = v & magnitude;  // as signed int32: >= 0, ordered as |x|
    uint32_t hit = Mask8(key >= bin_floor);
    if (!hit) continue;
    const uint32_t up = has_above ? Mask8(key >= next_floor) : 0u;
    for (; hit; hit &= hit - 1) {
      const int t = __builtin_ctz(hit);
      if (up >> t & 1u) {
        ab[na++] = static_cast<int32_t>(i + t);
      } else {
        ck[nc] = Key(x[i + t]);
        ci[nc++] = static_cast<int32_t>(i + t);
      }
    }
  }
  for (; i < j1; ++i) {
    const uint32_t key = Key(x[i]), bin = key >> kShift;
    if (bin > top_bin) {
      ab[na++] = static_cast<int32_t>(i);
    } else if (bin == top_bin) {
      ck[nc] = key;
      ci[nc++] = static_cast<int32_t>(i);
    }
  }
}

// The candidates' lower 20 bits, then the merge: writes the k indices to out.
void Resolve(uint32_t top_bin, int64_t need, const std::vector<int32_t>& above,
             const std::vector<uint32_t>& cand_key, const std::vector<int32_t>& cand_idx,
             int32_t* out) {
  const int64_t na = static_cast<int64_t>(above.size());

  // The lower 20 bits among the candidates, in two digits of 10 bits (none
  // needed when every candidate is taken: then the threshold is the bin's floor).
  uint32_t prefix = top_bin << kShift, mask = ~((1u << kShift) - 1u);
  const bool take_all = static_cast<int64_t>(cand_key.size()) == need;
  for (int shift : {10, 0}) {
    if (take_all) break;
    uint32_t h[1024] = {};
    for (size_t c = 0; c < cand_key.size(); ++c)
      if ((cand_key[c] & mask) == prefix) ++h[(cand_key[c] >> shift) & 1023u];
    prefix |= static_cast<uint32_t>(FindBin(h, 1024, &need)) << shift;
    mask |= 1023u << shift;
  }
  const uint32_t threshold = prefix;  // the k-th largest key; take `need` of those equal

  // Merge the ascending lists: above the bin, and the candidates kept.
  int64_t o = 0, a = 0, equal_taken = 0;  // na: the count above the bin, from pass B
  for (size_t c = 0; c < cand_key.size(); ++c) {
    const uint32_t key = cand_key[c];
    const bool keep = key > threshold || (key == threshold && equal_taken++ < need);
    if (!keep) continue;
    const int32_t idx = cand_idx[c];
    while (a < na && above[a] < idx) out[o++] = above[a++];
    out[o++] = idx;
  }
  while (a < na) out[o++] = above[a++];
}

// One row: writes the k selected indices, ascending, to out. With chunks >
// 1 (and a pool), passes A and B run over that many contiguous chunks of the
// row in parallel: per-chunk histograms, summed, give the bin and each
// chunk's offsets into the two lists, so the lists come out in index order
// as with one chunk.
void SelectRow(const float* x, int64_t d, int64_t k, int32_t* out,
               std::vector<uint32_t>& cand_key, std::vector<int32_t>& cand_idx,
               std::vector<int32_t>& above, ffi::ThreadPool* pool, int64_t chunks) {
  uint32_t hist[kTopBins] = {};
  if (chunks <= 1) {  // one thread: no per-chunk histograms or offsets
    HistogramTop(x, d, hist);
    int64_t need = k;
    const uint32_t top_bin = static_cast<uint32_t>(FindBin(hist, kTopBins, &need));
    above.resize(k - need);
    cand_key.resize(hist[top_bin]);
    cand_idx.resize(hist[top_bin]);
    Collect(x, 0, d, top_bin, above.data(), k - need, cand_key.data(), cand_idx.data(),
            hist[top_bin]);
    Resolve(top_bin, need, above, cand_key, cand_idx, out);
    return;
  }
  const int64_t per = (d + chunks - 1) / chunks;
  chunks = (d + per - 1) / per;
  std::vector<uint32_t> hists(chunks * kTopBins, 0u);
  fedjax_comp::ParallelFor(*pool, chunks, 1, [&](int64_t c) {
    HistogramTop(x + c * per, std::min(d, (c + 1) * per) - c * per, &hists[c * kTopBins]);
  });
  for (int64_t c = 0; c < chunks; ++c)
    for (int b = 0; b < kTopBins; ++b) hist[b] += hists[c * kTopBins + b];
  int64_t need = k;
  const uint32_t top_bin = static_cast<uint32_t>(FindBin(hist, kTopBins, &need));

  // Pass B: everything above the bin is taken; the bin's members are candidates.
  std::vector<int64_t> above_at(chunks + 1, 0), cand_at(chunks + 1, 0);
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t up = 0;
    for (int b = static_cast<int>(top_bin) + 1; b < kTopBins; ++b) up += hists[c * kTopBins + b];
    above_at[c + 1] = above_at[c] + up;
    cand_at[c + 1] = cand_at[c] + hists[c * kTopBins + top_bin];
  }
  above.resize(above_at[chunks]);  // k - need
  cand_key.resize(cand_at[chunks]);  // hist[top_bin]
  cand_idx.resize(cand_at[chunks]);
  fedjax_comp::ParallelFor(*pool, chunks, 1, [&](int64_t c) {
    Collect(x, c * per, std::min(d, (c + 1) * per), top_bin, above.data() + above_at[c],
            above_at[c + 1] - above_at[c], cand_key.data() + cand_at[c],
            cand_idx.data() + cand_at[c], cand_at[c + 1] - cand_at[c]);
  });
  Resolve(top_bin, need, above, cand_key, cand_idx, out);
}

ffi::Error TopKImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                    ffi::ResultBuffer<ffi::S32> idx) {
  auto dims = x.dimensions();
  auto out_dims = idx->dimensions();
  if (dims.size() == 0 || out_dims.size() != dims.size())
    return ffi::Error::InvalidArgument("top_k: x [..., d] and indices [..., k] of equal rank");
  const int64_t d = dims.back(), k = out_dims.back();
  if (d < 1 || k < 1 || k > d || d > INT32_MAX)
    return ffi::Error::InvalidArgument("top_k: need 1 <= k <= d < 2^31");
  const int64_t rows = static_cast<int64_t>(x.element_count()) / d;
  if (static_cast<int64_t>(idx->element_count()) != rows * k)
    return ffi::Error::InvalidArgument("top_k: indices do not match x's rows");
  const float* in = x.typed_data();
  int32_t* out = idx->typed_data();
  // At most half as many rows as threads, and long ones: each row's passes
  // split over chunks of kChunk floats (or more), rows in turn; else rows in
  // parallel (two rows on two threads ran 1.1x faster whole than chunked).
  const int64_t threads = pool.num_threads() + 1;
  const int64_t chunks =
      2 * rows <= threads && d >= 2 * kChunk ? std::min<int64_t>(d / kChunk, 8 * threads) : 1;
  auto row = [=, &pool](int64_t r) {
    thread_local std::vector<uint32_t> cand_key;
    thread_local std::vector<int32_t> cand_idx, above;
    SelectRow(in + r * d, d, k, out + r * k, cand_key, cand_idx, above, &pool, chunks);
    if (cand_key.capacity() > (size_t{1} << 22)) {  // keep at most 4M entries (16 MB) each
      std::vector<uint32_t>().swap(cand_key);
      std::vector<int32_t>().swap(cand_idx);
    }
    if (above.capacity() > (size_t{1} << 22)) std::vector<int32_t>().swap(above);
  };
  if (chunks > 1) {
    for (int64_t r = 0; r < rows; ++r) row(r);
  } else {
    fedjax_comp::ParallelFor(pool, rows, 1, row);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompTopK, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
