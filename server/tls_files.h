// The server's TLS certificate and key as gRPC reads them: checked before
// use, and served from a private copy that only ever holds a pair that
// checked out, so a garbage, mismatched or expired pair written over the
// operator's files never reaches a handshake (the last good pair stays).
#ifndef ENGRAM_SERVER_TLS_FILES_H_
#define ENGRAM_SERVER_TLS_FILES_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "common/periodic_thread.h"

namespace engram {

// INVALID_ARGUMENT saying what is wrong (naming the files, never their
// contents) unless `cert_pem` holds a certificate chain, `key_pem` its
// private key, and the leaf certificate is valid now.
absl::Status CheckKeyPair(const std::string& cert_pem,
                          const std::string& key_pem,
                          const std::string& cert_file,
                          const std::string& key_file);

// Owns a private folder (0700, in /dev/shm when there is one) with a copy
// of the last good pair under current/ (a link swapped in one rename, so a
// reader sees one generation's files), and a thread that re-checks the
// operator's files every `reload` and copies a changed pair in if it
// checks out. Removes the folder when destroyed. Thread-safe.
class TlsKeyPair {
 public:
  // The files' errors and CheckKeyPair's; FAILED_PRECONDITION when no
  // private folder can be made.
  static absl::StatusOr<std::unique_ptr<TlsKeyPair>> Create(
      std::string cert_file, std::string key_file,
      std::chrono::milliseconds reload);
  ~TlsKeyPair();

  // What gRPC's certificate watchers read.
  std::string cert_copy() const { return dir_ + "/current/cert.pem"; }
  std::string key_copy() const { return dir_ + "/current/key.pem"; }

  // Re-reads the operator's files now (also done by the thread, and on
  // SIGHUP): a changed pair that checks out replaces the copy; one that
  // does not is logged and ignored.
  void Refresh() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  TlsKeyPair(std::string cert_file, std::string key_file, std::string dir)
      : cert_file_(std::move(cert_file)),
        key_file_(std::move(key_file)),
        dir_(std::move(dir)) {}
  // Reads and checks the pair; installs it unless it is what is installed.
  absl::Status Install() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string cert_file_, key_file_, dir_;
  Mutex mu_;
  std::string installed_ ABSL_GUARDED_BY(mu_);  // cert + key last installed
  std::string rejected_ ABSL_GUARDED_BY(mu_);   // last refused, logged once
  int generation_ ABSL_GUARDED_BY(mu_) = 0;
  PeriodicThread watcher_;  // Refresh every `reload`
};

}  // namespace engram

#endif  // ENGRAM_SERVER_TLS_FILES_H_
