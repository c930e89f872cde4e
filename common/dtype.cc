#include "common/dtype.h"

#include <algorithm>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/float_convert.h"

namespace engram {
namespace {

template <typename Src, typename Dst, typename Fn>
void ConvertLoop(const void* src, void* dst, size_t count, Fn fn) {
  const Src* s = static_cast<const Src*>(src);
  Dst* d = static_cast<Dst*>(dst);
  for (size_t i = 0; i < count; ++i) d[i] = fn(s[i]);
}

float ToFloat(const void* src, DType from, size_t i) {
  switch (from) {
    case DType::kFloat32:
      return static_cast<const float*>(src)[i];
    case DType::kBFloat16:
      return BFloat16ToFloat(static_cast<const uint16_t*>(src)[i]);
    case DType::kFloat16:
      return Float16ToFloat(static_cast<const uint16_t*>(src)[i]);
    case DType::kUInt8:
      break;
  }
  return 0.0f;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kBFloat16:
    case DType::kFloat16:
      return 2;
    case DType::kUInt8:
      return 1;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
    case DType::kUInt8:
      return "uint8";
  }
  return "unknown";
}

bool IsFloatDType(DType dtype) { return dtype != DType::kUInt8; }

bool CanConvert(DType from, DType to) {
  return from == to || (IsFloatDType(from) && IsFloatDType(to));
}

float BFloat16ToFloat(uint16_t v) { return convert::BFloat16ToFloat(v); }
uint16_t FloatToBFloat16(float f) { return convert::FloatToBFloat16(f); }
float Float16ToFloat(uint16_t v) { return convert::Float16ToFloat(v); }
uint16_t FloatToFloat16(float f) { return convert::FloatToFloat16(f); }

void ConvertElements(const void* src, DType from, void* dst, DType to,
                     size_t count) {
  if (from == to) {
    std::memcpy(dst, src, count * DTypeSize(from));
    return;
  }
  switch (to) {
    case DType::kFloat32: {
      float* d = static_cast<float*>(dst);
      for (size_t i = 0; i < count; ++i) d[i] = ToFloat(src, from, i);
      return;
    }
    case DType::kBFloat16:
      if (from == DType::kFloat32) {
        ConvertLoop<float, uint16_t>(src, dst, count, FloatToBFloat16);
      } else {
        uint16_t* d = static_cast<uint16_t*>(dst);
        for (size_t i = 0; i < count; ++i)
          d[i] = FloatToBFloat16(ToFloat(src, from, i));
      }
      return;
    case DType::kFloat16:
      if (from == DType::kFloat32) {
        ConvertLoop<float, uint16_t>(src, dst, count, FloatToFloat16);
      } else {
        uint16_t* d = static_cast<uint16_t*>(dst);
        for (size_t i = 0; i < count; ++i)
          d[i] = FloatToFloat16(ToFloat(src, from, i));
      }
      return;
    case DType::kUInt8:
      return;  // only the identity case reaches here (handled above)
  }
}

namespace {

// Every (scale, weight) code pair dequantized into `Out`: 65536 entries
// (128 KiB for 16-bit outputs, 256 KiB for float32), built once on first
// use. A block reads one 256-entry row of it (one scale), so the rows in
// use stay in L1; about 3x faster than decoding and rounding each value.
template <typename Out, Out (*kRound)(float)>
const Out* DequantTable() {
  static const Out* table = [] {
    auto* t = new Out[256 * 256];
    for (int s = 0; s < 256; ++s) {
      const float scale = convert::Ue8m0ToFloat(static_cast<uint8_t>(s));
      for (int w = 0; w < 256; ++w) {
        t[s * 256 + w] = kRound(convert::DequantFp8(
            convert::Fp8E4M3ToFloat(static_cast<uint8_t>(w)), scale));
      }
    }
    return t;
  }();
  return table;
}

template <typename Out, Out (*kRound)(float)>
void DequantizeBlocks(const uint8_t* row, size_t weights, size_t block,
                      Out* out) {
  const Out* table = DequantTable<Out, kRound>();
  const uint8_t* scales = row + weights;
  for (size_t b = 0; b * block < weights; ++b) {
    const Out* values = table + size_t{scales[b]} * 256;
    const size_t end = std::min(weights, (b + 1) * block);
    for (size_t i = b * block; i < end; ++i) out[i] = values[row[i]];
  }
}

float Identity(float f) { return f; }

#if defined(__SSE2__)
// bfloat16 values of one block of `n` (a multiple of 16) FP8 E4M3 weights
// sharing UE8M0 scale `s`, by integer lane arithmetic: a normal E4M3
// magnitude shifted left 4 is its bfloat16 bits at scale 2^0 (exponent
// e + 120, mantissa m << 4), and the power-of-two scale only adds s - 127
// to the exponent field - exact, as the float32 product and its rounding
// are, while the result stays a normal number, which for s in [7, 246] it
// does for every normal weight. Zeros keep their sign. Subnormal and NaN
// weights (trained blocks have few) are rewritten from `values`, the table
// row of this scale. False (nothing written) for another scale, a block
// of more than 128, or more than one such weight per 16 on average.
bool DequantBf16Block(const uint8_t* w, size_t n, uint8_t s,
                      const uint16_t* values, uint16_t* out) {
  if (s < 7 || s > 246 || n > 128) return false;
  const __m128i zero = _mm_setzero_si128();
  const __m128i low7 = _mm_set1_epi8(0x7f);
  const __m128i exponent = _mm_set1_epi8(0x78);
  // Subnormal (no exponent bits, not zero) and NaN (0x7f) lanes; a block
  // with many (random bytes, not trained weights) is the table's.
  unsigned odd[8];
  int count = 0;
  for (size_t i = 0; i < n; i += 16) {
    const __m128i mag = _mm_and_si128(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)), low7);
    const __m128i no_exponent =
        _mm_cmpeq_epi8(_mm_and_si128(mag, exponent), zero);
    const __m128i special =
        _mm_or_si128(_mm_andnot_si128(_mm_cmpeq_epi8(mag, zero), no_exponent),
                     _mm_cmpeq_epi8(mag, low7));
    odd[i / 16] = static_cast<unsigned>(_mm_movemask_epi8(special));
    count += __builtin_popcount(odd[i / 16]);
  }
  if (count > static_cast<int>(n / 16)) return false;
  const __m128i shift = _mm_set1_epi16(static_cast<int16_t>((s - 7) << 7));
  const __m128i low7_16 = _mm_set1_epi16(0x7f);
  const __m128i sign_16 = _mm_set1_epi16(0x80);
  for (size_t i = 0; i < n; i += 16) {
    const __m128i bytes =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i));
    uint16_t* o = out + i;
    for (const __m128i x :
         {_mm_unpacklo_epi8(bytes, zero), _mm_unpackhi_epi8(bytes, zero)}) {
      const __m128i mag = _mm_and_si128(x, low7_16);
      const __m128i sign = _mm_slli_epi16(_mm_and_si128(x, sign_16), 8);
      const __m128i bits = _mm_add_epi16(_mm_slli_epi16(mag, 4), shift);
      const __m128i is_zero = _mm_cmpeq_epi16(mag, zero);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o),
                       _mm_or_si128(_mm_andnot_si128(is_zero, bits), sign));
      o += 8;
    }
    for (unsigned mask = odd[i / 16]; mask != 0; mask &= mask - 1) {
      const size_t lane = i + static_cast<size_t>(__builtin_ctz(mask));
      out[lane] = values[w[lane]];
    }
  }
  return true;
}
#endif

// bfloat16 rows: each block by lane arithmetic where it is exact (almost
// every trained block), else through the table.
void DequantizeBlocksBf16(const uint8_t* row, size_t weights, size_t block,
                          uint16_t* out) {
#if defined(__SSE2__)
  if (block % 16 == 0 && weights % block == 0) {
    const uint16_t* table = DequantTable<uint16_t, convert::FloatToBFloat16>();
    const uint8_t* scales = row + weights;
    for (size_t b = 0; b * block < weights; ++b) {
      const uint8_t* w = row + b * block;
      uint16_t* o = out + b * block;
      const uint16_t* values = table + size_t{scales[b]} * 256;
      if (DequantBf16Block(w, block, scales[b], values, o)) continue;
      for (size_t i = 0; i < block; ++i) o[i] = values[w[i]];
    }
    return;
  }
#endif
  DequantizeBlocks<uint16_t, convert::FloatToBFloat16>(row, weights, block,
                                                       out);
}

}  // namespace

void DequantizeFp8Row(const uint8_t* row, size_t weights, size_t block,
                      void* dst, DType to) {
  switch (to) {
    case DType::kFloat32:
      DequantizeBlocks<float, Identity>(row, weights, block,
                                        static_cast<float*>(dst));
      return;
    case DType::kBFloat16:
      DequantizeBlocksBf16(row, weights, block, static_cast<uint16_t*>(dst));
      return;
    case DType::kFloat16:
      DequantizeBlocks<uint16_t, convert::FloatToFloat16>(
          row, weights, block, static_cast<uint16_t*>(dst));
      return;
    case DType::kUInt8:
      return;  // not a value dtype; PlanLookup never asks for it
  }
}

}  // namespace engram
