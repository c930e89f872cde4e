#include "client/direct_reader.h"

#include <thread>

namespace engram {
namespace {
// A shard whose exports could not be mapped here is asked again after this.
constexpr auto kRetry = std::chrono::seconds(30);
constexpr auto kFetchTimeout = std::chrono::seconds(5);

// Linking this file (engram::client_direct) turns direct reads on.
[[maybe_unused]] const bool registered =
    (RegisterDirectReads(&DirectReader::Create), true);

}  // namespace

std::unique_ptr<DirectReads> DirectReader::Create(
    std::vector<internal::v1::EngramPeer::Stub*> stubs) {
  absl::StatusOr<std::unique_ptr<transport::UcxEngine>> engine =
      transport::UcxEngine::Create();
  if (!engine.ok()) return nullptr;
  return std::unique_ptr<DirectReader>(
      new DirectReader(*std::move(engine), std::move(stubs)));
}

DirectReader::DirectReader(std::unique_ptr<transport::UcxEngine> engine,
                           std::vector<internal::v1::EngramPeer::Stub*> stubs)
    : engine_(std::move(engine)), stubs_(std::move(stubs)) {}

DirectReader::~DirectReader() {
  for (int i = 0; i < 10000 && fetching_.load() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::lock_guard<std::mutex> lock(mu_);
  entries_.clear();  // before the engine goes
}

void DirectReader::Forget(int64_t layer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(entries_,
                [&](const auto& kv) { return kv.first.second == layer_id; });
}

bool DirectReader::TryRead(int shard, int64_t layer_id,
                           const LayerLayout& layout,
                           std::span<const Row> rows) {
  const Key key{shard, layer_id};
  std::shared_ptr<Entry> entry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key);
    if (it != entries_.end() && it->second->remote == nullptr &&
        std::chrono::steady_clock::now() > it->second->retry_at) {
      entries_.erase(it);
      it = entries_.end();
    }
    if (it == entries_.end()) {
      if (pending_.insert(key).second) {
        fetching_.fetch_add(1);
        Fetch(key);  // asynchronous
      }
      return false;
    }
    entry = it->second;
  }
  if (entry->remote == nullptr ||
      entry->exports->num_heads() != layout.num_heads()) {
    return false;
  }
  const uint64_t row_bytes = layout.row_bytes();
  std::vector<transport::ReadOp> ops;
  ops.reserve(rows.size());
  for (const Row& row : rows) {
    std::optional<transport::ReadOp> op =
        entry->exports->Op(row.head, row.row, row_bytes, row.dst);
    if (!op) return false;
    ops.push_back(*op);
  }
  // Mapped reads complete before Read returns.
  absl::Status status = absl::UnknownError("read did not complete");
  engine_->Read(entry->remote, std::move(ops),
                std::chrono::steady_clock::now() + kFetchTimeout,
                [&status](absl::Status s) { status = std::move(s); });
  if (status.ok()) return true;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it != entries_.end() && it->second == entry) entries_.erase(it);
  return false;
}

void DirectReader::Fetch(const Key& key) {
  struct Call {
    grpc::ClientContext context;
    internal::v1::TransportRequest request;
    internal::v1::TransportResponse response;
  };
  auto call = std::make_shared<Call>();
  call->context.set_deadline(std::chrono::system_clock::now() + kFetchTimeout);
  call->request.set_layer_id(key.second);
  stubs_[key.first]->async()->Transport(
      &call->context, &call->request, &call->response,
      [this, call, key](grpc::Status status) {
        auto entry = std::make_shared<Entry>();
        entry->retry_at = std::chrono::steady_clock::now() + kRetry;
        if (status.ok()) {
          std::vector<std::string> descriptors;
          entry->exports.emplace(call->response, &descriptors);
          absl::StatusOr<std::shared_ptr<transport::RemoteRegions>> remote =
              engine_->Attach(call->response.worker_address(),
                              call->response.control_descriptor(), descriptors);
          // Only a mapping makes a direct read worth it: the rest would be
          // per-row network reads, slower than the shard's own gather.
          if (remote.ok() && (*remote)->mapped()) {
            entry->remote = *std::move(remote);
          }
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          pending_.erase(key);
          // A NOT_FOUND layer (not committed yet) is not remembered.
          if (status.error_code() != grpc::StatusCode::NOT_FOUND)
            entries_[key] = entry;
        }
        fetching_.fetch_sub(1);  // last use of this
      });
}

}  // namespace engram
