// Raw-socket clients for abuse tests: a plain TCP connection, and an HTTP/2
// client that sends gRPC calls but never reads.
#ifndef ENGRAM_TESTS_TESTING_RAW_HTTP2_H_
#define ENGRAM_TESTS_TESTING_RAW_HTTP2_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace engram::testing {

// A TCP connection to 127.0.0.1:port, or -1.
inline int ConnectTcp(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// A hand-written HTTP/2 client that sends gRPC calls and never reads a
// byte: its receive window is 0, so the server can send no response data.
class NonReadingHttp2Client {
 public:
  explicit NonReadingHttp2Client(int port) : fd_(ConnectTcp(port)) {
    std::string out = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // SETTINGS: SETTINGS_INITIAL_WINDOW_SIZE (4) = 0.
    const std::string settings = {0, 4, 0, 0, 0, 0};
    out += Frame(4, 0, 0, settings);
    Send(out);
  }
  ~NonReadingHttp2Client() {
    if (fd_ >= 0) close(fd_);
  }
  bool connected() const { return fd_ >= 0; }

  // One unary call carrying `message` (serialized protobuf).
  void Call(const std::string& path, const std::string& message) {
    std::string block;
    for (const auto& [name, value] :
         std::vector<std::pair<std::string, std::string>>{
             {":method", "POST"},
             {":scheme", "http"},
             {":path", path},
             {":authority", "engramd"},
             {"content-type", "application/grpc"},
             {"te", "trailers"}}) {
      block += '\0';  // literal header field without indexing, new name
      block += static_cast<char>(name.size());
      block += name;
      block += static_cast<char>(value.size());
      block += value;
    }
    std::string data(5, '\0');  // uncompressed, 4-byte big-endian length
    for (int i = 0; i < 4; ++i)
      data[1 + i] = static_cast<char>(message.size() >> (8 * (3 - i)));
    data += message;
    Send(Frame(1, 0x4, stream_, block) + Frame(0, 0x1, stream_, data));
    stream_ += 2;
  }

 private:
  static std::string Frame(int type, int flags, uint32_t stream,
                           const std::string& payload) {
    std::string f;
    const size_t n = payload.size();
    f += static_cast<char>(n >> 16);
    f += static_cast<char>(n >> 8);
    f += static_cast<char>(n);
    f += static_cast<char>(type);
    f += static_cast<char>(flags);
    for (int i = 3; i >= 0; --i) f += static_cast<char>(stream >> (8 * i));
    return f + payload;
  }
  void Send(const std::string& bytes) {
    size_t at = 0;
    while (fd_ >= 0 && at < bytes.size()) {
      const ssize_t n = write(fd_, bytes.data() + at, bytes.size() - at);
      if (n <= 0) break;
      at += static_cast<size_t>(n);
    }
  }
  int fd_;
  uint32_t stream_ = 1;
};

}  // namespace engram::testing

#endif  // ENGRAM_TESTS_TESTING_RAW_HTTP2_H_
