#include "client/engramctl_status.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/dtype.h"

namespace engram {
namespace {

std::string Duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  if (s < 60) return absl::StrCat(s, " s");
  if (s < 3600) return absl::StrCat(s / 60, " min ", s % 60, " s");
  if (s < 86400) return absl::StrCat(s / 3600, " h ", (s % 3600) / 60, " min");
  return absl::StrCat(s / 86400, " d ", (s % 86400) / 3600, " h");
}

std::string Millis(double seconds) {
  return absl::StrFormat("%.3g ms", seconds * 1000);
}

std::string Percent(double part, double whole) {
  return whole > 0 ? absl::StrFormat("%.0f%%", 100 * part / whole) : "-";
}

}  // namespace

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f B", bytes)
                : absl::StrFormat("%.1f %s", bytes, units[u]);
}

std::string ProgressLine(const std::string& label, uint64_t done,
                         uint64_t total, double seconds) {
  std::string line = absl::StrFormat(
      "%s: %3d%% (%s of %s)", label,
      static_cast<int>(100 * done / std::max<uint64_t>(total, 1)),
      HumanBytes(static_cast<double>(done)),
      HumanBytes(static_cast<double>(total)));
  if (seconds > 0.2 && done > 0) {
    const double rate = static_cast<double>(done) / seconds;
    absl::StrAppend(&line, " at ", absl::StrFormat("%.1f", rate / 1e6),
                    " MB/s");
    if (total > done) {
      absl::StrAppend(&line, ", ETA ",
                      Duration(static_cast<double>(total - done) / rate));
    }
  }
  return line;
}

namespace {

// "yes": LookupTokens answers for the layer; "stale": its model no longer
// describes it; "-": no model.
const char* TokensColumn(ServerStatus::Layer::TokenModel model) {
  switch (model) {
    case ServerStatus::Layer::TokenModel::kCurrent:
      return "yes";
    case ServerStatus::Layer::TokenModel::kStale:
      return "stale";
    case ServerStatus::Layer::TokenModel::kNone:
      break;
  }
  return "-";
}

}  // namespace

std::string StatusScreen(const std::string& address, const ServerStatus& now,
                         const ServerStatus* before, double interval_s) {
  std::string out = absl::StrCat("engramd ", now.version, " at ", address,
                                 ", up ", Duration(now.uptime_seconds));
  if (now.shards > 0) {
    absl::StrAppend(&out, ", shard ", now.shard_index, " of ", now.shards, " (",
                    now.peers_up, " answering)");
  }
  absl::StrAppend(&out, "\nready:   ",
                  now.ready ? "yes" : "NO - " + now.not_ready_reason, "\n");
  absl::StrAppend(&out, "memory:  ", HumanBytes(now.memory_used_bytes), " of ",
                  HumanBytes(now.memory_limit_bytes), " for tables (",
                  Percent(now.memory_used_bytes, now.memory_limit_bytes), ")");
  if (now.gpu_memory_limit_bytes > 0) {
    absl::StrAppend(&out, "; GPU ", HumanBytes(now.gpu_memory_used_bytes),
                    " of ", HumanBytes(now.gpu_memory_limit_bytes));
  }
  absl::StrAppend(&out, "\nprocess: RSS ", HumanBytes(now.resident_bytes),
                  ", CPU ", absl::StrFormat("%.1f", now.cpu_seconds), " s");
  if (before != nullptr && interval_s > 0) {
    absl::StrAppend(
        &out, " (",
        absl::StrFormat("%.2f",
                        (now.cpu_seconds - before->cpu_seconds) / interval_s),
        " cores now)");
  }
  absl::StrAppend(&out, ", ", now.open_fds, " of ", now.max_fds, " files open");
  if (now.pending_response_bytes > 0) {
    absl::StrAppend(&out, ", ", HumanBytes(now.pending_response_bytes),
                    " of responses unread");
  }
  if (now.recovery_layers_pending > 0) {
    absl::StrAppend(&out, "\nrecovery: ", now.recovery_layers_pending,
                    " layer(s) still copying from replicas");
  }
  for (const ServerStatus::Load& l : now.loads) {
    absl::StrAppend(
        &out, "\n",
        ProgressLine(absl::StrCat("load ", l.manifest, " (", l.layers_done,
                                  " of ", l.layers_total, " layers)"),
                     l.bytes_done, l.bytes_total, l.seconds));
  }

  const bool rates = before != nullptr && interval_s > 0;
  absl::StrAppend(
      &out, "\n\n",
      absl::StrFormat("%-16s %12s %10s", "calls", "total", "errors"),
      rates ? absl::StrFormat(" %10s %10s", "/s", "errors/s") : "", "\n");
  if (now.calls.empty()) absl::StrAppend(&out, "  (none yet)\n");
  for (const ServerStatus::Calls& c : now.calls) {
    absl::StrAppend(
        &out, absl::StrFormat("  %-14s %12d %10d", c.rpc, c.calls, c.errors));
    if (rates) {
      const ServerStatus::Calls* b = before->FindCalls(c.rpc);
      const int64_t calls = c.calls - (b != nullptr ? b->calls : 0);
      const int64_t errors = c.errors - (b != nullptr ? b->errors : 0);
      absl::StrAppend(&out,
                      absl::StrFormat(" %10.1f %10.1f", calls / interval_s,
                                      errors / interval_s));
    }
    absl::StrAppend(&out, "\n");
  }
  const ServerStatus::Latency& all = now.lookup_latency;
  absl::StrAppend(&out, "lookups: ", all.count, " since start, p50 ",
                  Millis(LatencyQuantile(all, 0.5)), ", p99 ",
                  Millis(LatencyQuantile(all, 0.99)), ", ",
                  HumanBytes(now.lookup_bytes), " of rows sent\n");
  if (rates) {
    const ServerStatus::Latency recent =
        LatencySince(all, before->lookup_latency);
    absl::StrAppend(
        &out, "  last ", absl::StrFormat("%.1f", interval_s),
        " s: ", absl::StrFormat("%.1f", recent.count / interval_s),
        " lookups/s, ",
        absl::StrFormat("%.0f",
                        (now.lookup_rows - before->lookup_rows) / interval_s),
        " rows/s, ",
        HumanBytes((now.lookup_bytes - before->lookup_bytes) / interval_s),
        "/s",
        recent.count > 0
            ? absl::StrCat(", p50 ", Millis(LatencyQuantile(recent, 0.5)),
                           ", p99 ", Millis(LatencyQuantile(recent, 0.99)))
            : "",
        "\n");
  }

  absl::StrAppend(
      &out, "\n",
      absl::StrFormat("%-8s %6s %-9s %6s %11s %8s %7s %4s %11s %6s", "layer",
                      "heads", "dtype", "D", "bytes", "version", "pinned",
                      "gpu", "in files", "tokens"),
      "\n");
  if (now.layers.empty()) absl::StrAppend(&out, "  (no layers)\n");
  for (const ServerStatus::Layer& l : now.layers) {
    const LayerLayout& layout = l.description.layout;
    absl::StrAppend(
        &out,
        absl::StrFormat("%-8d %6d %-9s %6d %11s %8d %7s %4s %11s %6s",
                        l.description.layer_id, layout.num_heads(),
                        DTypeName(layout.dtype), layout.embedding_dim,
                        HumanBytes(l.description.bytes), l.description.version,
                        l.pinned ? "yes" : "no", l.gpu_resident ? "yes" : "no",
                        l.stored_bytes > 0 ? HumanBytes(l.stored_bytes) : "-",
                        TokensColumn(l.token_model)),
        "\n");
  }
  return out;
}

int RunStatus(Client& client, const std::string& address, double interval_s,
              int count, bool top) {
  absl::StatusOr<ServerStatus> before = client.GetStatus();
  if (!before.ok()) {
    std::cerr << "engramctl: " << before.status() << "\n";
    return 1;
  }
  if (interval_s <= 0) {
    std::cout << StatusScreen(address, *before, nullptr, 0);
    return 0;
  }
  for (int frame = 0; count == 0 || frame < count; ++frame) {
    const auto start = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(interval_s));
    absl::StatusOr<ServerStatus> now = client.GetStatus();
    if (!now.ok()) {
      std::cerr << "engramctl: " << now.status() << "\n";
      return 1;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    if (top && isatty(STDOUT_FILENO)) std::cout << "\033[H\033[2J";
    std::cout << StatusScreen(address, *now, &*before, seconds);
    if (top) std::cout << "\n";
    std::cout << std::flush;
    before = std::move(now);
  }
  return 0;
}

namespace {

// One line of the cluster screen.
std::string ShardLine(int index, const std::string& address,
                      const absl::StatusOr<ServerStatus>& now,
                      const ServerStatus* before, double interval_s) {
  std::string line = absl::StrFormat("  %-3d %-28s ", index, address);
  if (!now.ok()) {
    return absl::StrCat(line, "UNREACHABLE (",
                        absl::StatusCodeToString(now.status().code()), ")");
  }
  int64_t calls = 0, calls_before = 0;
  for (const ServerStatus::Calls& c : now->calls) calls += c.calls;
  if (before != nullptr) {
    for (const ServerStatus::Calls& c : before->calls) calls_before += c.calls;
  }
  absl::StrAppend(&line, absl::StrFormat("%-9s %9s of %-9s %6d",
                                         now->ready ? "ready" : "NOT READY",
                                         HumanBytes(now->memory_used_bytes),
                                         HumanBytes(now->memory_limit_bytes),
                                         now->layers.size()));
  if (before != nullptr && interval_s > 0) {
    absl::StrAppend(
        &line, absl::StrFormat(" %10.1f", (calls - calls_before) / interval_s));
  }
  if (!now->ready) absl::StrAppend(&line, "  ", now->not_ready_reason);
  return line;
}

}  // namespace

int RunClusterStatus(const std::vector<std::string>& addresses,
                     const ClientOptions& options, double interval_s, int count,
                     bool top) {
  std::vector<std::unique_ptr<Client>> clients;
  for (const std::string& address : addresses) {
    absl::StatusOr<std::unique_ptr<Client>> c =
        Client::Connect(address, options);
    if (!c.ok()) {
      std::cerr << "engramctl: " << address << ": " << c.status() << "\n";
      return 1;
    }
    clients.push_back(*std::move(c));
  }
  auto ask = [&] {
    std::vector<absl::StatusOr<ServerStatus>> all;
    for (auto& c : clients) all.push_back(c->GetStatus());
    return all;
  };
  std::vector<absl::StatusOr<ServerStatus>> before = ask();
  const int frames = top ? count : 1;
  for (int frame = 0; frames == 0 || frame < frames; ++frame) {
    const auto start = std::chrono::steady_clock::now();
    if (interval_s > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(interval_s));
    }
    std::vector<absl::StatusOr<ServerStatus>> now =
        interval_s > 0 ? ask() : before;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    std::string out = absl::StrFormat(
        "cluster of %d shards\n  %-3s %-28s %-9s %22s %6s%s\n",
        static_cast<int>(addresses.size()), "#", "address", "state",
        "table memory", "layers", interval_s > 0 ? "    calls/s" : "");
    int first = -1, ready = 0;
    for (size_t i = 0; i < addresses.size(); ++i) {
      const ServerStatus* b =
          interval_s > 0 && before[i].ok() ? &*before[i] : nullptr;
      absl::StrAppend(
          &out,
          ShardLine(static_cast<int>(i), addresses[i], now[i], b, seconds),
          "\n");
      if (now[i].ok() && first < 0) first = static_cast<int>(i);
      if (now[i].ok() && now[i]->ready) ++ready;
    }
    absl::StrAppend(&out, ready, " of ", addresses.size(), " ready\n");
    if (first >= 0) {
      const ServerStatus* b =
          interval_s > 0 && before[first].ok() ? &*before[first] : nullptr;
      absl::StrAppend(&out, "\n",
                      StatusScreen(addresses[first], *now[first], b, seconds));
    }
    if (top && isatty(STDOUT_FILENO)) std::cout << "\033[H\033[2J";
    std::cout << out << (top ? "\n" : "") << std::flush;
    if (first < 0 && !top) return 1;
    before = std::move(now);
  }
  return 0;
}

absl::StatusOr<std::vector<LayerDescription>> LoadWithProgress(
    Client& client, const std::string& manifest) {
  if (!isatty(STDERR_FILENO)) return client.Load(manifest);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  // The Load call answers only at the end: ask Status meanwhile.
  std::thread progress([&] {
    std::unique_lock<std::mutex> lock(mu);
    bool shown = false;
    while (!cv.wait_for(lock, std::chrono::milliseconds(500),
                        [&] { return done; })) {
      lock.unlock();
      absl::StatusOr<ServerStatus> s = client.GetStatus();
      lock.lock();
      if (done || !s.ok() || s->loads.empty()) continue;
      const ServerStatus::Load& l = s->loads.front();
      std::fprintf(
          stderr, "\r%s   ",
          ProgressLine(absl::StrCat("load ", l.manifest, " (", l.layers_done,
                                    " of ", l.layers_total, " layers)"),
                       l.bytes_done, l.bytes_total, l.seconds)
              .c_str());
      shown = true;
    }
    if (shown) std::fprintf(stderr, "\n");
  });
  absl::StatusOr<std::vector<LayerDescription>> layers = client.Load(manifest);
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_all();
  progress.join();
  return layers;
}

}  // namespace engram
