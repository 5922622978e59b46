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
// Two passes over the row; the rest touches only the candidates. Rows are
// independent work items (`fedjax_comp::ParallelFor`).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;

namespace {

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

// One row: writes the k selected indices, ascending, to out.
void SelectRow(const float* x, int64_t d, int64_t k, int32_t* out,
               std::vector<uint32_t>& cand_key, std::vector<int32_t>& cand_idx,
               std::vector<int32_t>& above) {
  constexpr int kTopBits = 11, kShift = 20;
  constexpr int kTopBins = 1 << kTopBits;
  // Pass A: four interleaved histograms (independent increments), then summed.
  thread_local std::vector<uint32_t> h4(4 * kTopBins);
  std::fill(h4.begin(), h4.end(), 0u);
  int64_t j = 0;
  for (; j + 4 <= d; j += 4)
    for (int t = 0; t < 4; ++t) ++h4[t * kTopBins + (Key(x[j + t]) >> kShift)];
  for (; j < d; ++j) ++h4[Key(x[j]) >> kShift];
  uint32_t hist[kTopBins];
  for (int b = 0; b < kTopBins; ++b)
    hist[b] = h4[b] + h4[kTopBins + b] + h4[2 * kTopBins + b] + h4[3 * kTopBins + b];
  int64_t need = k;
  const uint32_t top_bin = static_cast<uint32_t>(FindBin(hist, kTopBins, &need));

  // Pass B: everything above the bin is taken; the bin's members are candidates.
  above.clear();
  cand_key.clear();
  cand_idx.clear();
  above.reserve(k - need);
  cand_key.reserve(hist[top_bin]);
  cand_idx.reserve(hist[top_bin]);
  for (int64_t i = 0; i < d; ++i) {
    const uint32_t key = Key(x[i]);
    const uint32_t bin = key >> kShift;
    if (bin > top_bin) {
      above.push_back(static_cast<int32_t>(i));
    } else if (bin == top_bin) {
      cand_key.push_back(key);
      cand_idx.push_back(static_cast<int32_t>(i));
    }
  }

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
  int64_t o = 0, a = 0, equal_taken = 0;
  const int64_t na = static_cast<int64_t>(above.size());
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
  fedjax_comp::ParallelFor(pool, rows, 1, [=](int64_t r) {
    thread_local std::vector<uint32_t> cand_key;
    thread_local std::vector<int32_t> cand_idx, above;
    SelectRow(in + r * d, d, k, out + r * k, cand_key, cand_idx, above);
    if (cand_key.capacity() > (size_t{1} << 22)) {  // keep at most 4M entries (16 MB) each
      std::vector<uint32_t>().swap(cand_key);
      std::vector<int32_t>().swap(cand_idx);
    }
    if (above.capacity() > (size_t{1} << 22)) std::vector<int32_t>().swap(above);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompTopK, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
