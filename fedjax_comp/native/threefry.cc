// jax.random.bits for threefry2x32 keys, as an XLA FFI kernel for the CPU
// (`kernels.random_bits`).
//
// With ``jax_threefry_partitionable`` (JAX's default), ``jax.random.bits(key,
// (n,), uint32)`` is, for each i, the XOR of the two output words of the
// Threefry-2x32 block cipher (Salmon et al., "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011; 20 rounds) keyed by the key's two words, applied
// to the counter (i >> 32, i & 0xffffffff). XLA:CPU evaluates that at about
// 16 ns per word on this project's CPU (0.6 ms for the 32,768 sign words of a
// 2^20-coordinate rotation); here the rounds run on 8-lane vectors, two
// vectors at a time, rows and chunks of a row split over XLA's pool. Every
// word equals JAX's bit for bit (the cipher is integer arithmetic).
//
// `kernels.stratified_indices` (one uniform index from each of k contiguous
// strata of [0, n)) is the second kernel: the same words, then, per stratum
// j, u = (word >> 8) * 2^-24 and index = start_j + min(int(u * size_j),
// size_j - 1), in float32 and int32 as its XLA path computes them, so the
// indices equal that path's bit for bit. (XLA:CPU compiles that short
// elementwise tail erratically: 0.03-0.27 ms for k = 32,768.)

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"
#include "vec.h"

namespace ffi = xla::ffi;
using fedjax_comp::I8;
using fedjax_comp::V8;
using fedjax_comp::W8;

namespace {

// Words per work item; it divides 2^32, so a chunk's counters share one high word.
constexpr int64_t kChunk = 1 << 14;
// Words below which a helper thread is not worth waking (about 40 us of rounds).
constexpr int64_t kWordsPerTask = 1 << 15;

// ParallelFor's min_items_per_task for items of `per_item` words.
inline int64_t ItemsPerTask(int64_t per_item) {
  return std::max<int64_t>(2, (kWordsPerTask + per_item - 1) / per_item);
}

template <int R, typename T>
inline T Rotl(T x) {
  return (x << R) | (x >> (32 - R));
}

template <int R0, int R1, int R2, int R3, typename T>
inline void Rounds(T& x0, T& x1) {
  x0 += x1; x1 = Rotl<R0>(x1); x1 ^= x0;
  x0 += x1; x1 = Rotl<R1>(x1); x1 ^= x0;
  x0 += x1; x1 = Rotl<R2>(x1); x1 ^= x0;
  x0 += x1; x1 = Rotl<R3>(x1); x1 ^= x0;
}

// Threefry-2x32, 20 rounds, of the block (x0, x1) under the key (k0, k1); k2
// is the key schedule's parity word k0 ^ k1 ^ 0x1BD11BDA. Returns x0 ^ x1.
template <typename T>
inline T Threefry(T x0, T x1, uint32_t k0, uint32_t k1, uint32_t k2) {
  x0 += k0;
  x1 += k1;
  Rounds<13, 15, 26, 6>(x0, x1);
  x0 += k1;
  x1 += k2 + 1u;
  Rounds<17, 29, 16, 24>(x0, x1);
  x0 += k2;
  x1 += k0 + 2u;
  Rounds<13, 15, 26, 6>(x0, x1);
  x0 += k0;
  x1 += k1 + 3u;
  Rounds<17, 29, 16, 24>(x0, x1);
  x0 += k1;
  x1 += k2 + 4u;
  Rounds<13, 15, 26, 6>(x0, x1);
  x0 += k2;
  x1 += k0 + 5u;
  return x0 ^ x1;
}

ffi::Error ThreefryBitsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> key,
                            ffi::ResultBuffer<ffi::U32> bits) {
  auto dims = bits->dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("threefry_bits: bits needs [..., n]");
  const int64_t n = dims.back();
  if (n == 0) return ffi::Error::Success();
  const int64_t rows = static_cast<int64_t>(bits->element_count()) / n;
  if (static_cast<int64_t>(key.element_count()) != 2 * rows)
    return ffi::Error::InvalidArgument("threefry_bits: key must be [..., 2], one per row of bits");
  const uint32_t* keys = key.typed_data();
  uint32_t* out = bits->typed_data();
  const int64_t items_per_row = (n + kChunk - 1) / kChunk;
  fedjax_comp::ParallelFor(pool, rows * items_per_row, ItemsPerTask(std::min(n, kChunk)),
                           [&](int64_t it) {
    const int64_t r = it / items_per_row, i0 = (it % items_per_row) * kChunk;
    const int64_t i1 = std::min(n, i0 + kChunk);
    const uint32_t k0 = keys[2 * r], k1 = keys[2 * r + 1], k2 = k0 ^ k1 ^ 0x1BD11BDAu;
    const uint32_t hi = static_cast<uint32_t>(static_cast<uint64_t>(i0) >> 32);
    uint32_t* o = out + r * n;
    const W8 lane = W8{0, 1, 2, 3, 4, 5, 6, 7};
    const W8 his = fedjax_comp::SplatW(hi);
    int64_t i = i0;
    for (; i + 16 <= i1; i += 16) {  // two independent blocks of 8 keep the ALUs busy
      const W8 lo = fedjax_comp::SplatW(static_cast<uint32_t>(i)) + lane;
      const W8 a = Threefry(his, lo, k0, k1, k2);
      const W8 b = Threefry(his, lo + 8u, k0, k1, k2);
      std::memcpy(o + i, &a, sizeof(a));
      std::memcpy(o + i + 8, &b, sizeof(b));
    }
    for (; i < i1; ++i) o[i] = Threefry(hi, static_cast<uint32_t>(i), k0, k1, k2);
  });
  return ffi::Error::Success();
}

// One index per stratum of [0, n) (see the header), for each key's row.
ffi::Error StratifiedImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> key,
                          ffi::ResultBuffer<ffi::S32> index, ffi::ResultBuffer<ffi::F32> sizes,
                          int64_t n) {
  auto dims = index->dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("stratified: index needs [..., k]");
  const int64_t k = dims.back();
  if (k < 1 || k > n || n > INT32_MAX)
    return ffi::Error::InvalidArgument("stratified: need 1 <= k <= n < 2^31");
  const int64_t rows = static_cast<int64_t>(index->element_count()) / k;
  if (static_cast<int64_t>(key.element_count()) != 2 * rows ||
      static_cast<int64_t>(sizes->element_count()) != rows * k)
    return ffi::Error::InvalidArgument("stratified: key must be [..., 2], sizes like index");
  const int32_t size = static_cast<int32_t>(n / k), extra = static_cast<int32_t>(n % k);
  const uint32_t* keys = key.typed_data();
  int32_t* idx_out = index->typed_data();
  float* size_out = sizes->typed_data();
  const int64_t items_per_row = (k + kChunk - 1) / kChunk;
  fedjax_comp::ParallelFor(pool, rows * items_per_row, ItemsPerTask(std::min(k, kChunk)),
                           [&](int64_t it) {
    const int64_t r = it / items_per_row, j0 = (it % items_per_row) * kChunk;
    const int64_t j1 = std::min(k, j0 + kChunk);
    const uint32_t k0 = keys[2 * r], k1 = keys[2 * r + 1], k2 = k0 ^ k1 ^ 0x1BD11BDAu;
    int32_t* idx = idx_out + r * k;
    float* sz = size_out + r * k;
    // Stratum j: start j * size + min(j, extra), size + (j < extra).
    auto one = [&](int32_t j, uint32_t word) {
      const int32_t s = size + (j < extra ? 1 : 0);
      const float u = static_cast<float>(word >> 8) * 0x1p-24f;
      const int32_t offset = std::min(static_cast<int32_t>(u * static_cast<float>(s)), s - 1);
      idx[j] = j * size + std::min(j, extra) + offset;
      sz[j] = static_cast<float>(s);
    };
    const W8 lane = W8{0, 1, 2, 3, 4, 5, 6, 7};
    int64_t j = j0;
    for (; j + 8 <= j1; j += 8) {
      const W8 counter = fedjax_comp::SplatW(static_cast<uint32_t>(j)) + lane;
      const W8 word = Threefry(W8{}, counter, k0, k1, k2);
      const I8 jj = reinterpret_cast<I8>(fedjax_comp::SplatW(static_cast<uint32_t>(j)) + lane);
      const I8 big = jj < extra;  // all ones where the stratum is one longer
      const I8 s = (I8{} + size) - big;
      const V8 s_f = __builtin_convertvector(s, V8);
      const V8 u = __builtin_convertvector(reinterpret_cast<I8>(word >> 8), V8) * 0x1p-24f;
      const I8 t = __builtin_convertvector(u * s_f, I8);  // truncation, as XLA's convert
      const I8 offset = fedjax_comp::SelectI(t < s - 1, t, s - 1);
      const I8 start = jj * size + fedjax_comp::SelectI(big, jj, I8{} + extra);
      const I8 out = start + offset;
      std::memcpy(idx + j, &out, sizeof(out));
      std::memcpy(sz + j, &s_f, sizeof(s_f));
    }
    for (; j < j1; ++j)
      one(static_cast<int32_t>(j), Threefry(0u, static_cast<uint32_t>(j), k0, k1, k2));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompThreefryBits, ThreefryBitsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompStratified, StratifiedImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("n"));
