#include "bench/peers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/malloc_tuning.h"
#include "echo.grpc.pb.h"
#include "proto/channel_tuning.h"

namespace engram::bench {
namespace {

int FreePortImpl() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

bool WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The naive echo: a prebuilt string copied into the response message, then
// serialized by protobuf (the usual way to return bytes from gRPC).
class EchoService final : public engram::bench::Echo::CallbackService {
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* context,
                                 const EchoRequest* request,
                                 EchoResponse* response) override {
    if (payload_.size() < static_cast<size_t>(request->bytes())) {
      payload_.assign(request->bytes(), '\x7e');  // grows once per size
    }
    response->set_data(payload_.data(), request->bytes());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  // Only grows, and only before concurrent calls of a new size start.
  std::string payload_ = std::string(32 << 20, '\x7e');
};

}  // namespace

int FreePort() { return FreePortImpl(); }

std::unique_ptr<ChildServer> ChildServer::Start(std::vector<std::string> argv) {
  auto child = std::unique_ptr<ChildServer>(new ChildServer);
  char dir[] = "/tmp/engram_bench_XXXXXX";
  child->dir_ = mkdtemp(dir);
  const std::string port_file = child->dir_ + "/ports";
  argv.push_back("--port_file=" + port_file);
  child->pid_ = fork();
  if (child->pid_ == 0) {
    const std::string log = child->dir_ + "/stderr";  // keep the table clean
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) dup2(fd, STDERR_FILENO);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  for (int i = 0; i < 3000 && child->port_ == 0; ++i) {
    std::ifstream in(port_file);
    std::string line;
    while (in && std::getline(in, line)) {
      if (line.rfind("grpc_port=", 0) == 0)
        child->port_ = std::stoi(line.substr(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (child->port_ == 0) return nullptr;
  return child;
}

ChildServer::~ChildServer() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

int ServeEcho(const std::string& port_file) {
  TuneMallocForLargeMessages();  // the same process settings as engramd
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  EchoService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  builder.SetMaxSendMessageSize(256 << 20);
  builder.SetMaxReceiveMessageSize(256 << 20);
  ApplyTransportTuning(&builder);  // the same settings engramd uses
  auto server = builder.BuildAndStart();
  if (!server) return 1;
  std::ofstream(port_file + ".tmp") << "grpc_port=" << port << "\n";
  std::rename((port_file + ".tmp").c_str(), port_file.c_str());
  int sig;
  sigwait(&stop, &sig);
  server->Shutdown();
  return 0;
}

struct TcpBlaster::State {
  std::atomic<bool> stop{false};
  std::thread acceptor;
  std::vector<std::thread> workers;
};

TcpBlaster::TcpBlaster() : state_(std::make_unique<State>()) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  listen(listen_fd_, 64);
  socklen_t len = sizeof(a);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  state_->acceptor = std::thread([this] {
    while (true) {
      int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      state_->workers.emplace_back([fd] {
        std::vector<uint8_t> payload;
        uint64_t n;
        while (ReadAll(fd, &n, 8)) {
          if (payload.size() < n) payload.assign(n, 0x7e);
          if (!WriteAll(fd, payload.data(), n)) break;
        }
        close(fd);
      });
    }
  });
}

TcpBlaster::~TcpBlaster() {
  shutdown(listen_fd_, SHUT_RDWR);
  close(listen_fd_);
  state_->acceptor.join();
  for (auto& w : state_->workers) w.join();
}

TcpFetcher::TcpFetcher(int port) : fd_(Connect(port)) {}
TcpFetcher::~TcpFetcher() {
  if (fd_ >= 0) close(fd_);
}
bool TcpFetcher::Fetch(uint64_t bytes, std::vector<uint8_t>* buffer) {
  buffer->resize(bytes);
  return fd_ >= 0 && WriteAll(fd_, &bytes, 8) &&
         ReadAll(fd_, buffer->data(), bytes);
}

std::unique_ptr<RedisPeer> RedisPeer::Start(const std::string& redis_server) {
  if (access(redis_server.c_str(), X_OK) != 0) return nullptr;
  auto peer = std::unique_ptr<RedisPeer>(new RedisPeer);
  peer->port_ = FreePortImpl();
  peer->pid_ = fork();
  if (peer->pid_ == 0) {
    const std::string port = std::to_string(peer->port_);
    execl(redis_server.c_str(), redis_server.c_str(), "--port", port.c_str(),
          "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
          "--logfile", "/dev/null", static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 500; ++i) {
    int fd = Connect(peer->port_);
    if (fd >= 0) {
      close(fd);
      return peer;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return nullptr;
}

RedisPeer::~RedisPeer() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
}

RedisClient::RedisClient(int port) : fd_(Connect(port)), buf_(1 << 20) {}
RedisClient::~RedisClient() {
  if (fd_ >= 0) close(fd_);
}

bool RedisClient::ReadExact(void* dst, size_t n) {
  char* out = static_cast<char*>(dst);
  while (n > 0) {
    if (begin_ == end_) {
      ssize_t r = read(fd_, buf_.data(), buf_.size());
      if (r <= 0) return false;
      begin_ = 0;
      end_ = static_cast<size_t>(r);
    }
    size_t take = std::min(n, end_ - begin_);
    if (out != nullptr) {
      std::memcpy(out, buf_.data() + begin_, take);
      out += take;
    }
    begin_ += take;
    n -= take;
  }
  return true;
}

bool RedisClient::ReadLine(std::string* line) {
  line->clear();
  char c;
  while (ReadExact(&c, 1)) {
    if (c == '\r') return ReadExact(&c, 1);  // '\n'
    *line += c;
  }
  return false;
}

bool RedisClient::SetAll(const std::vector<std::string>& keys,
                         const std::vector<std::string>& values) {
  const size_t batch = 1000;
  std::string line;
  for (size_t i = 0; i < keys.size(); i += batch) {
    std::string cmd;
    const size_t end = std::min(keys.size(), i + batch);
    for (size_t k = i; k < end; ++k) {
      absl::StrAppend(&cmd, "*3\r\n$3\r\nSET\r\n$", keys[k].size(), "\r\n",
                      keys[k], "\r\n$", values[k].size(), "\r\n", values[k],
                      "\r\n");
    }
    if (!WriteAll(fd_, cmd.data(), cmd.size())) return false;
    for (size_t k = i; k < end; ++k) {
      if (!ReadLine(&line) || line != "+OK") return false;
    }
  }
  return true;
}

bool RedisClient::MGet(const std::vector<const std::string*>& keys,
                       size_t value_bytes, uint8_t* out) {
  std::string cmd = absl::StrCat("*", keys.size() + 1, "\r\n$4\r\nMGET\r\n");
  for (const std::string* k : keys) {
    absl::StrAppend(&cmd, "$", k->size(), "\r\n", *k, "\r\n");
  }
  if (!WriteAll(fd_, cmd.data(), cmd.size())) return false;
  std::string line;
  if (!ReadLine(&line) || line != absl::StrCat("*", keys.size())) return false;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!ReadLine(&line) || line != absl::StrCat("$", value_bytes))
      return false;
    if (!ReadExact(out + i * value_bytes, value_bytes) ||
        !ReadExact(nullptr, 2))
      return false;
  }
  return true;
}

}  // namespace engram::bench
