// Read-only memory maps of checkpoint files.
#ifndef ENGRAM_CHECKPOINT_MAPPED_FILE_H_
#define ENGRAM_CHECKPOINT_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace engram::checkpoint {

// One file mapped read-only and shared with the page cache: reading it
// costs no copy beyond the one into the destination, and only the pages
// read are faulted in. Immutable after Open; safe to read from any thread.
class MappedFile {
 public:
  // NOT_FOUND (missing), PERMISSION_DENIED, or FAILED_PRECONDITION (not a
  // regular file, cannot map), each naming the path.
  static absl::StatusOr<std::shared_ptr<const MappedFile>> Open(
      const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // Tells the kernel [offset, offset + bytes) will be read in order soon
  // (read-ahead); best effort.
  void WillReadSequentially(uint64_t offset, uint64_t bytes) const;
  // Copies [offset, offset + bytes) into `dst` with pread: bulk reads cost
  // no page-table work, unlike touching the mapping page by page.
  // DATA_LOSS naming the file on an I/O error or a short file.
  absl::Status ReadAt(uint64_t offset, size_t bytes, uint8_t* dst) const;

 private:
  MappedFile(std::string path, int fd, const uint8_t* data, uint64_t size)
      : path_(std::move(path)), fd_(fd), data_(data), size_(size) {}
  const std::string path_;
  const int fd_;
  const uint8_t* const data_;
  const uint64_t size_;
};

}  // namespace engram::checkpoint

#endif  // ENGRAM_CHECKPOINT_MAPPED_FILE_H_
