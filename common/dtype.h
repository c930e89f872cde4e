// Element types of stored rows and the float conversions Lookup offers.
#ifndef ENGRAM_COMMON_DTYPE_H_
#define ENGRAM_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace engram {

// Numeric values match engram.v1.DType so the server edge converts by cast.
enum class DType : int {
  kFloat32 = 1,
  kBFloat16 = 2,
  kFloat16 = 3,
  kUInt8 = 4,  // opaque row bytes; D is bytes per row
};

// Bytes per element.
size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);
bool IsFloatDType(DType dtype);
// True when rows stored as `from` can be returned as `to`: identity, or any
// pair of float dtypes.
bool CanConvert(DType from, DType to);

// Scalar conversions. Narrowing rounds to nearest-even; NaN stays NaN,
// infinities and signed zeros are kept, float16 subnormals are exact.
float BFloat16ToFloat(uint16_t v);
uint16_t FloatToBFloat16(float f);
float Float16ToFloat(uint16_t v);
uint16_t FloatToFloat16(float f);

// Converts `count` elements from `src` (dtype `from`) into `dst` (dtype
// `to`). Requires CanConvert(from, to). Buffers must not overlap.
void ConvertElements(const void* src, DType from, void* dst, DType to,
                     size_t count);

// Dequantizes one FP8 E4M3 / UE8M0 row (QuantFormat::kFp8E4M3Ue8m0):
// `weights` weight bytes at `row`, then weights / block scale bytes; writes
// `weights` values of the float dtype `to` at `dst` (rounded to nearest
// even from the exact float32 product).
void DequantizeFp8Row(const uint8_t* row, size_t weights, size_t block,
                      void* dst, DType to);

}  // namespace engram

#endif  // ENGRAM_COMMON_DTYPE_H_
