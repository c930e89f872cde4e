#include "common/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/float_convert.h"

namespace engram {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Reference rounding by exhaustive nearest-neighbour search over the
// 16-bit codes, ties to the even code.
template <typename Decode>
uint16_t NearestCode(float f, Decode decode) {
  double best_err = INFINITY;
  uint16_t best = 0;
  for (uint32_t c = 0; c < 65536; ++c) {
    float v = decode(static_cast<uint16_t>(c));
    if (std::isnan(v) || std::signbit(v) != std::signbit(f)) continue;
    double err = std::fabs(static_cast<double>(v) - f);
    if (err < best_err || (err == best_err && (c & 1) == 0)) {
      best_err = err;
      best = static_cast<uint16_t>(c);
    }
  }
  return best;
}

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kFloat32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kUInt8), 1u);
  EXPECT_STREQ(DTypeName(DType::kBFloat16), "bfloat16");
  EXPECT_TRUE(CanConvert(DType::kFloat32, DType::kFloat16));
  EXPECT_TRUE(CanConvert(DType::kUInt8, DType::kUInt8));
  EXPECT_FALSE(CanConvert(DType::kUInt8, DType::kFloat32));
  EXPECT_FALSE(CanConvert(DType::kBFloat16, DType::kUInt8));
}

TEST(DTypeTest, HalfWidthCodesRoundTripExactly) {
  for (uint32_t c = 0; c < 65536; ++c) {
    uint16_t code = static_cast<uint16_t>(c);
    float h = Float16ToFloat(code);
    float b = BFloat16ToFloat(code);
    if (!std::isnan(h)) EXPECT_EQ(FloatToFloat16(h), code) << c;
    if (!std::isnan(b)) EXPECT_EQ(FloatToBFloat16(b), code) << c;
    if (std::isnan(h))
      EXPECT_TRUE(std::isnan(Float16ToFloat(FloatToFloat16(h))));
  }
}

TEST(DTypeTest, RoundsToNearestEvenLikeExhaustiveSearch) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mag(-20.0f, 17.0f);
  for (int i = 0; i < 300; ++i) {
    float f =
        std::ldexp(1.0f + (rng() % 1000000) / 1e6f, static_cast<int>(mag(rng)));
    if (i % 2) f = -f;
    if (std::fabs(f) < 65504.0f) {
      EXPECT_EQ(FloatToFloat16(f), NearestCode(f, Float16ToFloat)) << f;
    }
    EXPECT_EQ(FloatToBFloat16(f), NearestCode(f, BFloat16ToFloat)) << f;
  }
}

TEST(DTypeTest, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToFloat16(inf), 0x7c00);
  EXPECT_EQ(FloatToFloat16(-inf), 0xfc00);
  EXPECT_EQ(FloatToFloat16(70000.0f), 0x7c00);  // overflow
  EXPECT_EQ(FloatToFloat16(65504.0f), 0x7bff);  // largest finite
  EXPECT_EQ(FloatToFloat16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToFloat16(std::ldexp(1.0f, -24)), 0x0001);  // min subnormal
  EXPECT_EQ(FloatToFloat16(std::ldexp(1.0f, -26)), 0x0000);  // rounds to 0
  EXPECT_TRUE(std::isnan(Float16ToFloat(FloatToFloat16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
  EXPECT_EQ(FloatToBFloat16(inf), 0x7f80);
  EXPECT_EQ(Bits(BFloat16ToFloat(0x3f80)), Bits(1.0f));
}

TEST(DTypeTest, ConvertElementsMatchesScalarConversions) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 100.0f);
  std::vector<float> src(257);
  for (float& f : src) f = dist(rng);
  std::vector<uint16_t> bf(src.size()), h(src.size());
  ConvertElements(src.data(), DType::kFloat32, bf.data(), DType::kBFloat16,
                  src.size());
  ConvertElements(src.data(), DType::kFloat32, h.data(), DType::kFloat16,
                  src.size());
  std::vector<uint16_t> h_from_bf(src.size());
  ConvertElements(bf.data(), DType::kBFloat16, h_from_bf.data(),
                  DType::kFloat16, src.size());
  std::vector<float> back(src.size());
  ConvertElements(h.data(), DType::kFloat16, back.data(), DType::kFloat32,
                  src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    EXPECT_EQ(bf[i], FloatToBFloat16(src[i]));
    EXPECT_EQ(h[i], FloatToFloat16(src[i]));
    EXPECT_EQ(h_from_bf[i], FloatToFloat16(BFloat16ToFloat(bf[i])));
    EXPECT_EQ(Bits(back[i]), Bits(Float16ToFloat(h[i])));
  }
}

}  // namespace
}  // namespace engram

namespace engram {
namespace {

// Every (scale, weight) pair, in every position of a block, through the
// row dequantizer (its fast lane path and its table) against the scalar
// reference: decode both codes exactly, multiply in float32, round.
TEST(DequantizeFp8RowTest, EveryScaleAndWeightMatchesTheReference) {
  for (size_t block : {16, 32, 64, 128}) {
    const size_t weights = 256;
    for (int s = 0; s < 256; ++s) {
      for (int rotate = 0; rotate < 2; ++rotate) {
        // Every block of the row has scale s; the weights run through all
        // 256 codes (rotated so each code meets other neighbours).
        std::vector<uint8_t> row(weights + weights / block);
        for (size_t i = 0; i < weights; ++i) {
          row[i] = static_cast<uint8_t>(i * (rotate ? 7 : 1) + rotate * 13);
        }
        std::fill(row.begin() + weights, row.end(), static_cast<uint8_t>(s));
        const float scale = convert::Ue8m0ToFloat(static_cast<uint8_t>(s));
        for (DType to : {DType::kBFloat16, DType::kFloat16}) {
          std::vector<uint16_t> got(weights, 0x5555);
          DequantizeFp8Row(row.data(), weights, block, got.data(), to);
          for (size_t i = 0; i < weights; ++i) {
            const float value =
                convert::DequantFp8(convert::Fp8E4M3ToFloat(row[i]), scale);
            const uint16_t want = to == DType::kBFloat16
                                      ? convert::FloatToBFloat16(value)
                                      : convert::FloatToFloat16(value);
            ASSERT_EQ(got[i], want)
                << DTypeName(to) << " block " << block << " scale " << s
                << " weight 0x" << std::hex << int{row[i]};
          }
        }
        std::vector<float> f32(weights);
        DequantizeFp8Row(row.data(), weights, block, f32.data(),
                         DType::kFloat32);
        for (size_t i = 0; i < weights; ++i) {
          const float want =
              convert::DequantFp8(convert::Fp8E4M3ToFloat(row[i]), scale);
          uint32_t a, b;
          std::memcpy(&a, &f32[i], 4);
          std::memcpy(&b, &want, 4);
          ASSERT_EQ(a, b) << "float32 scale " << s;
        }
      }
    }
  }
}

// A block with one subnormal or NaN weight among normal ones (the lane
// path hands the block to the table) and blocks of different scales in
// one row.
TEST(DequantizeFp8RowTest, MixedBlocksInOneRow) {
  const size_t weights = 256, block = 32;
  std::vector<uint8_t> row(weights + weights / block);
  for (size_t i = 0; i < weights; ++i)
    row[i] = static_cast<uint8_t>(0x38 + i % 64);
  row[40] = 0x03;   // subnormal in block 1
  row[100] = 0x7f;  // NaN in block 3
  row[200] = 0x80;  // -0 in block 6
  const uint8_t scales[8] = {127, 7, 246, 130, 6, 247, 255, 0};
  std::memcpy(row.data() + weights, scales, 8);
  std::vector<uint16_t> got(weights);
  DequantizeFp8Row(row.data(), weights, block, got.data(), DType::kBFloat16);
  for (size_t i = 0; i < weights; ++i) {
    const float value =
        convert::DequantFp8(convert::Fp8E4M3ToFloat(row[i]),
                            convert::Ue8m0ToFloat(scales[i / block]));
    ASSERT_EQ(got[i], convert::FloatToBFloat16(value)) << i;
  }
}

}  // namespace
}  // namespace engram
