// Reading safetensors checkpoint files: an 8-byte little-endian header
// length, a JSON header (tensor name -> dtype, shape, data_offsets), then
// the tensors' raw little-endian bytes; and the index file
// (model.safetensors.index.json) that spreads tensors over several files.
#ifndef ENGRAM_CHECKPOINT_SAFETENSORS_H_
#define ENGRAM_CHECKPOINT_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_file.h"

namespace engram::checkpoint {

// One tensor of a safetensors file. `begin`/`end` are offsets in the file
// (the header's data_offsets plus the data section's start).
struct SafetensorInfo {
  std::string dtype;  // the file's name for it: "F32", "BF16", "F8_E4M3", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Bytes per element of a safetensors dtype name; 0 for a name this reader
// does not know (sub-byte types included).
size_t SafetensorsDTypeSize(const std::string& dtype);

// A mapped safetensors file with its parsed header. Immutable; safe to read
// from any thread.
class SafetensorsFile {
 public:
  // INVALID_ARGUMENT naming the file (and tensor) when the header does not
  // parse or does not fit the file: a header longer than the file, an
  // unknown dtype, offsets out of order, a tensor whose bytes do not match
  // its shape, or data past the end of the file (a truncated file).
  // `root`: opened beneath it (CheckpointFile::Open).
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Open(
      const std::string& path, const std::string& root = "");

  const std::string& path() const { return file_->path(); }
  const CheckpointFile& file() const { return *file_; }
  // The tensor named `name`, or nullptr.
  const SafetensorInfo* Find(const std::string& name) const;
  const std::map<std::string, SafetensorInfo>& tensors() const {
    return tensors_;
  }

 private:
  std::shared_ptr<const CheckpointFile> file_;
  std::map<std::string, SafetensorInfo> tensors_;
};

// The weight_map of an index file: tensor name -> file path, resolved
// against the index file's folder. INVALID_ARGUMENT naming the file when it
// has no weight_map object or a value is not a string; over 64 MiB, or
// not a regular file, refused before reading. `root`: opened beneath it.
absl::StatusOr<std::map<std::string, std::string>> ReadSafetensorsIndex(
    const std::string& path, const std::string& root = "");

// Writes a safetensors file of `tensors` (name -> info with shape and dtype;
// begin/end ignored) with `data` (name -> bytes). For tests and tools.
absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, SafetensorInfo>>& tensors,
    const std::map<std::string, std::string>& data);

}  // namespace engram::checkpoint

#endif  // ENGRAM_CHECKPOINT_SAFETENSORS_H_
