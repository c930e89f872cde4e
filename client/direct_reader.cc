#include "client/direct_reader.h"

namespace engram {
namespace {

// Linking this file (engram::client_direct) turns direct reads on.
[[maybe_unused]] const bool registered =
    (RegisterDirectReads(&DirectReader::Create), true);

constexpr auto kReadTimeout = std::chrono::seconds(5);

}  // namespace

std::unique_ptr<DirectReads> DirectReader::Create(
    std::vector<internal::v1::EngramPeer::Stub*> stubs) {
  absl::StatusOr<std::unique_ptr<transport::UcxEngine>> engine =
      // Same-host mappings only: this process opens no network listener.
      transport::UcxEngine::Create({.same_host_only = true});
  if (!engine.ok()) return nullptr;
  return std::unique_ptr<DirectReader>(
      new DirectReader(*std::move(engine), std::move(stubs)));
}

DirectReader::DirectReader(std::unique_ptr<transport::UcxEngine> engine,
                           std::vector<internal::v1::EngramPeer::Stub*> stubs)
    : engine_(std::move(engine)),
      layers_(
          engine_.get(), std::move(stubs),
          RemoteLayers::Options{.accept =
                                    [](const transport::RemoteRegions& remote) {
                                      return remote.mapped();
                                    },
                                .retry_after = std::chrono::seconds(30),
                                .fetch_timeout = std::chrono::seconds(5),
                                .on_attach = nullptr}) {}

void DirectReader::Forget(int64_t layer_id) { layers_.Forget(layer_id); }

bool DirectReader::TryRead(int shard, int64_t layer_id,
                           const LayerLayout& layout, std::span<const Row> rows,
                           uint64_t token_model) {
  std::shared_ptr<const RemoteLayers::Entry> entry =
      layers_.Find(shard, layer_id, nullptr);
  if (entry == nullptr) {
    layers_.Fetch(shard, layer_id, layout.num_heads(), nullptr, nullptr);
    return false;  // this lookup uses an RPC
  }
  if (entry->remote == nullptr) return false;
  // Ids hashed with another model than this version's: the owner decides.
  const uint64_t exported = entry->exports->token_model();
  if (token_model != 0 && exported != 0 && exported != token_model) {
    return false;
  }
  // Mapped reads complete before Read returns.
  absl::Status status = absl::UnknownError("read did not complete");
  layers_.Read(shard, layer_id, entry, layout.row_bytes(), rows,
               std::chrono::steady_clock::now() + kReadTimeout,
               [&status](absl::Status s) { status = std::move(s); });
  return status.ok();
}

}  // namespace engram
