// Pass-1 statistics shared by the native codec kernels (rotated_codes.cc,
// quantize.cc's QSGD): max |y|, finiteness and sum y^2 of a range, the sum
// in double.

#ifndef FEDJAX_COMP_NATIVE_SCAN_H_
#define FEDJAX_COMP_NATIVE_SCAN_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "vec.h"

namespace fedjax_comp {

// sum_k a[k] * b[k] of two 8-float vectors, added to acc in double, lane by lane.
inline void AddProducts(V8 a, V8 b, D4* acc) {
  float fa[8], fb[8];
  std::memcpy(fa, &a, sizeof(a));
  std::memcpy(fb, &b, sizeof(b));
  V4 a0, a1, b0, b1;
  std::memcpy(&a0, fa, 16);
  std::memcpy(&a1, fa + 4, 16);
  std::memcpy(&b0, fb, 16);
  std::memcpy(&b1, fb + 4, 16);
  acc[0] += __builtin_convertvector(a0, D4) * __builtin_convertvector(b0, D4);
  acc[1] += __builtin_convertvector(a1, D4) * __builtin_convertvector(b1, D4);
}
inline double Sum(const D4* acc) {
  double s = 0.0;
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k) s += acc[h][k];
  return s;
}

// Pass 1 over y[0:len]: max |y|, whether all are finite, sum y^2 (double).
inline void Scan(const float* y, int64_t len, float* top, bool* finite, double* sq) {
  const I8 abs_mask = I8{} + 0x7fffffff;
  const V8 fmax = Splat(std::numeric_limits<float>::max());
  V8 t = Splat(0.0f);
  I8 bad = I8{};
  D4 s[2] = {};
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const V8 v = Load(y + j);
    const V8 a = reinterpret_cast<V8>(reinterpret_cast<I8>(v) & abs_mask);
    bad |= ~(a <= fmax);
    t = Select(t < a, a, t);
    AddProducts(v, v, s);
  }
  float top_ = 0.0f;
  bool ok = true;
  double sum = Sum(s);
  for (int k = 0; k < 8; ++k) {
    top_ = std::max(top_, t[k]);
    ok &= !bad[k];
  }
  for (; j < len; ++j) {  // rows shorter than 8
    const float a = std::fabs(y[j]);
    ok &= a <= std::numeric_limits<float>::max();
    top_ = std::max(top_, a);
    sum += static_cast<double>(y[j]) * y[j];
  }
  *top = top_;
  *finite = ok;
  *sq = sum;
}

}  // namespace fedjax_comp

#endif  // FEDJAX_COMP_NATIVE_SCAN_H_
