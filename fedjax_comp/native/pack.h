// The packed layout of `kernels.pack` in C++: the loops every native codec
// kernel packs and unpacks its codes with (quantize.cc, rotated_codes.cc).

#ifndef FEDJAX_COMP_NATIVE_PACK_H_
#define FEDJAX_COMP_NATIVE_PACK_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "vec.h"

namespace fedjax_comp {

// Word columns [g0, g1) of one row's `bits`-bit codes, packed as `kernels.pack`
// packs them: code8(i0) gives codes i0 .. i0 + 7, code1(i) code i (< n).
template <typename Code8, typename Code1Fn>
inline void PackRange(int64_t n, int64_t groups, int64_t bits, int64_t g0, int64_t g1, uint32_t* wr,
               Code8 code8, Code1Fn code1) {
  Field fields[4];
  const int nfields = Fields(static_cast<int>(bits), fields);
  int64_t g = g0;
  // Whole runs of 8 word columns whose 32 codes all lie inside the row.
  for (; g + 8 <= g1 && 31 * groups + g + 8 <= n; g += 8) {
    W8 acc[8] = {};
    for (int64_t R = 0; R < 32; ++R) {
      const W8 code = code8(R * groups + g);
      int row = 0;
      for (int f = 0; f < nfields; ++f) {
        const int w = fields[f].width, per_word = 32 / w;
        const W8 field = (code >> fields[f].offset) & SplatW((1u << w) - 1u);
        acc[row + R / per_word] |= field << static_cast<uint32_t>((R % per_word) * w);
        row += w;
      }
    }
    for (int64_t b = 0; b < bits; ++b) std::memcpy(wr + b * groups + g, &acc[b], sizeof(W8));
  }
  for (; g < g1; ++g) {  // the rest, code by code (padding codes are 0)
    uint32_t acc[8] = {};
    for (int64_t R = 0; R < 32; ++R) {
      const int64_t i = R * groups + g;
      const uint32_t code = i < n ? code1(i) : 0u;
      int row = 0;
      for (int f = 0; f < nfields; ++f) {
        const int w = fields[f].width, per_word = 32 / w;
        const uint32_t field = (code >> fields[f].offset) & ((1u << w) - 1u);
        acc[row + R / per_word] |= field << ((R % per_word) * w);
        row += w;
      }
    }
    for (int64_t b = 0; b < bits; ++b) wr[b * groups + g] = acc[b];
  }
}

// Word columns [g0, g1) of one row whose codes sit materialized, one byte
// each, in cb (zero past n): per field row and shift, one OR over a
// contiguous range of g, which vectorizes. PackRange's 8 words at a time,
// fed from the bytes, took 1.5x as long (`rotated_codes.cc`'s pass 3).
inline void PackBytes(const uint8_t* cb, int64_t n, int64_t groups, int64_t bits, int64_t g0,
                      int64_t g1, uint32_t* wr) {
  Field fields[4];
  const int nfields = Fields(static_cast<int>(bits), fields);
  int row = 0;
  for (int f = 0; f < nfields; ++f) {
    const int w = fields[f].width, off = fields[f].offset, per_word = 32 / w;
    const uint32_t mask = (1u << w) - 1u;
    for (int a = 0; a < w; ++a) {
      uint32_t* dst = wr + (row + a) * groups;
      for (int64_t g = g0; g < g1; ++g) dst[g] = 0;
      for (int p = 0; p < per_word; ++p) {
        const int64_t start = (a * per_word + p) * groups;  // code index of column g = 0
        const uint8_t* src = cb + start;
        const int64_t end = std::min(g1, std::max(g0, n - start));  // codes past n are 0
        const int shift = p * w;
        for (int64_t g = g0; g < end; ++g)
          dst[g] |= ((static_cast<uint32_t>(src[g]) >> off) & mask) << shift;
      }
    }
    row += w;
  }
}

// Codes [i0, i1) of one row packed as `kernels.pack` packs them (G =
// `groups` words per bit row at `wr`), read in runs of one R (i = R * G + g:
// consecutive words): emit8(i, W8 codes of i .. i + 7), emit1(i, code of i).
template <typename Emit8, typename Emit1>
inline void UnpackRange(const uint32_t* wr, int64_t groups, int64_t bits, int64_t i0, int64_t i1,
                 Emit8 emit8, Emit1 emit1) {
  Field fields[4];
  const int nfields = Fields(static_cast<int>(bits), fields);
  for (int64_t i = i0; i < i1;) {
    const int64_t R = i / groups, g0 = i % groups;
    const int64_t run = std::min(i1 - i, groups - g0);
    const uint32_t* src[4];
    uint32_t shift[4], mask[4], off[4];
    int row = 0;
    for (int f = 0; f < nfields; ++f) {
      const int w = fields[f].width, per_word = 32 / w;
      src[f] = wr + (row + R / per_word) * groups + g0;
      shift[f] = static_cast<uint32_t>((R % per_word) * w);
      mask[f] = (1u << w) - 1u;
      off[f] = static_cast<uint32_t>(fields[f].offset);
      row += w;
    }
    int64_t j = 0;
    for (; j + 8 <= run; j += 8) {
      W8 code = W8{};
      for (int f = 0; f < nfields; ++f) {
        W8 wv;
        std::memcpy(&wv, src[f] + j, sizeof(wv));
        code |= ((wv >> shift[f]) & mask[f]) << off[f];
      }
      emit8(i + j, code);
    }
    for (; j < run; ++j) {
      uint32_t code = 0;
      for (int f = 0; f < nfields; ++f) code |= ((src[f][j] >> shift[f]) & mask[f]) << off[f];
      emit1(i + j, code);
    }
    i += run;
  }
}

}  // namespace fedjax_comp

#endif  // FEDJAX_COMP_NATIVE_PACK_H_
