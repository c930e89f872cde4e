#include "client/device_status.h"

#include "absl/strings/str_cat.h"
#include "kernels/gpu.h"

namespace engram {

std::optional<absl::Status> StatusOfCode(uint64_t code, int64_t layer_id,
                                         int device, const std::string& note) {
  switch (code) {
    case gpu::kStatusOk:
      return absl::OkStatus();
    case gpu::kStatusRemoved:
      return absl::NotFoundError(
          absl::StrCat("layer ", layer_id, " was removed"));
    case gpu::kStatusUnavailable:
      return absl::UnavailableError(
          absl::StrCat("layer ", layer_id, " could not be read on device ",
                       device, ": ", note));
    case gpu::kStatusLayoutChanged:
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", layer_id,
          " was replaced by one of another layout; nothing was written"));
    case gpu::kStatusReleased:
      return absl::AbortedError(absl::StrCat(
          "a table range of layer ", layer_id,
          " was released while it was read; the rows are not valid"));
    case gpu::kStatusModelChanged:
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", layer_id,
          " was loaded again with another model hash (or populated without "
          "one) before the launch ran; nothing was written (the next call "
          "hashes with the new model; a captured graph must be captured "
          "again)"));
    default:
      return std::nullopt;
  }
}

}  // namespace engram
