// Reading and writing NumPy .npy files (format 1.0 - 3.0, C order,
// little-endian), enough for engramctl's tables, ids and results.
#ifndef ENGRAM_CLIENT_NPY_H_
#define ENGRAM_CLIENT_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace engram {

// An array as read from disk. `descr` is NumPy's type string, e.g. "<f4".
struct NpyArray {
  std::string descr;
  std::vector<int64_t> shape;
  size_t item_size = 0;
  std::vector<uint8_t> data;  // C-order element bytes

  int64_t num_elements() const;
};

// NOT_FOUND for a missing file, INVALID_ARGUMENT for a file that is not a
// readable .npy (Fortran order, big-endian, object arrays, truncated).
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);
absl::Status WriteNpy(const std::string& path, const std::string& descr,
                      const std::vector<int64_t>& shape, const void* data,
                      size_t bytes);

}  // namespace engram

#endif  // ENGRAM_CLIENT_NPY_H_
