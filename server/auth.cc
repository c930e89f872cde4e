#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/files.h"
#include "proto/channel_security.h"
#include "server/log.h"

namespace engram {
namespace {

// Tokens shorter than this are refused when the file is read: they could
// be guessed.
constexpr size_t kMinTokenBytes = 16;

absl::StatusOr<uint32_t> RoleRights(absl::string_view role) {
  if (role == "read") return kRightRead;
  if (role == "write") return kRightRead | kRightWrite;
  if (role == "admin") return kRightRead | kRightWrite | kRightAdmin;
  if (role == "peer") return kRightRead | kRightPeer;
  // The value is not repeated: in a file with its columns swapped it is a
  // secret token, and this message reaches the log.
  return absl::InvalidArgumentError(
      "the first field is not a role (read, write, admin or peer)");
}

std::array<unsigned char, 32> Digest(absl::string_view token) {
  std::array<unsigned char, 32> digest;
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(),
         digest.data());
  return digest;
}

// Calls `line(number, fields)` for each line that is not blank or a comment.
absl::Status ForEachEntry(
    const std::string& path,
    const std::function<absl::Status(std::vector<absl::string_view>)>& line) {
  absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", path, "' cannot be read (", text.status().message(), ")"));
  }
  int number = 0;
  for (absl::string_view raw : absl::StrSplit(*text, '\n')) {
    ++number;
    absl::string_view l = absl::StripAsciiWhitespace(raw);
    if (l.empty() || l[0] == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(l, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (absl::Status s = line(std::move(fields)); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " line ", number, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

class AuditInterceptor : public grpc::experimental::Interceptor {
 public:
  AuditInterceptor(const Authorizer* authorizer,
                   grpc::experimental::ServerRpcInfo* info)
      : authorizer_(authorizer), info_(info) {}
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::ServerContextBase* context = info_->server_context();
      Caller caller = context != nullptr ? authorizer_->Identify(*context)
                                         : Caller{"unknown", "none", 0};
      authorizer_->Audit(caller, info_->method(), methods->GetSendStatus());
    }
    methods->Proceed();
  }

 private:
  const Authorizer* authorizer_;
  grpc::experimental::ServerRpcInfo* info_;
};

}  // namespace

bool IsLoopbackPeer(absl::string_view peer) {
  if (absl::ConsumePrefix(&peer, "ipv4:")) {
    return absl::StartsWith(peer, "127.");
  }
  if (absl::ConsumePrefix(&peer, "ipv6:")) {
    // "[::1]:port", URI-escaped by some gRPC versions: "%5B::1%5D:port".
    return absl::StartsWith(peer, "[::1]") ||
           absl::StartsWith(peer, "%5B::1%5D") ||
           absl::StartsWith(peer, "[::ffff:127.") ||
           absl::StartsWith(peer, "%5B::ffff:127.");
  }
  return absl::StartsWith(peer, "unix:");
}

Authorizer::Authorizer(AuthConfig config, prometheus::Registry* registry)
    : config_(std::move(config)),
      credentials_configured_(!config_.tokens_file.empty() ||
                              !config_.cluster_token_file.empty() ||
                              config_.mtls) {
  if (registry != nullptr) {
    audit_family_ = &prometheus::BuildCounter()
                         .Name("engram_audit_calls_total")
                         .Help(
                             "Write, admin and peer calls by method, the "
                             "caller's role and the status they ended with.")
                         .Register(*registry);
  }
}

Authorizer::~Authorizer() { StopWatching(); }

void Authorizer::StopWatching() { watcher_.Stop(); }

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(
    AuthConfig config, prometheus::Registry* registry) {
  if (!config.identities_file.empty() && !config.mtls) {
    return absl::InvalidArgumentError(
        "--tls_identities_file needs --tls_client_ca_file (client "
        "certificates are only verified with it)");
  }
  std::unique_ptr<Authorizer> auth(new Authorizer(std::move(config), registry));
  absl::StatusOr<std::shared_ptr<const Tables>> tables = auth->ReadTables();
  if (!tables.ok()) return tables.status();
  absl::MutexLock lock(&auth->mu_);
  auth->tables_ = *std::move(tables);
  auth->stamps_ = auth->Stamps();
  return auth;
}

absl::StatusOr<std::shared_ptr<const Authorizer::Tables>>
Authorizer::ReadTables() const {
  auto tables = std::make_shared<Tables>();
  if (!config_.tokens_file.empty()) {
    absl::Status s = ForEachEntry(
        config_.tokens_file,
        [&](std::vector<absl::string_view> f) -> absl::Status {
          if (f.size() != 3) {
            return absl::InvalidArgumentError(
                "expected ROLE NAME TOKEN (three fields)");
          }
          absl::StatusOr<uint32_t> rights = RoleRights(f[0]);
          if (!rights.ok()) return rights.status();
          if (f[2].size() < kMinTokenBytes) {
            return absl::InvalidArgumentError(
                absl::StrCat("the token of '", f[1], "' is shorter than ",
                             kMinTokenBytes, " characters"));
          }
          tables->tokens.push_back(
              {Digest(f[2]),
               Caller{std::string(f[1]), std::string(f[0]), *rights}});
          return absl::OkStatus();
        });
    if (!s.ok()) return s;
  }
  if (!config_.cluster_token_file.empty()) {
    absl::StatusOr<std::string> token =
        ReadSecretFile(config_.cluster_token_file);
    if (!token.ok()) return token.status();
    if (token->size() < kMinTokenBytes) {
      return absl::InvalidArgumentError(absl::StrCat(config_.cluster_token_file,
                                                     ": the cluster token is "
                                                     "shorter than ",
                                                     kMinTokenBytes,
                                                     " characters"));
    }
    tables->tokens.push_back(
        {Digest(*token), Caller{"peer", "peer", kRightRead | kRightPeer}});
  }
  if (!config_.identities_file.empty()) {
    absl::Status s =
        ForEachEntry(config_.identities_file,
                     [&](std::vector<absl::string_view> f) -> absl::Status {
                       if (f.size() != 2) {
                         return absl::InvalidArgumentError(
                             "expected ROLE IDENTITY (two fields)");
                       }
                       absl::StatusOr<uint32_t> rights = RoleRights(f[0]);
                       if (!rights.ok()) return rights.status();
                       tables->identities[std::string(f[1])] = Caller{
                           std::string(f[1]), std::string(f[0]), *rights};
                       return absl::OkStatus();
                     });
    if (!s.ok()) return s;
  }
  return std::shared_ptr<const Tables>(std::move(tables));
}

std::vector<Authorizer::FileStamp> Authorizer::Stamps() const {
  std::vector<FileStamp> stamps;
  for (const std::string* path :
       {&config_.tokens_file, &config_.cluster_token_file,
        &config_.identities_file}) {
    FileStamp stamp;
    struct stat st {};
    if (!path->empty() && stat(path->c_str(), &st) == 0) {
      stamp.mtime_ns =
          int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
      stamp.size = st.st_size;
      stamp.inode = static_cast<int64_t>(st.st_ino);
    }
    stamps.push_back(stamp);
  }
  return stamps;
}

void Authorizer::Reload() {
  std::vector<FileStamp> now = Stamps();
  {
    absl::MutexLock lock(&mu_);
    if (now == stamps_) return;
    stamps_ = now;  // a bad file is reported once, not on every poll
  }
  absl::StatusOr<std::shared_ptr<const Tables>> tables = ReadTables();
  if (!tables.ok()) {
    LogError(
        absl::StrCat("credentials not reloaded, the previous ones stay "
                     "in use: ",
                     tables.status().message()));
    return;
  }
  size_t tokens = (*tables)->tokens.size();
  size_t identities = (*tables)->identities.size();
  {
    absl::MutexLock lock(&mu_);
    tables_ = *std::move(tables);
  }
  LogInfo(absl::StrCat("credentials reloaded: ", tokens, " tokens, ",
                       identities, " certificate identities"));
  if (reloaded_) reloaded_();
}

void Authorizer::WatchFiles(double seconds, std::function<void()> reloaded) {
  reloaded_ = std::move(reloaded);
  if (!credentials_configured_ || seconds <= 0) return;
  watcher_.Start(
      std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)),
      PeriodicThread::First::kAfterOnePeriod, [this](const std::stop_token&) {
        Reload();
        return true;
      });
}

absl::StatusOr<Caller> Authorizer::Authenticate(
    const grpc::ServerContextBase& context) const {
  std::shared_ptr<const Tables> tables;
  {
    absl::ReaderMutexLock lock(&mu_);
    tables = tables_;
  }
  const auto& metadata = context.client_metadata();
  auto header = metadata.find("authorization");
  if (header != metadata.end()) {
    absl::string_view value(header->second.data(), header->second.size());
    if (!absl::ConsumePrefix(&value, "Bearer ")) {
      return absl::UnauthenticatedError(
          "the authorization header is not 'Bearer <token>'");
    }
    const std::array<unsigned char, 32> digest = Digest(value);
    // Every entry is compared, in constant time each: the time taken says
    // nothing about which token (or how much of one) matched.
    const Token* match = nullptr;
    for (const Token& t : tables->tokens) {
      if (CRYPTO_memcmp(t.digest.data(), digest.data(), digest.size()) == 0) {
        match = &t;
      }
    }
    if (match == nullptr) {
      return absl::UnauthenticatedError("invalid credentials");
    }
    return match->caller;
  }
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (config_.mtls && auth != nullptr && auth->IsPeerAuthenticated()) {
    // RFC 6125: a certificate with subject alternative names is identified
    // by them alone; its common name counts only when it has none.
    std::vector<grpc::string_ref> names =
        auth->FindPropertyValues("x509_subject_alternative_name");
    if (names.empty()) names = auth->FindPropertyValues("x509_common_name");
    for (const grpc::string_ref& v : names) {
      auto it = tables->identities.find(std::string(v.data(), v.size()));
      if (it != tables->identities.end()) return it->second;
    }
    return absl::PermissionDeniedError(
        "this client certificate's identity is not given a role");
  }
  return absl::UnauthenticatedError(
      "credentials required: a bearer token (authorization: Bearer ...) or "
      "a client certificate");
}

absl::StatusOr<Caller> Authorizer::Check(const grpc::ServerContextBase& context,
                                         Method method) const {
  const MethodInfo& info = Describe(method);
  return CheckRights(context, info.need, info.name);
}

absl::StatusOr<Caller> Authorizer::CheckRights(
    const grpc::ServerContextBase& context, uint32_t need,
    absl::string_view method) const {
  Caller caller;
  if (credentials_configured_) {
    absl::StatusOr<Caller> who = Authenticate(context);
    if (!who.ok()) return who.status();
    caller = *std::move(who);
  } else {
    if (!config_.allow_remote_unauthenticated &&
        !IsLoopbackPeer(context.peer())) {
      return absl::PermissionDeniedError(
          "engramd serves only loopback clients while no credentials are "
          "configured (protected mode): configure --tokens_file or "
          "--tls_client_ca_file, or start it with "
          "--insecure_allow_unauthenticated_remote (docs/security.md)");
    }
    // No string built per call (lookups pass here); Identify, for the
    // audit, adds the address.
    caller = Caller{"anonymous", "any", ~uint32_t{0}};
  }
  if ((caller.rights & need) != need) {
    return absl::PermissionDeniedError(
        absl::StrCat("role ", caller.role, " may not call ", method,
                     (need & kRightPeer) ? " (peers only)" : ""));
  }
  return caller;
}

Caller Authorizer::Identify(const grpc::ServerContextBase& context) const {
  absl::StatusOr<Caller> who = CheckRights(context, 0, "");
  if (who.ok()) {
    if (!credentials_configured_)
      absl::StrAppend(&who->name, " ", context.peer());
    return *std::move(who);
  }
  return Caller{absl::StrCat("unauthenticated ", context.peer()), "none", 0};
}

void Authorizer::Audit(const Caller& caller, absl::string_view method,
                       const grpc::Status& result) const {
  const std::string code =
      result.ok() ? "OK"
                  : std::string(absl::StatusCodeToString(
                        static_cast<absl::StatusCode>(result.error_code())));
  // Calls without valid credentials are logged at most
  // kRefusedLogsPerSecond a second (a flood of them would otherwise flood
  // the log); every one is counted below.
  bool log = true;
  std::string note;
  if (caller.rights == 0) {
    absl::MutexLock lock(&audit_mu_);
    const absl::Time now = absl::Now();
    if (now - refused_window_start_ >= absl::Seconds(1)) {
      refused_window_start_ = now;
      refused_in_window_ = 0;
    }
    log = ++refused_in_window_ <= kRefusedLogsPerSecond;
    if (!log) {
      ++refused_not_logged_;
    } else if (refused_not_logged_ > 0) {
      note = absl::StrCat(" (", refused_not_logged_,
                          " refused calls before it were not logged)");
      refused_not_logged_ = 0;
    }
  }
  if (log) {
    LogInfo(absl::StrCat("audit: ", caller.name, " (role ", caller.role,
                         ") called ", method, ": ", code,
                         result.ok() ? "" : " ", result.error_message(), note));
  }
  if (audit_family_ != nullptr) {
    audit_family_
        ->Add({{"method", std::string(method)},
               {"role", caller.role},
               {"code", code}})
        .Increment();
  }
}

absl::StatusOr<Caller> Authorize(const Authorizer* authorizer,
                                 const grpc::ServerContextBase& context,
                                 Method method) {
  if (authorizer == nullptr) return Caller{"unchecked", "any", ~uint32_t{0}};
  return authorizer->Check(context, method);
}

grpc::ServerUnaryReactor* RefuseUnary(const Authorizer* authorizer,
                                      grpc::CallbackServerContext* context,
                                      Method method, Caller* caller) {
  absl::StatusOr<Caller> who = Authorize(authorizer, *context, method);
  if (who.ok()) {
    if (caller != nullptr) *caller = *std::move(who);
    return nullptr;
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(
      grpc::Status(static_cast<grpc::StatusCode>(who.status().code()),
                   std::string(who.status().message())));
  return reactor;
}

grpc::experimental::Interceptor*
AuditInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  const MethodInfo* method = FindMethod(info->method());
  if (method == nullptr || !method->audited) return nullptr;
  return new AuditInterceptor(authorizer_, info);
}

}  // namespace engram
