// TLS and mTLS against real engramd processes with certificates made by
// openssl for the test: a single node, a 3-shard cluster whose shards prove
// themselves with certificates, refused certificates, and certificates
// rotated without a restart.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"
#include "tests/testing/test_certs.h"

namespace engram {
namespace {

using testing::CertPair;
using testing::EngramdProcess;
using ::testing::HasSubstr;
using testing::TestCerts;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/engram-tls-XXXXXX";
    dir_ = mkdtemp(pattern);
    absl::StatusOr<TestCerts> certs = testing::MakeTestCerts(dir_);
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *std::move(certs);
    identities_ = File("identities", "write client-a\npeer shard\n");
  }
  void TearDown() override {
    std::string out;
    testing::RunCommand("rm -rf " + dir_, &out);
  }
  std::string File(const std::string& name, const std::string& text) {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }
  // Server flags: TLS with the server certificate, client certificates
  // verified against the CA and mapped to roles.
  std::vector<std::string> MtlsFlags(const CertPair& pair) const {
    return {"--tls_cert_file=" + pair.cert, "--tls_key_file=" + pair.key,
            "--tls_ca_file=" + certs_.ca, "--tls_client_ca_file=" + certs_.ca,
            "--tls_identities_file=" + identities_};
  }
  ClientOptions Tls(const CertPair* client) const {
    ClientOptions o;
    o.timeout = absl::Seconds(5);
    o.tls_ca_file = certs_.ca;
    if (client != nullptr) {
      o.tls_cert_file = client->cert;
      o.tls_key_file = client->key;
    }
    return o;
  }

  // engramd with mTLS (MtlsFlags of the server certificate) and the demo
  // layer, serving once it returns (nullptr after a test failure).
  std::unique_ptr<EngramdProcess> StartMtlsDemo() {
    std::vector<std::string> flags = MtlsFlags(certs_.server);
    flags.push_back("--demo");
    auto server = EngramdProcess::Start(flags);
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return nullptr;
    EXPECT_TRUE(
        testing::WaitServing((*server)->address(), 30, Tls(&certs_.client))
            .ok());
    return *std::move(server);
  }

  std::string dir_;
  TestCerts certs_;
  std::string identities_;
};

absl::StatusCode DescribeCode(const std::string& address,
                              const ClientOptions& options) {
  auto c = Client::Connect(address, options);
  if (!c.ok()) return c.status().code();
  return (*c)->DescribeLayer(0).status().code();
}

TEST_F(TlsTest, MutualTlsOnASingleNode) {
  std::unique_ptr<EngramdProcess> server = StartMtlsDemo();
  ASSERT_NE(server, nullptr);
  const std::string address = server->address();

  EXPECT_EQ(DescribeCode(address, Tls(&certs_.client)), absl::StatusCode::kOk);
  // Rows through TLS are the demo rows (row r of head h = h*100000 + r).
  auto c = Client::Connect(address, Tls(&certs_.client));
  std::vector<float> rows(4 * 8);
  std::vector<int64_t> ids = {5, 7, 9, 11};
  ASSERT_TRUE((*c)->Lookup(0, ids, std::vector<int64_t>{1, 1, 4},
                           {reinterpret_cast<uint8_t*>(rows.data()),
                            rows.size() * sizeof(float)})
                  .ok());
  EXPECT_EQ(rows[0], 5.0f);
  EXPECT_EQ(rows[8], 100007.0f);
  EXPECT_EQ(rows[24], 300011.0f);
  // TLS without a client certificate: no credentials.
  EXPECT_EQ(DescribeCode(address, Tls(nullptr)),
            absl::StatusCode::kUnauthenticated);
  // Plaintext to a TLS port, a certificate from another CA, an expired
  // one, or the wrong server name: the handshake fails.
  ClientOptions plain;
  plain.timeout = absl::Seconds(3);
  EXPECT_EQ(DescribeCode(address, plain), absl::StatusCode::kUnavailable);
  EXPECT_EQ(DescribeCode(address, Tls(&certs_.other_client)),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(DescribeCode(address, Tls(&certs_.expired_client)),
            absl::StatusCode::kUnavailable);
  ClientOptions wrong_name = Tls(&certs_.client);
  wrong_name.tls_server_name = "not-this-server.example";
  EXPECT_EQ(DescribeCode(address, wrong_name), absl::StatusCode::kUnavailable);
  // A client that trusts another CA does not trust this server.
  ClientOptions other_trust = Tls(&certs_.client);
  other_trust.tls_ca_file = certs_.other_ca;
  EXPECT_EQ(DescribeCode(address, other_trust), absl::StatusCode::kUnavailable);
  // The peer certificate is a peer, not a writer.
  auto peer = Client::Connect(address, Tls(&certs_.peer));
  EXPECT_EQ(
      peer.ok() ? (*peer)->Remove(0).status().code() : peer.status().code(),
      absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(server->Alive());
}

// Issue 25: kubelet's gRPC probes and the image's HEALTHCHECK speak
// plaintext only, so with TLS on they could never pass. --health_listen
// serves health (and nothing else) without TLS; engramctl --port_file
// finds it the way the image's HEALTHCHECK does.
TEST_F(TlsTest, AProbeReachesHealthInPlaintextWhileEverythingElseNeedsTls) {
  std::vector<std::string> flags = MtlsFlags(certs_.server);
  flags.push_back("--demo");
  flags.push_back("--health_listen=127.0.0.1:0");
  auto server = EngramdProcess::Start(flags);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE(
      testing::WaitServing((*server)->address(), 30, Tls(&certs_.client)).ok());
  ASSERT_GT((*server)->health_port(), 0);
  ClientOptions plain;
  plain.timeout = absl::Seconds(3);
  const std::string probe_address =
      absl::StrCat("127.0.0.1:", (*server)->health_port());
  auto probe = Client::Connect(probe_address, plain);
  ASSERT_TRUE(probe.ok());
  EXPECT_TRUE((*probe)->CheckHealth().ok());
  EXPECT_TRUE((*probe)->CheckHealth("engram.liveness").ok());
  // Health only: no rows, no layer names in plaintext.
  EXPECT_EQ((*probe)->DescribeLayer(0).status().code(),
            absl::StatusCode::kUnimplemented);
  // The TLS port still refuses a plaintext health check.
  auto main_port = Client::Connect((*server)->address(), plain);
  ASSERT_TRUE(main_port.ok());
  const absl::Status plaintext = (*main_port)->CheckHealth();
  EXPECT_EQ(plaintext.code(), absl::StatusCode::kUnavailable);
  // gRPC says only "Socket closed": the message says what to check.
  EXPECT_THAT(plaintext.message(), HasSubstr("connect with TLS")) << plaintext;
  // The HEALTHCHECK's command, as the image runs it.
  std::string out;
  EXPECT_EQ(
      testing::RunCommand(
          absl::StrCat(testing::EngramctlPath(), " --timeout_s=4 --port_file=",
                       (*server)->port_file(), " health 2>&1"),
          &out),
      0)
      << out;
  EXPECT_THAT(out, HasSubstr("SERVING"));
  // Without --health_listen the port file names the TLS port, where a
  // plaintext probe fails: the exit status says so.
  EXPECT_NE(testing::RunCommand(
                absl::StrCat(testing::EngramctlPath(),
                             " --timeout_s=4 --address=", (*server)->address(),
                             " health 2>&1"),
                &out),
            0);
  // Stopping: the probe port goes NOT_SERVING with the rest, then closes.
  EXPECT_EQ((*server)->Stop(), 0);
  EXPECT_FALSE((*probe)->CheckHealth().ok());
}

// Issue: the identity fell back to the common name when the certificate
// had subject alternative names (SAN someone-else.svc + CN client-a got
// client-a's write role). RFC 6125: SANs alone when there are any.
TEST_F(TlsTest, ACertificateWithSansIsNeverIdentifiedByItsCommonName) {
  absl::StatusOr<CertPair> masked = testing::internal::MakeCert(
      dir_, "masked", "client-a", "DNS:someone-else.svc", "ca");
  ASSERT_TRUE(masked.ok()) << masked.status();
  std::unique_ptr<EngramdProcess> server = StartMtlsDemo();
  ASSERT_NE(server, nullptr);
  const std::string address = server->address();
  EXPECT_EQ(DescribeCode(address, Tls(&*masked)),
            absl::StatusCode::kPermissionDenied);
  // The client certificate's SAN is client-a: still the writer.
  EXPECT_EQ(DescribeCode(address, Tls(&certs_.client)), absl::StatusCode::kOk);
}

TEST_F(TlsTest, AClusterWhoseShardsProveThemselvesWithCertificates) {
  auto cluster =
      testing::StartCluster(3, 2, MtlsFlags(certs_.peer), Tls(&certs_.client));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<std::string> addresses;
  for (auto& s : *cluster) addresses.push_back(s->address());
  const LayerLayout layout{{3000, 2000}, 16, DType::kFloat32};
  const auto tables = testing::RandomTables(layout, 4);
  auto writer = Client::Connect(addresses[1], Tls(&certs_.client));
  ASSERT_TRUE(writer.ok());
  // The coordinator stages on the other shards over mTLS (peer role).
  ASSERT_TRUE((*writer)->Populate(3, layout, testing::Spans(tables)).ok());
  const std::vector<int64_t> ids = testing::RandomIds(layout, 64, 4, 9);
  const auto want =
      testing::ReferenceGather(layout, tables, ids, DType::kFloat32);
  for (const std::string& address : addresses) {
    auto c = Client::Connect(address, Tls(&certs_.client));
    std::vector<uint8_t> out(want.size());
    ASSERT_TRUE((*c)->Lookup(3, ids, std::vector<int64_t>{64, 4, 2}, out).ok())
        << address;
    EXPECT_EQ(out, want);
  }
  // Client-routed lookups reach every shard over TLS too.
  auto routed = Client::ConnectCluster(addresses, 2, Tls(&certs_.client));
  ASSERT_TRUE(routed.ok());
  std::vector<uint8_t> out(want.size());
  ASSERT_TRUE(
      (*routed)->Lookup(3, ids, std::vector<int64_t>{64, 4, 2}, out).ok());
  EXPECT_EQ(out, want);
  // A client certificate of the right CA is still not a peer.
  ASSERT_TRUE((*writer)->Remove(3).ok());
}

// Issue: engramd started with a key that does not match its certificate,
// or an expired certificate.
TEST_F(TlsTest, ABadKeyPairStopsTheStartWithTheReason) {
  struct Case {
    CertPair pair;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{certs_.server.cert, certs_.client.key}, "does not match"},
      {certs_.expired_client, "expired on"},
      {{File("garbage.pem", "not a certificate\n"), certs_.server.key},
       "holds no PEM certificate"},
  };
  for (const Case& c : cases) {
    std::string out;
    const int rc = testing::RunCommand(
        absl::StrCat("timeout -s KILL 20 ", testing::EngramdPath(),
                     " --listen=127.0.0.1:0 --metrics_listen= --tls_cert_file=",
                     c.pair.cert, " --tls_key_file=", c.pair.key, " 2>&1"),
        &out);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_THAT(out, HasSubstr(c.says));
  }
}

// Issue: a garbage or mismatched pair written over the files broke every
// new handshake. The last good pair stays in use until a good one comes.
TEST_F(TlsTest, ABadPairOnDiskKeepsTheLastGoodOneServing) {
  const std::string cert = dir_ + "/live.pem", key = dir_ + "/live.key";
  std::string out;
  testing::RunCommand(absl::StrCat("cp ", certs_.server.cert, " ", cert,
                                   " && cp ", certs_.server.key, " ", key),
                      &out);
  std::vector<std::string> flags = MtlsFlags(certs_.server);
  flags[0] = "--tls_cert_file=" + cert;
  flags[1] = "--tls_key_file=" + key;
  flags.push_back("--credentials_reload_seconds=1");
  flags.push_back("--demo");
  auto server = EngramdProcess::Start(flags);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  ASSERT_TRUE(testing::WaitServing(address, 30, Tls(&certs_.client)).ok());
  // Garbage, then a key of another certificate: each refusal is logged
  // once the watcher has read it (not a fixed sleep).
  auto refusals = [&] {
    const std::string log = (*server)->Log();
    int n = 0;
    for (size_t p = log.find("the last good one stays in use");
         p != std::string::npos;
         p = log.find("the last good one stays in use", p + 1)) {
      ++n;
    }
    return n;
  };
  int round = 0;
  for (const std::string& bad_key :
       {File("junk.key", "garbage\n"), certs_.client.key}) {
    testing::RunCommand(absl::StrCat("cp ", bad_key, " ", key, ".new && mv ",
                                     key, ".new ", key),
                        &out);
    ++round;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (refusals() < round && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_EQ(refusals(), round) << (*server)->Log();
    EXPECT_EQ(DescribeCode(address, Tls(&certs_.client)), absl::StatusCode::kOk)
        << "a new connection after " << bad_key;
  }
  EXPECT_TRUE((*server)->Alive());
}

TEST_F(TlsTest, CertificatesAreReloadedWithoutARestart) {
  // The server starts with a certificate from one CA; the files are then
  // replaced by a certificate from another. New connections get the new
  // one once it is re-read (--credentials_reload_seconds).
  const std::string cert = dir_ + "/live.pem", key = dir_ + "/live.key";
  auto install = [&](const CertPair& pair) {
    std::string out;
    // Key first, then certificate, each by rename.
    testing::RunCommand(
        absl::StrCat("cp ", pair.key, " ", key, ".new && mv ", key, ".new ",
                     key, " && cp ", pair.cert, " ", cert, ".new && mv ", cert,
                     ".new ", cert),
        &out);
  };
  install(certs_.server);
  auto server = EngramdProcess::Start(
      {"--demo", "--tls_cert_file=" + cert, "--tls_key_file=" + key,
       "--credentials_reload_seconds=1",
       "--tokens_file=" +
           File("tokens", "read r read-token-0123456789abcdef\n")});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions first = Tls(nullptr);
  first.token = "read-token-0123456789abcdef";
  ASSERT_TRUE(testing::WaitServing((*server)->address(), 30, first).ok());
  EXPECT_EQ(DescribeCode((*server)->address(), first), absl::StatusCode::kOk);

  absl::StatusOr<CertPair> rotated = testing::internal::MakeCert(
      dir_, "rotated", "engramd", "IP:127.0.0.1", "other-ca");
  ASSERT_TRUE(rotated.ok()) << rotated.status();
  install(*rotated);
  ClientOptions second = first;
  second.tls_ca_file = certs_.other_ca;
  absl::StatusCode code = absl::StatusCode::kUnknown;
  for (int i = 0; i < 100 && code != absl::StatusCode::kOk; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    code = DescribeCode((*server)->address(), second);
  }
  EXPECT_EQ(code, absl::StatusCode::kOk);
  EXPECT_EQ(DescribeCode((*server)->address(), first),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace engram
