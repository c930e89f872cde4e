// The set of committed layers, with a lookup path that takes no lock.
#ifndef ENGRAM_STORE_LAYER_REGISTRY_H_
#define ENGRAM_STORE_LAYER_REGISTRY_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "store/layer.h"

namespace engram {

// A claim on a layer id held by one populate in progress. Remove with force
// marks it aborted; the registry refuses to commit an aborted ticket.
class PopulateTicket {
 public:
  explicit PopulateTicket(int64_t layer_id) : layer_id_(layer_id) {}
  int64_t layer_id() const { return layer_id_; }
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  // Recovery tickets only (BeginRecovery): the layer's layout without rows,
  // and whether no replica could provide them.
  const std::shared_ptr<const Layer>& placeholder() const {
    return placeholder_;
  }
  bool unrecoverable() const {
    return unrecoverable_.load(std::memory_order_acquire);
  }
  void MarkUnrecoverable() {
    unrecoverable_.store(true, std::memory_order_release);
  }

 private:
  friend class LayerRegistry;
  const int64_t layer_id_;
  std::atomic<bool> aborted_{false};
  std::atomic<bool> unrecoverable_{false};
  std::shared_ptr<const Layer> placeholder_;  // set before it is shared
  // Run (under the registry's lock) when a forced Remove aborts the populate,
  // so an idle stream is ended at once instead of at its next chunk. Guarded
  // by the registry's lock; cleared by DetachAbortHook before the stream that
  // set it finishes, so it never reaches a finished call.
  std::function<void()> on_abort_;
};

// Thread-safe. Readers copy an immutable snapshot pointer and keep the
// layers they use alive through their own shared_ptr, so Remove hides a
// layer at once while its memory lives until the last in-flight lookup drops
// it. The snapshot pointer is replicated in kStripes cache-line-sized slots,
// each with its own mutex, and a reader thread always uses the same slot: the
// lookup path takes no lock shared by all readers. Writers (populate
// begin/commit/abandon, remove) serialize on `mu_` and publish a new snapshot
// to every slot.
class LayerRegistry {
 public:
  LayerRegistry();

  // The committed layer, or nullptr. Lock-free with respect to writers.
  std::shared_ptr<const Layer> Find(int64_t layer_id) const;
  // All committed layers, ordered by id.
  std::vector<std::shared_ptr<const Layer>> List() const;
  size_t size() const;

  // Claims `layer_id` for a populate. ALREADY_EXISTS when another populate
  // holds it, or when it is committed and `replace` is false. With
  // `replace`, the committed layer keeps serving until Commit swaps the new
  // one in. `on_abort` (may be empty) runs if a forced Remove aborts this
  // populate before it commits or is abandoned; it must not call back into
  // the registry.
  absl::StatusOr<std::shared_ptr<PopulateTicket>> BeginPopulate(
      int64_t layer_id, std::function<void()> on_abort = nullptr,
      bool replace = false);
  // Claims `layer_id` for a shard that restarted without the rows the rest
  // of the cluster committed: the ticket carries `placeholder` (layout, no
  // rows) until the copied layer is committed with it. Unlike a populate,
  // Remove drops it without `force` (the layer is committed cluster-wide).
  absl::StatusOr<std::shared_ptr<PopulateTicket>> BeginRecovery(
      std::shared_ptr<const Layer> placeholder);
  // The recovery ticket holding `layer_id`, or nullptr. Takes the writers'
  // lock: for lookups that missed Find only.
  std::shared_ptr<const PopulateTicket> FindRecovering(int64_t layer_id) const;
  // Publishes `layer` under the ticket's id (swapping out the layer it
  // replaces, which lives on until its last reader drops it), gives it the
  // id's next version, and releases the claim. ABORTED (nothing published)
  // when the ticket was aborted by a forced Remove.
  absl::Status Commit(const std::shared_ptr<PopulateTicket>& ticket,
                      std::shared_ptr<const Layer> layer);
  // The version the next Commit of `layer_id` will get (what a populate
  // holding the id's claim seals its files with).
  uint64_t NextVersion(int64_t layer_id) const;
  // Restoring a stored layer: its next Commit gets `version` (versions of
  // the id keep counting from there).
  void SeedVersion(int64_t layer_id, uint64_t version);
  // Releases the claim without publishing (the populate failed).
  void Abandon(const std::shared_ptr<PopulateTicket>& ticket);
  // Like a forced Remove of this one populate: releases the claim at once,
  // marks the ticket aborted (Commit answers ABORTED) and runs its abort
  // hook, so the stream filling it ends now rather than when it notices.
  void AbortPopulate(const std::shared_ptr<PopulateTicket>& ticket);
  // Drops the ticket's abort hook: after this returns the hook is not
  // running and never runs. A stream calls it before it finishes while its
  // ticket lives on (a staged transaction waiting for Commit).
  void DetachAbortHook(const std::shared_ptr<PopulateTicket>& ticket);

  // Hides the layer and returns its head count. NOT_FOUND when neither a
  // committed layer nor a populate has the id; FAILED_PRECONDITION when only
  // a populate in progress has it and `force` is false (with `force` that
  // populate is aborted and 0 is returned).
  absl::StatusOr<int> Remove(int64_t layer_id, bool force);

  // Called (outside the registry's lock, on the committing or removing
  // thread) with the id after every successful Commit or Remove. Set once,
  // before the registry is shared; it must not block.
  void SetChangeListener(std::function<void(int64_t layer_id)> listener) {
    listener_ = std::move(listener);
  }

 private:
  absl::Status CommitQuietly(const std::shared_ptr<PopulateTicket>& ticket,
                             std::shared_ptr<const Layer> layer);
  absl::StatusOr<int> RemoveQuietly(int64_t layer_id, bool force);
  using Snapshot = absl::flat_hash_map<int64_t, std::shared_ptr<const Layer>>;
  static constexpr int kStripes = 16;
  struct alignas(64) Stripe {
    mutable Mutex mu;
    std::shared_ptr<const Snapshot> snapshot ABSL_GUARDED_BY(mu);
  };

  // The calling thread's slot's snapshot (one uncontended lock).
  std::shared_ptr<const Snapshot> Load() const;
  void Publish(std::shared_ptr<const Snapshot> next)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Stripe stripes_[kStripes];
  // engram::Mutex (a std::mutex), not absl::Mutex: Debian's libabsl is not
  // built for ThreadSanitizer, which must see these locks.
  std::function<void(int64_t)> listener_;  // const once shared
  mutable Mutex mu_;  // writers only; readers never take it
  std::shared_ptr<const Snapshot> current_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int64_t, std::shared_ptr<PopulateTicket>> populating_
      ABSL_GUARDED_BY(mu_);
  // The last version committed per id (kept across Remove).
  absl::flat_hash_map<int64_t, uint64_t> versions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace engram

#endif  // ENGRAM_STORE_LAYER_REGISTRY_H_
