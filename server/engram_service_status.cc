// EngramService's read-only answers about the server itself: ServerInfo
// and Status (engramctl status / top). Split from engram_service.cc, which
// serves the tables.
#include <chrono>
#include <optional>

#include "common/version.h"
#include "server/engram_service.h"
#include "server/raw_unary.h"

namespace engram {
namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

void EngramService::FillServerInfo(v1::ServerInfoResponse* info) const {
  info->set_version(Version());
  info->set_uptime_seconds(
      std::chrono::duration<double>(Clock::now() - started_).count());
  if (cluster_ != nullptr) {
    info->set_shard_index(cluster_->cluster()->self());
    info->set_shards(cluster_->cluster()->size());
  }
  info->set_layers(static_cast<int64_t>(layers_->size()));
}

grpc::ServerUnaryReactor* EngramService::ServerInfo(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = Refuse(context, Method::kServerInfo)) return refused;
  return ServeRaw<v1::ServerInfoRequest, v1::ServerInfoResponse>(
      context, request, response,
      [this](const v1::ServerInfoRequest&, v1::ServerInfoResponse* info,
             RawDone done) {
        FillServerInfo(info);
        done(absl::OkStatus());
      },
      Observer(Method::kServerInfo));
}

grpc::ServerUnaryReactor* EngramService::Status(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = Refuse(context, Method::kStatus)) return refused;
  return ServeRaw<v1::StatusRequest, v1::StatusResponse>(
      context, request, response,
      [this](const v1::StatusRequest&, v1::StatusResponse* status,
             RawDone done) {
        FillServerInfo(status->mutable_server());
        status->set_memory_used_bytes(static_cast<int64_t>(budget_->used()));
        status->set_memory_limit_bytes(static_cast<int64_t>(budget_->limit()));
        if (gpu_ != nullptr) {
          status->set_gpu_memory_used_bytes(
              static_cast<int64_t>(gpu_->budget().used()));
          status->set_gpu_memory_limit_bytes(
              static_cast<int64_t>(gpu_->budget().limit()));
        }
        for (const auto& layer : layers_->List()) {
          v1::LayerStatus* l = status->add_layers();
          FillLayerInfo(layer->id(), layer->layout(), l->mutable_info(),
                        layer->version());
          l->set_pinned(layer->pin_mode() != PinMode::kNone);
          l->set_gpu_resident(layer->gpu_mirror() != nullptr);
          l->set_stored_bytes(layer->files() != nullptr
                                  ? static_cast<int64_t>(layer->data_bytes())
                                  : 0);
          l->set_resident_bytes(static_cast<int64_t>(layer->resident_bytes()));
          if (std::optional<TokenHashes::Entry> model =
                  hashes_ != nullptr ? hashes_->Find(layer->id())
                                     : std::nullopt) {
            l->set_token_model(TokenHashes::CheckCurrent(*model, *layer).ok()
                                   ? v1::LayerStatus::CURRENT
                                   : v1::LayerStatus::STALE);
          }
        }
        const ServerMetrics::Snapshot m = metrics_->TakeSnapshot();
        for (const ServerMetrics::Snapshot::Calls& c : m.calls) {
          v1::CallCounts* calls = status->add_calls();
          calls->set_rpc(c.rpc);
          calls->set_calls(c.calls);
          calls->set_errors(c.errors);
        }
        v1::LatencyHistogram* latency = status->mutable_lookup_latency();
        uint64_t below = 0;
        for (const auto& bucket : m.lookup_latency.bucket) {
          latency->add_upper_bounds(bucket.upper_bound);
          latency->add_counts(
              static_cast<int64_t>(bucket.cumulative_count - below));
          below = bucket.cumulative_count;
        }
        // prometheus-cpp's last bucket is +Inf: its bound is not sent.
        if (latency->upper_bounds_size() > 0 &&
            std::isinf(
                latency->upper_bounds(latency->upper_bounds_size() - 1))) {
          latency->mutable_upper_bounds()->RemoveLast();
        }
        latency->set_sum_seconds(m.lookup_latency.sample_sum);
        latency->set_count(static_cast<int64_t>(m.lookup_latency.sample_count));
        status->set_lookup_rows(m.lookup_rows);
        status->set_lookup_bytes(m.lookup_bytes);
        status->set_populate_bytes(m.populate_bytes);
        if (pending_ != nullptr) {
          status->set_pending_response_bytes(
              static_cast<int64_t>(pending_->total()));
        }
        if (server_status_) server_status_(status);
        done(absl::OkStatus());
      },
      Observer(Method::kStatus));
}

std::function<void(const absl::Status&)> EngramService::Observer(Method rpc) {
  return [this, rpc](const absl::Status& s) {
    metrics_->RecordCall(rpc, static_cast<grpc::StatusCode>(s.code()));
  };
}

}  // namespace engram
