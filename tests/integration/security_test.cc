// engramd's security against real processes, real certificates (openssl)
// and real network namespaces: roles against every RPC, the peer API closed
// to non-peers (the forged-rows attack), token rotation, TLS and mTLS on a
// single node and a cluster, certificate reload, and protected mode.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "proto/channel_security.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"
#include "tests/testing/test_certs.h"

namespace engram {
namespace {

using testing::EngramdProcess;
using ::testing::HasSubstr;

constexpr char kReadToken[] = "read-token-0123456789abcdef";
constexpr char kWriteToken[] = "write-token-0123456789abcdef";
constexpr char kAdminToken[] = "admin-token-0123456789abcdef";
constexpr char kClusterToken[] = "cluster-secret-0123456789abcdef";

// A folder for one test's files, removed with it.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/engram-security-XXXXXX";
    path_ = mkdtemp(pattern);
  }
  ~TempDir() {
    std::string out;
    testing::RunCommand("rm -rf " + path_, &out);
  }
  std::string File(const std::string& name, const std::string& text) const {
    const std::string p = path_ + "/" + name;
    const std::string tmp = p + ".tmp";
    std::ofstream(tmp) << text;
    std::rename(tmp.c_str(), p.c_str());  // readers never see half a file
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string TokensFile(const TempDir& dir, const std::string& read_token) {
  return dir.File("tokens",
                  absl::StrCat("# role name token\nread reader ", read_token,
                               "\nwrite writer ", kWriteToken, "\nadmin boss ",
                               kAdminToken, "\n"));
}

ClientOptions WithToken(const std::string& token) {
  ClientOptions o;
  o.token = token;
  o.timeout = absl::Seconds(10);
  return o;
}

// Calls peer `method` raw with `request` bytes and `token` ("" = none).
grpc::StatusCode CallPeer(const std::string& address, const std::string& method,
                          const std::string& token,
                          const std::string& request = "") {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/engram.internal.v1.EngramPeer/" + method,
                 grpc::StubOptions(), &in, &out,
                 [&done](grpc::Status s) { done.set_value(s); });
  return done.get_future().get().error_code();
}

// Opens a Stage stream, sends one header and closes it.
grpc::Status StageForged(const std::string& address, const std::string& token,
                         int64_t layer, int64_t rows) {
  auto stub = internal::v1::EngramPeer::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  internal::v1::StageResponse response;
  auto writer = stub->Stage(&context, &response);
  internal::v1::StageRequest header;
  header.mutable_header()->set_txn_id("forged");
  header.mutable_header()->set_layer_id(layer);
  header.mutable_header()->mutable_config()->add_table_vocab_sizes(rows);
  header.mutable_header()->mutable_config()->set_embedding_dim(8);
  writer->Write(header);
  writer->WritesDone();
  return writer->Finish();
}

absl::StatusCode LookupCode(Client& c, int64_t layer) {
  std::vector<int64_t> ids = {1, 2, 3, 4};
  std::vector<uint8_t> out(4 * 8 * sizeof(float));
  return c.Lookup(layer, ids, std::vector<int64_t>{1, 1, 4}, out).code();
}

TEST(SecurityTest, EveryRoleAgainstEveryRpc) {
  TempDir dir;
  auto server = EngramdProcess::Start(
      {"--demo", "--metrics_listen=127.0.0.1:0",
       "--tokens_file=" + TokensFile(dir, kReadToken),
       "--cluster_token_file=" + dir.File("cluster", kClusterToken)});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  const LayerLayout layout{{16}, 8, DType::kFloat32};
  const auto tables = testing::RandomTables(layout, 1);
  struct Role {
    std::string name, token;
    bool read, write, admin, peer;
  };
  const std::vector<Role> roles = {
      {"anonymous", "", false, false, false, false},
      {"read", kReadToken, true, false, false, false},
      {"write", kWriteToken, true, true, false, false},
      {"admin", kAdminToken, true, true, true, false},
      {"peer", kClusterToken, true, false, false, true},
      {"forged", "not-a-token-of-this-server-at-all", false, false, false,
       false},
  };
  int64_t layer = 100;
  for (const Role& r : roles) {
    SCOPED_TRACE(r.name);
    auto c = Client::Connect(address, WithToken(r.token));
    ASSERT_TRUE(c.ok());
    const bool known = r.read;  // every known credential can read
    const absl::StatusCode denied = known ? absl::StatusCode::kPermissionDenied
                                          : absl::StatusCode::kUnauthenticated;
    auto expect = [&](bool allowed, absl::StatusCode got,
                      absl::StatusCode when_allowed) {
      EXPECT_EQ(got, allowed ? when_allowed : denied);
    };
    // Health stays readable for probes, credentials or not.
    EXPECT_TRUE((*c)->CheckHealth().ok());
    expect(r.read, LookupCode(**c, 0), absl::StatusCode::kOk);
    expect(r.read, (*c)->DescribeLayer(0).status().code(),
           absl::StatusCode::kOk);
    expect(r.read, (*c)->ListLayers().status().code(), absl::StatusCode::kOk);
    ++layer;
    expect(
        r.write,
        (*c)->Populate(layer, layout, testing::Spans(tables)).status().code(),
        absl::StatusCode::kOk);
    expect(r.write, (*c)->Remove(layer).status().code(), absl::StatusCode::kOk);
    // Forced removal (aborts someone's populate) is the admin's.
    const absl::StatusCode forced = (*c)->Remove(999, true).status().code();
    if (r.write && !r.admin) {
      EXPECT_EQ(forced, absl::StatusCode::kPermissionDenied);
    } else {
      expect(r.admin, forced, absl::StatusCode::kNotFound);
    }
    expect(r.write, (*c)->Load("manifest.json").status().code(),
           absl::StatusCode::kFailedPrecondition);  // no --load_root
    // The peer API: Gather/Transport read rows; the rest are peers' only.
    const grpc::StatusCode peer_denied =
        known ? grpc::StatusCode::PERMISSION_DENIED
              : grpc::StatusCode::UNAUTHENTICATED;
    for (const char* method :
         {"Commit", "Abort", "RemoveLocal", "StageFiles"}) {
      SCOPED_TRACE(method);
      const grpc::StatusCode got = CallPeer(address, method, r.token);
      if (r.peer) {
        EXPECT_NE(got, grpc::StatusCode::PERMISSION_DENIED);
        EXPECT_NE(got, grpc::StatusCode::UNAUTHENTICATED);
      } else {
        EXPECT_EQ(got, peer_denied);
      }
    }
    for (const char* method : {"Gather", "Transport"}) {
      SCOPED_TRACE(method);
      const grpc::StatusCode got = CallPeer(address, method, r.token);
      if (r.read) {
        EXPECT_NE(got, grpc::StatusCode::PERMISSION_DENIED);
        EXPECT_NE(got, grpc::StatusCode::UNAUTHENTICATED);
      } else {
        EXPECT_EQ(got, peer_denied);
      }
    }
    const grpc::Status stage = StageForged(address, r.token, 500, 16);
    if (!r.peer) {
      EXPECT_EQ(stage.error_code(), peer_denied);
    }
  }
  // Refusals never echo what was presented.
  EXPECT_THAT((*server)->Log(), ::testing::Not(HasSubstr("not-a-token")));
  EXPECT_THAT((*server)->Log(), ::testing::Not(HasSubstr(kWriteToken)));
  // Every write, admin and peer call is audited: who, what, result.
  EXPECT_THAT((*server)->Log(),
              HasSubstr("audit: writer (role write) called "
                        "/engram.v1.EngramStore/Populate: OK"));
  EXPECT_THAT((*server)->Log(),
              HasSubstr("audit: reader (role read) called "
                        "/engram.v1.EngramStore/Remove: PERMISSION_DENIED"));
  auto metrics = testing::HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(*metrics, HasSubstr("engram_audit_calls_total{code=\"OK\","
                                  "method=\"/engram.v1.EngramStore/Remove\","
                                  "role=\"admin\"}"));
  EXPECT_THAT(*metrics, ::testing::Not(HasSubstr(kAdminToken)));
}

TEST(SecurityTest, ForgedRowsFromANonPeerNeverReachACluster) {
  // The attack: RemoveLocal on one shard, then Stage + Commit of forged
  // rows under the same layer id. Every step must be refused to anyone
  // but a peer, and lookups keep returning the real rows.
  TempDir dir;
  const std::vector<std::string> flags = {
      "--tokens_file=" + TokensFile(dir, kReadToken),
      "--cluster_token_file=" + dir.File("cluster", kClusterToken),
      "--peer_read=gather"};
  auto cluster = testing::StartCluster(3, 1, flags, WithToken(kReadToken));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<std::string> addresses;
  for (auto& s : *cluster) addresses.push_back(s->address());
  auto writer = Client::Connect(addresses[0], WithToken(kWriteToken));
  ASSERT_TRUE(writer.ok());
  const LayerLayout layout{{1000, 1000}, 8, DType::kFloat32};
  const auto tables = testing::RandomTables(layout, 7);
  ASSERT_TRUE((*writer)->Populate(7, layout, testing::Spans(tables)).ok());

  for (const std::string& token :
       {std::string(), std::string(kWriteToken), std::string(kAdminToken)}) {
    SCOPED_TRACE(token.empty() ? "anonymous" : token);
    v1::RemoveRequest remove;
    remove.set_layer_id(7);
    remove.set_force(true);
    EXPECT_NE(CallPeer(addresses[1], "RemoveLocal", token,
                       remove.SerializeAsString()),
              grpc::StatusCode::OK);
    EXPECT_FALSE(StageForged(addresses[1], token, 7, 1000).ok());
    internal::v1::TxnRequest commit;
    commit.set_txn_id("forged");
    EXPECT_NE(
        CallPeer(addresses[1], "Commit", token, commit.SerializeAsString()),
        grpc::StatusCode::OK);
  }
  // Every answer is still the real rows, from every shard.
  for (const std::string& address : addresses) {
    auto reader = Client::Connect(address, WithToken(kReadToken));
    ASSERT_TRUE(reader.ok());
    const std::vector<int64_t> ids = testing::RandomIds(layout, 500, 1, 3);
    std::vector<uint8_t> out(ids.size() * 8 * sizeof(float));
    ASSERT_TRUE(
        (*reader)->Lookup(7, ids, std::vector<int64_t>{500, 1, 2}, out).ok());
    EXPECT_EQ(out,
              testing::ReferenceGather(layout, tables, ids, DType::kFloat32));
  }
  EXPECT_THAT((*cluster)[1]->Log(),
              HasSubstr("called /engram.internal.v1.EngramPeer/RemoveLocal: "
                        "PERMISSION_DENIED"));
}

TEST(SecurityTest, TokensRotateWithoutARestart) {
  TempDir dir;
  const std::string old_token = "old-read-token-0123456789";
  const std::string new_token = "new-read-token-0123456789";
  auto server = EngramdProcess::Start(
      {"--demo", "--tokens_file=" + TokensFile(dir, old_token),
       "--credentials_reload_seconds=0"});  // SIGHUP only
  ASSERT_TRUE(server.ok()) << server.status();
  auto old_client = Client::Connect((*server)->address(), WithToken(old_token));
  auto new_client = Client::Connect((*server)->address(), WithToken(new_token));
  EXPECT_EQ(LookupCode(**old_client, 0), absl::StatusCode::kOk);
  EXPECT_EQ(LookupCode(**new_client, 0), absl::StatusCode::kUnauthenticated);
  TokensFile(dir, new_token);
  kill((*server)->pid(), SIGHUP);
  // The reload is logged once it took effect.
  for (int i = 0; i < 100 && (*server)->Log().find("credentials reloaded") ==
                                 std::string::npos;
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(LookupCode(**old_client, 0), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(LookupCode(**new_client, 0), absl::StatusCode::kOk);
  // A file that no longer parses keeps the tokens in use.
  dir.File("tokens", "read reader short\n");
  kill((*server)->pid(), SIGHUP);
  for (int i = 0;
       i < 100 && (*server)->Log().find("not reloaded") == std::string::npos;
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_THAT((*server)->Log(), HasSubstr("shorter than 16 characters"));
  EXPECT_EQ(LookupCode(**new_client, 0), absl::StatusCode::kOk);
  EXPECT_TRUE((*server)->Alive());
}

TEST(SecurityTest, BadCredentialFilesStopTheStartWithTheReason) {
  TempDir dir;
  const std::string weak = dir.File("weak", "read someone abc\n");
  const std::string bad_role = dir.File("role", "root me 0123456789abcdef0\n");
  struct Case {
    std::vector<std::string> flags;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--tokens_file=" + weak}, "shorter than 16"},
      {{"--tokens_file=" + bad_role}, "line 1: the first field is not a role"},
      {{"--tokens_file=" + dir.path() + "/missing"}, "cannot be read"},
      {{"--tls_cert_file=x.pem"}, "go together"},
      {{"--tls_client_ca_file=ca.pem"}, "need TLS"},
  };
  for (const Case& c : cases) {
    std::string out;
    std::string command =
        testing::EngramdPath() + " --listen=127.0.0.1:0 --metrics_listen=";
    for (const std::string& f : c.flags) command += " " + f;
    EXPECT_NE(testing::RunCommand(command + " 2>&1", &out), 0) << command;
    EXPECT_THAT(out, HasSubstr(c.says));
  }
}

// Issue: a tokens file with its columns swapped put the secret into the
// error log ("unknown role '<token>'").
TEST(SecurityTest, ATokensFileWithSwappedColumnsNeverLogsTheToken) {
  TempDir dir;
  const std::string secret = "s3cret-token-0123456789abcdef";
  const std::string swapped = dir.File("tokens", secret + " reader read\n");
  std::string out;
  EXPECT_NE(testing::RunCommand(testing::EngramdPath() +
                                    " --listen=127.0.0.1:0 --metrics_listen= "
                                    "--tokens_file=" +
                                    swapped + " 2>&1",
                                &out),
            0);
  EXPECT_THAT(out, HasSubstr("line 1: the first field is not a role"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("s3cret")));
}

// Issue: refused unauthenticated calls were each audited in the log (a
// flood of them flooded it); and credential files readable by everyone
// went unremarked.
TEST(SecurityTest,
     RefusedCallFloodsAreCountedNotLoggedEachAndLooseFilesWarned) {
  TempDir dir;
  const std::string tokens = TokensFile(dir, kReadToken);
  ASSERT_EQ(chmod(tokens.c_str(), 0644), 0);
  auto server = EngramdProcess::Start(
      {"--tokens_file=" + tokens, "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_THAT((*server)->Log(), HasSubstr("is readable by every user"));
  auto anonymous = Client::Connect((*server)->address(), WithToken(""));
  ASSERT_TRUE(anonymous.ok());
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ((*anonymous)->Remove(1).status().code(),
              absl::StatusCode::kUnauthenticated);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_EQ((*anonymous)->Remove(1).status().code(),
            absl::StatusCode::kUnauthenticated);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const std::string log = (*server)->Log();
  int lines = 0;
  for (size_t at = 0;
       (at = log.find("audit: unauthenticated", at)) != std::string::npos;
       ++at) {
    ++lines;
  }
  EXPECT_LE(lines, 40) << "201 refused calls";
  EXPECT_GE(lines, 10);
  EXPECT_THAT(log, HasSubstr("refused calls before it were not logged"));
  auto metrics = testing::HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(
      *metrics,
      HasSubstr("method=\"/engram.v1.EngramStore/Remove\",role=\"none\"} 201"));
}

// Issue: the port file's temporary (PORT_FILE.tmp) was opened without
// O_EXCL / O_NOFOLLOW, so engramd (as root) wrote through a planted link.
TEST(SecurityTest, ThePortFileNeverWritesThroughAPlantedLink) {
  TempDir dir;
  const std::string victim = dir.File("victim", "precious\n");
  const std::string port_file = dir.path() + "/ports";
  ASSERT_EQ(symlink(victim.c_str(), (port_file + ".tmp").c_str()), 0);
  std::string out;
  testing::RunCommand("timeout -s TERM 3 " + testing::EngramdPath() +
                          " --listen=127.0.0.1:0 --metrics_listen= "
                          "--port_file=" +
                          port_file + " 2>&1",
                      &out);
  std::ifstream in(victim);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(text, "precious\n");
  std::ifstream ports(port_file);
  std::string first;
  std::getline(ports, first);
  EXPECT_THAT(first, ::testing::StartsWith("grpc_port=")) << out;
  struct stat st;
  ASSERT_EQ(lstat(port_file.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
}

TEST(SecurityTest, SharedMemoryAndTableFilesAreTheOwnersOnly) {
  TempDir dir;
  const std::string data = dir.path() + "/data";
  ASSERT_EQ(mkdir(data.c_str(), 0755), 0);
  auto exporting = EngramdProcess::Start({"--demo", "--direct_reads"});
  ASSERT_TRUE(exporting.ok()) << exporting.status();
  auto durable = EngramdProcess::Start({"--data_dir=" + data});
  ASSERT_TRUE(durable.ok()) << durable.status();
  {
    auto c = Client::Connect((*durable)->address());
    const LayerLayout layout{{100, 50}, 8, DType::kFloat32};
    const auto tables = testing::RandomTables(layout, 2);
    ASSERT_TRUE((*c)->Populate(1, layout, testing::Spans(tables)).ok());
  }
  // Every System V segment the exporting server made (its tables, UCX's
  // own) is mode 0600 (UCX makes them 0660).
  std::string segments;
  testing::RunCommand(absl::StrCat("awk '$5 == ", (*exporting)->pid(),
                                   " {print $2, $3}' /proc/sysvipc/shm"),
                      &segments);
  ASSERT_FALSE(segments.empty()) << "no shared memory was exported";
  std::istringstream lines(segments);
  std::string shmid, perms, first;
  while (lines >> shmid >> perms) {
    if (first.empty()) first = shmid;
    EXPECT_EQ(std::stoi(perms, nullptr, 8) & 0777, 0600) << "segment " << shmid;
  }
  // Another user in engramd's group (the attack: it attached one
  // read-write and changed rows) cannot attach one, read-only or not.
  std::string out;
  const int rc = testing::RunCommand(
      "setpriv --reuid=65534 --regid=" + std::to_string(getgid()) +
          " --clear-groups /usr/bin/python3 "
          "-c 'import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
          "libc.shmat.restype = ctypes.c_void_p; "
          "p = libc.shmat(" +
          first +
          ", None, 0o10000); "
          "sys.exit(3 if p in (None, 2**64 - 1) else 0)' 2>&1",
      &out);
  EXPECT_EQ(rc, 3) << out;
  // --data_dir folders and table files: 0700 and 0600.
  std::string modes;
  testing::RunCommand("find " + data + " -mindepth 1 -printf '%m %p\\n'",
                      &modes);
  ASSERT_FALSE(modes.empty());
  std::istringstream entries(modes);
  std::string mode, path;
  while (entries >> mode >> path) {
    EXPECT_TRUE(mode == "600" || mode == "700") << mode << " " << path;
  }
}

// --shm_group: a direct reader running as another user, in that group,
// reads rows straight from the shared memory through read-only attachments,
// and cannot attach it writable.
TEST(SecurityTest, AGroupOfDirectReadersGetsReadOnlySharedMemory) {
  const std::string python_dir =
      testing::EngramdPath().substr(0,
                                    testing::EngramdPath().rfind("/server/")) +
      "/python";
  std::string out;
  if (testing::RunCommand("test -d " + python_dir + "/engram_store", &out) !=
      0) {
    GTEST_SKIP() << "no Python package built (pybind11 missing)";
  }
  auto server =
      EngramdProcess::Start({"--demo", "--direct_reads", "--shm_group=nogroup",
                             "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  std::string segments;
  testing::RunCommand(absl::StrCat("awk '$5 == ", (*server)->pid(),
                                   " {print $2, $3, $9}' /proc/sysvipc/shm"),
                      &segments);
  ASSERT_FALSE(segments.empty());
  std::istringstream lines(segments);
  std::string shmid, perms, gid, server_ids;
  while (lines >> shmid >> perms >> gid) {
    EXPECT_EQ(std::stoi(perms, nullptr, 8) & 0777, 0640);
    EXPECT_EQ(gid, "65534");  // nogroup
    absl::StrAppend(&server_ids, server_ids.empty() ? "" : ", ", shmid);
  }
  // As nobody:nogroup: lookups are right, and come from the tables'
  // segments attached read-only in the reader ("r--s" in its maps).
  const std::string script = absl::StrCat(
      "import time, numpy as np, engram_store\n"
      "c = engram_store.Client('",
      (*server)->address(),
      "', direct_reads=True)\n"
      "ids = np.array([[[5, 6, 7, 8]]])\n"
      "for _ in range(100):\n"
      "    rows = c.lookup(0, ids)\n"
      "    assert rows[0, 0, 2, 0] == 200007.0, rows\n"
      "    time.sleep(0.01)\n"
      "server = {",
      server_ids,
      "}\n"
      "maps = [l.split() for l in open('/proc/self/maps')]\n"
      "shared = [m[1] for m in maps if len(m) > 5 and "
      "m[5].startswith('/SYSV') and int(m[4]) in server]\n"
      "assert shared and all(p == 'r--s' for p in shared), shared\n"
      "print('direct reads as', __import__('os').getuid(), shared)\n");
  const std::string script_file =
      "/tmp/engram-shm-group-" + std::to_string(getpid()) + ".py";
  std::ofstream(script_file) << script;
  // The build tree may sit in a folder only root can enter (a CI clone in
  // mktemp -d): nobody imports a copy of the package instead.
  TempDir readable;
  ASSERT_EQ(
      testing::RunCommand("chmod 0755 " + readable.path() + " && cp -r " +
                              python_dir + "/engram_store " + readable.path() +
                              " && chmod -R a+rX " + readable.path(),
                          &out),
      0)
      << out;
  chmod(script_file.c_str(), 0644);
  const int rc = testing::RunCommand(
      "cd / && PYTHONPATH=" + readable.path() +
          " setpriv --reuid=65534 --regid=65534 --clear-groups "
          "/usr/bin/python3 " +
          script_file + " 2>&1",
      &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("direct reads as 65534"));
  // The same user cannot attach a segment writable.
  std::string first;
  testing::RunCommand(absl::StrCat("awk '$5 == ", (*server)->pid(),
                                   " {print $2; exit}' /proc/sysvipc/shm"),
                      &first);
  const int write_rc = testing::RunCommand(
      "setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 "
      "-c 'import ctypes, sys; libc = ctypes.CDLL(None); "
      "libc.shmat.restype = ctypes.c_void_p; "
      "p = libc.shmat(" +
          first.substr(0, first.find('\n')) +
          ", None, 0); "
          "sys.exit(3 if p in (None, 2**64 - 1) else 0)' 2>&1",
      &out);
  EXPECT_EQ(write_rc, 3) << out;
  unlink(script_file.c_str());
}

// A network namespace with a veth pair to this one, made (and removed) by
// the test: the only non-loopback addresses a test may use.
class NetworkNamespace {
 public:
  NetworkNamespace() {
    const int n = getpid() % 250;
    name_ = absl::StrCat("engram-sec-", getpid());
    const std::string host = absl::StrCat("eh", getpid() % 100000);
    const std::string inside = absl::StrCat("en", getpid() % 100000);
    host_address_ = absl::StrCat("198.18.", n, ".1");
    address_ = absl::StrCat("198.18.", n, ".2");
    const std::string in_ns = "ip netns exec " + name_ + " ";
    for (const std::string& command :
         {"ip netns add " + name_,
          "ip link add " + host + " type veth peer name " + inside,
          "ip link set " + inside + " netns " + name_,
          "ip addr add " + host_address_ + "/30 dev " + host,
          "ip link set " + host + " up",
          in_ns + "ip addr add " + address_ + "/30 dev " + inside,
          in_ns + "ip link set " + inside + " up",
          in_ns + "ip link set lo up"}) {
      std::string out;
      if (testing::RunCommand(command + " 2>&1", &out) != 0) {
        error_ = command + ": " + out;
        return;
      }
    }
  }
  ~NetworkNamespace() {
    std::string out;
    testing::RunCommand("ip netns del " + name_ + " 2>&1", &out);
  }
  const std::string& error() const { return error_; }
  const std::string& name() const { return name_; }
  // engramd's address as seen from this namespace (the veth's far end).
  const std::string& address() const { return address_; }

 private:
  std::string name_, address_, host_address_, error_;
};

// engramd inside `ns`, listening on all of the namespace's addresses
// (loopback and the test's veth only); stopped when destroyed.
class EngramdInNamespace {
 public:
  EngramdInNamespace(const NetworkNamespace& ns,
                     const std::vector<std::string>& flags) {
    std::vector<std::string> args = {"ip",
                                     "netns",
                                     "exec",
                                     ns.name(),
                                     testing::EngramdPath(),
                                     "--listen=0.0.0.0:50051",
                                     "--metrics_listen=",
                                     "--demo",
                                     "--drain_seconds=1"};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      freopen("/dev/null", "w", stderr);
      execvp(argv[0], argv.data());
      _exit(127);
    }
    // Serving once health answers on the namespace's loopback (a client
    // that tried before then would sit in reconnect backoff).
    for (int i = 0; i < 200; ++i) {
      std::string out;
      if (testing::RunCommand("ip netns exec " + ns.name() + " " +
                                  testing::EngramctlPath() +
                                  " --address=127.0.0.1:50051 --timeout_s=1 "
                                  "health 2>&1",
                              &out) == 0) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~EngramdInNamespace() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
  }

 private:
  pid_t pid_ = -1;
};

absl::StatusCode ListFrom(const std::string& address, const std::string& token,
                          std::string* message = nullptr) {
  ClientOptions options = WithToken(token);
  options.timeout = absl::Seconds(2);
  auto c = Client::Connect(address, options);
  absl::Status last;
  for (int i = 0; i < 100; ++i) {  // until it listens
    last = (*c)->ListLayers().status();
    if (last.code() != absl::StatusCode::kUnavailable &&
        last.code() != absl::StatusCode::kDeadlineExceeded) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (message != nullptr) *message = std::string(last.message());
  return last.code();
}

TEST(SecurityTest, ProtectedModeServesOnlyLoopbackUntilCredentialsExist) {
  NetworkNamespace ns;
  if (!ns.error().empty()) {
    GTEST_SKIP() << "cannot make a network namespace here: " << ns.error();
  }
  const std::string remote = ns.address() + ":50051";
  {
    EngramdInNamespace server(ns, {});
    std::string message;
    EXPECT_EQ(ListFrom(remote, "", &message),
              absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(message, HasSubstr("protected mode"));
    // Loopback inside the namespace is served.
    std::string out;
    EXPECT_EQ(testing::RunCommand("ip netns exec " + ns.name() + " " +
                                      testing::EngramctlPath() +
                                      " --address=127.0.0.1:50051 list 2>&1",
                                  &out),
              0)
        << out;
    EXPECT_THAT(out, HasSubstr("layer 0"));
  }
  {
    EngramdInNamespace server(ns, {"--insecure_allow_unauthenticated_remote"});
    EXPECT_EQ(ListFrom(remote, ""), absl::StatusCode::kOk);
  }
  {
    TempDir dir;
    EngramdInNamespace server(ns,
                              {"--tokens_file=" + TokensFile(dir, kReadToken)});
    EXPECT_EQ(ListFrom(remote, kReadToken), absl::StatusCode::kOk);
    EXPECT_EQ(ListFrom(remote, ""), absl::StatusCode::kUnauthenticated);
  }
}

}  // namespace
}  // namespace engram
