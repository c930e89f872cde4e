#include "server/layer_watch.h"

#include "absl/strings/str_cat.h"
#include "proto/convert.h"
#include "store/gpu_tier.h"
#include "transport/descriptor.h"

namespace engram {

using internal::v1::LayerMapping;
using internal::v1::WatchLayerRequest;

void DescribeLayerExports(const Layer& layer,
                          const transport::UcxEngine& transport,
                          ExportAccess access,
                          internal::v1::TransportResponse* response) {
  const bool ucx = access == ExportAccess::kUcx;
  // Descriptors are this process's own (never malformed); one that did not
  // parse would be left out rather than passed on whole.
  auto describe = [ucx](const std::string& descriptor) -> std::string {
    if (ucx) return descriptor;
    absl::StatusOr<transport::RegionDescriptor> d =
        transport::RegionDescriptor::Parse(descriptor);
    return d.ok() ? d->AttachOnly().Serialize() : std::string();
  };
  if (ucx) response->set_worker_address(transport.worker_address());
  response->set_control_descriptor(describe(transport.control_descriptor()));
  for (int h = 0; h < layer.layout().num_heads(); ++h) {
    internal::v1::HeadExports* head = response->add_heads();
    for (const ExportedRange& e : layer.exports(h)) {
      internal::v1::ExportedRange* r = head->add_ranges();
      r->set_offset(e.offset);
      r->set_length(e.length);
      r->set_access(describe(e.descriptor));
    }
  }
}

// One WatchLayer call. gRPC serializes its own callbacks; Notify comes from
// committing threads (through the hub, under the hub's lock). `mu_` orders
// the write state between the two. Deletes itself in OnDone, after
// unregistering (so no Notify reaches it afterwards).
class LayerWatchHub::Stream
    : public grpc::ServerBidiReactor<WatchLayerRequest, LayerMapping> {
 public:
  Stream(std::shared_ptr<LayerWatchHub> hub, bool may_share_gpu,
         std::string caller)
      : hub_(std::move(hub)),
        may_share_gpu_(may_share_gpu),
        caller_(std::move(caller)) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the reader closed its side, or left
      End(grpc::Status::OK);
      return;
    }
    if (layer_id_ < 0) {
      if (request_.layer_id() < 0) {
        End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                         "layer_id must not be negative"));
        return;
      }
      layer_id_ = request_.layer_id();
      gpu_ = request_.gpu();
      if (absl::Status s = hub_->Register(this, layer_id_, caller_); !s.ok()) {
        layer_id_ = -1;
        End(ToGrpcStatus(s));
        return;
      }
      registered_ = true;
      Notify();
    } else if (request_.release_version() != 0) {
      Release(request_.release_version());
    }
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(
          grpc::Status(grpc::StatusCode::CANCELLED, "the reader went away"));
      return;
    }
    if (finish_after_write_) {
      finish_after_write_ = false;
      Finish(final_status_);
      return;
    }
    if (pending_) {
      pending_ = false;
      WriteCurrentLocked();
    }
  }

  void OnCancel() override {
    End(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override {
    if (registered_) hub_->Unregister(this, layer_id_, caller_);
    std::vector<std::shared_ptr<const Layer>> held;
    {
      MutexLock lock(&mu_);
      for (auto& [version, layer] : leases_) held.push_back(std::move(layer));
      leases_.clear();
    }
    // Still counted as leases until the hub frees them.
    hub_->HoldAfterEnd(std::move(held));
    delete this;
  }

  // The layer may have changed: send its state unless the reader has it.
  void Notify() {
    MutexLock lock(&mu_);
    if (finished_) return;
    if (writing_) {
      pending_ = true;
      return;
    }
    WriteCurrentLocked();
  }

  void End(const grpc::Status& status) {
    MutexLock lock(&mu_);
    FinishLocked(status);
  }

  // Ends the stream if it holds a version superseded before `cutoff`.
  void EndIfHeldSince(std::chrono::steady_clock::time_point cutoff) {
    MutexLock lock(&mu_);
    for (const auto& [version, since] : superseded_at_) {
      if (since < cutoff && leases_.contains(version)) {
        FinishLocked(grpc::Status(
            grpc::StatusCode::DEADLINE_EXCEEDED,
            absl::StrCat("version ", version, " of layer ", layer_id_,
                         " was replaced and not released in time; reconnect "
                         "(its memory is freed shortly)")));
        return;
      }
    }
  }

 private:
  void Release(uint64_t version) {
    std::shared_ptr<const Layer> freed;  // freed outside the lock
    MutexLock lock(&mu_);
    auto it = leases_.find(version);
    if (it == leases_.end()) return;
    freed = std::move(it->second);
    leases_.erase(it);
    superseded_at_.erase(version);
    hub_->leases_.fetch_sub(1);
  }

  // The version sent before is no longer current: its lease clock starts.
  void SupersedeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (sent_state_ == LayerMapping::PRESENT &&
        leases_.contains(sent_version_)) {
      superseded_at_.emplace(sent_version_, std::chrono::steady_clock::now());
    }
  }

  void FinishLocked(const grpc::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    if (writing_) {
      finish_after_write_ = true;
      final_status_ = status;
    } else {
      Finish(status);
    }
  }

  void WriteCurrentLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::shared_ptr<const Layer> layer = hub_->layers_->Find(layer_id_);
    out_.Clear();
    out_.set_layer_id(layer_id_);
    if (layer == nullptr) {
      if (sent_state_ == LayerMapping::NOT_FOUND) return;
      SupersedeLocked();
      out_.set_state(LayerMapping::NOT_FOUND);
      sent_state_ = LayerMapping::NOT_FOUND;
      sent_version_ = 0;
    } else {
      const uint64_t token_model = hub_->TokenModelOf(*layer);
      const bool same_version = sent_state_ == LayerMapping::PRESENT &&
                                sent_version_ == layer->version();
      if (same_version && sent_token_model_ == token_model) return;
      if (!same_version && static_cast<int>(leases_.size()) >=
                               hub_->options_.max_leases_per_stream) {
        FinishLocked(
            grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                         absl::StrCat("the reader holds ", leases_.size(),
                                      " versions of layer ", layer_id_,
                                      " without releasing any; reconnect")));
        return;
      }
      Describe(*layer);
      out_.set_token_model(token_model);
      // The same version sent again (its model registered after the
      // commit) holds its one lease and is not superseded.
      if (!same_version) SupersedeLocked();
      if (leases_.emplace(layer->version(), layer).second) {
        hub_->leases_.fetch_add(1);
      }
      sent_state_ = LayerMapping::PRESENT;
      sent_version_ = layer->version();
      sent_token_model_ = token_model;
    }
    writing_ = true;
    StartWrite(&out_);
  }

  void Describe(const Layer& layer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    out_.set_state(LayerMapping::PRESENT);
    out_.set_version(layer.version());
    LayoutToConfig(layer.layout(), out_.mutable_config());
    std::string note;
    bool exported = layer.has_rows() && layer.layout().num_heads() > 0;
    for (int h = 0; exported && h < layer.layout().num_heads(); ++h) {
      exported = !layer.exports(h).empty();
    }
    if (hub_->transport_ == nullptr || !exported) {
      note = "host tables are not exported (start engramd with --direct_reads)";
    } else {
      DescribeLayerExports(layer, *hub_->transport_, ExportAccess::kAttachOnly,
                           out_.mutable_host());
    }
    const GpuLayerMirror* mirror = layer.gpu_mirror();
    if (gpu_ && mirror != nullptr && !may_share_gpu_) {
      absl::StrAppend(&note, note.empty() ? "" : "; ",
                      "the GPU copy is shared only with callers that have the "
                      "write right (CUDA IPC maps it writable)");
    } else if (gpu_ && mirror == nullptr) {
      absl::StrAppend(&note, note.empty() ? "" : "; ",
                      "no GPU copy (engramd --gpu holds one)");
    } else if (gpu_) {
      absl::StatusOr<std::string> uuid = gpu::DeviceUuid(mirror->device());
      absl::Status status = uuid.status();
      for (int h = 0; status.ok() && h < mirror->num_tables(); ++h) {
        absl::StatusOr<std::string> handle =
            gpu::IpcHandleOf(mirror->device(), mirror->device_table(h));
        if (!handle.ok()) {
          status = handle.status();
          break;
        }
        internal::v1::GpuTable* table = out_.add_gpu_tables();
        table->set_ipc_handle(*std::move(handle));
        table->set_offset(0);
      }
      if (status.ok()) {
        out_.set_gpu_uuid(*uuid);
      } else {
        out_.clear_gpu_tables();
        absl::StrAppend(&note, note.empty() ? "" : "; ",
                        "the GPU copy cannot be shared: ", status.message());
      }
    }
    out_.set_note(note);
  }

  const std::shared_ptr<LayerWatchHub> hub_;
  const bool may_share_gpu_;
  const std::string caller_;
  WatchLayerRequest request_;  // gRPC's read callbacks only
  int64_t layer_id_ = -1;      // set by the first message
  bool gpu_ = false;
  bool registered_ = false;

  Mutex mu_;
  LayerMapping out_ ABSL_GUARDED_BY(mu_);  // the write in flight
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool pending_ ABSL_GUARDED_BY(mu_) = false;  // a change during the write
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_after_write_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
  LayerMapping::State sent_state_ ABSL_GUARDED_BY(mu_) =
      LayerMapping::STATE_UNSPECIFIED;
  uint64_t sent_version_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t sent_token_model_ ABSL_GUARDED_BY(mu_) = 0;
  // The versions the reader may be reading: kept alive here.
  std::map<uint64_t, std::shared_ptr<const Layer>> leases_ ABSL_GUARDED_BY(mu_);
  // When each leased version stopped being the current one.
  std::map<uint64_t, std::chrono::steady_clock::time_point> superseded_at_
      ABSL_GUARDED_BY(mu_);
};

std::shared_ptr<LayerWatchHub> LayerWatchHub::Create(
    LayerRegistry* layers, transport::UcxEngine* transport, TokenHashes* hashes,
    Options options) {
  std::shared_ptr<LayerWatchHub> hub(
      new LayerWatchHub(layers, transport, hashes, options));
  auto changed = [weak = std::weak_ptr<LayerWatchHub>(hub)](int64_t layer_id) {
    if (std::shared_ptr<LayerWatchHub> h = weak.lock()) h->Changed(layer_id);
  };
  layers->SetChangeListener(changed);
  if (hashes != nullptr) hashes->SetChangeListener(changed);
  return hub;
}

LayerWatchHub::~LayerWatchHub() = default;

grpc::ServerBidiReactor<WatchLayerRequest, LayerMapping>* LayerWatchHub::Start(
    grpc::CallbackServerContext*, bool may_share_gpu, std::string caller) {
  return new Stream(shared_from_this(), may_share_gpu, std::move(caller));
}

void LayerWatchHub::Close() {
  MutexLock lock(&mu_);
  closed_ = true;
  for (auto& [id, stream] : streams_) {
    stream->End(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                             "the server is shutting down"));
  }
}

int LayerWatchHub::open_streams() const {
  MutexLock lock(&mu_);
  return static_cast<int>(streams_.size());
}

void LayerWatchHub::Changed(int64_t layer_id) {
  MutexLock lock(&mu_);
  auto [begin, end] = streams_.equal_range(layer_id);
  for (auto it = begin; it != end; ++it) it->second->Notify();
}

void LayerWatchHub::HoldAfterEnd(
    std::vector<std::shared_ptr<const Layer>> versions) {
  if (versions.empty()) return;
  MutexLock lock(&mu_);
  held_.push_back(
      {std::chrono::steady_clock::now() + options_.ended_stream_grace,
       std::move(versions)});
}

void LayerWatchHub::ExpireHeld(bool all) {
  std::vector<Held> due;
  {
    MutexLock lock(&mu_);
    const auto now = std::chrono::steady_clock::now();
    for (auto& [id, stream] : streams_) {
      stream->EndIfHeldSince(now - options_.superseded_lease);
    }
    while (!held_.empty() && (all || held_.front().until <= now)) {
      due.push_back(std::move(held_.front()));
      held_.pop_front();
    }
  }
  for (Held& h : due) {
    leases_.fetch_sub(static_cast<int64_t>(h.versions.size()));
    h.versions.clear();  // freed here, outside the lock
  }
}

absl::Status LayerWatchHub::Register(Stream* stream, int64_t layer_id,
                                     const std::string& caller) {
  MutexLock lock(&mu_);
  if (closed_) return absl::UnavailableError("the server is shutting down");
  if (static_cast<int>(streams_.size()) >= options_.max_streams) {
    return absl::ResourceExhaustedError(
        absl::StrCat("this server has ", options_.max_streams,
                     " WatchLayer streams open already"));
  }
  int& mine = streams_by_caller_[caller];
  if (mine >= options_.max_streams_per_caller) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "this caller has ", mine,
        " WatchLayer streams open already (--max_watch_streams_per_caller)"));
  }
  ++mine;
  streams_.emplace(layer_id, stream);
  return absl::OkStatus();
}

void LayerWatchHub::Unregister(Stream* stream, int64_t layer_id,
                               const std::string& caller) {
  MutexLock lock(&mu_);
  if (auto it = streams_by_caller_.find(caller);
      it != streams_by_caller_.end() && --it->second <= 0) {
    streams_by_caller_.erase(it);
  }
  auto [begin, end] = streams_.equal_range(layer_id);
  for (auto it = begin; it != end; ++it) {
    if (it->second == stream) {
      streams_.erase(it);
      return;
    }
  }
}

}  // namespace engram
