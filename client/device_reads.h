// The seam between the client library and device lookups: Client forwards
// LookupToDevice and friends through this interface, and the CUDA
// implementation (client/device_lookup.*, target engram::client_gpu)
// registers its factory when it is linked in. An application that links
// only engram::client carries no CUDA. Internal to the client libraries.
#ifndef ENGRAM_CLIENT_DEVICE_READS_H_
#define ENGRAM_CLIENT_DEVICE_READS_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace engram {

// Thread-safe implementations only.
class DeviceReads {
 public:
  virtual ~DeviceReads() = default;
  virtual absl::Status Lookup(const DeviceLookupRequest& request,
                              DevicePath* path) = 0;
  // Several lookups on one stream; `paths` gets one entry per request.
  virtual absl::Status LookupMany(std::span<const DeviceLookupRequest> requests,
                                  std::span<DevicePath> paths) = 0;
  virtual absl::Status Result(const DeviceLookupRequest& request) = 0;
  virtual absl::StatusOr<DevicePath> Prepare(int64_t layer_id, int device) = 0;
  virtual std::string Note(int64_t layer_id, int device) = 0;
};

// What a DeviceReads gets from its Client.
struct DeviceReadsEnv {
  std::shared_ptr<grpc::Channel> channel;  // to the one server
  absl::Duration timeout;                  // setup waits at most this
  // The RPC path: Client::Lookup into host memory.
  std::function<absl::Status(int64_t layer_id, std::span<const int64_t> ids,
                             std::span<const int64_t> shape,
                             std::span<uint8_t> output,
                             const LookupOptions& options)>
      rpc_lookup;
  // Token lookups' RPC path: Client::LookupTokens of one layer.
  std::function<absl::Status(
      int64_t layer_id, std::span<const int64_t> tokens,
      std::span<const int64_t> shape, std::span<const int64_t> history,
      std::span<uint8_t> output, std::optional<DType> output_dtype)>
      rpc_lookup_tokens;
};

using DeviceReadsFactory = std::unique_ptr<DeviceReads> (*)(DeviceReadsEnv env);

// Set once by engram::client_gpu at static initialization.
void RegisterDeviceReads(DeviceReadsFactory factory);
// Null unless engram::client_gpu is linked in.
DeviceReadsFactory DeviceReadsFactoryOrNull();

}  // namespace engram

#endif  // ENGRAM_CLIENT_DEVICE_READS_H_
