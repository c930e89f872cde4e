#include "server/graceful_stop.h"

#include <grpc/grpc.h>
#include <grpc/support/alloc.h>

#include <atomic>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace engram {
namespace {

// Sums every `"key":"N"` in channelz's JSON (int64 counters are strings
// there; a counter that is zero is left out).
int64_t SumCounter(absl::string_view json, absl::string_view key) {
  int64_t sum = 0;
  const std::string pattern = absl::StrCat("\"", key, "\":\"");
  for (size_t at = json.find(pattern); at != absl::string_view::npos;
       at = json.find(pattern, at + 1)) {
    const size_t begin = at + pattern.size();
    const size_t end = json.find('"', begin);
    int64_t value = 0;
    if (end != absl::string_view::npos &&
        absl::SimpleAtoi(json.substr(begin, end - begin), &value)) {
      sum += value;
    }
  }
  return sum;
}

// How long no call may be in flight before idle connections are closed:
// covers a call the client sent before it saw the GOAWAY.
constexpr auto kQuietTime = std::chrono::milliseconds(100);
constexpr auto kPollInterval = std::chrono::milliseconds(10);

}  // namespace

int64_t CallsInFlight() {
  char* text = grpc_channelz_get_servers(0);
  if (text == nullptr) return -1;
  const absl::string_view json(text);
  int64_t in_flight = -1;
  if (json.find("\"server\"") != absl::string_view::npos) {
    in_flight = SumCounter(json, "callsStarted") -
                SumCounter(json, "callsSucceeded") -
                SumCounter(json, "callsFailed");
  }
  gpr_free(text);
  return in_flight;
}

void StopGracefully(grpc::Server* server,
                    std::chrono::system_clock::time_point deadline) {
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    server->Shutdown(deadline);
    stopped = true;
  });
  auto quiet_since = std::chrono::steady_clock::now();
  while (!stopped && std::chrono::system_clock::now() < deadline) {
    std::this_thread::sleep_for(kPollInterval);
    const int64_t in_flight = CallsInFlight();
    const auto now = std::chrono::steady_clock::now();
    if (in_flight != 0) {
      quiet_since = now;
    } else if (now - quiet_since >= kQuietTime) {
      // Only idle connections are left: close them (valid once shutdown
      // has begun, which Shutdown does before it waits).
      grpc_server_cancel_all_calls(server->c_server());
      break;
    }
  }
  stopper.join();
}

}  // namespace engram
