// Who may attach the shared memory UCX allocates for exported tables. UCX's
// System V transport creates segments readable and writable by the owner's
// group (0660); a group member could attach one read-write and change rows.
// engramd narrows them to owner-only as soon as they exist.
#ifndef ENGRAM_TRANSPORT_SHM_PERMISSIONS_H_
#define ENGRAM_TRANSPORT_SHM_PERMISSIONS_H_

#include <sys/types.h>

#include "absl/status/status.h"

namespace engram::transport {

// Sets the permission bits of every System V shared-memory segment this
// process created (per /proc/sysvipc/shm) to `mode` (e.g. 0600) where they
// differ. Thread-safe (each segment is changed with one shmctl).
absl::Status RestrictOwnSysvSegments(mode_t mode);

}  // namespace engram::transport

#endif  // ENGRAM_TRANSPORT_SHM_PERMISSIONS_H_
