#include "client/device_versions.h"

#include "absl/strings/str_cat.h"
#include "client/client.h"

namespace engram {

using Clock = std::chrono::steady_clock;

DeviceVersions::DeviceVersions(Device* device,
                               std::function<void(uint64_t)> release,
                               std::chrono::milliseconds grace)
    : device_(device), release_(std::move(release)), grace_(grace) {}

DeviceVersions::~DeviceVersions() { CloseAll(); }

void DeviceVersions::Lease(uint64_t version) { ++leases_[version]; }

bool DeviceVersions::Unlease(uint64_t version) {
  auto it = leases_.find(version);
  if (it == leases_.end()) return false;
  if (--it->second > 0) return false;
  leases_.erase(it);
  return !closed_;
}

void DeviceVersions::Apply(MappingUpdate u) {
  uint64_t seq;
  std::optional<MappingUpdate> dropped;
  bool release_dropped = false;
  {
    MutexLock lock(&mu_);
    if (closed_) return;
    seq = ++update_seq_;
    if (u.state == MappingUpdate::kPresent) Lease(u.mapped->version);
    dropped.swap(retry_);
    if (dropped && dropped->state == MappingUpdate::kPresent) {
      release_dropped = Unlease(dropped->mapped->version);  // never published
    }
  }
  if (release_dropped) release_(dropped->mapped->version);
  ApplyInOrder(std::move(u), seq);
}

void DeviceVersions::RetryPending() {
  std::optional<MappingUpdate> u;
  uint64_t seq = 0;
  {
    MutexLock lock(&mu_);
    if (!retry_) return;
    u.swap(retry_);
    seq = retry_seq_;
  }
  ApplyInOrder(*std::move(u), seq);
}

void DeviceVersions::ApplyInOrder(MappingUpdate u, uint64_t seq) {
  MutexLock apply(&apply_mu_);
  const bool present = u.state == MappingUpdate::kPresent;
  const uint64_t version = present ? u.mapped->version : 0;
  // Drops `u`'s lease (an update that will never be read); call unlocked.
  auto drop = [&]() ABSL_LOCKS_EXCLUDED(mu_) {
    bool release = false;
    {
      MutexLock lock(&mu_);
      release = present && Unlease(version);
    }
    if (release) release_(version);
  };
  {
    MutexLock lock(&mu_);
    if (closed_ || seq < applied_seq_) {
      lock.unlock();
      drop();
      return;
    }
    applied_seq_ = seq;
  }
  Published p = device_->Publish(u);
  if (p.view == nullptr) {
    // The slot still shows the current view: keep that alive, and serve
    // through the RPC path until the janitor's retry works.
    std::string note = std::move(p.note);
    absl::StrAppend(
        &note, note.empty() ? "" : "; ",
        "publishing the view failed (retrying): ", p.error.message());
    bool keep = false;
    {
      MutexLock lock(&mu_);
      keep = seq == update_seq_;  // nothing newer arrived meanwhile
      if (keep) {
        retry_ = u;
        retry_seq_ = seq;
      }
      current_state_.state = u.state;
      current_state_.path = DevicePath::kRpc;
      current_state_.why = u.why;
      current_state_.known = present;
      if (present) {
        current_state_.layout =
            std::make_shared<const LayerLayout>(u.mapped->layout);
        current_state_.token_model = u.mapped->token_model;
      }
      note_ = absl::StrCat("rpc (", note, ")");
      ready_ = true;
      ready_cv_.notify_all();
    }
    if (!keep) drop();
    return;
  }
  auto next = std::make_unique<Version>();
  next->version = version;
  next->leased = present && p.path != DevicePath::kRpc;
  next->view = std::move(p.view);
  bool release_now = false;
  {
    MutexLock lock(&mu_);
    // Not read on the device: the server need not keep it.
    if (present && !next->leased) release_now = Unlease(version);
    if (current_ != nullptr) {
      current_->retire_at = Clock::now() + grace_;
      retiring_.push_back(std::move(current_));
    }
    current_ = std::move(next);
    current_state_.state = u.state;
    current_state_.path = p.path;
    current_state_.why = u.why;
    if (present) {
      current_state_.known = true;
      current_state_.layout =
          std::make_shared<const LayerLayout>(u.mapped->layout);
      current_state_.token_model = u.mapped->token_model;
    } else if (u.state == MappingUpdate::kNotFound) {
      current_state_.known = false;
    }
    note_ = p.note.empty()
                ? std::string(DevicePathName(p.path))
                : absl::StrCat(DevicePathName(p.path), " (", p.note, ")");
    ready_ = true;
    ready_cv_.notify_all();
  }
  if (release_now) release_(version);
}

void DeviceVersions::RetireDue(bool all) {
  std::vector<std::unique_ptr<Version>> due;
  {
    MutexLock lock(&mu_);
    const auto now = Clock::now();
    for (auto it = retiring_.begin(); it != retiring_.end();) {
      if (all || (*it)->retire_at <= now) {
        due.push_back(std::move(*it));
        it = retiring_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (due.empty()) return;
  std::vector<std::unique_ptr<View>> views;
  for (auto& v : due) views.push_back(std::move(v->view));
  device_->Close(std::move(views));
  std::vector<uint64_t> released;
  {
    MutexLock lock(&mu_);
    for (auto& v : due) {
      if (v->leased && Unlease(v->version)) released.push_back(v->version);
    }
  }
  for (uint64_t v : released) release_(v);
}

void DeviceVersions::CloseAll() {
  std::vector<std::unique_ptr<View>> views;
  {
    MutexLock lock(&mu_);
    if (closed_) return;
    closed_ = true;
    for (auto& v : retiring_) views.push_back(std::move(v->view));
    retiring_.clear();
    if (current_ != nullptr) views.push_back(std::move(current_->view));
    current_.reset();
    retry_.reset();
    leases_.clear();
  }
  device_->Close(std::move(views));
}

bool DeviceVersions::WaitReady(absl::Duration timeout) {
  MutexLock lock(&mu_);
  return ready_cv_.wait_for(
      lock, absl::ToChronoNanoseconds(timeout),
      [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ready_; });
}

DeviceVersions::Current DeviceVersions::Now() {
  MutexLock lock(&mu_);
  return current_state_;
}

std::string DeviceVersions::note() {
  MutexLock lock(&mu_);
  return note_;
}

std::map<uint64_t, int> DeviceVersions::leases() {
  MutexLock lock(&mu_);
  return leases_;
}

}  // namespace engram
