#include "store/layer_registry.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace engram {

namespace {

// Round-robin slot per thread, fixed for the thread's life.
int ThreadStripe(int stripes) {
  static std::atomic<int> next{0};
  thread_local const int stripe = next.fetch_add(1, std::memory_order_relaxed);
  return stripe % stripes;
}

}  // namespace

LayerRegistry::LayerRegistry() {
  MutexLock lock(&mu_);
  Publish(std::make_shared<const Snapshot>());
}

std::shared_ptr<const LayerRegistry::Snapshot> LayerRegistry::Load() const {
  const Stripe& stripe = stripes_[ThreadStripe(kStripes)];
  MutexLock lock(&stripe.mu);
  return stripe.snapshot;
}

void LayerRegistry::Publish(std::shared_ptr<const Snapshot> next) {
  for (Stripe& stripe : stripes_) {
    MutexLock lock(&stripe.mu);
    stripe.snapshot = next;
  }
  current_ = std::move(next);
}

std::shared_ptr<const Layer> LayerRegistry::Find(int64_t layer_id) const {
  std::shared_ptr<const Snapshot> snap = Load();
  auto it = snap->find(layer_id);
  return it == snap->end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<const Layer>> LayerRegistry::List() const {
  std::shared_ptr<const Snapshot> snap = Load();
  std::vector<std::shared_ptr<const Layer>> layers;
  layers.reserve(snap->size());
  for (const auto& [id, layer] : *snap) layers.push_back(layer);
  std::sort(layers.begin(), layers.end(),
            [](const auto& a, const auto& b) { return a->id() < b->id(); });
  return layers;
}

size_t LayerRegistry::size() const { return Load()->size(); }

absl::StatusOr<std::shared_ptr<PopulateTicket>> LayerRegistry::BeginPopulate(
    int64_t layer_id, std::function<void()> on_abort, bool replace) {
  MutexLock lock(&mu_);
  if (!replace && current_->contains(layer_id)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "layer ", layer_id,
        " already exists; populate is create-only (Remove it first, or "
        "replace it)"));
  }
  if (populating_.contains(layer_id)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "layer ", layer_id, " is being populated by another stream"));
  }
  auto ticket = std::make_shared<PopulateTicket>(layer_id);
  ticket->on_abort_ = std::move(on_abort);
  populating_[layer_id] = ticket;
  return ticket;
}

absl::StatusOr<std::shared_ptr<PopulateTicket>> LayerRegistry::BeginRecovery(
    std::shared_ptr<const Layer> placeholder) {
  const int64_t id = placeholder->id();
  absl::StatusOr<std::shared_ptr<PopulateTicket>> ticket = BeginPopulate(id);
  if (!ticket.ok()) return ticket;
  MutexLock lock(&mu_);
  (*ticket)->placeholder_ = std::move(placeholder);
  return ticket;
}

std::shared_ptr<const PopulateTicket> LayerRegistry::FindRecovering(
    int64_t layer_id) const {
  MutexLock lock(&mu_);
  auto it = populating_.find(layer_id);
  if (it == populating_.end() || it->second->placeholder_ == nullptr) {
    return nullptr;
  }
  return it->second;
}

absl::Status LayerRegistry::Commit(
    const std::shared_ptr<PopulateTicket>& ticket,
    std::shared_ptr<const Layer> layer) {
  absl::Status s = CommitQuietly(ticket, std::move(layer));
  if (s.ok() && listener_) listener_(ticket->layer_id());
  return s;
}

absl::Status LayerRegistry::CommitQuietly(
    const std::shared_ptr<PopulateTicket>& ticket,
    std::shared_ptr<const Layer> layer) {
  MutexLock lock(&mu_);
  auto it = populating_.find(ticket->layer_id());
  const bool owned = it != populating_.end() && it->second == ticket;
  if (owned) populating_.erase(it);
  if (!owned || ticket->aborted()) {
    layer->ReleaseStorage();  // sealed files of a layer never published
    return absl::AbortedError(
        absl::StrCat("populate of layer ", ticket->layer_id(),
                     " was aborted by a forced Remove; nothing was committed"));
  }
  layer->version_ = ++versions_[ticket->layer_id()];
  auto next = std::make_shared<Snapshot>(*current_);
  std::shared_ptr<const Layer>& slot = (*next)[ticket->layer_id()];
  if (slot != nullptr) slot->ReleaseStorage();  // replaced
  slot = std::move(layer);
  Publish(std::move(next));
  return absl::OkStatus();
}

uint64_t LayerRegistry::NextVersion(int64_t layer_id) const {
  MutexLock lock(&mu_);
  auto it = versions_.find(layer_id);
  return (it == versions_.end() ? 0 : it->second) + 1;
}

void LayerRegistry::SeedVersion(int64_t layer_id, uint64_t version) {
  MutexLock lock(&mu_);
  uint64_t& v = versions_[layer_id];
  v = std::max(v, version - 1);
}

void LayerRegistry::Abandon(const std::shared_ptr<PopulateTicket>& ticket) {
  MutexLock lock(&mu_);
  auto it = populating_.find(ticket->layer_id());
  if (it != populating_.end() && it->second == ticket) populating_.erase(it);
}

void LayerRegistry::AbortPopulate(
    const std::shared_ptr<PopulateTicket>& ticket) {
  MutexLock lock(&mu_);
  auto it = populating_.find(ticket->layer_id());
  if (it != populating_.end() && it->second == ticket) populating_.erase(it);
  ticket->aborted_.store(true, std::memory_order_release);
  if (ticket->on_abort_) std::exchange(ticket->on_abort_, nullptr)();
}

void LayerRegistry::DetachAbortHook(
    const std::shared_ptr<PopulateTicket>& ticket) {
  MutexLock lock(&mu_);
  ticket->on_abort_ = nullptr;
}

absl::StatusOr<int> LayerRegistry::Remove(int64_t layer_id, bool force) {
  absl::StatusOr<int> removed = RemoveQuietly(layer_id, force);
  if (removed.ok() && listener_) listener_(layer_id);
  return removed;
}

absl::StatusOr<int> LayerRegistry::RemoveQuietly(int64_t layer_id, bool force) {
  MutexLock lock(&mu_);
  auto committed = current_->find(layer_id);
  if (committed != current_->end()) {
    const int heads = committed->second->layout().num_heads();
    committed->second->ReleaseStorage();
    auto next = std::make_shared<Snapshot>(*current_);
    next->erase(layer_id);
    Publish(std::move(next));
    return heads;
  }
  auto pending = populating_.find(layer_id);
  if (pending == populating_.end()) {
    return absl::NotFoundError(absl::StrCat("layer ", layer_id, " not found"));
  }
  const bool recovering = pending->second->placeholder_ != nullptr;
  if (!force && !recovering) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer_id,
        " is still being populated; pass force to abort that populate"));
  }
  std::shared_ptr<PopulateTicket> ticket = std::move(pending->second);
  populating_.erase(pending);
  ticket->aborted_.store(true, std::memory_order_release);
  if (ticket->on_abort_) std::exchange(ticket->on_abort_, nullptr)();
  return recovering ? ticket->placeholder_->layout().num_heads() : 0;
}

}  // namespace engram
