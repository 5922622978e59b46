// Shared helpers of the native kernels: 8-lane vectors (GCC/clang vector
// extensions; the compiler splits them where the machine's vectors are
// narrower) and the field layout of `kernels.pack`.

#ifndef FEDJAX_COMP_NATIVE_VEC_H_
#define FEDJAX_COMP_NATIVE_VEC_H_

#include <cstdint>
#include <cstring>

namespace fedjax_comp {

typedef float V8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef uint32_t W8 __attribute__((vector_size(32)));
typedef float V4 __attribute__((vector_size(16)));
typedef double D4 __attribute__((vector_size(32)));
typedef uint8_t U8 __attribute__((vector_size(8)));
typedef uint8_t B32 __attribute__((vector_size(32)));

inline V8 Load(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline V8 Splat(float f) { return V8{f, f, f, f, f, f, f, f}; }
inline W8 SplatW(uint32_t u) { return W8{u, u, u, u, u, u, u, u}; }
// Lane-wise c ? a : b for a comparison mask c (all ones or zero per lane).
inline V8 Select(I8 c, V8 a, V8 b) {
  return reinterpret_cast<V8>((c & reinterpret_cast<I8>(a)) | (~c & reinterpret_cast<I8>(b)));
}
inline I8 SelectI(I8 c, I8 a, I8 b) { return (c & a) | (~c & b); }
// The low byte of each lane (lanes in 0..255), as 8 bytes: two byte shuffles,
// a permute and an OR. GCC 12's __builtin_convertvector to U8 extracted the
// lanes one by one (96 vpextrd in rotated_codes.cc's Codes<1>).
// (__builtin_shufflevector: clang and GCC >= 12; __builtin_shuffle: GCC.)
inline U8 LowBytes(I8 v) {
  const B32 b = reinterpret_cast<B32>(v);
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
  return __builtin_shufflevector(b, b, 0, 4, 8, 12, 16, 20, 24, 28);
#else
  const B32 low = __builtin_shuffle(b, B32{0, 4, 8, 12, 16, 20, 24, 28});
  U8 out;
  std::memcpy(&out, &low, sizeof(out));
  return out;
#endif
}

// Lane k: t[idx[k]] (idx in 0..7), and lo/hi[idx[k]] (idx in 0..15, hi from
// 8): one vpermps (two and a blend) with GCC's __builtin_shuffle. Clang has
// no variable shuffle builtin: there the plain loop (correct, slow), and
// kFastLookup tells the kernels to prefer their select chains.
#if defined(__GNUC__) && !defined(__clang__)
constexpr bool kFastLookup = true;
#else
constexpr bool kFastLookup = false;
#endif
inline V8 Lookup8(V8 t, I8 idx) {
#if defined(__GNUC__) && !defined(__clang__)
  return __builtin_shuffle(t, idx);
#else
  V8 out;
  for (int k = 0; k < 8; ++k) out[k] = t[idx[k] & 7];
  return out;
#endif
}
inline V8 Lookup16(V8 lo, V8 hi, I8 idx) {
#if defined(__GNUC__) && !defined(__clang__)
  return __builtin_shuffle(lo, hi, idx);
#else
  V8 out;
  for (int k = 0; k < 8; ++k) out[k] = (idx[k] & 8) ? hi[idx[k] & 7] : lo[idx[k] & 7];
  return out;
#endif
}

// A power-of-two-wide field of a b-bit code (`kernels._fields`): code bits
// [offset, offset + width) fill `width` words of each 32-code group, 32 /
// width fields to a word.
struct Field {
  int offset, width;
};

// The fields a `bits`-bit code splits into (b = 7: 1 + 2 + 4); their count.
inline int Fields(int bits, Field* out) {
  int count = 0, offset = 0;
  for (int width : {1, 2, 4, 8})
    if (bits & width) {
      out[count++] = Field{offset, width};
      offset += width;
    }
  return count;
}

}  // namespace fedjax_comp

#endif  // FEDJAX_COMP_NATIVE_VEC_H_
