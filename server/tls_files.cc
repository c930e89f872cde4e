#include "server/tls_files.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "server/log.h"

namespace engram {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     const char* what) {
  absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the TLS ", what, " file ", path, " cannot be read (",
                     text.status().message(), ")"));
  }
  return text;
}

// Writes `text` to `path` (0600) through a temporary and a rename.
bool WriteFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) return false;
  }
  ::chmod(tmp.c_str(), 0600);
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

std::string TimeText(const ASN1_TIME* t) {
  BIO* bio = BIO_new(BIO_s_mem());
  ASN1_TIME_print(bio, t);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

}  // namespace

absl::Status CheckKeyPair(const std::string& cert_pem,
                          const std::string& key_pem,
                          const std::string& cert_file,
                          const std::string& key_file) {
  BIO* cert_bio =
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  X509* cert = PEM_read_bio_X509(cert_bio, nullptr, nullptr, nullptr);
  BIO_free(cert_bio);
  BIO* key_bio =
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr);
  BIO_free(key_bio);
  ERR_clear_error();
  absl::Status status;
  if (cert == nullptr) {
    status = absl::InvalidArgumentError(
        absl::StrCat(cert_file, " holds no PEM certificate"));
  } else if (key == nullptr) {
    status = absl::InvalidArgumentError(
        absl::StrCat(key_file, " holds no PEM private key"));
  } else if (X509_check_private_key(cert, key) != 1) {
    status = absl::InvalidArgumentError(
        absl::StrCat("the key in ", key_file,
                     " does not match the certificate in ", cert_file));
  } else if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0) {
    status = absl::InvalidArgumentError(
        absl::StrCat("the certificate in ", cert_file, " expired on ",
                     TimeText(X509_get0_notAfter(cert))));
  } else if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    status = absl::InvalidArgumentError(
        absl::StrCat("the certificate in ", cert_file, " is valid only from ",
                     TimeText(X509_get0_notBefore(cert))));
  }
  ERR_clear_error();
  X509_free(cert);
  EVP_PKEY_free(key);
  return status;
}

absl::StatusOr<std::unique_ptr<TlsKeyPair>> TlsKeyPair::Create(
    std::string cert_file, std::string key_file,
    std::chrono::milliseconds reload) {
  std::string pattern =
      (::access("/dev/shm", W_OK) == 0
           ? std::string("/dev/shm")
           : std::filesystem::temp_directory_path().string()) +
      "/engramd-tls-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    return absl::FailedPreconditionError(
        "cannot make a private folder for the TLS key pair");
  }
  std::unique_ptr<TlsKeyPair> pair(
      new TlsKeyPair(std::move(cert_file), std::move(key_file), pattern));
  {
    MutexLock lock(&pair->mu_);
    if (absl::Status s = pair->Install(); !s.ok()) return s;
  }
  pair->watcher_.Start(reload, PeriodicThread::First::kAfterOnePeriod,
                       [p = pair.get()](const std::stop_token&) {
                         p->Refresh();
                         return true;
                       });
  return pair;
}

TlsKeyPair::~TlsKeyPair() {
  watcher_.Stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void TlsKeyPair::Refresh() {
  MutexLock lock(&mu_);
  (void)Install();
}

absl::Status TlsKeyPair::Install() {
  absl::StatusOr<std::string> cert = ReadFile(cert_file_, "certificate");
  absl::StatusOr<std::string> key = ReadFile(key_file_, "key");
  absl::Status s = !cert.ok() ? cert.status() : key.status();
  if (s.ok()) {
    if (*cert + *key == installed_) return absl::OkStatus();
    s = CheckKeyPair(*cert, *key, cert_file_, key_file_);
  }
  if (!s.ok()) {
    const std::string why(s.message());
    if (generation_ > 0 && why != rejected_) {
      LogError(
          absl::StrCat("TLS certificate not reloaded, the last good one "
                       "stays in use: ",
                       why));
    }
    rejected_ = why;
    return s;
  }
  // A new generation's folder, then the link to it swapped in one rename.
  const std::string gen = absl::StrCat(dir_, "/gen", ++generation_);
  std::error_code ec;
  std::filesystem::create_directory(gen, ec);
  if (ec || !WriteFile(gen + "/key.pem", *key) ||
      !WriteFile(gen + "/cert.pem", *cert)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write the TLS key pair under ", dir_));
  }
  const std::string link = dir_ + "/current.new";
  ::unlink(link.c_str());
  if (::symlink(gen.c_str(), link.c_str()) != 0 ||
      std::rename(link.c_str(), (dir_ + "/current").c_str()) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot switch the TLS key pair under ", dir_));
  }
  if (generation_ > 1) {
    // The one before stays: a watcher may be reading it right now.
    std::filesystem::remove_all(absl::StrCat(dir_, "/gen", generation_ - 2),
                                ec);
    LogInfo(absl::StrCat("TLS certificate reloaded from ", cert_file_));
  }
  installed_ = *cert + *key;
  rejected_.clear();
  return absl::OkStatus();
}

}  // namespace engram
