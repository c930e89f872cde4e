// Loading layers from checkpoint files into real engramd processes:
// engramd --load at start, the Load RPC under --load_root, engramctl load,
// the refusals, and a 3-shard cluster where each shard reads its ranges.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/numbers.h"
#include "client/client.h"
#include "tests/testing/checkpoint_files.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/lookup_check.h"

namespace engram {
namespace {

using testing::EngramdProcess;
using testing::FusedFp8Layer;
using ::testing::HasSubstr;

// Two fused FP8 layers (small prime head sizes) in a two-file checkpoint
// with an index, and a manifest naming both.
class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    layers_ = {testing::MakeFusedFp8Layer(3, {1009, 13, 997}, 32, 4),
               testing::MakeFusedFp8Layer(4, {101, 2003}, 16, 2)};
    testing::WriteShardedCheckpoint(dir_.path(), layers_);
    manifest_ = dir_.path() + "/manifest.json";
    testing::WriteText(manifest_,
                       testing::Manifest({testing::ManifestLayer(layers_[0]),
                                          testing::ManifestLayer(layers_[1])}));
  }
  std::unique_ptr<EngramdProcess> Start(std::vector<std::string> flags) {
    auto p = EngramdProcess::Start(flags);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *std::move(p) : nullptr;
  }
  std::unique_ptr<Client> Connect(const EngramdProcess& p) {
    auto c = Client::Connect(p.address());
    EXPECT_TRUE(c.ok());
    return *std::move(c);
  }
  absl::Status Exact(Client& c, const FusedFp8Layer& l, uint32_t seed) {
    return testing::LookupExact(c, l.id, l.layout, l.tables, 4, 8, seed);
  }

  testing::TempDir dir_;
  std::vector<FusedFp8Layer> layers_;
  std::string manifest_;
};

TEST_F(LoadTest, LoadAtStartServesTheCheckpointsRowsOnceReady) {
  auto server = Start({"--load=" + manifest_});
  ASSERT_NE(server, nullptr);
  auto client = Connect(*server);
  ASSERT_TRUE(testing::WaitServing(server->address(), 30).ok())
      << server->Log();
  for (const FusedFp8Layer& l : layers_) {
    for (uint32_t i = 0; i < 5; ++i) {
      absl::Status s = Exact(*client, l, i);
      ASSERT_TRUE(s.ok()) << s;
    }
    auto d = client->DescribeLayer(l.id);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->layout.embedding_dim, l.layout.embedding_dim);
    EXPECT_EQ(d->layout.dtype, DType::kUInt8);
  }
  EXPECT_THAT(server->Log(),
              HasSubstr(absl::StrCat(
                  "2 layers in (--data_dir, --load): ", layers_[0].id, ", ",
                  layers_[1].id, "; ready")));
}

TEST_F(LoadTest, BadStartManifestStopsEngramdWithTheReason) {
  testing::WriteText(
      dir_.path() + "/bad.json",
      testing::Manifest({absl::StrCat(
          "{\"layer_id\": 3, \"dtype\": \"uint8\", "
          "\"embedding_dim\": 35, \"table_vocab_sizes\": [1009, "
          "13, 997], \"source\": {\"format\": \"safetensors\", "
          "\"index\": \"model.safetensors.index.json\", "
          "\"tensors\": [\"",
          layers_[0].weight, "\", \"", layers_[0].scale, "\"]}}")}));
  auto p = EngramdProcess::Start({"--load=" + dir_.path() + "/bad.json"});
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()),
              HasSubstr("the tensors add up to 36-byte rows"));
}

TEST_F(LoadTest, LoadRequestsReadUnderTheRootOnlyAndRefuseBadInput) {
  auto server = Start({"--load_root=" + dir_.path()});
  ASSERT_NE(server, nullptr);
  auto client = Connect(*server);
  // Something already stored must survive every refusal below.
  const LayerLayout kept{{50, 7}, 8, DType::kFloat32};
  auto kept_tables = testing::RandomTables(kept, 9);
  ASSERT_TRUE(client->Populate(9, kept, testing::Spans(kept_tables)).ok());

  auto outside = client->Load("../../etc/passwd");
  EXPECT_EQ(outside.status().code(), absl::StatusCode::kPermissionDenied)
      << outside.status();
  auto missing = client->Load("nope.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  // One bad layer: nothing of the manifest loads.
  FusedFp8Layer wrong = layers_[1];
  wrong.layout.table_vocab_sizes = {101, 2002};
  testing::WriteText(dir_.path() + "/mixed.json",
                     testing::Manifest({testing::ManifestLayer(layers_[0]),
                                        testing::ManifestLayer(wrong)}));
  auto mixed = client->Load("mixed.json");
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(mixed.status().message()),
              HasSubstr("layer 4: tensor layers.4.engram.embed.weight has "
                        "shape [2104, 16] (F8_E4M3); table_vocab_sizes add up "
                        "to 2103 rows"));
  EXPECT_EQ(client->DescribeLayer(3).status().code(),
            absl::StatusCode::kNotFound);

  auto loaded = client->Load("manifest.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 2u);
  for (const FusedFp8Layer& l : layers_) ASSERT_TRUE(Exact(*client, l, 1).ok());
  // Create-only, like Populate: the loaded layers stay as they are.
  auto again = client->Load("manifest.json");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  for (const FusedFp8Layer& l : layers_) ASSERT_TRUE(Exact(*client, l, 2).ok());
  EXPECT_TRUE(
      testing::LookupExact(*client, 9, kept, kept_tables, 2, 3, 1).ok());

  // engramctl load prints the layers it loaded.
  ASSERT_TRUE(client->Remove(4).ok());
  testing::WriteText(dir_.path() + "/four.json",
                     testing::Manifest({testing::ManifestLayer(layers_[1])}));
  std::string out;
  EXPECT_EQ(testing::RunCommand(testing::EngramctlPath() + " --address=" +
                                    server->address() + " load four.json",
                                &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("layer 4"));
  ASSERT_TRUE(Exact(*client, layers_[1], 3).ok());
}

TEST_F(LoadTest, WithoutALoadRootLoadRequestsAreRefused) {
  auto server = Start({});
  ASSERT_NE(server, nullptr);
  auto client = Connect(*server);
  auto s = client->Load(manifest_);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("--load_root"));
  EXPECT_TRUE(client->CheckHealth().ok());
}

// Every shard of a cluster loads only the rows it owns; lookups through any
// shard are exact.
TEST_F(LoadTest, ClusterShardsLoadOnlyTheirRanges) {
  auto shards = testing::StartCluster(
      3, 1, {"--load=" + manifest_, "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(shards.ok()) << shards.status();
  uint64_t total = 0, loaded = 0;
  for (const FusedFp8Layer& l : layers_) total += l.layout.total_bytes();
  for (auto& shard : *shards) {
    ASSERT_TRUE(testing::WaitServing(shard->address(), 30).ok())
        << shard->Log();
    auto metrics = testing::HttpGet(shard->metrics_port(), "/metrics");
    ASSERT_TRUE(metrics.ok());
    const std::string key = "\nengram_load_bytes ";
    const size_t at = metrics->find(key);
    ASSERT_NE(at, std::string::npos);
    const double bytes = std::stod(metrics->substr(at + key.size()));
    EXPECT_GT(bytes, 0);
    EXPECT_LT(bytes, total * 0.6) << "a shard read more than its share";
    loaded += static_cast<uint64_t>(bytes);
  }
  EXPECT_EQ(loaded, total);  // R = 1: every row read exactly once
  for (auto& shard : *shards) {
    auto c = Connect(*shard);
    for (const FusedFp8Layer& l : layers_)
      ASSERT_TRUE(Exact(*c, l, 7).ok()) << shard->Log();
  }
  for (auto& shard : *shards) EXPECT_EQ(shard->Stop(), 0);
}

// A Load request to any shard loads the whole cluster: every shard reads
// its own ranges from the files, and the layer commits everywhere or
// nowhere.
TEST_F(LoadTest, ALoadRequestToOneShardLoadsTheWholeCluster) {
  auto shards = testing::StartCluster(
      3, 2, {"--load_root=" + dir_.path(), "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(shards.ok()) << shards.status();
  std::vector<std::unique_ptr<Client>> clients;
  for (auto& shard : *shards) clients.push_back(Connect(*shard));
  // A manifest with one bad layer: refused, nothing anywhere.
  FusedFp8Layer wrong = layers_[1];
  wrong.layout.embedding_dim = 19;
  testing::WriteText(dir_.path() + "/mixed.json",
                     testing::Manifest({testing::ManifestLayer(layers_[0]),
                                        testing::ManifestLayer(wrong)}));
  auto mixed = clients[1]->Load("mixed.json");
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument)
      << mixed.status();
  for (auto& c : clients) EXPECT_TRUE(c->ListLayers()->empty());

  auto loaded = clients[1]->Load("manifest.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 2u);
  uint64_t total = 0, read = 0;
  for (const FusedFp8Layer& l : layers_) total += l.layout.total_bytes();
  for (size_t i = 0; i < shards->size(); ++i) {
    for (const FusedFp8Layer& l : layers_) {
      absl::Status s = Exact(*clients[i], l, 3);
      ASSERT_TRUE(s.ok()) << "through shard " << i << ": " << s;
    }
    auto metrics = testing::HttpGet((*shards)[i]->metrics_port(), "/metrics");
    ASSERT_TRUE(metrics.ok());
    const std::string key = "\nengram_load_bytes ";
    const size_t at = metrics->find(key);
    ASSERT_NE(at, std::string::npos);
    const double bytes = std::stod(metrics->substr(at + key.size()));
    EXPECT_LT(bytes, total * 0.8)
        << "shard " << i << " read more than its share";
    read += static_cast<uint64_t>(bytes);
  }
  EXPECT_EQ(read, 2 * total);  // R = 2: every row read on two shards
  EXPECT_EQ(clients[2]->Load("manifest.json").status().code(),
            absl::StatusCode::kAlreadyExists);
  // Replace: a new version on every shard.
  std::string entry = testing::ManifestLayer(layers_[0]);
  entry.insert(entry.find("\"source\""), "\"replace\": true, ");
  testing::WriteText(dir_.path() + "/replace.json", testing::Manifest({entry}));
  ASSERT_TRUE(clients[0]->Load("replace.json").ok());
  for (auto& c : clients) {
    EXPECT_EQ(c->DescribeLayer(layers_[0].id)->version, 2u);
    ASSERT_TRUE(Exact(*c, layers_[0], 4).ok());
  }
  clients.clear();  // open connections hold a shutdown for ~5 s
  for (auto& shard : *shards) EXPECT_EQ(shard->Stop(), 0);
}

}  // namespace
}  // namespace engram
