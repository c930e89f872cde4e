// Replacing a layer while it serves (issue 11, part 3): every lookup sees
// the old version or the new one entirely, a failed replace leaves the old
// version serving, and versions count.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "client/client.h"
#include "engram/v1/engram.grpc.pb.h"
#include "proto/convert.h"
#include "tests/testing/checkpoint_files.h"
#include "tests/testing/cluster_fixture.h"
#include "tests/testing/engramd_process.h"

namespace engram {
namespace {

using testing::EngramdProcess;

// Which of `versions` a lookup's rows are entirely: its index, or -1 for
// a mix (or none).
int WhichVersion(Client& c, int64_t id, const LayerLayout& layout,
                 const std::vector<std::vector<std::vector<uint8_t>>>& versions,
                 uint32_t seed, absl::Status* status) {
  std::vector<int64_t> ids = testing::RandomIds(layout, 8, 16, seed);
  std::vector<uint8_t> got(ids.size() * layout.row_bytes());
  const int64_t shape[] = {8, 16, layout.num_heads()};
  *status = c.Lookup(id, ids, shape, got);
  if (!status->ok()) return -1;
  for (size_t v = 0; v < versions.size(); ++v) {
    if (got ==
        testing::ReferenceGather(layout, versions[v], ids, layout.dtype)) {
      return static_cast<int>(v);
    }
  }
  return -1;
}

class ReplaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto p = EngramdProcess::Start({});
    ASSERT_TRUE(p.ok()) << p.status();
    server_ = *std::move(p);
    auto c = Client::Connect(server_->address());
    ASSERT_TRUE(c.ok());
    client_ = *std::move(c);
    for (uint32_t v = 0; v < 3; ++v)
      versions_.push_back(testing::RandomTables(layout_, 100 + v));
    auto info = client_->Populate(1, layout_, testing::Spans(versions_[0]));
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->version, 1u);
  }

  const LayerLayout layout_{{20011, 7, 9973}, 64, DType::kFloat32};  // ~7.7 MB
  std::unique_ptr<EngramdProcess> server_;
  std::unique_ptr<Client> client_;
  std::vector<std::vector<std::vector<uint8_t>>> versions_;
};

TEST_F(ReplaceTest, LookupsSeeOneWholeVersionWhileReplacesCommit) {
  std::atomic<int> seen[3] = {0, 0, 0};
  testing::BackgroundReader reader([&](uint32_t i) -> absl::Status {
    absl::Status s;
    const int v = WhichVersion(*client_, 1, layout_, versions_, i, &s);
    if (!s.ok()) return s;
    if (v < 0) return absl::DataLossError("a lookup mixed versions");
    ++seen[v];
    return absl::OkStatus();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (int v : {1, 2, 1, 2}) {
    auto info = client_->Replace(1, layout_, testing::Spans(versions_[v]));
    ASSERT_TRUE(info.ok()) << info.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
  }
  reader.Stop();
  EXPECT_EQ(reader.failed(), 0) << reader.first_error();
  EXPECT_GT(seen[0] + seen[1] + seen[2], 20);
  EXPECT_GT(seen[2].load(), 0);
  auto d = client_->DescribeLayer(1);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->version, 5u);
  // Without replace a populate of the id is still refused.
  EXPECT_EQ(client_->Populate(1, layout_, testing::Spans(versions_[0]))
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(ReplaceTest, AFailedReplaceLeavesTheOldVersionServing) {
  auto stub = v1::EngramStore::NewStub(grpc::CreateChannel(
      server_->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::PopulateResponse response;
  auto writer = stub->Populate(&context, &response);
  v1::PopulateRequest header;
  header.mutable_header()->set_layer_id(1);
  header.mutable_header()->set_replace(true);
  LayoutToConfig(layout_, header.mutable_header()->mutable_config());
  ASSERT_TRUE(writer->Write(header));
  v1::PopulateRequest chunk;  // head 0's first 10 rows only
  chunk.mutable_chunk()->set_head(0);
  chunk.mutable_chunk()->set_data(versions_[1][0].data(),
                                  10 * layout_.row_bytes());
  ASSERT_TRUE(writer->Write(chunk));
  writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  for (uint32_t i = 0; i < 5; ++i) {
    absl::Status s;
    EXPECT_EQ(WhichVersion(*client_, 1, layout_, versions_, i, &s), 0) << s;
  }
  EXPECT_EQ(client_->DescribeLayer(1)->version, 1u);
}

TEST_F(ReplaceTest, ManifestReplaceSwapsInTheCheckpointsLayer) {
  testing::TempDir dir;
  auto l = testing::MakeFusedFp8Layer(2, {101, 53}, 16, 2);
  testing::WriteShardedCheckpoint(dir.path(), {l});
  std::string entry = testing::ManifestLayer(l);
  testing::WriteText(dir.path() + "/m.json", testing::Manifest({entry}));
  entry.insert(entry.find("\"source\""), "\"replace\": true, ");
  testing::WriteText(dir.path() + "/r.json", testing::Manifest({entry}));
  client_.reset();  // an open connection holds a shutdown for ~5 s
  server_.reset();
  auto p = EngramdProcess::Start({"--load_root=" + dir.path()});
  ASSERT_TRUE(p.ok()) << p.status();
  server_ = *std::move(p);
  auto c = Client::Connect(server_->address());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Load("m.json").ok());
  EXPECT_EQ((*c)->Load("m.json").status().code(),
            absl::StatusCode::kAlreadyExists);
  auto replaced = (*c)->Load("r.json");
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  EXPECT_EQ((*replaced)[0].version, 2u);
  EXPECT_TRUE(testing::LookupExact(**c, 2, l.layout, l.tables, 2, 4, 1).ok());
}

}  // namespace
}  // namespace engram
