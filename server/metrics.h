// Prometheus metrics of engramd: call counters, lookup latency and volume,
// and live gauges read from the layer registry and memory budget at scrape.
#ifndef ENGRAM_SERVER_METRICS_H_
#define ENGRAM_SERVER_METRICS_H_

#include <grpcpp/support/status.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "server/methods.h"
#include "store/gpu_tier.h"
#include "store/host_memory.h"
#include "store/layer_registry.h"

namespace engram {

// How rows owned by another shard were read.
enum class PeerPath { kGather = 0, kRma = 1 };
inline constexpr int kNumStatusCodes = 17;

// Owns the prometheus registry. Every counter a call touches is created up
// front, so recording is a few atomic adds with no map lookup or lock.
// Thread-safe. `layers`, `budget` and `gpu` (nullptr when there is no GPU
// tier) must outlive it.
class ServerMetrics {
 public:
  ServerMetrics(const LayerRegistry* layers, const MemoryBudget* budget,
                bool pin_requested, const GpuTier* gpu);

  // Everything to expose at /metrics (counters plus live gauges).
  std::shared_ptr<prometheus::Collectable> collectable() const {
    return collectable_;
  }
  // For families other parts of the server register (the audit counters).
  prometheus::Registry* registry() const { return registry_.get(); }

  void RecordCall(Method method, grpc::StatusCode code);  // public ones
  void RecordLookup(double seconds, int64_t rows, int64_t bytes);
  void RecordPopulateBytes(int64_t bytes) { populate_bytes_->Increment(bytes); }
  // Which tier served a successful lookup.
  void RecordTier(bool gpu) {
    (gpu ? gpu_lookups_ : cpu_lookups_)->Increment();
  }
  // A lookup meant for the GPU that the CPU served after a GPU error.
  void RecordGpuFallback() { gpu_fallbacks_->Increment(); }
  // A read of rows from a peer shard (the gather path).
  void RecordPeerRead(PeerPath path, double seconds, uint64_t bytes);
  void RecordRmaFallback() { rma_fallbacks_->Increment(); }
  // Rows re-asked from another owner after a peer failed or was slow.
  void RecordFailover() { failovers_->Increment(); }
  // Reports engram_peers_up from `peers_up` at scrape time.
  void SetPeersUpSource(std::function<int()> peers_up);
  // Totals since start, for the Status RPC.
  struct Snapshot {
    struct Calls {
      const char* rpc;
      int64_t calls = 0;
      int64_t errors = 0;
    };
    std::vector<Calls> calls;  // RPCs called at least once
    prometheus::ClientMetric::Histogram lookup_latency;
    int64_t lookup_rows = 0;
    int64_t lookup_bytes = 0;
    int64_t populate_bytes = 0;
  };
  Snapshot TakeSnapshot() const;
  // Reports gauge `name` from `value` at scrape time (call before serving).
  void AddGaugeSource(std::string name, std::string help,
                      std::function<double()> value);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> collectable_;
  // Per (rpc, code), created at the first call that ends so: an idle
  // server exports no zero series for every pair. Family::Add is
  // thread-safe and returns the existing counter for the same labels.
  prometheus::Family<prometheus::Counter>* requests_family_ = nullptr;
  prometheus::Family<prometheus::Counter>* errors_family_ = nullptr;
  std::array<std::array<std::atomic<prometheus::Counter*>, kNumStatusCodes>,
             kNumPublicMethods>
      requests_{};
  std::array<std::array<std::atomic<prometheus::Counter*>, kNumStatusCodes>,
             kNumPublicMethods>
      errors_{};
  prometheus::Histogram* lookup_latency_ = nullptr;
  prometheus::Counter* lookup_rows_ = nullptr;
  prometheus::Counter* lookup_bytes_ = nullptr;
  prometheus::Counter* populate_bytes_ = nullptr;
  prometheus::Counter* cpu_lookups_ = nullptr;
  prometheus::Counter* gpu_lookups_ = nullptr;
  prometheus::Counter* gpu_fallbacks_ = nullptr;
  prometheus::Counter* peer_reads_[2] = {};
  prometheus::Counter* peer_read_bytes_[2] = {};
  prometheus::Histogram* peer_read_latency_[2] = {};
  prometheus::Counter* rma_fallbacks_ = nullptr;
  prometheus::Counter* failovers_ = nullptr;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_METRICS_H_
