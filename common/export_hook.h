// The hook between table memory and a transport: the store asks it to place
// a table range where other processes can read it; the transport answers
// with an opaque descriptor. Kept apart so neither includes the other.
#ifndef ENGRAM_COMMON_EXPORT_HOOK_H_
#define ENGRAM_COMMON_EXPORT_HOOK_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace engram {

// A byte range of a HostBuffer that a transport placed in memory other
// processes can read (e.g. UCX-allocated shared memory, registered for RDMA).
// `descriptor` is the transport's opaque description for remote readers;
// `release` unmaps it and runs before the buffer's own unmap.
struct ExportedRange {
  size_t offset = 0;
  size_t length = 0;
  std::string descriptor;
  std::function<void()> release;
};

// Places `length` bytes at exactly `address` (page aligned, inside a
// reservation the caller owns) in remotely readable memory, zero filled.
using ExportMapper = std::function<absl::StatusOr<ExportedRange>(
    uint8_t* address, size_t length)>;

}  // namespace engram

#endif  // ENGRAM_COMMON_EXPORT_HOOK_H_
