#include "cluster/remote_layers.h"

#include "absl/strings/str_cat.h"
#include "proto/convert.h"

namespace engram {

RemoteLayers::RemoteLayers(transport::UcxEngine* engine,
                           std::vector<internal::v1::EngramPeer::Stub*> stubs,
                           Options options)
    : engine_(engine), stubs_(std::move(stubs)), options_(std::move(options)) {}

RemoteLayers::~RemoteLayers() {
  MutexLock lock(&mu_);
  idle_.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return fetching_.empty();
  });
  entries_.clear();  // before the engine the attachments belong to
}

std::shared_ptr<const RemoteLayers::Entry> RemoteLayers::Find(
    int shard, int64_t layer_id, const std::shared_ptr<const void>& version) {
  MutexLock lock(&mu_);
  auto it = entries_.find({shard, layer_id});
  if (it == entries_.end()) {
    // A miss (a new layer, typically): drop entries of local copies that
    // are gone, so their mappings do not outlive them for long. Not on
    // hits: they are the lookup path.
    std::erase_if(entries_, [](const auto& kv) {
      return kv.second->versioned && kv.second->version.expired();
    });
    return nullptr;
  }
  const Entry& e = *it->second;
  const bool stale =
      (e.versioned && e.version.lock() != version) ||
      (e.remote != nullptr && e.remote->broken()) ||
      (e.remote == nullptr && std::chrono::steady_clock::now() > e.retry_at);
  if (stale) {
    entries_.erase(it);
    return nullptr;
  }
  return it->second;
}

void RemoteLayers::Fetch(
    int shard, int64_t layer_id, int num_heads,
    std::shared_ptr<const void> version,
    std::function<void(absl::StatusOr<std::shared_ptr<const Entry>>)> then) {
  const Key key{shard, layer_id};
  {
    MutexLock lock(&mu_);
    if (!fetching_.insert(key).second) {
      if (then) {
        then(absl::FailedPreconditionError(
            "the attachment is being set up by another read"));
      }
      return;
    }
  }
  struct Call {
    grpc::ClientContext context;
    internal::v1::TransportRequest request;
    internal::v1::TransportResponse response;
  };
  auto call = std::make_shared<Call>();
  call->context.set_deadline(std::chrono::system_clock::now() +
                             options_.fetch_timeout);
  call->request.set_layer_id(layer_id);
  stubs_[shard]->async()->Transport(
      &call->context, &call->request, &call->response,
      [this, call, key, num_heads, version = std::move(version),
       then = std::move(then)](grpc::Status status) mutable {
        auto entry = std::make_shared<Entry>();
        entry->retry_at =
            std::chrono::steady_clock::now() + options_.retry_after;
        entry->version = version;
        entry->versioned = version != nullptr;
        absl::Status failed;
        if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
            status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
          // The shard exports nothing (or predates Transport): remember,
          // use RPCs.
        } else if (!status.ok()) {
          failed = FromGrpcStatus(
              status, absl::StrCat("shard ", key.first, " Transport"));
        } else if (call->response.heads_size() != num_heads) {
          failed = absl::FailedPreconditionError(absl::StrCat(
              "shard ", key.first, " exports ", call->response.heads_size(),
              " heads of layer ", key.second, "; this copy has ", num_heads));
        } else {
          std::vector<std::string> descriptors;
          entry->exports.emplace(call->response, &descriptors);
          absl::StatusOr<std::shared_ptr<transport::RemoteRegions>> remote =
              engine_->Attach(call->response.worker_address(),
                              call->response.control_descriptor(), descriptors);
          if (remote.ok() && options_.accept(**remote)) {
            entry->remote = *remote;
          }
          if (options_.on_attach) {
            // E.g. a shard in another IPC namespace cannot be attached:
            // RPCs for a while rather than a retry on every call.
            options_.on_attach(
                key.first, key.second,
                !remote.ok()
                    ? absl::StrCat("cannot attach (",
                                   remote.status().ToString(), "); using RPCs")
                : entry->remote != nullptr
                    ? absl::StrCat("one-sided reads over ",
                                   (*remote)->transport())
                    : absl::StrCat("RPCs (UCX reads would go over ",
                                   (*remote)->transport(), ")"));
          }
        }
        {
          MutexLock lock(&mu_);
          // Errors (a layer not committed there yet, an unreachable shard)
          // are not remembered: the next read asks again.
          if (failed.ok()) entries_[key] = entry;
          fetching_.erase(key);
          idle_.notify_all();  // under the lock: `this` may go right after
        }
        if (!then) return;
        if (!failed.ok()) {
          then(failed);
        } else {
          then(std::shared_ptr<const Entry>(std::move(entry)));
        }
      });
}

void RemoteLayers::Read(int shard, int64_t layer_id,
                        const std::shared_ptr<const Entry>& entry,
                        uint64_t row_bytes, std::span<const Row> rows,
                        std::chrono::steady_clock::time_point deadline,
                        std::function<void(absl::Status)> done) {
  std::vector<transport::ReadOp> ops;
  ops.reserve(rows.size());
  for (const Row& row : rows) {
    std::optional<transport::ReadOp> op =
        entry->exports->Op(row.head, row.row, row_bytes, row.dst);
    if (!op) {
      done(absl::FailedPreconditionError(
          absl::StrCat("row ", row.row, " of head ", row.head,
                       " is not exported by shard ", shard)));
      return;
    }
    ops.push_back(*op);
  }
  engine_->Read(entry->remote, std::move(ops), deadline,
                [this, entry, key = Key{shard, layer_id},
                 done = std::move(done)](absl::Status s) {
                  if (!s.ok()) Drop(key, entry.get());
                  done(std::move(s));
                });
}

void RemoteLayers::Forget(int64_t layer_id) {
  MutexLock lock(&mu_);
  std::erase_if(entries_,
                [&](const auto& kv) { return kv.first.second == layer_id; });
}

void RemoteLayers::Drop(const Key& key, const Entry* entry) {
  MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it != entries_.end() && it->second.get() == entry) entries_.erase(it);
}

}  // namespace engram
