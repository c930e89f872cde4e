#include "proto/wire_format.h"

#include <gtest/gtest.h>

#include "engram/internal/v1/peer.pb.h"
#include "engram/v1/engram.pb.h"

namespace engram::wire {
namespace {

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const auto& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

TEST(WireFormatTest, ResponseHeaderPlusRowsParsesAsProtobuf) {
  const int64_t shape[] = {2, 300, 16, 64};
  const std::string rows(2 * 300 * 16 * 64 * 2, '\x5a');
  std::string wire(LookupResponseHeaderSize(shape, rows.size()), '\0');
  size_t n = EncodeLookupResponseHeader(
      shape, 2, rows.size(), reinterpret_cast<uint8_t*>(wire.data()));
  ASSERT_EQ(n, wire.size());
  wire += rows;
  v1::LookupResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  EXPECT_EQ(std::vector<int64_t>(parsed.shape().begin(), parsed.shape().end()),
            std::vector<int64_t>(std::begin(shape), std::end(shape)));
  EXPECT_EQ(parsed.dtype(), v1::DTYPE_BFLOAT16);
  EXPECT_EQ(parsed.data(), rows);
}

TEST(WireFormatTest, DecodesProtobufSerializedResponseAcrossSlices) {
  v1::LookupResponse message;
  for (int64_t d : {1, 2, 3, 5}) message.add_shape(d);
  message.set_dtype(v1::DTYPE_FLOAT32);
  std::string rows(120, '\0');
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<char>(i);
  message.set_data(rows);
  const std::string bytes = message.SerializeAsString();
  // Split the bytes into 7-byte slices so fields straddle slice borders.
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < bytes.size(); i += 7) {
    slices.emplace_back(bytes.data() + i,
                        std::min<size_t>(7, bytes.size() - i));
  }
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  std::vector<uint8_t> out(120);
  DecodedLookup decoded;
  ASSERT_TRUE(DecodeLookupResponse(buffer, out, &decoded).ok());
  EXPECT_EQ(decoded.shape, (std::vector<int64_t>{1, 2, 3, 5}));
  EXPECT_EQ(decoded.dtype, 1);
  EXPECT_EQ(std::string(out.begin(), out.end()), rows);

  std::vector<uint8_t> wrong(119);
  EXPECT_EQ(DecodeLookupResponse(buffer, wrong, &decoded).code(),
            absl::StatusCode::kInvalidArgument);
  grpc::Slice truncated(bytes.data(), bytes.size() - 3);
  EXPECT_EQ(DecodeLookupResponse(grpc::ByteBuffer(&truncated, 1), out, &decoded)
                .code(),
            absl::StatusCode::kDataLoss);
}

TEST(WireFormatTest, RequestAliasesIdsAndParsesAsProtobuf) {
  std::vector<int64_t> ids = {5, -1, 1LL << 40};
  const int64_t shape[] = {1, 3, 1};
  grpc::ByteBuffer buffer = EncodeLookupRequest(-7, shape, ids, 3);
  v1::LookupRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(buffer)));
  EXPECT_EQ(parsed.layer_id(), -7);
  EXPECT_EQ(parsed.shape_size(), 3);
  EXPECT_EQ(parsed.output_dtype(), v1::DTYPE_FLOAT16);
  ASSERT_EQ(parsed.row_ids().size(), 24u);
  EXPECT_EQ(0, std::memcmp(parsed.row_ids().data(), ids.data(), 24));
}

// A protobuf-serialized GatherResponse cut into slices at awkward places:
// every row comes out whole and in order, whether it lies in one slice or
// straddles several.
TEST(WireFormatTest, GatheredRowsWalkAcrossSliceBoundaries) {
  const size_t row_bytes = 24, rows = 50;
  internal::v1::GatherResponse message;
  std::string data(row_bytes * rows, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  message.set_data(data);
  const std::string wire = message.SerializeAsString();
  std::vector<grpc::Slice> slices;
  for (size_t at = 0, cut = 1; at < wire.size();
       at += cut, cut = cut * 3 % 97 + 1)
    slices.emplace_back(wire.data() + at, std::min(cut, wire.size() - at));
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  std::string seen;
  size_t next = 0;
  absl::Status s = ForEachGatheredRow(
      buffer, row_bytes, rows, [&](size_t j, const uint8_t* row) {
        EXPECT_EQ(j, next++);
        seen.append(reinterpret_cast<const char*>(row), row_bytes);
      });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(seen, data);
  // A reply of another size is DATA_LOSS, and no row is handed out.
  next = 0;
  s = ForEachGatheredRow(buffer, row_bytes, rows + 1,
                         [&](size_t, const uint8_t*) { ++next; });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(next, 0u);
  grpc::Slice junk("\x12\x01x", 3);
  s = ForEachGatheredRow(grpc::ByteBuffer(&junk, 1), 1, 1,
                         [&](size_t, const uint8_t*) {});
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace engram::wire

namespace engram::wire {
namespace {

TEST(WireFormatTest, GatherResponseHeaderPlusRowsParsesAsProtobuf) {
  for (size_t rows : {0u, 1u, 100u, 70000u}) {
    const std::string data(rows * 3, 'r');
    std::string bytes(GatherResponseHeaderSize(data.size()), '\0');
    ASSERT_EQ(EncodeGatherResponseHeader(
                  data.size(), reinterpret_cast<uint8_t*>(bytes.data())),
              bytes.size());
    bytes += data;
    internal::v1::GatherResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(bytes)) << rows;
    EXPECT_EQ(parsed.data(), data);
  }
}

}  // namespace
}  // namespace engram::wire
