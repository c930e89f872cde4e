// Durable tables (--data_dir) on real engramd processes and real files:
// restarts serve the same rows and versions, a kill -9 mid-populate or
// mid-replace never leaves a half-written layer, damaged files are refused
// while the others load, Remove deletes, and a table bigger than the memory
// budget is served from the page cache.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "client/client.h"
#include "engram/v1/engram.grpc.pb.h"
#include "proto/convert.h"
#include "tests/testing/checkpoint_files.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/lookup_check.h"
#include "tests/testing/random_layer.h"

namespace engram {
namespace {

using testing::EngramdProcess;
using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;

class DataDirTest : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> extra = {}) {
    extra.push_back("--data_dir=" + dir_.path());
    Launch(extra);
  }
  // Stops (or kills) engramd and starts it again with the same flags.
  void Restart(bool kill = false) {
    std::vector<std::string> flags = server_->flags();
    if (kill) {
      server_->Kill();
    } else {
      EXPECT_EQ(server_->Stop(), 0) << server_->Log();
    }
    server_.reset();
    Launch(flags);
  }
  // Starts engramd with `flags`, waits until it serves, connects.
  void Launch(const std::vector<std::string>& flags) {
    auto p = EngramdProcess::Start(flags);
    ASSERT_TRUE(p.ok()) << p.status();
    server_ = *std::move(p);
    ASSERT_TRUE(testing::WaitServing(server_->address(), 30).ok())
        << server_->Log();
    auto c = Client::Connect(server_->address());
    ASSERT_TRUE(c.ok());
    client_ = *std::move(c);
  }
  void Populate(int64_t id, const LayerLayout& layout, uint32_t seed) {
    tables_[id] = testing::RandomTables(layout, seed);
    layouts_[id] = layout;
    auto info = client_->Populate(id, layout, testing::Spans(tables_[id]));
    ASSERT_TRUE(info.ok()) << info.status();
  }
  absl::Status Exact(int64_t id, uint32_t seed = 1) {
    return testing::LookupExact(*client_, id, layouts_[id], tables_[id], 4, 8,
                                seed);
  }
  // Opens a Populate stream for `id` and sends the header and the first
  // `rows` rows of head 0, then leaves it open.
  struct OpenStream {
    grpc::ClientContext context;
    v1::PopulateResponse response;
    std::unique_ptr<grpc::ClientWriter<v1::PopulateRequest>> writer;
  };
  std::unique_ptr<OpenStream> StartPopulate(int64_t id,
                                            const LayerLayout& layout,
                                            bool replace, int64_t rows) {
    stub_ = v1::EngramStore::NewStub(grpc::CreateChannel(
        server_->address(), grpc::InsecureChannelCredentials()));
    auto s = std::make_unique<OpenStream>();
    s->writer = stub_->Populate(&s->context, &s->response);
    v1::PopulateRequest header;
    header.mutable_header()->set_layer_id(id);
    header.mutable_header()->set_replace(replace);
    LayoutToConfig(layout, header.mutable_header()->mutable_config());
    EXPECT_TRUE(s->writer->Write(header));
    v1::PopulateRequest chunk;
    chunk.mutable_chunk()->set_head(0);
    chunk.mutable_chunk()->set_data(
        std::string(rows * layout.row_bytes(), 'x'));
    EXPECT_TRUE(s->writer->Write(chunk));
    return s;
  }
  int Folders(const std::string& prefix) {
    int n = 0;
    for (const auto& e : fs::directory_iterator(dir_.path()))
      n += e.path().filename().string().rfind(prefix, 0) == 0;
    return n;
  }

  testing::TempDir dir_;
  std::unique_ptr<EngramdProcess> server_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<v1::EngramStore::Stub> stub_;
  std::map<int64_t, std::vector<std::vector<uint8_t>>> tables_;
  std::map<int64_t, LayerLayout> layouts_;
};

TEST_F(DataDirTest, RestartServesTheSameRowsAndVersionsWithoutAnyClient) {
  Start({"--load_root=" + dir_.path()});
  Populate(1, {{1009, 13, 997}, 24, DType::kBFloat16}, 1);
  Populate(2, {{4001}, 64, DType::kFloat32}, 2);
  // Layer 2 replaced: version 2 must come back, not version 1.
  tables_[2] = testing::RandomTables(layouts_[2], 22);
  auto replaced = client_->Replace(2, layouts_[2], testing::Spans(tables_[2]));
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  EXPECT_EQ(replaced->version, 2u);
  // A layer loaded from a checkpoint is stored too.
  fs::create_directories(dir_.path() + "/ckpt");
  auto fp8 = testing::MakeFusedFp8Layer(3, {101, 53}, 32, 4);
  testing::WriteShardedCheckpoint(dir_.path() + "/ckpt", {fp8});
  testing::WriteText(dir_.path() + "/ckpt/m.json",
                     testing::Manifest({testing::ManifestLayer(fp8)}));
  ASSERT_TRUE(client_->Load("ckpt/m.json").ok());
  tables_[3] = fp8.tables;
  layouts_[3] = fp8.layout;
  EXPECT_EQ(Folders("layer-"), 3) << "one folder per layer (v1 of 2 deleted)";

  for (bool kill : {false, true}) {
    Restart(kill);
    for (int64_t id : {1, 2, 3}) {
      for (uint32_t i = 0; i < 3; ++i) {
        absl::Status s = Exact(id, i);
        ASSERT_TRUE(s.ok()) << "layer " << id << ": " << s << server_->Log();
      }
    }
    EXPECT_EQ(client_->DescribeLayer(2)->version, 2u);
    EXPECT_EQ(client_->DescribeLayer(1)->version, 1u);
    EXPECT_THAT(server_->Log(), HasSubstr("layer 2 v2 serves again"));
  }
  // Versions keep counting after a restart.
  tables_[1] = testing::RandomTables(layouts_[1], 11);
  auto again = client_->Replace(1, layouts_[1], testing::Spans(tables_[1]));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->version, 2u);
  ASSERT_TRUE(Exact(1).ok());
}

// Issue 25: a restart with --load and --data_dir logged "--load M: 0
// layers, 0 bytes in checkpoint files; not ready until they are in" (and
// "1 stored layers").
TEST_F(DataDirTest, ARestartWithLoadSaysWhichLayersTheStoredVersionsServe) {
  fs::create_directories(dir_.path() + "/ckpt");
  auto fp8 = testing::MakeFusedFp8Layer(3, {101, 53}, 32, 4);
  testing::WriteShardedCheckpoint(dir_.path() + "/ckpt", {fp8});
  const std::string manifest = dir_.path() + "/ckpt/m.json";
  testing::WriteText(manifest,
                     testing::Manifest({testing::ManifestLayer(fp8)}));
  Start({"--load=" + manifest});
  tables_[3] = fp8.tables;
  layouts_[3] = fp8.layout;
  ASSERT_TRUE(Exact(3).ok());
  Restart();
  ASSERT_TRUE(Exact(3).ok()) << server_->Log();
  const std::string log = server_->Log();
  EXPECT_THAT(log, HasSubstr(": 1 stored layer to serve again"));
  EXPECT_THAT(log, HasSubstr("--load: layer 3 is stored in --data_dir; the "
                             "stored version serves"));
  EXPECT_THAT(log, HasSubstr("--load " + manifest +
                             ": nothing to read, every layer is stored in "
                             "--data_dir"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("0 layers")));
  EXPECT_THAT(log, HasSubstr("start: 1 layer in (--data_dir, --load): 3"));
}

TEST_F(DataDirTest, KillDashNineMidPopulateOrReplaceLeavesTheOldState) {
  Start();
  const LayerLayout layout{{3001, 7}, 16, DType::kFloat32};
  Populate(1, layout, 1);
  auto replace = StartPopulate(1, layout, /*replace=*/true, 1000);
  auto create = StartPopulate(2, layout, /*replace=*/false, 1000);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(Folders(".tmp-"), 2) << "both populates write into hidden folders";
  Restart(/*kill=*/true);
  replace.reset();
  create.reset();
  EXPECT_EQ(Folders(".tmp-"), 0) << "leftovers removed at start";
  EXPECT_THAT(server_->Log(), HasSubstr("an interrupted write or delete"));
  ASSERT_TRUE(Exact(1).ok()) << "the old version of layer 1 serves";
  EXPECT_EQ(client_->DescribeLayer(1)->version, 1u);
  EXPECT_EQ(client_->DescribeLayer(2).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(DataDirTest, DamagedFilesAreRefusedAndTheOthersStillLoad) {
  Start();
  const LayerLayout layout{{2003, 11}, 32, DType::kFloat32};
  for (int64_t id : {1, 2, 3}) Populate(id, layout, static_cast<uint32_t>(id));
  EXPECT_EQ(server_->Stop(), 0);
  {  // one flipped byte in layer 1's data
    std::fstream f(dir_.path() + "/layer-1.v1/head-0.bin",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(5000);
    char c = 0;
    f.read(&c, 1);
    f.seekp(5000);
    c ^= 0x10;
    f.write(&c, 1);
  }
  fs::resize_file(dir_.path() + "/layer-2.v1/head-1.bin", 100);  // truncated
  Launch(server_->flags());
  ASSERT_TRUE(Exact(3).ok());
  for (int64_t id : {1, 2}) {
    EXPECT_EQ(client_->DescribeLayer(id).status().code(),
              absl::StatusCode::kNotFound)
        << id;
  }
  const std::string log = server_->Log();
  EXPECT_THAT(log, HasSubstr("head-0.bin: checksum does not match"));
  EXPECT_THAT(log, HasSubstr("head-1.bin has 100 bytes, not 1408"));
  EXPECT_EQ(Folders(".refused-"), 2) << "kept aside for inspection";
  // The ids are free again.
  Populate(1, layout, 9);
  ASSERT_TRUE(Exact(1).ok());
}

// Folders written before the checksums moved to XXH3 (meta format 1;
// tests/data/data_dir_format1 was written by that engramd) still serve;
// --verify_data_dir checks them with their own checksums and upgrades the
// meta, and a damaged one is refused like any other.
TEST_F(DataDirTest, FolderOfTheOlderFormatServesAndIsUpgradedWhenVerified) {
  const std::string folder = dir_.path() + "/layer-7.v1";
  auto install = [&] {
    fs::remove_all(folder);
    fs::copy(std::string(ENGRAM_TEST_DATA) + "/data_dir_format1/layer-7.v1",
             folder);
    fs::permissions(folder, fs::perms::owner_all);
    for (const auto& e : fs::directory_iterator(folder)) {
      fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write);
    }
  };
  auto format = [&] {
    std::ifstream meta(folder + "/meta", std::ios::binary);
    char bytes[12] = {};
    meta.read(bytes, sizeof bytes);
    return static_cast<int>(bytes[8]);
  };
  // Written as: head h row r element d = h * 1000 + r * 8 + d.
  auto exact = [&] {
    const int64_t ids[] = {3, 5};
    const int64_t shape[] = {1, 1, 2};
    std::vector<float> rows(16);
    absl::Status s = client_->Lookup(
        7, ids, shape,
        {reinterpret_cast<uint8_t*>(rows.data()), rows.size() * 4});
    if (!s.ok()) return s;
    for (int d = 0; d < 8; ++d) {
      if (rows[d] != 24 + d || rows[8 + d] != 1040 + d) {
        return absl::DataLossError(absl::StrCat("element ", d, " differs"));
      }
    }
    return absl::OkStatus();
  };
  install();
  ASSERT_EQ(format(), 1);
  Start({"--verify_data_dir=false"});
  EXPECT_TRUE(exact().ok()) << exact() << server_->Log();
  EXPECT_EQ(format(), 1) << "not verified: left as it is";
  EXPECT_THAT(server_->Log(), HasSubstr("start once with --verify_data_dir"));

  std::vector<std::string> verify = server_->flags();
  for (std::string& flag : verify) {
    if (flag == "--verify_data_dir=false") flag = "--verify_data_dir=true";
  }
  client_.reset();
  EXPECT_EQ(server_->Stop(), 0);
  Launch(verify);
  EXPECT_TRUE(exact().ok()) << exact() << server_->Log();
  EXPECT_EQ(format(), 2);
  EXPECT_THAT(server_->Log(), HasSubstr("upgraded to format 2"));
  Restart();  // verified again, now with XXH3
  EXPECT_TRUE(exact().ok()) << exact() << server_->Log();
  EXPECT_THAT(server_->Log(), Not(HasSubstr("upgraded")));

  // A damaged format-1 folder: refused, its meta not upgraded.
  client_.reset();
  EXPECT_EQ(server_->Stop(), 0);
  install();
  {
    std::fstream f(folder + "/head-1.bin",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x7f');
  }
  Launch(verify);
  EXPECT_EQ(client_->DescribeLayer(7).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(server_->Log(), HasSubstr("head-1.bin: checksum does not match"));
  EXPECT_EQ(Folders(".refused-"), 1);
}

// Issue: the restart scan trusted whatever was in the folder: another
// user's planted version was served and the genuine one deleted as
// superseded, links were followed, and every .tmp-* / .trash-* entry
// (other programs' too) was deleted.
TEST_F(DataDirTest, OnlyThisUsersOwnEntriesAreTrustedAtRestart) {
  Start();
  const LayerLayout layout{{1009, 13}, 16, DType::kFloat32};
  for (int64_t id : {1, 2, 3}) Populate(id, layout, static_cast<uint32_t>(id));
  client_.reset();
  EXPECT_EQ(server_->Stop(), 0);
  testing::TempDir aside;
  const std::string d = dir_.path();
  fs::copy(d + "/layer-1.v1", aside.path() + "/layer-1.v1");
  Launch(server_->flags());
  auto replaced = client_->Replace(
      1, layout, testing::Spans(testing::RandomTables(layout, 77)));
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  client_.reset();
  EXPECT_EQ(server_->Stop(), 0);
  // Layer 1: a "newer" version that another user (nobody) planted, beside
  // the genuine older one.
  fs::copy(aside.path() + "/layer-1.v1", d + "/layer-1.v1");
  ASSERT_EQ(std::system(("chown -R 65534 " + d + "/layer-1.v2").c_str()), 0);
  // Layer 2: its folder a link to a copy elsewhere; layer 3: a head file a
  // link.
  fs::rename(d + "/layer-2.v1", aside.path() + "/layer-2.v1");
  fs::create_directory_symlink(aside.path() + "/layer-2.v1", d + "/layer-2.v1");
  fs::rename(d + "/layer-3.v1/head-0.bin", aside.path() + "/head-0.bin");
  fs::create_symlink(aside.path() + "/head-0.bin",
                     d + "/layer-3.v1/head-0.bin");
  // Leftovers: another program's, and one of engramd's own.
  testing::WriteText(d + "/.tmp-editor-swap", "someone's\n");
  fs::create_directory(d + "/.tmp-layer-99-abc");
  Launch(server_->flags());
  auto one = client_->DescribeLayer(1);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->version, 1u) << "the genuine version serves";
  ASSERT_TRUE(Exact(1).ok());
  EXPECT_TRUE(fs::exists(d + "/layer-1.v1"));
  EXPECT_TRUE(fs::exists(d + "/layer-1.v2")) << "not ours: left alone";
  for (int64_t id : {2, 3}) {
    EXPECT_EQ(client_->DescribeLayer(id).status().code(),
              absl::StatusCode::kNotFound)
        << id;
  }
  EXPECT_TRUE(fs::exists(d + "/.tmp-editor-swap"));
  EXPECT_FALSE(fs::exists(d + "/.tmp-layer-99-abc"));
  const std::string log = server_->Log();
  EXPECT_THAT(log, HasSubstr("owned by uid 65534"));
  EXPECT_THAT(log, HasSubstr("a symbolic link"));
}

TEST(DataDirStartTest, AFolderEveryUserCanWriteIsRefused) {
  testing::TempDir dir;
  ASSERT_EQ(chmod(dir.path().c_str(), 01777), 0);
  std::string out;
  EXPECT_NE(testing::RunCommand("timeout -s KILL 20 " + testing::EngramdPath() +
                                    " --listen=127.0.0.1:0 --metrics_listen= "
                                    "--data_dir=" +
                                    dir.path() + " 2>&1",
                                &out),
            0);
  EXPECT_THAT(out, HasSubstr("writable by every user"));
}

TEST_F(DataDirTest, RemoveDeletesTheFilesAndTheLayerStaysGone) {
  Start();
  Populate(4, {{500}, 8, DType::kFloat32}, 4);
  ASSERT_EQ(Folders("layer-4."), 1);
  ASSERT_TRUE(client_->Remove(4).ok());
  EXPECT_EQ(Folders("layer-4."), 0);
  Restart();
  EXPECT_EQ(client_->DescribeLayer(4).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(DataDirTest, ATableBiggerThanTheMemoryBudgetIsServedFromFiles) {
  Start({"--memory_limit_bytes=8388608", "--metrics_listen=127.0.0.1:0"});
  Populate(5, {{65537, 65521}, 64, DType::kFloat32}, 5);  // 32 MiB
  for (uint32_t i = 0; i < 5; ++i) ASSERT_TRUE(Exact(5, i).ok());
  auto metrics = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(*metrics,
              HasSubstr(absl::StrCat("engram_layer_stored_bytes{layer=\"5\"} ",
                                     layouts_[5].total_bytes())));
  EXPECT_THAT(*metrics, HasSubstr("engram_layer_resident_bytes{layer=\"5\"}"));
  EXPECT_THAT(*metrics,
              HasSubstr("engram_layer_pinned{layer=\"5\",mode=\"none\"} 0"));
  Restart();
  for (uint32_t i = 0; i < 5; ++i) ASSERT_TRUE(Exact(5, 10 + i).ok());
  // Without --data_dir the same table does not fit.
  auto memory_only = EngramdProcess::Start({"--memory_limit_bytes=8388608"});
  ASSERT_TRUE(memory_only.ok());
  auto c = Client::Connect((*memory_only)->address());
  EXPECT_EQ((*c)->Populate(5, layouts_[5], testing::Spans(tables_[5]))
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
}

// Cluster shards keep their own row ranges in their --data_dir (sparse
// files) and serve them again after a restart: with R = 1 a killed shard's
// rows come back from its disk, not from a replica (there is none).
TEST(DataDirClusterTest, ShardsServeTheirStoredRangesAfterRestarts) {
  testing::TempDir base;
  std::vector<std::string> dirs;
  for (int i = 0; i < 3; ++i) {
    dirs.push_back(absl::StrCat(base.path(), "/shard", i));
    fs::create_directories(dirs.back());
  }
  // Shards differ only in --data_dir, so start them one by one.
  std::vector<int> ports;
  std::string peers;
  for (int i = 0; i < 3; ++i) {
    ports.push_back(testing::FreePort());
    peers += absl::StrCat(i ? "," : "", "127.0.0.1:", ports[i]);
  }
  auto flags = [&](int i) {
    return std::vector<std::string>{
        absl::StrCat("--listen=127.0.0.1:", ports[i]),
        "--peers=" + peers,
        absl::StrCat("--shard_index=", i),
        "--replication=1",
        "--peer_read=gather",
        "--data_dir=" + dirs[i]};
  };
  std::vector<std::unique_ptr<EngramdProcess>> shards;
  for (int i = 0; i < 3; ++i) {
    auto p = EngramdProcess::Start(flags(i));
    ASSERT_TRUE(p.ok()) << p.status();
    shards.push_back(*std::move(p));
  }
  for (auto& s : shards)
    ASSERT_TRUE(testing::WaitServing(s->address(), 30).ok()) << s->Log();
  const LayerLayout layout{{20011, 9973, 7}, 32, DType::kFloat32};
  auto tables = testing::RandomTables(layout, 5);
  {
    auto c = Client::Connect(shards[0]->address());
    ASSERT_TRUE(c.ok());
    auto info = (*c)->Populate(1, layout, testing::Spans(tables));
    ASSERT_TRUE(info.ok()) << info.status();
  }
  // Each shard stored only its share (sparse files hold its ranges).
  uint64_t allocated = 0;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(fs::exists(dirs[i] + "/layer-1.v1/meta")) << i;
    struct stat st;
    ASSERT_EQ(::stat((dirs[i] + "/layer-1.v1/head-0.bin").c_str(), &st), 0);
    EXPECT_LT(st.st_blocks * 512, layout.table_bytes(0) * 0.6) << "shard " << i;
    allocated += st.st_blocks * 512;
  }
  EXPECT_GE(allocated, layout.table_bytes(0));  // together: the whole head
  auto check_all = [&](uint32_t seed) {
    for (auto& s : shards) {
      auto c = Client::Connect(s->address());
      ASSERT_TRUE(c.ok());
      absl::Status st =
          testing::LookupExact(**c, 1, layout, tables, 4, 8, seed);
      ASSERT_TRUE(st.ok()) << st << s->Log();
    }
  };
  check_all(1);
  // Kill shard 1 (R = 1: no replica has its rows) and start it again.
  shards[1]->Kill();
  auto back = EngramdProcess::Start(flags(1));
  ASSERT_TRUE(back.ok()) << back.status();
  shards[1] = *std::move(back);
  ASSERT_TRUE(testing::WaitServing(shards[1]->address(), 30).ok())
      << shards[1]->Log();
  EXPECT_THAT(shards[1]->Log(), HasSubstr("layer 1 v1 serves again"));
  check_all(2);
  // A folder stored for another place in the cluster is refused.
  for (auto& s : shards) EXPECT_EQ(s->Stop(), 0);
  fs::rename(dirs[2] + "/layer-1.v1", dirs[0] + "/layer-1.v1.moved");
  fs::remove_all(dirs[0] + "/layer-1.v1");
  fs::rename(dirs[0] + "/layer-1.v1.moved", dirs[0] + "/layer-1.v1");
  auto wrong = EngramdProcess::Start(flags(0));
  ASSERT_TRUE(wrong.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_THAT((*wrong)->Log(), HasSubstr("stored by shard 2 of 3"));
}

}  // namespace
}  // namespace engram
