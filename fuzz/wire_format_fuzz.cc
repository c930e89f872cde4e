// The client's hand-written decoders of server responses (a hostile or
// broken server must not crash a client): LookupResponse into a caller's
// buffer, and GatherResponse walked row by row.
#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "proto/wire_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  // First bytes: the caller's buffer size and the row size; then the
  // response, split in two slices at a fuzzed point (rows straddle them).
  const size_t out_bytes = data[0] * 4;
  const size_t row_bytes = 1 + data[1] % 32;
  const size_t split = data[2];
  data += 3;
  size -= 3;
  const size_t cut = split < size ? split : size;
  grpc::Slice slices[2] = {grpc::Slice(data, cut),
                           grpc::Slice(data + cut, size - cut)};
  grpc::ByteBuffer response(slices, 2);
  std::vector<uint8_t> out(out_bytes);
  engram::wire::DecodedLookup decoded;
  (void)engram::wire::DecodeLookupResponse(response, out, &decoded);
  size_t seen = 0;
  (void)engram::wire::ForEachGatheredRow(
      response, row_bytes, out_bytes / row_bytes,
      [&seen, row_bytes](size_t, const uint8_t* row) {
        volatile uint8_t sink = row[0] ^ row[row_bytes - 1];
        (void)sink;
        ++seen;
      });
  return 0;
}
