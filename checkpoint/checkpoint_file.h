// Checkpoint files opened read-only and read with pread only.
#ifndef ENGRAM_CHECKPOINT_CHECKPOINT_FILE_H_
#define ENGRAM_CHECKPOINT_CHECKPOINT_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace engram::checkpoint {

// One regular file, open for reading. Never memory-mapped: a file that
// someone truncates or rewrites while it is read would turn a mapped read
// into SIGBUS, killing the server; a pread of it fails with DATA_LOSS
// instead. Immutable after Open; safe to read from any thread.
class CheckpointFile {
 public:
  // NOT_FOUND (missing), PERMISSION_DENIED, or FAILED_PRECONDITION (not a
  // regular file: a FIFO, a device, a folder), each naming the path. Never
  // blocks on a FIFO. With `root` (--load_root), `path` (resolved, under
  // root) is opened beneath root in one step (openat2 RESOLVE_BENEATH), so
  // a folder swapped for a link after the path was checked cannot lead
  // outside it: PERMISSION_DENIED.
  static absl::StatusOr<std::shared_ptr<const CheckpointFile>> Open(
      const std::string& path, const std::string& root = "");
  ~CheckpointFile();
  CheckpointFile(const CheckpointFile&) = delete;
  CheckpointFile& operator=(const CheckpointFile&) = delete;

  const std::string& path() const { return path_; }
  // The size when opened.
  uint64_t size() const { return size_; }
  // Tells the kernel [offset, offset + bytes) will be read in order soon
  // (read-ahead); best effort.
  void WillReadSequentially(uint64_t offset, uint64_t bytes) const;
  // Copies [offset, offset + bytes) into `dst`. DATA_LOSS naming the file
  // on an I/O error or a file that ends early (e.g. truncated since Open).
  absl::Status ReadAt(uint64_t offset, size_t bytes, uint8_t* dst) const;
  // The first min(bytes, size()) bytes.
  absl::StatusOr<std::string> ReadPrefix(uint64_t bytes) const;

  // The whole of a small file (a manifest, an index): Open's errors, and
  // INVALID_ARGUMENT when it has more than `max_bytes` (naming `what`, the
  // size and the limit) before anything is read.
  static absl::StatusOr<std::string> ReadWhole(const std::string& path,
                                               uint64_t max_bytes,
                                               const std::string& what,
                                               const std::string& root = "");

 private:
  CheckpointFile(std::string path, int fd, uint64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}
  const std::string path_;
  const int fd_;
  const uint64_t size_;
};

}  // namespace engram::checkpoint

#endif  // ENGRAM_CHECKPOINT_CHECKPOINT_FILE_H_
