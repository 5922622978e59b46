// fedjax_comp::ParallelFor: the native kernels' work split over XLA's intra-op pool.
//
// The calling thread and the pool claim items from an atomic counter, so the
// caller never waits for a task that has not started (no deadlock when the
// pool is busy), and a task that starts after the call has returned finds
// nothing to claim.

#ifndef FEDJAX_COMP_NATIVE_PARALLEL_FOR_H_
#define FEDJAX_COMP_NATIVE_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace fedjax_comp {

// Runs fn(item) for item in [0, count) on the caller and the pool; returns
// when all items are done. Items are claimed from a shared counter.
template <typename F>
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t count, int64_t min_items_per_task, F fn) {
  int64_t helpers = std::min<int64_t>(pool.num_threads(), count / std::max<int64_t>(1, min_items_per_task) - 1);
  if (helpers <= 0) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, count, fn]() {
    int64_t mine = 0;
    for (int64_t i; (i = shared->next.fetch_add(1)) < count; ++mine) fn(i);
    if (mine && shared->done.fetch_add(mine) + mine == count) {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->cv.notify_all();
    }
  };
  // A helper that starts late claims nothing; it only holds `shared`. It
  // copies fn, whose captured pointers it never dereferences then.
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == count; });
}

}  // namespace fedjax_comp

#endif  // FEDJAX_COMP_NATIVE_PARALLEL_FOR_H_
