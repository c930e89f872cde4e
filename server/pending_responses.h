// Bounds the response memory that clients which do not read can pin: every
// hand-encoded Lookup/Gather response is charged from allocation until gRPC
// releases its slice (sent, or the call died).
#ifndef ENGRAM_SERVER_PENDING_RESPONSES_H_
#define ENGRAM_SERVER_PENDING_RESPONSES_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"

namespace engram {

// Bytes held, in all and per connection (keyed by gRPC's peer string, which
// names the connection's remote address and port). Must outlive every
// charge, so it lives as long as the server. Thread-safe: the total is an
// atomic, connections are spread over striped maps.
class PendingResponses {
 public:
  PendingResponses(int64_t total_limit, int64_t per_connection_limit);

  // Releases its bytes when the last owner drops it.
  class Charge {
   public:
    Charge(const Charge&) = delete;
    Charge& operator=(const Charge&) = delete;
    ~Charge();

   private:
    friend class PendingResponses;
    Charge(PendingResponses* owner, std::string peer, int64_t bytes)
        : owner_(owner), peer_(std::move(peer)), bytes_(bytes) {}
    PendingResponses* const owner_;
    const std::string peer_;
    const int64_t bytes_;
  };

  // Charges `bytes` to the call's connection; RESOURCE_EXHAUSTED naming the
  // limit (and flag) it would pass.
  absl::StatusOr<std::shared_ptr<Charge>> Reserve(
      const grpc::CallbackServerContext& context, int64_t bytes);
  // The same for the connection named `peer` (gRPC's peer string).
  absl::StatusOr<std::shared_ptr<Charge>> Reserve(std::string peer,
                                                  int64_t bytes);
  // Bytes held for `peer` now (0 when none).
  int64_t HeldBy(const std::string& peer);

  // A slice over `data` that runs `destroy(user_data)` and then drops
  // `charge` once gRPC is done with it.
  static grpc::Slice ChargedSlice(uint8_t* data, size_t size,
                                  void (*destroy)(void*), void* user_data,
                                  std::shared_ptr<Charge> charge);

  int64_t total() const { return total_.load(std::memory_order_relaxed); }

 private:
  static constexpr int kStripes = 16;
  struct alignas(64) Stripe {
    Mutex mu;
    absl::flat_hash_map<std::string, int64_t> by_peer ABSL_GUARDED_BY(mu);
  };
  Stripe& StripeOf(const std::string& peer);
  void Release(const std::string& peer, int64_t bytes);

  const int64_t total_limit_;
  const int64_t per_connection_limit_;
  std::atomic<int64_t> total_{0};
  Stripe stripes_[kStripes];
};

}  // namespace engram

#endif  // ENGRAM_SERVER_PENDING_RESPONSES_H_
