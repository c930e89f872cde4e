// Starts a real engramd process on loopback free ports for a test, and
// stops it (SIGTERM, then SIGKILL after a grace period) when destroyed.
#ifndef ENGRAM_TESTS_TESTING_ENGRAMD_PROCESS_H_
#define ENGRAM_TESTS_TESTING_ENGRAMD_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"

namespace engram::testing {

// Owns one child process. Not thread-safe.
class EngramdProcess {
 public:
  // `extra_flags` are appended after --listen=127.0.0.1:0 (unless they set
  // --listen themselves) and --port_file.
  static absl::StatusOr<std::unique_ptr<EngramdProcess>> Start(
      const std::vector<std::string>& extra_flags = {});
  ~EngramdProcess();

  std::string address() const;  // 127.0.0.1:PORT (kept after Stop/Kill)
  // The flags it was started with (Start(p->flags()) restarts it; a cluster
  // shard keeps its --listen address).
  const std::vector<std::string>& flags() const { return flags_; }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  int health_port() const { return health_port_; }  // 0: no --health_listen
  // The --port_file engramd wrote (engramctl --port_file reads it).
  std::string port_file() const { return dir_ + "/ports"; }
  pid_t pid() const { return pid_; }
  bool Alive() const;
  // SIGTERM and wait; returns the exit status (-1 when killed by a signal).
  int Stop();
  // SIGKILL and reap: a crash.
  void Kill();
  // The server's stderr so far.
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  int health_port_ = 0;
  std::string dir_;
  std::vector<std::string> flags_;
};

// Starts `shards` engramd processes on free loopback ports forming one
// cluster (--peers, --shard_index, --replication). `extra_flags` go to each.
// `client` is how the test reaches them (TLS, a token) to see them serve.
absl::StatusOr<std::vector<std::unique_ptr<EngramdProcess>>> StartCluster(
    int shards, int replication,
    const std::vector<std::string>& extra_flags = {},
    const ClientOptions& client = {});
// Polls grpc.health.v1 until `address` is SERVING.
absl::Status WaitServing(const std::string& address, int seconds,
                         const ClientOptions& options = {});
// A free loopback port (bound, then released).
int FreePort();

// Path of the engramd binary under test.
std::string EngramdPath();
// Path of engramctl.
std::string EngramctlPath();

// GET http://127.0.0.1:port/path; the body, or an error.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// Runs a shell command; returns its exit code and fills stdout+stderr.
int RunCommand(const std::string& command, std::string* output);

}  // namespace engram::testing

#endif  // ENGRAM_TESTS_TESTING_ENGRAMD_PROCESS_H_
