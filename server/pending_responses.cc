#include "server/pending_responses.h"

#include <functional>

#include "absl/strings/str_cat.h"

namespace engram {

PendingResponses::PendingResponses(int64_t total_limit,
                                   int64_t per_connection_limit)
    : total_limit_(total_limit), per_connection_limit_(per_connection_limit) {}

PendingResponses::Charge::~Charge() { owner_->Release(peer_, bytes_); }

PendingResponses::Stripe& PendingResponses::StripeOf(const std::string& peer) {
  return stripes_[std::hash<std::string>()(peer) % kStripes];
}

absl::StatusOr<std::shared_ptr<PendingResponses::Charge>>
PendingResponses::Reserve(const grpc::CallbackServerContext& context,
                          int64_t bytes) {
  return Reserve(context.peer(), bytes);
}

int64_t PendingResponses::HeldBy(const std::string& peer) {
  Stripe& stripe = StripeOf(peer);
  MutexLock lock(&stripe.mu);
  auto it = stripe.by_peer.find(peer);
  return it == stripe.by_peer.end() ? 0 : it->second;
}

absl::StatusOr<std::shared_ptr<PendingResponses::Charge>>
PendingResponses::Reserve(std::string peer, int64_t bytes) {
  int64_t total = total_.load(std::memory_order_relaxed);
  do {
    if (total + bytes > total_limit_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the server holds ", total,
                       " bytes of responses clients have not "
                       "read yet; this one (",
                       bytes, " bytes) would pass the limit of ", total_limit_,
                       " (--max_pending_response_bytes); retry later"));
    }
  } while (!total_.compare_exchange_weak(total, total + bytes,
                                         std::memory_order_relaxed));
  Stripe& stripe = StripeOf(peer);
  MutexLock lock(&stripe.mu);
  int64_t& held = stripe.by_peer[peer];
  if (held + bytes > per_connection_limit_) {
    const int64_t was = held;
    if (held == 0) stripe.by_peer.erase(peer);
    total_.fetch_sub(bytes, std::memory_order_relaxed);
    return absl::ResourceExhaustedError(absl::StrCat(
        "this connection has ", was,
        " bytes of responses it has not read; "
        "this one (",
        bytes, " bytes) would pass the limit of ", per_connection_limit_,
        " (--max_pending_response_bytes_per_connection); read them first"));
  }
  held += bytes;
  return std::shared_ptr<Charge>(new Charge(this, std::move(peer), bytes));
}

void PendingResponses::Release(const std::string& peer, int64_t bytes) {
  {
    Stripe& stripe = StripeOf(peer);
    MutexLock lock(&stripe.mu);
    auto it = stripe.by_peer.find(peer);
    if (it != stripe.by_peer.end() && (it->second -= bytes) <= 0) {
      stripe.by_peer.erase(it);
    }
  }
  total_.fetch_sub(bytes, std::memory_order_relaxed);
}

grpc::Slice PendingResponses::ChargedSlice(uint8_t* data, size_t size,
                                           void (*destroy)(void*),
                                           void* user_data,
                                           std::shared_ptr<Charge> charge) {
  struct Owner {
    void (*destroy)(void*);
    void* user_data;
    std::shared_ptr<Charge> charge;
  };
  auto* owner = new Owner{destroy, user_data, std::move(charge)};
  return grpc::Slice(
      data, size,
      [](void* p) {
        auto* o = static_cast<Owner*>(p);
        o->destroy(o->user_data);
        delete o;
      },
      owner);
}

}  // namespace engram
