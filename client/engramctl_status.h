// engramctl's operator screens: `status` (one screen), `top` (refreshing)
// and the progress lines of `populate` and `load`. Part of the engramctl
// executable only.
#ifndef ENGRAM_CLIENT_ENGRAMCTL_STATUS_H_
#define ENGRAM_CLIENT_ENGRAMCTL_STATUS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "client/client.h"

namespace engram {

// "1.2 GiB", "512 B": bytes for people.
std::string HumanBytes(double bytes);

// "populate layer 3:  42% (1.2 of 4.0 GiB) at 850.0 MB/s, ETA 3 s".
std::string ProgressLine(const std::string& label, uint64_t done,
                         uint64_t total, double seconds);

// The status screen of `now`; with `before` (an answer `interval_s`
// earlier, may be null) the rates and latencies over that interval too.
std::string StatusScreen(const std::string& address, const ServerStatus& now,
                         const ServerStatus* before, double interval_s);

// `engramctl status` (count 1, no screen clearing) and `top` (redraws
// every interval_s; count 0 runs until interrupted). Returns the exit
// status: 0, or 1 when a Status call fails.
int RunStatus(Client& client, const std::string& address, double interval_s,
              int count, bool top);

// `engramctl status` / `top` given a cluster's addresses: one line per
// shard (reachable, ready or why not, memory, layers, calls/s), then the
// full screen of the first shard that answers.
int RunClusterStatus(const std::vector<std::string>& addresses,
                     const ClientOptions& options, double interval_s, int count,
                     bool top);

// `engramctl load`: runs the Load call, showing the server's progress on
// stderr while it runs when stderr is a terminal.
absl::StatusOr<std::vector<LayerDescription>> LoadWithProgress(
    Client& client, const std::string& manifest);

}  // namespace engram

#endif  // ENGRAM_CLIENT_ENGRAMCTL_STATUS_H_
