// A mutex that clang's -Wthread-safety analysis understands, so the
// ABSL_GUARDED_BY annotations in this project are checked (scripts/test.sh
// builds the libraries with clang and -Werror=thread-safety). A plain
// std::mutex underneath: ThreadSanitizer sees it (Debian's libabsl is not
// built for TSan, so absl::Mutex would be invisible to it).
#ifndef ENGRAM_COMMON_MUTEX_H_
#define ENGRAM_COMMON_MUTEX_H_

#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace engram {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

// Holds a Mutex for its scope. Also a BasicLockable, so
// std::condition_variable_any can wait on it (the wait releases and
// re-acquires the mutex; the analysis treats it as held throughout).
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() {
    if (held_) mu_->Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // For condition variables and early release.
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    mu_->Lock();
    held_ = true;
  }
  void unlock() ABSL_UNLOCK_FUNCTION() {
    held_ = false;
    mu_->Unlock();
  }

 private:
  Mutex* const mu_;
  bool held_ = true;
};

// Debian's libabsl is built without NDEBUG, so every absl::Mutex acquire
// (gRPC's locks, on every call) also updates absl's global lock-order graph
// under a global lock: ~2 % of engramd's time in lookup_bench, and a point
// where all threads meet. Serving processes (engramd, the benches' servers)
// turn it off at start; TSan and the clang build check lock order instead.
inline void SkipAbseilDeadlockDetection() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

}  // namespace engram

#endif  // ENGRAM_COMMON_MUTEX_H_
