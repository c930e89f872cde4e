// Scalar float conversions shared by the CPU gather (common/dtype.cc) and the
// CUDA kernels, so both round identically, bit for bit. Header-only, plain
// C++; the functions are host+device when compiled by nvcc.
#ifndef ENGRAM_KERNELS_FLOAT_CONVERT_H_
#define ENGRAM_KERNELS_FLOAT_CONVERT_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ENGRAM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ENGRAM_HOST_DEVICE inline
#endif

namespace engram::convert {

ENGRAM_HOST_DEVICE uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

ENGRAM_HOST_DEVICE float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

ENGRAM_HOST_DEVICE float BFloat16ToFloat(uint16_t v) {
  return BitsFloat(static_cast<uint32_t>(v) << 16);
}

// Round to nearest-even; NaN stays NaN (sign kept, quiet bit forced).
ENGRAM_HOST_DEVICE uint16_t FloatToBFloat16(float f) {
  uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

ENGRAM_HOST_DEVICE float Float16ToFloat(uint16_t v) {
  uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  uint32_t exp = (v >> 10) & 0x1fu;
  uint32_t mant = v & 0x3ffu;
  if (exp == 0x1f) return BitsFloat(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return BitsFloat(sign);
    // Subnormal: mant * 2^-24, exact in float32.
    float mag = static_cast<float>(mant) * BitsFloat(0x33800000u);
    return BitsFloat(sign | FloatBits(mag));
  }
  return BitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

// Round to nearest-even, overflow to infinity, exact subnormals.
ENGRAM_HOST_DEVICE uint16_t FloatToFloat16(float f) {
  uint32_t u = FloatBits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) {
    return sign | 0x7e00u | static_cast<uint16_t>((abs >> 13) & 0x3ffu);
  }
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520
  if (abs < 0x38800000u) {  // below 2^-14: subnormal or zero
    // Scale one float16 subnormal ulp (2^-24) to 1.0 and round the integer
    // part to nearest-even by hand (no FPU rounding-mode assumptions).
    float scaled = BitsFloat(abs) * 16777216.0f;  // exact
    uint32_t q = static_cast<uint32_t>(scaled);
    float rem = scaled - static_cast<float>(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
  uint32_t r = (abs + rounding) >> 13;
  return sign | static_cast<uint16_t>(r - (112u << 10));
}

// OCP FP8 E4M3 as float32, exactly: bias 7, subnormals below 2^-6, no
// infinities, 0x7F and 0xFF NaN.
ENGRAM_HOST_DEVICE float Fp8E4M3ToFloat(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  const uint32_t exp = (v >> 3) & 0xfu;
  const uint32_t mant = v & 0x7u;
  if (exp == 0xfu && mant == 0x7u) return BitsFloat(sign | 0x7fc00000u);
  if (exp == 0) {
    // Subnormal: mant * 2^-9, exact in float32.
    const float mag = static_cast<float>(mant) * BitsFloat(0x3b000000u);
    return BitsFloat(sign | FloatBits(mag));
  }
  return BitsFloat(sign | ((exp + 120u) << 23) | (mant << 20));
}

// OCP E8M0 (UE8M0) scale as float32, exactly: 2^(v - 127); 0 is 2^-127 (a
// float32 subnormal), 0xFF NaN.
ENGRAM_HOST_DEVICE float Ue8m0ToFloat(uint8_t v) {
  if (v == 0xffu) return BitsFloat(0x7fc00000u);
  if (v == 0) return BitsFloat(0x00400000u);
  return BitsFloat(static_cast<uint32_t>(v) << 23);
}

// One dequantized value: weight times scale in float32 (exact but for
// overflow to infinity, since the scale is a power of two); a NaN weight or
// scale gives the canonical quiet NaN, on the CPU and the GPU alike.
ENGRAM_HOST_DEVICE float DequantFp8(float weight, float scale) {
  if (weight != weight || scale != scale) return BitsFloat(0x7fc00000u);
  return weight * scale;
}

}  // namespace engram::convert

#endif  // ENGRAM_KERNELS_FLOAT_CONVERT_H_
