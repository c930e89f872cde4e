// Hand-encoded protobuf wire forms of the Lookup messages, so that row data
// travels in grpc::Slices that alias the buffers it was gathered into (server)
// or is copied once from the received slices into the caller's buffer
// (client). The bytes are plain engram.v1 protobuf: any client parses them.
#ifndef ENGRAM_PROTO_WIRE_FORMAT_H_
#define ENGRAM_PROTO_WIRE_FORMAT_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace engram::wire {

// Bytes EncodeLookupResponseHeader writes for these arguments.
size_t LookupResponseHeaderSize(std::span<const int64_t> shape,
                                size_t data_bytes);
// Writes fields 1 (shape), 2 (dtype) and the tag and length of field 3
// (data) of engram.v1.LookupResponse; `data_bytes` of row data must follow.
// Returns the bytes written.
size_t EncodeLookupResponseHeader(std::span<const int64_t> shape, int dtype,
                                  size_t data_bytes, uint8_t* out);

// A LookupResponse whose `data` lands in `out`: size checked, one copy.
struct DecodedLookup {
  std::vector<int64_t> shape;
  int dtype = 0;
  size_t data_bytes = 0;
  // Filled only when the response carried `values` (as_values requests).
  std::vector<float> values;
};
// Parses `response`; copies the data field into `out`, which must be exactly
// its size (INVALID_ARGUMENT otherwise, DATA_LOSS for malformed bytes).
absl::Status DecodeLookupResponse(const grpc::ByteBuffer& response,
                                  std::span<uint8_t> out,
                                  DecodedLookup* result);

// engram.internal.v1.GatherResponse{bytes data = 1} up to its rows: the
// bytes EncodeGatherResponseHeader writes (at most 11) and the encoder.
size_t GatherResponseHeaderSize(size_t data_bytes);
size_t EncodeGatherResponseHeader(size_t data_bytes, uint8_t* out);

// Decodes an engram.v1.LookupManyResponse: result k's rows into outs[k]
// (each must match exactly), its shape and dtype into (*results)[k].
absl::Status DecodeLookupManyResponse(const grpc::ByteBuffer& response,
                                      std::span<const std::span<uint8_t>> outs,
                                      std::vector<DecodedLookup>* results);

// The bytes one LookupManyResponse.results entry takes (tag, length, the
// LookupResponse header and its rows), and the encoding of all but the rows
// (which follow it).
size_t LookupManyEntrySize(std::span<const int64_t> shape, size_t data_bytes);
size_t EncodeLookupManyEntryHeader(std::span<const int64_t> shape, int dtype,
                                   size_t data_bytes, uint8_t* out);

// An engram.v1.LookupManyRequest of encoded LookupRequests (slices shared,
// the ids not copied).
grpc::ByteBuffer EncodeLookupManyRequest(
    std::span<const grpc::ByteBuffer> lookups);

// Encodes an engram.v1.LookupRequest with the ids as the `row_ids` bytes
// field. The ids are not copied: the returned buffer aliases `ids`, which must
// outlive every use of it (the RPC).
// `id_form`, `head_begin`, `head_end`: the request's fields of those names
// (0: unset).
grpc::ByteBuffer EncodeLookupRequest(int64_t layer_id,
                                     std::span<const int64_t> shape,
                                     std::span<const int64_t> ids,
                                     int output_dtype, int id_form = 0,
                                     int64_t head_begin = 0,
                                     int64_t head_end = 0);

// Walks an engram.internal.v1.GatherResponse (`bytes data = 1`, rows back to
// back) without copying the data field: `row(j, bytes)` gets a pointer to
// row j's `row_bytes` bytes (inside a received slice, or a stack copy when
// the row straddles two slices). DATA_LOSS unless exactly `rows` rows came.
absl::Status ForEachGatheredRow(
    const grpc::ByteBuffer& response, size_t row_bytes, size_t rows,
    const std::function<void(size_t, const uint8_t*)>& row);

}  // namespace engram::wire

#endif  // ENGRAM_PROTO_WIRE_FORMAT_H_
