// The byte format of an exported range's descriptor: what a reader needs to
// reach it (owner address, length, packed UCX rkey) and to validate a read
// (epoch slot and generation). Plain data, no UCX types.
#ifndef ENGRAM_TRANSPORT_DESCRIPTOR_H_
#define ENGRAM_TRANSPORT_DESCRIPTOR_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace engram::transport {

struct RegionDescriptor {
  uint64_t base = 0;    // the range's address in the owner process
  uint64_t length = 0;  // bytes
  uint32_t epoch_slot = 0;
  uint64_t generation = 0;  // 0 for the control region itself
  std::string rkey;         // ucp_rkey_pack output

  std::string Serialize() const;
  // INVALID_ARGUMENT when `bytes` is not a descriptor.
  static absl::StatusOr<RegionDescriptor> Parse(std::string_view bytes);
};

}  // namespace engram::transport

#endif  // ENGRAM_TRANSPORT_DESCRIPTOR_H_
