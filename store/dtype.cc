#include "store/dtype.h"

#include <cstring>

namespace engram {
namespace {

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

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

float BFloat16ToFloat(uint16_t v) {
  return BitsFloat(static_cast<uint32_t>(v) << 16);
}

uint16_t FloatToBFloat16(float f) {
  uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep sign, force quiet bit
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float Float16ToFloat(uint16_t v) {
  uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  uint32_t exp = (v >> 10) & 0x1fu;
  uint32_t mant = v & 0x3ffu;
  if (exp == 0x1f) {  // inf / NaN
    return BitsFloat(sign | 0x7f800000u | (mant << 13));
  }
  if (exp == 0) {
    if (mant == 0) return BitsFloat(sign);
    // Subnormal: value = mant * 2^-24, exact in float32.
    float mag = static_cast<float>(mant) * BitsFloat(0x33800000u);
    return BitsFloat(sign | FloatBits(mag));
  }
  return BitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t FloatToFloat16(float f) {
  uint32_t u = FloatBits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) {  // NaN: keep payload top bits, stay NaN
    return sign | 0x7e00u | static_cast<uint16_t>((abs >> 13) & 0x3ffu);
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow to infinity
    return sign | 0x7c00u;
  }
  if (abs < 0x38800000u) {  // below the smallest normal (2^-14)
    // Scale so that one float16 subnormal ulp (2^-24) becomes 1.0, and let
    // the FPU round to nearest-even on the integer conversion path.
    float scaled = BitsFloat(abs) * 16777216.0f;  // * 2^24, exact
    uint32_t q = static_cast<uint32_t>(scaled);
    float rem = scaled - static_cast<float>(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits.
  uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
  uint32_t r = (abs + rounding) >> 13;
  return sign | static_cast<uint16_t>(r - (112u << 10));
}

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

}  // namespace engram
