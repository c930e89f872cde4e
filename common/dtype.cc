#include "common/dtype.h"

#include <algorithm>
#include <cstring>

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

// Every E4M3 code as float32, the NaNs canonical.
const float* Fp8E4M3Table() {
  static const auto* table = [] {
    auto* t = new float[256];
    for (int v = 0; v < 256; ++v) {
      t[v] = convert::DequantFp8(convert::Fp8E4M3ToFloat(v), 1.0f);
    }
    return t;
  }();
  return table;
}

template <typename Out, Out (*kRound)(float)>
void DequantizeBlocks(const uint8_t* row, size_t weights, size_t block,
                      Out* out) {
  const float* table = Fp8E4M3Table();
  const uint8_t* scales = row + weights;
  for (size_t b = 0; b * block < weights; ++b) {
    const float scale = convert::Ue8m0ToFloat(scales[b]);
    const size_t end = std::min(weights, (b + 1) * block);
    if (scale != scale) {
      for (size_t i = b * block; i < end; ++i) {
        out[i] = kRound(convert::BitsFloat(0x7fc00000u));
      }
      continue;
    }
    // A NaN weight times a number stays that (canonical) NaN.
    for (size_t i = b * block; i < end; ++i) {
      out[i] = kRound(table[row[i]] * scale);
    }
  }
}

float Identity(float f) { return f; }

}  // namespace

void DequantizeFp8Row(const uint8_t* row, size_t weights, size_t block,
                      void* dst, DType to) {
  switch (to) {
    case DType::kFloat32:
      DequantizeBlocks<float, Identity>(row, weights, block,
                                        static_cast<float*>(dst));
      return;
    case DType::kBFloat16:
      DequantizeBlocks<uint16_t, convert::FloatToBFloat16>(
          row, weights, block, static_cast<uint16_t*>(dst));
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
