#include "client/cluster_router.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cluster/populate_fanout.h"
#include "common/lookup_plan.h"

namespace engram {

// Reads a shard's rows for the client: straight out of a same-host
// shard's mapped memory when direct reads work for it, else over the
// gather RPC. Counts the peer calls in flight so the router can outlive
// their callbacks.
class ClusterRouter::Reader final : public ShardReader {
 public:
  explicit Reader(ClusterRouter* router) : router_(router) {}

  void Read(int shard, const ShardRead& read,
            std::function<void(absl::Status)> done) override {
    if (router_->direct_ != nullptr && TryDirect(shard, read)) {
      done(absl::OkStatus());
      return;
    }
    {
      MutexLock lock(&router_->calls_mu_);
      ++router_->in_flight_;
    }
    ClusterRouter* r = router_;
    GatherRowsRpc(router_->generic_stubs_[shard].get(),
                  absl::ToChronoTime(absl::Now() + router_->timeout_), read,
                  [r, done = std::move(done)](absl::Status s) {
                    done(std::move(s));
                    MutexLock lock(&r->calls_mu_);
                    --r->in_flight_;
                    // Under the lock: the router may go once it is released.
                    r->calls_done_.notify_all();
                  });
  }

 private:
  bool TryDirect(int shard, const ShardRead& read) {
    const size_t row_bytes = read.layout().row_bytes();
    const bool convert = read.size() > 0 && read.dst(0) == nullptr;
    std::vector<uint8_t> staging(convert ? read.size() * row_bytes : 0);
    std::vector<DirectReads::Row> rows;
    rows.reserve(read.size());
    for (size_t j = 0; j < read.size(); ++j) {
      rows.push_back({read.head(j), read.row(j),
                      convert ? staging.data() + j * row_bytes : read.dst(j)});
    }
    if (!router_->direct_->TryRead(shard, read.layer_id(), read.layout(), rows,
                                   read.token_model())) {
      return false;
    }
    if (convert) {
      for (size_t j = 0; j < read.size(); ++j)
        read.Put(j, staging.data() + j * row_bytes);
    }
    return true;
  }

  ClusterRouter* const router_;
};

std::string ClusterRouter::States::Name(int shard) const {
  return absl::StrCat("shard ", shard);
}

namespace {
DirectReadsFactory direct_reads_factory = nullptr;  // set at static init
}  // namespace

void RegisterDirectReads(DirectReadsFactory factory) {
  direct_reads_factory = factory;
}
DirectReadsFactory DirectReadsFactoryOrNull() { return direct_reads_factory; }

ClusterRouter::ClusterRouter(
    std::vector<std::shared_ptr<grpc::Channel>> shards, Placement placement,
    absl::Duration timeout,
    std::function<absl::StatusOr<LayerLayout>(int64_t)> describe,
    bool direct_reads)
    : placement_(placement),
      timeout_(timeout),
      describe_(std::move(describe)),
      down_until_ms_(new std::atomic<int64_t>[shards.size()]),
      states_(this),
      rows_(&placement_, &states_),
      reader_(std::make_shared<Reader>(this)) {
  for (size_t s = 0; s < shards.size(); ++s) {
    stubs_.push_back(internal::v1::EngramPeer::NewStub(shards[s]));
    generic_stubs_.push_back(std::make_unique<grpc::GenericStub>(shards[s]));
    down_until_ms_[s].store(0, std::memory_order_relaxed);
  }
  if (direct_reads) {
    std::vector<internal::v1::EngramPeer::Stub*> stubs;
    for (auto& stub : stubs_) stubs.push_back(stub.get());
    // Null unless engram::client_direct is linked and UCX starts.
    if (DirectReadsFactory factory = DirectReadsFactoryOrNull()) {
      direct_ = factory(std::move(stubs));
    }
  }
}

ClusterRouter::~ClusterRouter() {
  // Peer calls finish by their deadline; a lookup's `done` may run before
  // its call's callback has returned.
  MutexLock lock(&calls_mu_);
  calls_done_.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls_mu_) {
    return in_flight_ == 0;
  });
}

bool ClusterRouter::up(int shard) const {
  return absl::ToUnixMillis(absl::Now()) >=
         down_until_ms_[shard].load(std::memory_order_relaxed);
}

void ClusterRouter::MarkDown(int shard) {
  // Skip it for a while; then it gets traffic (and another chance) again.
  down_until_ms_[shard].store(
      absl::ToUnixMillis(absl::Now() + absl::Seconds(2)),
      std::memory_order_relaxed);
}

absl::Status ClusterRouter::Populate(
    int64_t layer_id, const LayerLayout& layout,
    const std::function<absl::Status(int, int64_t, int64_t, uint8_t*)>& source,
    size_t chunk_bytes, absl::Duration timeout,
    const std::function<void(uint64_t, uint64_t)>& progress, bool replace) {
  std::vector<internal::v1::EngramPeer::Stub*> stubs;
  for (auto& stub : stubs_) stubs.push_back(stub.get());
  PopulateFanout fanout(
      std::move(stubs), placement_, [this](int s) { MarkDown(s); },
      std::chrono::seconds(absl::ToInt64Seconds(timeout)));
  if (absl::Status s = fanout.Begin(layer_id, layout, replace); !s.ok()) {
    return s;
  }
  const size_t row_bytes = layout.row_bytes();
  const size_t rows_per_chunk = std::max<size_t>(1, chunk_bytes / row_bytes);
  const uint64_t total = layout.total_bytes();
  uint64_t sent = 0;
  std::string buffer;
  for (int h = 0; h < layout.num_heads(); ++h) {
    const size_t rows = static_cast<size_t>(layout.table_vocab_sizes[h]);
    for (size_t r = 0; r < rows; r += rows_per_chunk) {
      const size_t n = std::min(rows_per_chunk, rows - r);
      buffer.resize(n * row_bytes);
      // Either error leaves the fan-out to abort everywhere when destroyed.
      if (absl::Status s =
              source(h, static_cast<int64_t>(r), static_cast<int64_t>(n),
                     reinterpret_cast<uint8_t*>(buffer.data()));
          !s.ok()) {
        return s;
      }
      if (absl::Status s = fanout.AddChunk(h, static_cast<int64_t>(r), buffer);
          !s.ok()) {
        return s;
      }
      sent += n * row_bytes;
      if (progress) progress(sent, total);
    }
  }
  absl::Status s = fanout.Commit();
  if (s.ok()) Forget(layer_id);  // a re-used id may have a new layout
  return s;
}

absl::StatusOr<LayerLayout> ClusterRouter::Layout(int64_t layer_id) {
  {
    MutexLock lock(&mu_);
    auto it = layouts_.find(layer_id);
    if (it != layouts_.end()) return it->second;
  }
  absl::StatusOr<LayerLayout> layout = describe_(layer_id);
  if (!layout.ok()) return layout.status();
  MutexLock lock(&mu_);
  layouts_[layer_id] = *layout;
  return layout;
}

void ClusterRouter::Forget(int64_t layer_id) {
  {
    MutexLock lock(&mu_);
    layouts_.erase(layer_id);
  }
  if (direct_ != nullptr) direct_->Forget(layer_id);
}

void ClusterRouter::Lookup(int64_t layer_id, std::span<const int64_t> ids,
                           std::span<const int64_t> shape,
                           std::span<uint8_t> output,
                           const LookupOptions& options,
                           std::function<void(absl::Status)> done,
                           uint64_t token_model) {
  absl::StatusOr<LayerLayout> layout = Layout(layer_id);
  if (!layout.ok()) return done(layout.status());
  LookupArgs args;
  args.layer_id = layer_id;
  args.num_ids = static_cast<int64_t>(ids.size());
  args.shape = shape;
  args.output_dtype = options.output_dtype;
  args.id_form = options.id_form;
  args.head_begin = options.head_begin;
  args.head_end = options.head_end;
  args.out_bytes = output.size();
  absl::StatusOr<LookupPlan> plan = PlanLookup(*layout, args);
  if (!plan.ok()) return done(plan.status());
  // Held with the layout until the read is done (the router borrows them).
  struct Held {
    LayerLayout layout;
    ResolvedIds resolved;
  };
  auto held = std::make_shared<Held>();
  if (absl::Status s = ResolveIds(*layout, *plan, ids.data(), &held->resolved);
      !s.ok()) {
    return done(s);
  }
  held->layout = *std::move(layout);
  RowRouter::Lookup lookup;
  lookup.layer_id = layer_id;
  lookup.layout = &held->layout;
  lookup.keep_alive = held;
  lookup.ids = plan->plain ? ids.data() : held->resolved.rows.data();
  if (!held->resolved.heads.empty()) lookup.heads = held->resolved.heads.data();
  lookup.positions.resize(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) lookup.positions[i] = i;
  lookup.out_dtype = plan->out_dtype;
  lookup.out = output.data();
  lookup.reader = reader_;
  lookup.token_model = token_model;
  rows_.Read(std::move(lookup),
             [this, layer_id, done = std::move(done)](absl::Status s) {
               // A removed or re-populated layer: fetch its layout afresh next
               // time.
               if (s.code() == absl::StatusCode::kNotFound) Forget(layer_id);
               done(std::move(s));
             });
}

}  // namespace engram
