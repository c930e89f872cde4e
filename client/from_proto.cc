#include "client/from_proto.h"

#include "proto/convert.h"

namespace engram {

LayerDescription LayerDescriptionFromProto(const v1::LayerInfo& info) {
  LayerDescription d;
  d.layer_id = info.layer_id();
  d.layout = LayoutOf(info.config());
  d.store_keys.assign(info.store_keys().begin(), info.store_keys().end());
  d.bytes = info.bytes();
  d.version = info.version();
  return d;
}

ServerStatus ServerStatusFromProto(const v1::StatusResponse& r) {
  ServerStatus s;
  s.version = r.server().version();
  s.uptime_seconds = r.server().uptime_seconds();
  s.shard_index = r.server().shard_index();
  s.shards = r.server().shards();
  s.ready = r.ready();
  s.not_ready_reason = r.not_ready_reason();
  s.memory_used_bytes = r.memory_used_bytes();
  s.memory_limit_bytes = r.memory_limit_bytes();
  s.gpu_memory_used_bytes = r.gpu_memory_used_bytes();
  s.gpu_memory_limit_bytes = r.gpu_memory_limit_bytes();
  for (const v1::LayerStatus& l : r.layers()) {
    using TokenModel = ServerStatus::Layer::TokenModel;
    s.layers.push_back(
        {LayerDescriptionFromProto(l.info()), l.pinned(), l.gpu_resident(),
         l.stored_bytes(), l.resident_bytes(),
         l.token_model() == v1::LayerStatus::CURRENT ? TokenModel::kCurrent
         : l.token_model() == v1::LayerStatus::STALE ? TokenModel::kStale
                                                     : TokenModel::kNone});
  }
  for (const v1::CallCounts& c : r.calls()) {
    s.calls.push_back({c.rpc(), c.calls(), c.errors()});
  }
  const v1::LatencyHistogram& h = r.lookup_latency();
  s.lookup_latency.upper_bounds.assign(h.upper_bounds().begin(),
                                       h.upper_bounds().end());
  s.lookup_latency.counts.assign(h.counts().begin(), h.counts().end());
  s.lookup_latency.sum_seconds = h.sum_seconds();
  s.lookup_latency.count = h.count();
  s.lookup_rows = r.lookup_rows();
  s.lookup_bytes = r.lookup_bytes();
  s.populate_bytes = r.populate_bytes();
  for (const v1::LoadProgress& l : r.loads()) {
    s.loads.push_back({l.manifest(), l.layers_total(), l.layers_done(),
                       l.bytes_total(), l.bytes_done(), l.seconds()});
  }
  s.peers_up = r.peers_up();
  s.recovery_layers_pending = r.recovery_layers_pending();
  s.pending_response_bytes = r.pending_response_bytes();
  s.resident_bytes = r.process().resident_bytes();
  s.cpu_seconds = r.process().cpu_seconds();
  s.open_fds = r.process().open_fds();
  s.max_fds = r.process().max_fds();
  s.start_time_seconds = r.process().start_time_seconds();
  return s;
}

}  // namespace engram
