// Opens one layer version for one CUDA device (client/device_lookup.*):
// the server's GPU copy through CUDA IPC when it is on that device, else
// its host tables (attached System V segments) registered with CUDA, and
// says which, or why neither. Internal to engram::client_gpu.
#ifndef ENGRAM_CLIENT_DEVICE_MAPPING_H_
#define ENGRAM_CLIENT_DEVICE_MAPPING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/client.h"
#include "client/layer_mapping.h"
#include "kernels/gpu.h"
#include "kernels/gpu_handles.h"
#include "transport/sysv_segments.h"

namespace engram {

// What CUDA holds open for one version: IPC mappings, or registered host
// extents (and the writable attachments made for the registration). Owned
// by one published view; not thread-safe. Close (with its device current)
// before the version's lease is released.
class DeviceMapping {
 public:
  DeviceMapping() = default;
  DeviceMapping(const DeviceMapping&) = delete;
  DeviceMapping& operator=(const DeviceMapping&) = delete;
  ~DeviceMapping() { Close(); }

  // Opens `v` on `device` (current): fills spec->tables (and, for host
  // tables, the epoch slots and generations) and returns the path; kRpc
  // with `note` saying why when neither opens (nothing stays open then).
  DevicePath Open(const MappedVersion& v, int device, gpu::ViewSpec* spec,
                  std::string* note);
  void Close();

 private:
  // Registers every extent of `v` (`writable`: through read-write
  // attachments of the same segments); each one's device address in
  // `bases`. On error nothing stays registered.
  absl::Status Register(const MappedVersion& v, bool writable,
                        std::vector<const uint8_t*>* bases);

  // Declared in this order so that registrations end before the writable
  // attachments they were made through.
  std::vector<transport::AttachedSegment> writable_;  // for registration
  std::vector<gpu::HostRegistration> registered_;     // host extents
  std::vector<gpu::IpcMapping> opened_;               // CUDA IPC mappings
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_DEVICE_MAPPING_H_
