// How a gRPC channel to engramd proves who it talks to (TLS, the CA that
// signs the servers) and who it is (a client certificate for mTLS, a bearer
// token). Shared by the client library and by engramd's shard-to-shard
// channels. docs/security.md.
#ifndef ENGRAM_PROTO_CHANNEL_SECURITY_H_
#define ENGRAM_PROTO_CHANNEL_SECURITY_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace engram {

// A bearer token that can change while channels use it (rotation). Every
// call made after Set() carries the new value. Thread-safe.
class BearerToken {
 public:
  explicit BearerToken(std::string token = "") : token_(std::move(token)) {}
  void Set(std::string token) ABSL_LOCKS_EXCLUDED(mu_);
  std::string Get() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::string token_ ABSL_GUARDED_BY(mu_);
};

struct ChannelSecurity {
  // TLS to the server. Off (plaintext) unless `tls` or a CA file is given;
  // with `tls` and no CA file the system's roots verify the server.
  bool tls = false;
  std::string tls_ca_file;
  // mTLS: this side's certificate chain and key (PEM files, both or none).
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name checked against the server's certificate instead of the
  // address's host (e.g. when connecting by IP to a cert issued for a name).
  std::string tls_server_name;
  // Sent as "authorization: Bearer <token>" on every call (nullptr: none).
  // Over plaintext the token is readable on the wire: pair it with TLS
  // anywhere but loopback.
  std::shared_ptr<BearerToken> token;
  // How often certificate files are re-read (rotation without a restart).
  unsigned int reload_seconds = 60;
};

// Credentials and interceptors for `security`. INVALID_ARGUMENT naming the
// file when a PEM file is missing or unreadable.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ChannelSecurity& security);

// A channel to `address` with `security` applied (credentials, the server
// name override, the token on every call).
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateSecureChannel(
    const std::string& address, const ChannelSecurity& security,
    grpc::ChannelArguments args);

// Reads a secret file (a token): its first non-empty line, trimmed.
// INVALID_ARGUMENT naming the file if it is missing or empty.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path);

}  // namespace engram

#endif  // ENGRAM_PROTO_CHANNEL_SECURITY_H_
