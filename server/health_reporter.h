// What engramd's health service says, set from the threads that learn it
// (the loader, replica recovery, the cluster prober) and stopped once, at
// shutdown, before the gRPC server (which owns the health service) goes.
#ifndef ENGRAM_SERVER_HEALTH_REPORTER_H_
#define ENGRAM_SERVER_HEALTH_REPORTER_H_

#include <grpcpp/health_check_service_interface.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"

namespace engram {

// Borrows the health services from Attach (the main listener's and the
// --health_listen one's, which say the same) until Stop. Each Update reads the
// server's state through `compute` and publishes it; after Stop every
// service reads NOT_SERVING and Update does nothing, so a load or a
// recovery that ends during the drain (or after it) neither flips health
// back nor touches the freed service. Thread-safe.
class HealthReporter {
 public:
  // What to publish: (service name, serving) pairs.
  using Compute =
      std::function<void(const std::function<void(const char*, bool)>&)>;

  void Attach(std::vector<grpc::HealthCheckServiceInterface*> health,
              Compute compute) {
    MutexLock lock(&mu_);
    health_ = std::move(health);
    compute_ = std::move(compute);
  }
  void Update() {
    MutexLock lock(&mu_);
    if (stopped_) return;
    for (grpc::HealthCheckServiceInterface* health : health_) {
      compute_([health](const char* service, bool serving) {
        health->SetServingStatus(service, serving);
      });
    }
  }
  // NOT_SERVING everywhere, and no more updates.
  void Stop() {
    MutexLock lock(&mu_);
    stopped_ = true;
    for (grpc::HealthCheckServiceInterface* health : health_) {
      health->SetServingStatus(false);
    }
    health_.clear();
  }

 private:
  Mutex mu_;
  std::vector<grpc::HealthCheckServiceInterface*> health_ ABSL_GUARDED_BY(mu_);
  Compute compute_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_HEALTH_REPORTER_H_
