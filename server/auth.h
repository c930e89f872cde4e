// Who may call what on engramd (docs/security.md): bearer tokens and mTLS
// certificate identities mapped to roles, the loopback-only "protected
// mode" while no credentials are configured, and the audit trail of every
// write, admin and peer call.
#ifndef ENGRAM_SERVER_AUTH_H_
#define ENGRAM_SERVER_AUTH_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/periodic_thread.h"
#include "server/methods.h"

namespace engram {

struct AuthConfig {
  // Lines "ROLE NAME TOKEN" (role read|write|admin|peer; NAME is what the
  // audit log shows; '#' starts a comment). Empty: no tokens.
  std::string tokens_file;
  // One token (the first line) that grants the peer role: the secret the
  // shards of a cluster send each other.
  std::string cluster_token_file;
  // Lines "ROLE IDENTITY": a verified client certificate whose common name
  // or a subject alternative name is IDENTITY gets ROLE.
  std::string identities_file;
  // Client certificates are verified (--tls_client_ca_file): identities
  // count as credentials.
  bool mtls = false;
  // Serve callers without credentials from any address (insecure; off
  // means loopback only while nothing else is configured).
  bool allow_remote_unauthenticated = false;
};

// The caller of one call, as the authorizer saw it.
struct Caller {
  std::string name;  // the token's NAME, the certificate identity, or peer
  std::string role;
  uint32_t rights = 0;
};

// Decides each call from its credentials and address. Owned by the server;
// Check is called by every handler (any thread). Reload swaps the token and
// identity tables in one step (a watcher thread calls it when the files
// change, main() on SIGHUP). Thread-safe.
class Authorizer {
 public:
  // INVALID_ARGUMENT naming the file and line when a file does not parse.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(
      AuthConfig config, prometheus::Registry* registry);
  ~Authorizer();

  // The caller if it may call `method` (the rights its MethodInfo needs),
  // else UNAUTHENTICATED (no or unknown credentials) or PERMISSION_DENIED
  // (not allowed, or a remote caller in protected mode). Messages say what
  // is missing, never what was presented.
  absl::StatusOr<Caller> Check(const grpc::ServerContextBase& context,
                               Method method) const;

  // Re-reads files that changed since the last read; a file that no longer
  // parses keeps the tables in use (and says why in the log).
  void Reload() ABSL_LOCKS_EXCLUDED(mu_);
  // Polls the files every `seconds` on a thread of its own (until deleted).
  // `reloaded` (may be empty) runs after each reload that took effect.
  void WatchFiles(double seconds, std::function<void()> reloaded = nullptr);
  // Stops and joins the watcher (the destructor does too): after it,
  // `reloaded` is never called again.
  void StopWatching();

  // A write/admin/peer call ended: logs "audit: ..." and counts it in
  // engram_audit_calls_total.
  void Audit(const Caller& caller, absl::string_view method,
             const grpc::Status& result) const;
  // Who is calling, for the audit of a call the handler refused.
  Caller Identify(const grpc::ServerContextBase& context) const;

  // True when any credentials are configured (tokens, cluster token, mTLS).
  bool credentials_configured() const { return credentials_configured_; }
  const AuthConfig& config() const { return config_; }

 private:
  struct Token {
    std::array<unsigned char, 32> digest;  // SHA-256 of the token
    Caller caller;
  };
  struct Tables {
    std::vector<Token> tokens;
    std::map<std::string, Caller> identities;
  };
  struct FileStamp {
    int64_t mtime_ns = -1;
    int64_t size = -1;
    int64_t inode = -1;
    bool operator==(const FileStamp&) const = default;
  };

  Authorizer(AuthConfig config, prometheus::Registry* registry);
  absl::StatusOr<std::shared_ptr<const Tables>> ReadTables() const;
  std::vector<FileStamp> Stamps() const;
  absl::StatusOr<Caller> Authenticate(
      const grpc::ServerContextBase& context) const;
  absl::StatusOr<Caller> CheckRights(const grpc::ServerContextBase& context,
                                     uint32_t need,
                                     absl::string_view method) const;

  const AuthConfig config_;
  const bool credentials_configured_;
  prometheus::Family<prometheus::Counter>* audit_family_ = nullptr;

  mutable absl::Mutex mu_;
  std::shared_ptr<const Tables> tables_ ABSL_GUARDED_BY(mu_);

  static constexpr int kRefusedLogsPerSecond = 10;
  mutable absl::Mutex audit_mu_;
  mutable absl::Time refused_window_start_ ABSL_GUARDED_BY(audit_mu_);
  mutable int refused_in_window_ ABSL_GUARDED_BY(audit_mu_) = 0;
  mutable int64_t refused_not_logged_ ABSL_GUARDED_BY(audit_mu_) = 0;
  std::vector<FileStamp> stamps_ ABSL_GUARDED_BY(mu_);

  std::function<void()> reloaded_;  // set before the watcher starts
  PeriodicThread watcher_;          // Reload every --credentials_reload
};

// True for loopback peers as grpc::ServerContext::peer() spells them
// ("ipv4:127.x.x.x:port", "ipv6:[::1]:port", "unix:...").
bool IsLoopbackPeer(absl::string_view peer);

// The one authorization every handler calls, unary and streaming, public
// and peer: Authorizer::Check, or with no authorizer (tests that build the
// services alone) an unchecked caller with every right.
absl::StatusOr<Caller> Authorize(const Authorizer* authorizer,
                                 const grpc::ServerContextBase& context,
                                 Method method);

// Authorize for a unary handler. Allowed: returns nullptr and fills
// `caller` (may be null). Refused: finishes the call with the refusal and
// returns its reactor, which the handler returns.
grpc::ServerUnaryReactor* RefuseUnary(const Authorizer* authorizer,
                                      grpc::CallbackServerContext* context,
                                      Method method, Caller* caller = nullptr);

// A reactor that ends a client-streaming call at once with `status` (a
// refused Populate or Stage).
template <typename Request>
class RefusedStream : public grpc::ServerReadReactor<Request> {
 public:
  explicit RefusedStream(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

// The same for a bidirectional stream (a refused WatchLayer).
template <typename Request, typename Response>
class RefusedBidiStream : public grpc::ServerBidiReactor<Request, Response> {
 public:
  explicit RefusedBidiStream(const grpc::Status& status) {
    this->Finish(status);
  }
  void OnDone() override { delete this; }
};

// Audits the calls of write, admin and peer methods (who, which method,
// the status they ended with) as they end; read methods get no
// interceptor, so lookups pay nothing for it.
class AuditInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit AuditInterceptorFactory(const Authorizer* authorizer)
      : authorizer_(authorizer) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  const Authorizer* authorizer_;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_AUTH_H_
