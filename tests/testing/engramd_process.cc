#include "tests/testing/engramd_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "tests/testing/raw_http2.h"

namespace engram::testing {

// The build tree's binaries, unless the environment points elsewhere (e.g.
// binaries carried to another machine).
std::string EngramdPath() {
  const char* env = std::getenv("ENGRAM_TEST_ENGRAMD");
  return env != nullptr ? env : ENGRAM_TEST_ENGRAMD;
}
std::string EngramctlPath() {
  const char* env = std::getenv("ENGRAM_TEST_ENGRAMCTL");
  return env != nullptr ? env : ENGRAM_TEST_ENGRAMCTL;
}

absl::StatusOr<std::unique_ptr<EngramdProcess>> EngramdProcess::Start(
    const std::vector<std::string>& extra_flags) {
  auto p = std::unique_ptr<EngramdProcess>(new EngramdProcess);
  char dir_template[] = "/tmp/engramd_test_XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return absl::InternalError("mkdtemp");
  p->dir_ = dir_template;
  p->flags_ = extra_flags;
  const std::string port_file = p->port_file();
  std::vector<std::string> args = {EngramdPath(), "--port_file=" + port_file};
  bool metrics_set = false, listen_set = false;
  for (const std::string& f : extra_flags) {
    metrics_set |= f.rfind("--metrics_listen", 0) == 0;
    listen_set |= f.rfind("--listen=", 0) == 0;
  }
  if (!listen_set) args.push_back("--listen=127.0.0.1:0");
  // Metrics off unless asked for: civetweb adds ~1.5 s to every shutdown.
  if (!metrics_set) args.push_back("--metrics_listen=");
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());

  const std::string log = p->dir_ + "/stderr";
  p->pid_ = fork();
  if (p->pid_ < 0) return absl::InternalError("fork failed");
  if (p->pid_ == 0) {
    // Die with the test process (even if it crashes), and keep its stdout
    // free: an orphan holding ctest's pipe would stall the whole run.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDERR_FILENO);
    dup2(fd, STDOUT_FILENO);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(port_file);
    if (in) {
      std::string line;
      while (std::getline(in, line)) {
        std::vector<std::string> kv = absl::StrSplit(line, '=');
        if (kv.size() != 2) continue;
        if (kv[0] == "grpc_port") (void)absl::SimpleAtoi(kv[1], &p->grpc_port_);
        if (kv[0] == "metrics_port")
          (void)absl::SimpleAtoi(kv[1], &p->metrics_port_);
        if (kv[0] == "health_port")
          (void)absl::SimpleAtoi(kv[1], &p->health_port_);
      }
      if (p->grpc_port_ > 0) return p;
    }
    if (!p->Alive()) {
      return absl::InternalError(
          absl::StrCat("engramd exited during start-up: ", p->Log()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError("engramd did not start within 30 s");
}

EngramdProcess::~EngramdProcess() {
  if (Alive()) Stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string EngramdProcess::address() const {
  return absl::StrCat("127.0.0.1:", grpc_port_);
}

bool EngramdProcess::Alive() const {
  if (pid_ <= 0) return false;
  int status;
  return waitpid(pid_, &status, WNOHANG) == 0;
}

void EngramdProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

int EngramdProcess::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 300; ++i) {  // 30 s grace
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    if (r < 0) {  // already reaped by Alive()
      pid_ = -1;
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

std::string EngramdProcess::Log() const {
  std::ifstream in(dir_ + "/stderr");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::Status WaitServing(const std::string& address, int seconds,
                         const ClientOptions& options) {
  auto client = Client::Connect(address, options);
  if (!client.ok()) return client.status();
  absl::Status last;
  for (int i = 0; i < seconds * 20; ++i) {
    last = (*client)->CheckHealth();
    if (last.ok()) return last;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      address, " not SERVING after ", seconds, " s: ", last.ToString()));
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

namespace {

absl::StatusOr<std::vector<std::unique_ptr<EngramdProcess>>> StartClusterOnce(
    int shards, int replication, const std::vector<std::string>& extra_flags,
    const ClientOptions& client) {
  std::vector<std::string> addresses;
  for (int i = 0; i < shards; ++i) {
    addresses.push_back(absl::StrCat("127.0.0.1:", FreePort()));
  }
  const std::string peers = absl::StrJoin(addresses, ",");
  std::vector<std::unique_ptr<EngramdProcess>> cluster;
  for (int i = 0; i < shards; ++i) {
    std::vector<std::string> flags = {
        "--listen=" + addresses[i], "--peers=" + peers,
        absl::StrCat("--shard_index=", i),
        absl::StrCat("--replication=", replication)};
    // A run that selects UCX's TCP transport (UCX_TLS=tcp) lets the shards
    // use it on their --peers interface (loopback): engramd leaves TCP out
    // unless an interface is named for it.
    if (const char* tls = std::getenv("UCX_TLS");
        tls != nullptr && std::strstr(tls, "tcp") != nullptr) {
      flags.push_back("--ucx_tcp_interface=auto");
    }
    flags.insert(flags.end(), extra_flags.begin(), extra_flags.end());
    auto p = EngramdProcess::Start(flags);
    if (!p.ok()) return p.status();
    cluster.push_back(*std::move(p));
  }
  for (auto& shard : cluster) {
    if (absl::Status s = WaitServing(shard->address(), 30, client); !s.ok()) {
      return s;
    }
  }
  return cluster;
}

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<EngramdProcess>>> StartCluster(
    int shards, int replication, const std::vector<std::string>& extra_flags,
    const ClientOptions& client) {
  // Every shard's port is chosen before any starts (they name each other in
  // --peers), so another test may take one meanwhile: engramd then refuses
  // to start ("address in use"), and the cluster starts again on new ports.
  absl::StatusOr<std::vector<std::unique_ptr<EngramdProcess>>> cluster;
  for (int attempt = 0; attempt < 4; ++attempt) {
    cluster = StartClusterOnce(shards, replication, extra_flags, client);
    if (cluster.ok() ||
        !absl::StrContains(cluster.status().message(), "address in use")) {
      break;
    }
  }
  return cluster;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = ConnectTcp(port);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("connect to port ", port));
  }
  std::string req =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return absl::UnavailableError("write failed");
  }
  std::string response;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
  close(fd);
  size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos) return absl::DataLossError("no HTTP body");
  return response.substr(body + 4);
}

int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  size_t n;
  output->clear();
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output->append(buf, n);
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace engram::testing
