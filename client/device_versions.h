// The version lifecycle of one layer on one device, apart from CUDA: which
// version the device's view slot shows, which replaced ones are still
// mapped for launches that may read them, when those are closed, and when
// the server is told it may free a version. device_lookup.cc supplies the
// CUDA side (DeviceVersions::Device); tests supply a fake, so every rule
// here runs on machines without a GPU. Internal to the client libraries.
#ifndef ENGRAM_CLIENT_DEVICE_VERSIONS_H_
#define ENGRAM_CLIENT_DEVICE_VERSIONS_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/device_reads.h"
#include "client/layer_mapping.h"
#include "common/layout.h"
#include "common/mutex.h"

namespace engram {

// Applies a layer's updates (from its WatchLayer stream) in arrival order
// and keeps what launches read alive:
// - an update is published as a new view; the one it replaces is retired
//   and closed once `grace` has passed and the device has finished every
//   launch (Device::Close), and only then is its lease released;
// - a version the device does not read (the RPC path) is released once
//   its successor's view is published;
// - an update whose view cannot be published is retried (RetryPending),
//   unless a later one arrives first; the current view stays meanwhile;
// - leases are counted per version number: the server hears "release N"
//   once no view of N is open and no update of N waits (a version sent
//   again after a reconnect is not released under its new view).
// Borrows `device`. Thread-safe: Apply (the watch thread), RetryPending /
// RetireDue (a janitor) and readers (Now, WaitReady, note) run at once.
class DeviceVersions {
 public:
  // A version's view on the device, published in the slot. Destroying it
  // unmaps what the device read through it (inside Device::Close only).
  class View {
   public:
    virtual ~View() = default;
  };
  struct Published {
    std::unique_ptr<View> view;          // null when publishing failed
    absl::Status error;                  // why it failed (nothing left open)
    DevicePath path = DevicePath::kRpc;  // kRpc: no row is read on the device
    std::string note;                    // why not zero-copy, when not
  };
  // The CUDA side (kernels/gpu.h in production).
  class Device {
   public:
    virtual ~Device() = default;
    // Opens what `u` needs on the device and publishes a view of it in the
    // slot (a kNotFound / kUnavailable update: a view saying so).
    virtual Published Publish(const MappingUpdate& u) = 0;
    // Waits until no launch can read `views` any more, then destroys them.
    virtual void Close(std::vector<std::unique_ptr<View>> views) = 0;
  };
  // What lookups need, copied out under the lock.
  struct Current {
    MappingUpdate::State state = MappingUpdate::kUnavailable;
    bool known = false;  // `layout` is set (a version was seen)
    // Shared, so a lookup's snapshot copies no vector.
    std::shared_ptr<const LayerLayout> layout;
    DevicePath path = DevicePath::kRpc;
    absl::Status why;
    uint64_t token_model = 0;  // of the version `layout` describes
  };

  // `release` tells the server it may free a version (the watch's Release).
  DeviceVersions(Device* device, std::function<void(uint64_t)> release,
                 std::chrono::milliseconds grace);
  // Closes every view without releasing (CloseAll).
  ~DeviceVersions();

  // A new state of the layer; it supersedes an update waiting for a retry.
  void Apply(MappingUpdate u);
  // Publishes again an update whose view could not be published.
  void RetryPending();
  // Closes retired views whose grace has passed (`all`: every one) and
  // releases what no view reads any more.
  void RetireDue(bool all);
  // Closes every view, current included, and releases nothing: for the
  // owner's destruction, after the watch stopped delivering updates and
  // before it ends (its end releases the leases).
  void CloseAll();

  bool WaitReady(absl::Duration timeout);
  Current Now();
  std::string note();
  // Versions leased (held or waiting), for tests.
  std::map<uint64_t, int> leases();

 private:
  struct Version {
    uint64_t version = 0;
    bool leased = false;  // holds a count in leases_
    std::unique_ptr<View> view;
    std::chrono::steady_clock::time_point retire_at;
  };
  void ApplyInOrder(MappingUpdate u, uint64_t seq);
  // Leases: a present update holds one from arrival until its version is
  // not read (or it is dropped); the server hears of a release at zero.
  void Lease(uint64_t version) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns whether the server must be told (the count reached zero).
  bool Unlease(uint64_t version) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Device* const device_;
  const std::function<void(uint64_t)> release_;
  const std::chrono::milliseconds grace_;

  Mutex mu_;
  std::condition_variable_any ready_cv_;
  bool ready_ ABSL_GUARDED_BY(mu_) = false;
  Current current_state_ ABSL_GUARDED_BY(mu_);
  std::string note_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Version> current_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Version>> retiring_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, int> leases_ ABSL_GUARDED_BY(mu_);
  // Updates are numbered as they arrive; one whose view could not be
  // published waits in retry_ (superseded by any later one).
  uint64_t update_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t applied_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<MappingUpdate> retry_ ABSL_GUARDED_BY(mu_);
  uint64_t retry_seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  Mutex apply_mu_;  // one ApplyInOrder at a time (watch thread, janitor)
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_DEVICE_VERSIONS_H_
