// What a device lookup's status words say (kernels/gpu.h kStatus*), as
// DeviceLookupResult reports it. Internal to engram::client_gpu.
#ifndef ENGRAM_CLIENT_DEVICE_STATUS_H_
#define ENGRAM_CLIENT_DEVICE_STATUS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"

namespace engram {

// The outcome word 0 holds, for every code but a row index (nullopt: the
// caller names the row). `note`: why the layer is read the way it is.
std::optional<absl::Status> StatusOfCode(uint64_t code, int64_t layer_id,
                                         int device, const std::string& note);

}  // namespace engram

#endif  // ENGRAM_CLIENT_DEVICE_STATUS_H_
