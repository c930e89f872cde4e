// A fixed-size pool of worker threads running queued closures.
#ifndef ENGRAM_COMMON_THREAD_POOL_H_
#define ENGRAM_COMMON_THREAD_POOL_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"

namespace engram {

// Owns its threads; the destructor runs every queued task, then joins.
// Submit is thread-safe and never blocks on a running task.
class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Submit(std::function<void()> task);
  int size() const { return static_cast<int>(workers_.size()); }

 private:
  void WorkerLoop();

  Mutex mu_;  // common/mutex.h: checked by clang, seen by TSan
  std::condition_variable_any wake_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace engram

#endif  // ENGRAM_COMMON_THREAD_POOL_H_
