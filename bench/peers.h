// The benchmark's peers, each measured in the same run as engramd: a naive
// gRPC echo server (its own process), a raw TCP loopback sender, and Redis.
#ifndef ENGRAM_BENCH_PEERS_H_
#define ENGRAM_BENCH_PEERS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace engram::bench {

// A child process that wrote "grpc_port=N" to a port file; SIGTERM on
// destruction.
class ChildServer {
 public:
  // Runs argv (with --port_file=... appended) and waits for the port.
  static std::unique_ptr<ChildServer> Start(std::vector<std::string> argv);
  ~ChildServer();
  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string dir_;
};

// A free loopback TCP port (bound, then released).
int FreePort();

// Serves the echo service until SIGTERM; used by `lookup_bench --serve_echo`.
int ServeEcho(const std::string& port_file);

// A loopback TCP server thread answering each 8-byte request (a length)
// with that many bytes: the transport floor without gRPC.
class TcpBlaster {
 public:
  TcpBlaster();
  ~TcpBlaster();
  int port() const { return port_; }

 private:
  int listen_fd_ = -1;
  int port_ = 0;
  struct State;
  std::unique_ptr<State> state_;
};
// One client connection to a TcpBlaster: Fetch(n) asks for and reads n bytes.
class TcpFetcher {
 public:
  explicit TcpFetcher(int port);
  ~TcpFetcher();
  bool Fetch(uint64_t bytes, std::vector<uint8_t>* buffer);

 private:
  int fd_ = -1;
};

// redis-server on a free loopback port (no persistence), with a minimal
// RESP client for SET pipelines and MGET.
class RedisPeer {
 public:
  static std::unique_ptr<RedisPeer> Start(const std::string& redis_server);
  ~RedisPeer();
  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};
class RedisClient {
 public:
  explicit RedisClient(int port);
  ~RedisClient();
  // Pipelined SET of keys[i] -> values[i]; false on any error.
  bool SetAll(const std::vector<std::string>& keys,
              const std::vector<std::string>& values);
  // MGET; copies each value into `out` back to back. False on error or a
  // missing key.
  bool MGet(const std::vector<const std::string*>& keys, size_t value_bytes,
            uint8_t* out);

 private:
  bool ReadLine(std::string* line);
  bool ReadExact(void* dst, size_t n);
  int fd_ = -1;
  std::vector<char> buf_;
  size_t begin_ = 0, end_ = 0;
};

}  // namespace engram::bench

#endif  // ENGRAM_BENCH_PEERS_H_
