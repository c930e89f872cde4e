// The System V shared-memory segments UCX allocates for exported tables.
// Owner side: UCX creates them readable and writable by the owner's group
// (0660), where a group member could attach one read-write and change rows;
// engramd narrows them to owner-only (or read-only for one group) as soon
// as they exist, and publishes each range's segment id. Reader side: a
// process on the same host attaches a segment by id itself, read-only
// (UCX's own attach is read-write, so it needs write permission).
#ifndef ENGRAM_TRANSPORT_SYSV_SEGMENTS_H_
#define ENGRAM_TRANSPORT_SYSV_SEGMENTS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"

namespace engram::transport {

// Sets the permission bits of every System V shared-memory segment this
// process created (per /proc/sysvipc/shm) to `mode` and, when `group` is
// not -1, their group to `group`, where they differ. Thread-safe (one
// shmctl per segment).
absl::Status RestrictOwnSysvSegments(mode_t mode, gid_t group = -1);

// The segment mapped at `address` in this process and the address's
// offset in it (from /proc/self/maps), or nullopt when no System V
// segment is mapped there.
struct SysvLocation {
  int64_t shm_id = -1;
  uint64_t offset = 0;
};
std::optional<SysvLocation> SysvSegmentAt(const void* address);

// One attachment of a segment by id, read-only unless `writable`; detached
// when destroyed. Move-only. (Writable attaches serve CUDA registration on
// platforms that cannot register read-only memory: they need the write
// permission, i.e. the owner's user.)
class AttachedSegment {
 public:
  // PERMISSION_DENIED, NOT_FOUND (no such segment in this IPC namespace).
  static absl::StatusOr<AttachedSegment> Attach(int64_t shm_id,
                                                bool writable = false);
  AttachedSegment(AttachedSegment&& other) noexcept;
  AttachedSegment& operator=(AttachedSegment&& other) noexcept;
  AttachedSegment(const AttachedSegment&) = delete;
  AttachedSegment& operator=(const AttachedSegment&) = delete;
  ~AttachedSegment();

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  pid_t creator() const { return creator_; }  // the owner process

 private:
  AttachedSegment() = default;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  pid_t creator_ = 0;
};

}  // namespace engram::transport

#endif  // ENGRAM_TRANSPORT_SYSV_SEGMENTS_H_
