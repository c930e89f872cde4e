// Device lookups (Client::LookupToDevice, docs/gpu.md): the CUDA
// implementation of DeviceReads, in engram::client_gpu; linking that target
// registers it. Per (layer, device) it watches the layer (WatchLayer) and
// keeps a view of the current version that the project's gather kernel
// reads through a device-resident slot: the server's GPU copy opened
// through CUDA IPC when it is on the same device, else the server's host
// tables registered with CUDA (read over PCIe), else nothing (the RPC path
// serves). Kernels never synchronize with the host: a launch pins the
// slot's view on the GPU, so every row of it comes from one version, and a
// replaced version stays mapped (and leased from the server) for a grace
// period after its successor is published, then is synchronized with and
// freed, and only then released to the server.
#ifndef ENGRAM_CLIENT_DEVICE_LOOKUP_H_
#define ENGRAM_CLIENT_DEVICE_LOOKUP_H_

#include <chrono>
#include <map>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "client/device_reads.h"
#include "common/mutex.h"
#include "common/periodic_thread.h"

namespace engram {

// Owns the per-(layer, device) state and a janitor thread that frees
// retired versions. Thread-safe; destroy it only once no lookup of it is in
// flight on any stream (the destructor synchronizes each device it used).
class DeviceLookups final : public DeviceReads {
 public:
  struct Options {
    // How long a replaced version stays mapped after its successor is
    // published: far longer than one lookup's kernels run.
    std::chrono::milliseconds retire_grace{2000};
  };
  static std::unique_ptr<DeviceReads> Create(DeviceReadsEnv env);
  DeviceLookups(DeviceReadsEnv env, Options options);
  ~DeviceLookups() override;

  absl::Status Lookup(const DeviceLookupRequest& request,
                      DevicePath* path) override;
  absl::Status LookupMany(std::span<const DeviceLookupRequest> requests,
                          std::span<DevicePath> paths) override;
  absl::Status Result(const DeviceLookupRequest& request) override;
  absl::StatusOr<DevicePath> Prepare(int64_t layer_id, int device) override;
  std::string Note(int64_t layer_id, int device) override;

  class LayerOnDevice;  // device_lookup.cc

 private:
  // The entry, created (and set up: its first WatchLayer answer applied)
  // on first use; `create` false: null when there is none.
  absl::StatusOr<std::shared_ptr<LayerOnDevice>> Get(int64_t layer_id,
                                                     int device, bool create);
  // Retries pending version switches and retires versions no longer used.
  void Tidy();

  const DeviceReadsEnv env_;
  const Options options_;
  Mutex mu_;
  std::map<std::pair<int64_t, int>, std::shared_ptr<LayerOnDevice>> layers_
      ABSL_GUARDED_BY(mu_);
  PeriodicThread janitor_;  // Tidy every 200 ms
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_DEVICE_LOOKUP_H_
