#include "client/cluster_router.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cluster/populate_fanout.h"
#include "proto/wire_format.h"

namespace engram {

// One routed lookup in flight: positions grouped by the shard asked for
// them; a failed shard's positions move to the next owner of their range.
struct RoutedLookup : std::enable_shared_from_this<RoutedLookup> {
  ClusterRouter* router;
  int64_t layer_id;
  LayerLayout layout;
  const int64_t* ids;
  uint8_t* out;
  DType out_dtype;
  std::function<void(absl::Status)> done;
  std::atomic<int> outstanding{1};
  std::mutex mu;
  std::vector<std::string> errors;
  bool layer_missing = false;

  struct Position {
    int64_t index;
    int replica;
  };

  void Route(std::vector<Position> positions) {
    const Placement& p = router->placement_;
    std::map<int, std::vector<Position>> by_shard;
    for (Position pos : positions) {
      const int h = static_cast<int>(pos.index % layout.num_heads());
      const int64_t rows = layout.table_vocab_sizes[h];
      const int range = p.RangeOf(rows, ids[pos.index]);
      int chosen = -1;
      for (int r = pos.replica; r < p.replication(); ++r) {
        const int s = p.Owner(layer_id, h, range, r);
        if (router->up(s) || r == p.replication() - 1) {
          chosen = s;
          pos.replica = r;
          break;
        }
      }
      by_shard[chosen].push_back(pos);
    }
    for (auto& [shard, list] : by_shard) Send(shard, std::move(list));
  }

  // Same-host shards: copy the rows straight out of their mapped memory.
  bool TryDirect(int shard, const std::vector<Position>& positions) {
    const size_t row_bytes = layout.row_bytes();
    const bool convert = out_dtype != layout.dtype;
    std::vector<uint8_t> staging(convert ? positions.size() * row_bytes : 0);
    std::vector<DirectReads::Row> rows;
    rows.reserve(positions.size());
    for (size_t j = 0; j < positions.size(); ++j) {
      const int64_t index = positions[j].index;
      rows.push_back(
          {static_cast<int>(index % layout.num_heads()), ids[index],
           convert ? staging.data() + j * row_bytes : out + index * row_bytes});
    }
    if (!router->direct_->TryRead(shard, layer_id, layout, rows)) return false;
    if (convert) {
      const size_t dim = static_cast<size_t>(layout.embedding_dim);
      const size_t out_row = dim * DTypeSize(out_dtype);
      for (size_t j = 0; j < positions.size(); ++j) {
        ConvertElements(staging.data() + j * row_bytes, layout.dtype,
                        out + positions[j].index * out_row, out_dtype, dim);
      }
    }
    return true;
  }

  void Send(int shard, std::vector<Position> positions) {
    if (router->direct_ != nullptr && TryDirect(shard, positions)) return;
    // Raw call: rows go once from the received slices to the caller's
    // buffer (converted there when asked).
    struct Call {
      grpc::ClientContext context;
      grpc::ByteBuffer request;
      grpc::ByteBuffer response;
      std::vector<Position> positions;
    };
    auto call = std::make_shared<Call>();
    call->context.set_deadline(
        absl::ToChronoTime(absl::Now() + router->timeout_));
    internal::v1::GatherRequest request;
    request.set_layer_id(layer_id);
    for (Position pos : positions) {
      request.add_heads(static_cast<int32_t>(pos.index % layout.num_heads()));
      request.add_row_ids(ids[pos.index]);
    }
    bool own_buffer = false;
    (void)grpc::SerializationTraits<internal::v1::GatherRequest>::Serialize(
        request, &call->request, &own_buffer);
    call->positions = std::move(positions);
    outstanding.fetch_add(1, std::memory_order_relaxed);
    router->in_flight_.fetch_add(1, std::memory_order_acq_rel);
    auto self = shared_from_this();
    ClusterRouter* r = router;
    router->generic_stubs_[shard]->UnaryCall(
        &call->context, "/engram.internal.v1.EngramPeer/Gather",
        grpc::StubOptions(), &call->request, &call->response,
        [self, call, shard, r](grpc::Status status) {
          self->OnReply(shard, call->positions, call->response, status);
          self->Release();
          r->in_flight_.fetch_sub(1,
                                  std::memory_order_acq_rel);  // last use of r
        });
  }

  void OnReply(int shard, const std::vector<Position>& positions,
               const grpc::ByteBuffer& response, const grpc::Status& status) {
    const size_t row_bytes = layout.row_bytes();
    absl::Status decoded = absl::OkStatus();
    if (status.ok()) {
      const size_t dim = static_cast<size_t>(layout.embedding_dim);
      const size_t out_row = dim * DTypeSize(out_dtype);
      decoded = wire::ForEachGatheredRow(
          response, row_bytes, positions.size(),
          [&](size_t j, const uint8_t* row) {
            ConvertElements(row, layout.dtype,
                            out + positions[j].index * out_row, out_dtype, dim);
          });
      if (decoded.ok()) return;
    }
    if (status.error_code() == grpc::StatusCode::NOT_FOUND ||
        status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      std::lock_guard<std::mutex> lock(mu);
      layer_missing = true;  // removed, or re-populated with another layout
      errors.push_back(
          absl::StrCat("shard ", shard, ": ", status.error_message()));
      return;
    }
    router->MarkDown(shard);
    std::vector<Position> retry;
    for (Position pos : positions) {
      if (pos.replica + 1 < router->placement_.replication()) {
        retry.push_back({pos.index, pos.replica + 1});
      }
    }
    if (retry.size() == positions.size() && !retry.empty()) {
      Route(std::move(retry));  // next owners; counted before this call ends
      return;
    }
    std::lock_guard<std::mutex> lock(mu);
    errors.push_back(absl::StrCat(
        "shard ", shard, ": ",
        status.ok() ? std::string(decoded.message()) : status.error_message()));
  }

  void Release() {
    if (outstanding.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    std::lock_guard<std::mutex> lock(mu);  // all replies are in
    if (errors.empty()) {
      done(absl::OkStatus());
      return;
    }
    if (layer_missing) router->Forget(layer_id);
    done(absl::Status(layer_missing ? absl::StatusCode::kNotFound
                                    : absl::StatusCode::kUnavailable,
                      absl::StrCat("rows of layer ", layer_id, ": ",
                                   absl::StrJoin(errors, "; "))));
  }
};

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
      down_until_ms_(new std::atomic<int64_t>[shards.size()]) {
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
  for (int i = 0; i < 10000 && in_flight_.load(std::memory_order_acquire) > 0;
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
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
    const std::vector<std::span<const uint8_t>>& tables, size_t chunk_bytes,
    absl::Duration timeout,
    const std::function<void(uint64_t, uint64_t)>& progress) {
  std::vector<internal::v1::EngramPeer::Stub*> stubs;
  for (auto& stub : stubs_) stubs.push_back(stub.get());
  PopulateFanout fanout(
      std::move(stubs), placement_, [this](int s) { MarkDown(s); },
      std::chrono::seconds(absl::ToInt64Seconds(timeout)));
  if (absl::Status s = fanout.Begin(layer_id, layout); !s.ok()) return s;
  const size_t row_bytes = layout.row_bytes();
  const size_t rows_per_chunk = std::max<size_t>(1, chunk_bytes / row_bytes);
  const uint64_t total = layout.total_bytes();
  uint64_t sent = 0;
  for (int h = 0; h < layout.num_heads(); ++h) {
    const size_t rows = static_cast<size_t>(layout.table_vocab_sizes[h]);
    for (size_t r = 0; r < rows; r += rows_per_chunk) {
      const size_t n = std::min(rows_per_chunk, rows - r);
      if (absl::Status s = fanout.AddChunk(
              h, static_cast<int64_t>(r),
              {reinterpret_cast<const char*>(tables[h].data()) + r * row_bytes,
               n * row_bytes});
          !s.ok()) {
        return s;  // the fan-out aborts everywhere when destroyed
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
    std::lock_guard<std::mutex> lock(mu_);
    auto it = layouts_.find(layer_id);
    if (it != layouts_.end()) return it->second;
  }
  absl::StatusOr<LayerLayout> layout = describe_(layer_id);
  if (!layout.ok()) return layout.status();
  std::lock_guard<std::mutex> lock(mu_);
  layouts_[layer_id] = *layout;
  return layout;
}

void ClusterRouter::Forget(int64_t layer_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    layouts_.erase(layer_id);
  }
  if (direct_ != nullptr) direct_->Forget(layer_id);
}

void ClusterRouter::Lookup(int64_t layer_id, std::span<const int64_t> ids,
                           std::span<const int64_t> shape,
                           std::span<uint8_t> output,
                           std::optional<DType> output_dtype,
                           std::function<void(absl::Status)> done) {
  absl::StatusOr<LayerLayout> layout = Layout(layer_id);
  if (!layout.ok()) return done(layout.status());
  LookupShape parsed;
  if (ids.empty()) {
    return done(absl::InvalidArgumentError(
        "no row ids: set row_ids (int64 little-endian bytes) or row_ids_list"));
  }
  if (absl::Status s = ValidateLookupShape(
          *layout, shape, static_cast<int64_t>(ids.size()), &parsed);
      !s.ok()) {
    return done(s);
  }
  const DType out_dtype = output_dtype.value_or(layout->dtype);
  if (!CanConvert(layout->dtype, out_dtype)) {
    return done(absl::InvalidArgumentError(absl::StrCat(
        "output_dtype ", DTypeName(out_dtype), " cannot be produced from ",
        DTypeName(layout->dtype), " rows")));
  }
  const size_t need = ids.size() * layout->embedding_dim * DTypeSize(out_dtype);
  if (output.size() != need) {
    return done(absl::InvalidArgumentError(absl::StrCat(
        "lookup returns ", need, " bytes of rows; the output buffer holds ",
        output.size())));
  }
  if (absl::Status s = ValidateRowIds(*layout, parsed, ids.data()); !s.ok()) {
    return done(s);
  }
  auto lookup = std::make_shared<RoutedLookup>();
  lookup->router = this;
  lookup->layer_id = layer_id;
  lookup->layout = *std::move(layout);
  lookup->ids = ids.data();
  lookup->out = output.data();
  lookup->out_dtype = out_dtype;
  lookup->done = std::move(done);
  std::vector<RoutedLookup::Position> all(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) all[i] = {static_cast<int64_t>(i), 0};
  lookup->Route(std::move(all));
  lookup->Release();
}

}  // namespace engram
