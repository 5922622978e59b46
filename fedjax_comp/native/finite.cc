// Whether every float of a row is finite, as an XLA FFI kernel for the CPU
// (`kernels.all_finite`: `codecs.base.all_finite`, `poison_unless_finite`).
//
// XLA:CPU reduces ``jnp.all(jnp.isfinite(x))`` on one thread at about 9 GB/s
// (0.47 ms for 2^20 floats); here 8-lane integer compares of the exponent
// field, chunks of a row split over XLA's pool.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"
#include "vec.h"

namespace ffi = xla::ffi;
using fedjax_comp::I8;

namespace {

constexpr int64_t kChunk = 1 << 16;  // floats per work item

// 1 if x[0:len] holds a NaN or an infinity (exponent field all ones), else 0.
uint8_t AnyNonFinite(const float* x, int64_t len) {
  const I8 magnitude = I8{} + 0x7fffffff, exponent = I8{} + 0x7f800000;
  I8 bad = I8{};
  int64_t j = 0;
  auto load = [x](int64_t i) {  // one vector per memcpy: an array of them goes through the stack
    I8 v;
    std::memcpy(&v, x + i, sizeof(v));
    return v;
  };
  for (; j + 32 <= len; j += 32)  // four vectors per step: independent compares
    bad |= ((load(j) & magnitude) >= exponent) | ((load(j + 8) & magnitude) >= exponent) |
           ((load(j + 16) & magnitude) >= exponent) | ((load(j + 24) & magnitude) >= exponent);
  for (; j + 8 <= len; j += 8) bad |= (load(j) & magnitude) >= exponent;
  int32_t any = 0;
  for (int k = 0; k < 8; ++k) any |= bad[k];
  for (; j < len; ++j) {
    int32_t b;
    std::memcpy(&b, x + j, sizeof(b));
    any |= (b & 0x7fffffff) >= 0x7f800000;
  }
  return any != 0;
}

ffi::Error AllFiniteImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::ResultBuffer<ffi::PRED> finite) {
  auto dims = x.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("all_finite: x needs [..., n]");
  const int64_t n = dims.back();
  const int64_t rows = static_cast<int64_t>(finite->element_count());
  if (static_cast<int64_t>(x.element_count()) != rows * n)
    return ffi::Error::InvalidArgument(
        "all_finite: finite must be x's shape without its last axis");
  bool* out = finite->typed_data();
  if (n == 0) {
    std::fill(out, out + rows, true);
    return ffi::Error::Success();
  }
  const float* in = x.typed_data();
  const int64_t items_per_row = (n + kChunk - 1) / kChunk;
  std::vector<uint8_t> bad(rows * items_per_row);
  fedjax_comp::ParallelFor(pool, rows * items_per_row, 2, [&](int64_t it) {
    const int64_t r = it / items_per_row, j0 = (it % items_per_row) * kChunk;
    bad[it] = AnyNonFinite(in + r * n + j0, std::min(n, j0 + kChunk) - j0);
  });
  for (int64_t r = 0; r < rows; ++r)
    out[r] = std::none_of(bad.begin() + r * items_per_row, bad.begin() + (r + 1) * items_per_row,
                          [](uint8_t b) { return b != 0; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FedjaxCompAllFinite, AllFiniteImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::PRED>>());
