#include <algorithm>

#include "client/client.h"

namespace engram {

const ServerStatus::Calls* ServerStatus::FindCalls(
    const std::string& rpc) const {
  for (const Calls& c : calls) {
    if (c.rpc == rpc) return &c;
  }
  return nullptr;
}

ServerStatus::Latency LatencySince(const ServerStatus::Latency& now,
                                   const ServerStatus::Latency& before) {
  ServerStatus::Latency d = now;
  // A restarted server (fewer calls than before) starts from zero.
  if (before.count > now.count || before.counts.size() != now.counts.size()) {
    return d;
  }
  for (size_t i = 0; i < d.counts.size(); ++i) d.counts[i] -= before.counts[i];
  d.sum_seconds -= before.sum_seconds;
  d.count -= before.count;
  return d;
}

double LatencyQuantile(const ServerStatus::Latency& latency, double q) {
  int64_t total = 0;
  for (int64_t c : latency.counts) total += c;
  if (total <= 0 || latency.upper_bounds.empty()) return 0;
  const double rank = q * static_cast<double>(total);
  double below = 0;
  for (size_t i = 0; i < latency.counts.size(); ++i) {
    const double in_bucket = static_cast<double>(latency.counts[i]);
    if (below + in_bucket >= rank && in_bucket > 0) {
      if (i >= latency.upper_bounds.size()) return latency.upper_bounds.back();
      const double low = i == 0 ? 0 : latency.upper_bounds[i - 1];
      const double high = latency.upper_bounds[i];
      return low + (high - low) * (rank - below) / in_bucket;
    }
    below += in_bucket;
  }
  return latency.upper_bounds.back();
}

}  // namespace engram
