// Reading a small file whole (credentials, certificates, metadata): one
// reader with one set of checks and messages for every such file.
#ifndef ENGRAM_COMMON_FILES_H_
#define ENGRAM_COMMON_FILES_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace engram {

struct ReadFileOptions {
  // Larger files are refused (FAILED_PRECONDITION): a config file pointed
  // at a disk image must not take the process's memory.
  uint64_t max_bytes = uint64_t{64} << 20;
  // Refuse a symbolic link as the last component (O_NOFOLLOW).
  bool no_follow = false;
};

// The contents of the regular file at `path`. Errors name the path and the
// reason: NOT_FOUND (missing), PERMISSION_DENIED, FAILED_PRECONDITION (not
// a regular file - a FIFO or device is never read or waited on -, too
// large, a link with no_follow), DATA_LOSS (a read error). Thread-safe.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path,
                                          const ReadFileOptions& options = {});

}  // namespace engram

#endif  // ENGRAM_COMMON_FILES_H_
