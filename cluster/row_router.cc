#include "cluster/row_router.h"

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "proto/convert.h"
#include "proto/wire_format.h"

namespace engram {

ShardRead::ShardRead(int64_t layer_id, const LayerLayout* layout, RowIds ids,
                     std::vector<int64_t> positions, DType out_dtype,
                     uint8_t* out, uint64_t token_model)
    : layer_id_(layer_id),
      layout_(layout),
      ids_(ids),
      positions_(std::move(positions)),
      out_(out),
      token_model_(token_model),
      plan_(RowPlan(*layout, out_dtype)) {}

void ShardRead::Put(size_t j, const uint8_t* stored_row) const {
  plan_.PutRow(stored_row, out_ + positions_[j] * plan_.out_row_bytes);
}

// One lookup in flight: positions grouped by the shard asked for them; a
// failed shard's positions move to the next owner of their range.
struct RowRouter::Flight : std::enable_shared_from_this<Flight> {
  const RowRouter* router;
  Lookup lookup;
  std::function<void(absl::Status)> done;
  std::atomic<int> outstanding{1};  // the starter's own reference
  std::mutex mu;
  std::vector<std::string> errors;  // guarded by mu
  bool missing = false;             // guarded by mu

  struct Position {
    int64_t index;
    int replica;  // which owner of the row's range is asked
  };

  void Fail(std::string error, bool layer_missing = false) {
    std::lock_guard<std::mutex> lock(mu);
    errors.push_back(std::move(error));
    missing |= layer_missing;
  }

  // Sends each position to its first live owner from its replica on.
  void Route(const std::vector<Position>& positions) {
    const LayerLayout& l = *lookup.layout;
    const Placement& p = *router->placement_;
    std::map<int, std::vector<Position>> by_shard;
    for (Position pos : positions) {
      const int h = static_cast<int>(
          RowIds(lookup.ids, lookup.heads).head(pos.index, l.num_heads()));
      const int64_t id = lookup.ids[pos.index];
      const int range = p.RangeOf(l.table_vocab_sizes[h], id);
      int chosen = -1;
      for (int r = pos.replica; r < p.replication(); ++r) {
        const int s = p.Owner(lookup.layer_id, h, range, r);
        if (s == lookup.skip_shard) continue;
        if (router->states_->up(s) || r == p.replication() - 1) {
          chosen = s;
          pos.replica = r;
          break;
        }
      }
      if (chosen < 0) {
        Fail(absl::StrCat(
            "no owner left for row ", id, " of head ", h,
            lookup.skip_shard >= 0
                ? absl::StrCat(" (", router->states_->Name(lookup.skip_shard),
                               " lacks its rows)")
                : ""));
        continue;
      }
      by_shard[chosen].push_back(pos);
    }
    for (auto& [shard, list] : by_shard) Send(shard, std::move(list));
  }

  void Send(int shard, std::vector<Position> positions) {
    std::vector<int64_t> indexes;
    indexes.reserve(positions.size());
    for (Position pos : positions) indexes.push_back(pos.index);
    auto read = std::make_shared<ShardRead>(
        lookup.layer_id, lookup.layout, RowIds(lookup.ids, lookup.heads),
        std::move(indexes), lookup.out_dtype, lookup.out, lookup.token_model);
    outstanding.fetch_add(1, std::memory_order_relaxed);
    auto self = shared_from_this();
    lookup.reader->Read(shard, *read,
                        [self, read, shard,
                         replicas = std::make_shared<std::vector<Position>>(
                             std::move(positions))](absl::Status s) {
                          self->OnRead(shard, *replicas, s);
                          self->Release();
                        });
  }

  void OnRead(int shard, const std::vector<Position>& positions,
              const absl::Status& s) {
    if (s.ok()) return;
    const std::string what =
        absl::StrCat(router->states_->Name(shard), ": ", s.message());
    if (s.code() == absl::StatusCode::kNotFound ||
        s.code() == absl::StatusCode::kFailedPrecondition) {
      Fail(what, /*layer_missing=*/true);
      return;
    }
    if (s.code() == absl::StatusCode::kUnavailable ||
        s.code() == absl::StatusCode::kDeadlineExceeded) {
      router->states_->MarkDown(shard);
    }
    const int replication = router->placement_->replication();
    std::vector<Position> retry;
    for (Position pos : positions) {
      if (pos.replica + 1 < replication)
        retry.push_back({pos.index, pos.replica + 1});
    }
    if (!retry.empty() && retry.size() == positions.size()) {
      if (router->on_failover_) router->on_failover_();
      Route(retry);
      return;
    }
    Fail(what);
  }

  void Release() {
    if (outstanding.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    absl::Status result;
    {
      std::lock_guard<std::mutex> lock(mu);  // every reply is in
      if (missing) {
        result = absl::NotFoundError(absl::StrCat(
            "layer ", lookup.layer_id,
            " is not on every shard (being removed, populated, or populated "
            "again): ",
            absl::StrJoin(errors, "; ")));
      } else if (!errors.empty()) {
        result = absl::UnavailableError(absl::StrCat(
            "rows of layer ", lookup.layer_id,
            " have no reachable owner: ", absl::StrJoin(errors, "; ")));
      }
    }
    done(std::move(result));
  }
};

RowRouter::RowRouter(const Placement* placement, ShardStates* states,
                     std::function<void()> on_failover)
    : placement_(placement),
      states_(states),
      on_failover_(std::move(on_failover)) {}

void RowRouter::Read(Lookup lookup, std::function<void(absl::Status)> done) {
  auto flight = std::make_shared<Flight>();
  flight->router = this;
  flight->done = std::move(done);
  std::vector<Flight::Position> all;
  all.reserve(lookup.positions.size());
  for (int64_t index : lookup.positions) all.push_back({index, 0});
  flight->lookup = std::move(lookup);
  flight->Route(all);
  flight->Release();  // drop the starter's reference
}

void GatherRowsRpc(grpc::GenericStub* stub,
                   std::chrono::system_clock::time_point deadline,
                   const ShardRead& read,
                   std::function<void(absl::Status)> done) {
  struct Call {
    grpc::ClientContext context;
    grpc::ByteBuffer request;
    grpc::ByteBuffer response;
    std::function<void(absl::Status)> done;
  };
  auto call = std::make_shared<Call>();
  call->context.set_deadline(deadline);
  call->done = std::move(done);
  internal::v1::GatherRequest request;
  request.set_layer_id(read.layer_id());
  request.set_token_model(read.token_model());
  request.mutable_heads()->Reserve(static_cast<int>(read.size()));
  request.mutable_row_ids()->Reserve(static_cast<int>(read.size()));
  for (size_t j = 0; j < read.size(); ++j) {
    request.add_heads(read.head(j));
    request.add_row_ids(read.row(j));
  }
  bool own_buffer = false;
  (void)grpc::SerializationTraits<internal::v1::GatherRequest>::Serialize(
      request, &call->request, &own_buffer);
  stub->UnaryCall(
      &call->context, "/engram.internal.v1.EngramPeer/Gather",
      grpc::StubOptions(), &call->request, &call->response,
      [call, &read](grpc::Status status) {
        if (!status.ok()) {
          call->done(FromGrpcStatus(status));
          return;
        }
        // Rows go once from the received slices to their places.
        call->done(wire::ForEachGatheredRow(
            call->response, read.layout().row_bytes(), read.size(),
            [&read](size_t j, const uint8_t* row) { read.Put(j, row); }));
      });
}

}  // namespace engram
