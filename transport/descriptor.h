// The byte format of an exported range's descriptor: what a reader needs to
// reach it (owner address, length, packed UCX rkey) and to validate a read
// (epoch slot and generation), and the shared-memory segment a same-host
// reader can attach read-only. Plain data, no UCX types.
#ifndef ENGRAM_TRANSPORT_DESCRIPTOR_H_
#define ENGRAM_TRANSPORT_DESCRIPTOR_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace engram::transport {

// The control region's fixed slots (the rest are ranges' epoch slots):
// the owner's heartbeat, its CLOCK_MONOTONIC nanoseconds refreshed every
// 50 ms, and its random identity (the control descriptor's generation).
inline constexpr uint32_t kHeartbeatSlot = 0;
inline constexpr uint32_t kIdentitySlot = 1;

struct RegionDescriptor {
  uint64_t base = 0;    // the range's address in the owner process
  uint64_t length = 0;  // bytes
  uint32_t epoch_slot = 0;
  // Data ranges: the range's generation. The control region: the
  // engine's random identity, also stored in its identity slot (a reader
  // that attached a segment by id checks it is this owner's).
  uint64_t generation = 0;
  // The System V segment holding the range and the range's offset in it
  // (-1: not System V). Same-host readers attach it read-only themselves.
  int64_t shm_id = -1;
  uint64_t shm_offset = 0;
  std::string rkey;  // ucp_rkey_pack output

  std::string Serialize() const;
  // This descriptor without what UCX access needs (rkey, owner address):
  // enough for a same-host read-only attach of its segment, nothing to
  // write with. What callers without the peer right are given.
  RegionDescriptor AttachOnly() const {
    RegionDescriptor d = *this;
    d.base = 0;
    d.rkey.clear();
    return d;
  }
  // INVALID_ARGUMENT when `bytes` is not a descriptor.
  static absl::StatusOr<RegionDescriptor> Parse(std::string_view bytes);
};

}  // namespace engram::transport

#endif  // ENGRAM_TRANSPORT_DESCRIPTOR_H_
