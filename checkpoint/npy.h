// Reading and writing NumPy .npy files (format 1.0 - 3.0, C order,
// little-endian): engramctl's tables, ids and results, and per-head tables
// in load manifests.
#ifndef ENGRAM_CHECKPOINT_NPY_H_
#define ENGRAM_CHECKPOINT_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_file.h"

namespace engram::checkpoint {

// An array as read from disk. `descr` is NumPy's type string, e.g. "<f4".
struct NpyArray {
  std::string descr;
  std::vector<int64_t> shape;
  size_t item_size = 0;
  std::vector<uint8_t> data;  // C-order element bytes

  int64_t num_elements() const;
};

// Where an .npy file's array is: its header's fields and the data bytes'
// place in the file.
struct NpyHeader {
  std::string descr;
  std::vector<int64_t> shape;
  size_t item_size = 0;
  uint64_t data_offset = 0;  // from the start of the file
  uint64_t data_bytes = 0;   // item_size * product(shape)
};

// The largest .npy header read (NumPy writes a few hundred bytes).
inline constexpr uint64_t kMaxNpyHeaderBytes = 1 << 20;

// Parses the header at the start of `bytes` (`size` bytes of a file of
// `file_size` bytes; `size` may stop after the header). INVALID_ARGUMENT
// naming `path` for a file that is not a readable .npy (Fortran order,
// big-endian, object arrays, data shorter than the shape, a header over
// kMaxNpyHeaderBytes).
absl::StatusOr<NpyHeader> ParseNpyHeader(const uint8_t* bytes, uint64_t size,
                                         uint64_t file_size,
                                         const std::string& path);
// The same for a whole file in memory.
inline absl::StatusOr<NpyHeader> ParseNpyHeader(const uint8_t* bytes,
                                                uint64_t size,
                                                const std::string& path) {
  return ParseNpyHeader(bytes, size, size, path);
}
// Reads and parses `file`'s header (at most kMaxNpyHeaderBytes, with pread).
absl::StatusOr<NpyHeader> ReadNpyHeader(const CheckpointFile& file);

// NOT_FOUND for a missing file, INVALID_ARGUMENT for a file that is not a
// readable .npy (Fortran order, big-endian, object arrays, truncated).
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);
absl::Status WriteNpy(const std::string& path, const std::string& descr,
                      const std::vector<int64_t>& shape, const void* data,
                      size_t bytes);

}  // namespace engram::checkpoint

#endif  // ENGRAM_CHECKPOINT_NPY_H_
