#include "proto/channel_security.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/support/client_interceptor.h>

#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/files.h"

namespace engram {
namespace {

// Adds the bearer token to every call's initial metadata.
class TokenInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(const BearerToken* token) : token_(token) {}
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::
                PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace(
          "authorization", absl::StrCat("Bearer ", token_->Get()));
    }
    methods->Proceed();
  }

 private:
  const BearerToken* token_;
};

// Owns the token for the channel's lifetime (interceptors are per call).
class TokenInterceptorFactory
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(std::shared_ptr<BearerToken> token)
      : token_(std::move(token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new TokenInterceptor(token_.get());
  }

 private:
  std::shared_ptr<BearerToken> token_;
};

// The file's text, or INVALID_ARGUMENT saying which file and why.
absl::StatusOr<std::string> ReadCredentialFile(const std::string& path,
                                               const char* what) {
  absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " '", path, "' cannot be read (", text.status().message(), ")"));
  }
  if (text->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "' is empty"));
  }
  return text;
}

absl::Status CheckReadable(const std::string& path, const char* what) {
  return ReadCredentialFile(path, what).status();
}

}  // namespace

void BearerToken::Set(std::string token) {
  absl::MutexLock lock(&mu_);
  token_ = std::move(token);
}

std::string BearerToken::Get() const {
  absl::ReaderMutexLock lock(&mu_);
  return token_;
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadCredentialFile(path, "secret file");
  if (!text.ok()) return text.status();
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (!trimmed.empty()) return std::string(trimmed);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("secret file '", path, "' holds no token"));
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ChannelSecurity& security) {
  const bool identity =
      !security.tls_cert_file.empty() || !security.tls_key_file.empty();
  if (!security.tls && security.tls_ca_file.empty()) {
    if (identity) {
      return absl::InvalidArgumentError(
          "a client certificate needs TLS: give the CA file that signs the "
          "server (or turn TLS on)");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (identity) {
    if (security.tls_cert_file.empty() || security.tls_key_file.empty()) {
      return absl::InvalidArgumentError(
          "mTLS needs both the certificate and the key file");
    }
    if (absl::Status s = CheckReadable(security.tls_cert_file, "certificate");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckReadable(security.tls_key_file, "key"); !s.ok()) {
      return s;
    }
  }
  if (!security.tls_ca_file.empty()) {
    if (absl::Status s = CheckReadable(security.tls_ca_file, "CA file");
        !s.ok()) {
      return s;
    }
  }
  // Files are watched, so rotated certificates are used for new
  // connections without a restart.
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
  if (identity) {
    provider =
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            security.tls_key_file, security.tls_cert_file, security.tls_ca_file,
            security.reload_seconds);
  } else if (!security.tls_ca_file.empty()) {
    provider =
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            security.tls_ca_file, security.reload_seconds);
  }
  grpc::experimental::TlsChannelCredentialsOptions options;
  if (provider != nullptr) options.set_certificate_provider(provider);
  if (!security.tls_ca_file.empty()) options.watch_root_certs();
  if (identity) options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  return grpc::experimental::TlsCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateSecureChannel(
    const std::string& address, const ChannelSecurity& security,
    grpc::ChannelArguments args) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      ChannelCredentials(security);
  if (!credentials.ok()) return credentials.status();
  if (!security.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(security.tls_server_name);
  }
  std::shared_ptr<grpc::Channel> channel;
  if (security.token != nullptr) {
    std::vector<
        std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(
        std::make_unique<TokenInterceptorFactory>(security.token));
    channel = grpc::experimental::CreateCustomChannelWithInterceptors(
        address, *credentials, args, std::move(interceptors));
  } else {
    channel = grpc::CreateCustomChannel(address, *credentials, args);
  }
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a channel to '", address, "'"));
  }
  return channel;
}

}  // namespace engram
