// Real certificates for the security tests, made by Debian's openssl in a
// test's folder: a CA, server and client certificates it signs, a second
// CA's client certificate, and an expired client certificate.
#ifndef ENGRAM_TESTS_TESTING_TEST_CERTS_H_
#define ENGRAM_TESTS_TESTING_TEST_CERTS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "tests/testing/engramd_process.h"

namespace engram::testing {

struct CertPair {
  std::string cert, key;  // PEM file paths
};

struct TestCerts {
  std::string ca;           // the CA bundle (PEM)
  CertPair server;          // SAN IP:127.0.0.1, DNS:localhost
  CertPair client;          // CN client-a
  CertPair peer;            // CN shard, SAN IP:127.0.0.1 (for cluster mTLS)
  std::string other_ca;     // an unrelated CA
  CertPair other_client;    // CN client-a, signed by other_ca
  CertPair expired_client;  // CN client-a, valid in 2020 only
};

namespace internal {

inline absl::Status Openssl(const std::string& command) {
  std::string output;
  if (RunCommand(command + " 2>&1", &output) != 0) {
    return absl::InternalError(
        absl::StrCat("openssl failed: ", command, "\n", output));
  }
  return absl::OkStatus();
}

inline absl::Status MakeCa(const std::string& dir, const std::string& name) {
  return Openssl(
      absl::StrCat("cd ", dir,
                   " && openssl req -x509 -newkey ec -pkeyopt "
                   "ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=",
                   name, " -keyout ", name, ".key -out ", name, ".pem"));
}

// A certificate for `cn` with `san`, signed by CA `ca`; `dates` (empty:
// valid now for a day) are openssl ca -startdate/-enddate values.
inline absl::StatusOr<CertPair> MakeCert(
    const std::string& dir, const std::string& name, const std::string& cn,
    const std::string& san, const std::string& ca,
    const std::string& start = "", const std::string& end = "") {
  const std::string p = absl::StrCat(dir, "/", name);
  if (absl::Status s = Openssl(absl::StrCat(
          "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
          "-subj /CN=",
          cn, " -keyout ", p, ".key -out ", p, ".csr"));
      !s.ok()) {
    return s;
  }
  // `openssl ca` sets any validity window (x509 -req cannot start in the
  // past); it needs a tiny database.
  const std::string db = absl::StrCat(dir, "/", name, "-db");
  const std::string config = absl::StrCat(
      "[ca]\ndefault_ca=x\n[x]\ndatabase=", db, "/index\nserial=", db,
      "/serial\nnew_certs_dir=", db, "\ndefault_md=sha256\npolicy=p\n",
      "copy_extensions=none\nx509_extensions=ext\n[p]\ncommonName=supplied\n"
      "[ext]\nsubjectAltName=",
      san, "\nbasicConstraints=CA:FALSE\n");
  if (absl::Status s = Openssl(absl::StrCat(
          "mkdir -p ", db, " && : > ", db, "/index && echo 01 > ", db,
          "/serial && printf '%s' '", config, "' > ", db, "/conf"));
      !s.ok()) {
    return s;
  }
  const std::string validity =
      start.empty() ? std::string("-days 1")
                    : absl::StrCat("-startdate ", start, " -enddate ", end);
  if (absl::Status s = Openssl(
          absl::StrCat("openssl ca -batch -notext -config ", db, "/conf -cert ",
                       dir, "/", ca, ".pem -keyfile ", dir, "/", ca, ".key ",
                       validity, " -in ", p, ".csr -out ", p, ".pem"));
      !s.ok()) {
    return s;
  }
  return CertPair{p + ".pem", p + ".key"};
}

}  // namespace internal

inline absl::StatusOr<TestCerts> MakeTestCerts(const std::string& dir) {
  using internal::MakeCert;
  TestCerts certs;
  for (const char* ca : {"ca", "other-ca"}) {
    if (absl::Status s = internal::MakeCa(dir, ca); !s.ok()) return s;
  }
  certs.ca = dir + "/ca.pem";
  certs.other_ca = dir + "/other-ca.pem";
  struct Want {
    CertPair* out;
    const char *name, *cn, *san, *ca, *start, *end;
  };
  const Want wants[] = {
      {&certs.server, "server", "engramd", "IP:127.0.0.1,DNS:localhost", "ca",
       "", ""},
      {&certs.client, "client", "client-a", "DNS:client-a", "ca", "", ""},
      {&certs.peer, "peer", "shard", "IP:127.0.0.1,DNS:shard", "ca", "", ""},
      {&certs.other_client, "other-client", "client-a", "DNS:client-a",
       "other-ca", "", ""},
      {&certs.expired_client, "expired-client", "client-a", "DNS:client-a",
       "ca", "20200101000000Z", "20200102000000Z"},
  };
  for (const Want& w : wants) {
    absl::StatusOr<CertPair> pair =
        MakeCert(dir, w.name, w.cn, w.san, w.ca, w.start, w.end);
    if (!pair.ok()) return pair.status();
    *w.out = *std::move(pair);
  }
  return certs;
}

}  // namespace engram::testing

#endif  // ENGRAM_TESTS_TESTING_TEST_CERTS_H_
