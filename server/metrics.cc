#include "server/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <sys/resource.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/version.h"
#include "server/process_stats.h"

namespace engram {
namespace {

const char* RpcName(int rpc) { return Describe(static_cast<Method>(rpc)).name; }

const char* CodeName(int code) {
  static const char* kNames[kNumStatusCodes] = {"OK",
                                                "CANCELLED",
                                                "UNKNOWN",
                                                "INVALID_ARGUMENT",
                                                "DEADLINE_EXCEEDED",
                                                "NOT_FOUND",
                                                "ALREADY_EXISTS",
                                                "PERMISSION_DENIED",
                                                "RESOURCE_EXHAUSTED",
                                                "FAILED_PRECONDITION",
                                                "ABORTED",
                                                "OUT_OF_RANGE",
                                                "UNIMPLEMENTED",
                                                "INTERNAL",
                                                "UNAVAILABLE",
                                                "DATA_LOSS",
                                                "UNAUTHENTICATED"};
  return kNames[code];
}

prometheus::MetricFamily Gauge(std::string name, std::string help) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = prometheus::MetricType::Gauge;
  return family;
}

void AddSample(prometheus::MetricFamily* family, double value,
               std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = value;
  family->metric.push_back(std::move(m));
}

// The process_* families Prometheus client libraries export (same names and
// meanings), so standard dashboards and alerts work on engramd.
void AddProcessFamilies(std::vector<prometheus::MetricFamily>* out) {
  const ProcessStats stats = ReadProcessStats();
  auto add = [out](const char* name, const char* help, double value) {
    prometheus::MetricFamily family = Gauge(name, help);
    AddSample(&family, value);
    out->push_back(std::move(family));
  };
  add("process_resident_memory_bytes", "Resident memory size in bytes.",
      static_cast<double>(stats.resident_bytes));
  add("process_virtual_memory_bytes", "Virtual memory size in bytes.",
      static_cast<double>(stats.virtual_bytes));
  add("process_open_fds", "Open file descriptors.",
      static_cast<double>(stats.open_fds));
  add("process_max_fds", "The open-file limit (soft).",
      static_cast<double>(stats.max_fds));
  add("process_start_time_seconds",
      "Start time of the process since the Unix epoch, in seconds.",
      stats.start_time_seconds);
  prometheus::MetricFamily cpu;
  cpu.name = "process_cpu_seconds_total";
  cpu.help = "User and system CPU time spent, in seconds.";
  cpu.type = prometheus::MetricType::Counter;
  prometheus::ClientMetric sample;
  sample.counter.value = stats.cpu_seconds;
  cpu.metric.push_back(std::move(sample));
  out->push_back(std::move(cpu));
}

// Gauges computed at scrape time from the live registry and budget, so they
// also reflect memory freed after the last in-flight lookup of a removed
// layer; plus the counters of the owned prometheus registry.
class LiveCollectable : public prometheus::Collectable {
 public:
  LiveCollectable(std::shared_ptr<prometheus::Registry> counters,
                  const LayerRegistry* layers, const MemoryBudget* budget,
                  bool pin_requested, const GpuTier* gpu)
      : counters_(std::move(counters)),
        layers_(layers),
        budget_(budget),
        pin_requested_(pin_requested),
        gpu_(gpu) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out = counters_->Collect();
    std::vector<std::shared_ptr<const Layer>> layers = layers_->List();

    prometheus::MetricFamily count =
        Gauge("engram_layers", "Committed layers being served.");
    AddSample(&count, static_cast<double>(layers.size()));
    out.push_back(std::move(count));

    prometheus::MetricFamily bytes =
        Gauge("engram_layer_bytes", "Bytes of row data stored, by layer.");
    prometheus::MetricFamily pinned = Gauge(
        "engram_layer_pinned",
        "1 when every table of the layer is pinned in RAM, by layer and mode.");
    prometheus::MetricFamily resident =
        Gauge("engram_layer_gpu_resident",
              "1 when the layer is mirrored in GPU memory.");
    prometheus::MetricFamily stored = Gauge(
        "engram_layer_stored_bytes",
        "Bytes of row data in --data_dir files, by layer (0: memory only).");
    prometheus::MetricFamily in_ram =
        Gauge("engram_layer_resident_bytes",
              "Bytes of row data in RAM now, by layer (below stored for an "
              "unpinned table bigger than memory).");
    for (const auto& layer : layers) {
      std::string id = absl::StrCat(layer->id());
      AddSample(&bytes, static_cast<double>(layer->data_bytes()),
                {{"layer", id}});
      PinMode mode = layer->pin_mode();
      AddSample(&pinned, mode == PinMode::kNone ? 0 : 1,
                {{"layer", id}, {"mode", PinModeName(mode)}});
      AddSample(&resident, layer->gpu_mirror() != nullptr ? 1 : 0,
                {{"layer", id}});
      AddSample(&stored,
                layer->files() != nullptr
                    ? static_cast<double>(layer->data_bytes())
                    : 0,
                {{"layer", id}});
      AddSample(&in_ram, static_cast<double>(layer->resident_bytes()),
                {{"layer", id}});
    }
    out.push_back(std::move(stored));
    out.push_back(std::move(in_ram));
    {
      struct rusage usage;
      getrusage(RUSAGE_SELF, &usage);
      prometheus::MetricFamily faults =
          Gauge("engram_major_page_faults",
                "Page faults that waited on the disk since start (rows of "
                "tables bigger than memory read from --data_dir).");
      AddSample(&faults, static_cast<double>(usage.ru_majflt));
      out.push_back(std::move(faults));
    }
    out.push_back(std::move(bytes));
    out.push_back(std::move(pinned));
    out.push_back(std::move(resident));
    AddProcessFamilies(&out);

    prometheus::MetricFamily available = Gauge(
        "engram_gpu_available", "1 when the GPU tier is serving (--gpu).");
    AddSample(&available, gpu_ != nullptr ? 1 : 0);
    out.push_back(std::move(available));
    if (peers_up) {
      prometheus::MetricFamily up =
          Gauge("engram_peers_up",
                "Shards of the cluster answering (this one included).");
      AddSample(&up, peers_up());
      out.push_back(std::move(up));
    }
    if (gpu_ != nullptr) {
      prometheus::MetricFamily gpu_limit =
          Gauge("engram_gpu_memory_limit_bytes",
                "GPU memory budget for mirrored layers.");
      AddSample(&gpu_limit, static_cast<double>(gpu_->budget().limit()));
      out.push_back(std::move(gpu_limit));
      prometheus::MetricFamily gpu_used = Gauge(
          "engram_gpu_memory_used_bytes", "GPU memory held by layer mirrors.");
      AddSample(&gpu_used, static_cast<double>(gpu_->budget().used()));
      out.push_back(std::move(gpu_used));
    }

    prometheus::MetricFamily limit =
        Gauge("engram_memory_limit_bytes",
              "Table memory budget (--memory_limit_bytes).");
    AddSample(&limit, static_cast<double>(budget_->limit()));
    out.push_back(std::move(limit));
    prometheus::MetricFamily used = Gauge(
        "engram_memory_used_bytes",
        "Table memory in use: committed layers, populates in progress, and "
        "removed layers still read by in-flight lookups.");
    AddSample(&used, static_cast<double>(budget_->used()));
    out.push_back(std::move(used));
    prometheus::MetricFamily pin =
        Gauge("engram_memory_pin_requested", "1 when --pin_memory is on.");
    AddSample(&pin, pin_requested_ ? 1 : 0);
    out.push_back(std::move(pin));
    for (const GaugeSource& source : gauges) {
      prometheus::MetricFamily family = Gauge(source.name, source.help);
      AddSample(&family, source.value());
      out.push_back(std::move(family));
    }
    return out;
  }

 private:
  std::shared_ptr<prometheus::Registry> counters_;
  const LayerRegistry* layers_;
  const MemoryBudget* budget_;
  bool pin_requested_;
  const GpuTier* gpu_;

 public:
  std::function<int()> peers_up;  // set before serving
  struct GaugeSource {
    std::string name, help;
    std::function<double()> value;
  };
  std::vector<GaugeSource> gauges;  // set before serving
};

}  // namespace

ServerMetrics::ServerMetrics(const LayerRegistry* layers,
                             const MemoryBudget* budget, bool pin_requested,
                             const GpuTier* gpu)
    : registry_(std::make_shared<prometheus::Registry>()) {
  requests_family_ =
      &prometheus::BuildCounter()
           .Name("engram_requests_total")
           .Help("RPCs finished, by method and gRPC status code.")
           .Register(*registry_);
  errors_family_ = &prometheus::BuildCounter()
                        .Name("engram_errors_total")
                        .Help("RPCs finished with a status other than OK.")
                        .Register(*registry_);
  lookup_latency_ =
      &prometheus::BuildHistogram()
           .Name("engram_lookup_latency_seconds")
           .Help("Lookup latency from request parsed to response ready.")
           .Register(*registry_)
           .Add({},
                prometheus::Histogram::BucketBoundaries{
                    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3,
                    5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0});
  lookup_rows_ = &prometheus::BuildCounter()
                      .Name("engram_lookup_rows_total")
                      .Help("Rows returned by successful lookups.")
                      .Register(*registry_)
                      .Add({});
  lookup_bytes_ = &prometheus::BuildCounter()
                       .Name("engram_lookup_bytes_total")
                       .Help("Row bytes returned by successful lookups.")
                       .Register(*registry_)
                       .Add({});
  populate_bytes_ = &prometheus::BuildCounter()
                         .Name("engram_populate_bytes_total")
                         .Help("Row bytes received by Populate streams.")
                         .Register(*registry_)
                         .Add({});
  auto& tiers = prometheus::BuildCounter()
                    .Name("engram_lookups_by_tier_total")
                    .Help("Successful lookups by the tier that gathered them.")
                    .Register(*registry_);
  cpu_lookups_ = &tiers.Add({{"tier", "cpu"}});
  gpu_lookups_ = &tiers.Add({{"tier", "gpu"}});
  gpu_fallbacks_ = &prometheus::BuildCounter()
                        .Name("engram_gpu_fallbacks_total")
                        .Help(
                            "Lookups meant for the GPU served by the CPU "
                            "after a GPU error.")
                        .Register(*registry_)
                        .Add({});
  auto& peer_reads = prometheus::BuildCounter()
                         .Name("engram_peer_reads_total")
                         .Help("Row reads from peer shards, by data path.")
                         .Register(*registry_);
  auto& peer_bytes = prometheus::BuildCounter()
                         .Name("engram_peer_read_bytes_total")
                         .Help("Row bytes read from peer shards, by data path.")
                         .Register(*registry_);
  auto& peer_latency = prometheus::BuildHistogram()
                           .Name("engram_peer_read_latency_seconds")
                           .Help("Latency of one peer read, by data path.")
                           .Register(*registry_);
  auto& peer_fallbacks =
      prometheus::BuildCounter()
          .Name("engram_peer_rma_fallbacks_total")
          .Help(
              "Remote (rma) reads that failed or were refused and went over "
              "the gather path instead.")
          .Register(*registry_);
  rma_fallbacks_ = &peer_fallbacks.Add({});
  for (PeerPath path : {PeerPath::kGather, PeerPath::kRma}) {
    const std::string name = path == PeerPath::kRma ? "rma" : "gather";
    const int i = static_cast<int>(path);
    peer_reads_[i] = &peer_reads.Add({{"path", name}});
    peer_read_bytes_[i] = &peer_bytes.Add({{"path", name}});
    peer_read_latency_[i] = &peer_latency.Add(
        {{"path", name}},
        prometheus::Histogram::BucketBoundaries{
            10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
            10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0});
  }
  failovers_ =
      &prometheus::BuildCounter()
           .Name("engram_peer_failovers_total")
           .Help(
               "Peer reads moved to another owner after a failure or timeout.")
           .Register(*registry_)
           .Add({});
  prometheus::BuildGauge()
      .Name("engram_build_info")
      .Help("1, labelled with the build's version (--version).")
      .Register(*registry_)
      .Add({{"version", Version()}})
      .Set(1);
  collectable_ = std::make_shared<LiveCollectable>(registry_, layers, budget,
                                                   pin_requested, gpu);
}

void ServerMetrics::RecordCall(Method method, grpc::StatusCode code) {
  const int r = static_cast<int>(method);
  if (r >= kNumPublicMethods) return;  // peer calls: their own metrics
  int c = static_cast<int>(code);
  if (c < 0 || c >= kNumStatusCodes) c = static_cast<int>(grpc::UNKNOWN);
  auto counter = [&](std::atomic<prometheus::Counter*>& slot,
                     prometheus::Family<prometheus::Counter>* family) {
    prometheus::Counter* made = slot.load(std::memory_order_acquire);
    if (made == nullptr) {
      made = &family->Add({{"rpc", RpcName(r)}, {"code", CodeName(c)}});
      slot.store(made, std::memory_order_release);
    }
    return made;
  };
  counter(requests_[r][c], requests_family_)->Increment();
  if (c != 0) counter(errors_[r][c], errors_family_)->Increment();
}

ServerMetrics::Snapshot ServerMetrics::TakeSnapshot() const {
  Snapshot snapshot;
  for (int r = 0; r < kNumPublicMethods; ++r) {
    Snapshot::Calls calls{RpcName(r)};
    for (int c = 0; c < kNumStatusCodes; ++c) {
      const prometheus::Counter* counter =
          requests_[r][c].load(std::memory_order_acquire);
      if (counter == nullptr) continue;
      const auto n = static_cast<int64_t>(counter->Value());
      calls.calls += n;
      if (c != 0) calls.errors += n;
    }
    if (calls.calls > 0) snapshot.calls.push_back(calls);
  }
  snapshot.lookup_latency = lookup_latency_->Collect().histogram;
  snapshot.lookup_rows = static_cast<int64_t>(lookup_rows_->Value());
  snapshot.lookup_bytes = static_cast<int64_t>(lookup_bytes_->Value());
  snapshot.populate_bytes = static_cast<int64_t>(populate_bytes_->Value());
  return snapshot;
}

void ServerMetrics::RecordPeerRead(PeerPath path, double seconds,
                                   uint64_t bytes) {
  const int i = static_cast<int>(path);
  peer_reads_[i]->Increment();
  peer_read_bytes_[i]->Increment(static_cast<double>(bytes));
  peer_read_latency_[i]->Observe(seconds);
}

void ServerMetrics::SetPeersUpSource(std::function<int()> peers_up) {
  static_cast<LiveCollectable*>(collectable_.get())->peers_up =
      std::move(peers_up);
}

void ServerMetrics::AddGaugeSource(std::string name, std::string help,
                                   std::function<double()> value) {
  static_cast<LiveCollectable*>(collectable_.get())
      ->gauges.push_back({std::move(name), std::move(help), std::move(value)});
}

void ServerMetrics::RecordLookup(double seconds, int64_t rows, int64_t bytes) {
  lookup_latency_->Observe(seconds);
  lookup_rows_->Increment(static_cast<double>(rows));
  lookup_bytes_->Increment(static_cast<double>(bytes));
}

}  // namespace engram
