// Load manifests and checkpoint readers on real files written by the test.
#include "checkpoint/layer_reader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "checkpoint/json.h"
#include "checkpoint/manifest.h"
#include "checkpoint/npy.h"
#include "checkpoint/safetensors.h"
#include "tests/testing/checkpoint_files.h"

namespace engram::checkpoint {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

// Reads every row of every head through `reader`.
std::vector<std::vector<uint8_t>> ReadAll(const LayerReader& reader) {
  std::vector<std::vector<uint8_t>> tables;
  const LayerLayout& l = reader.layout();
  for (int h = 0; h < l.num_heads(); ++h) {
    std::vector<uint8_t> t(l.table_bytes(h));
    // Two uneven pieces, so offsets inside a head are exercised.
    const int64_t half = l.table_vocab_sizes[h] / 2 + 1;
    EXPECT_TRUE(reader.ReadRows(h, 0, half, t.data()).ok());
    if (half < l.table_vocab_sizes[h]) {
      EXPECT_TRUE(reader
                      .ReadRows(h, half, l.table_vocab_sizes[h] - half,
                                t.data() + half * l.row_bytes())
                      .ok());
    }
    tables.push_back(std::move(t));
  }
  return tables;
}

absl::StatusOr<std::unique_ptr<LayerReader>> OpenOne(const std::string& json,
                                                     const std::string& dir) {
  auto m = ParseLoadManifest(json, dir, "");
  if (!m.ok()) return m.status();
  return LayerReader::Open(m->layers[0], "");
}

TEST(JsonTest, ParsesValuesAndNamesWhereItBreaks) {
  auto v = ParseJson(
      R"({"a": [1, -2.5e3, "x\u00e9\n", true, null], "big": 9007199254740993,
          "top": 9223372036854775807, "over": 9223372036854775808})",
      "t");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ((*v)["a"][2], "x\xc3\xa9\n");
  EXPECT_EQ(*JsonInt64(*JsonMember(*v, "big")), 9007199254740993);  // past 2^53
  EXPECT_EQ(*JsonInt64(*JsonMember(*v, "top")), INT64_MAX);
  EXPECT_THAT(JsonInt64(*JsonMember(*v, "over")).status().message(),
              HasSubstr("9223372036854775808 is not an integer in int64"));
  EXPECT_EQ(JsonInt64((*v)["a"][1]).status().message(),
            "-2500.0 is not an integer");
  EXPECT_EQ(JsonInt64((*v)["a"][2]).status().message(),
            "a string is not an integer");
  EXPECT_EQ(JsonMember(*v, "missing"), nullptr);
  EXPECT_EQ(JsonMember((*v)["a"], "a"), nullptr);  // not an object
  auto bad = ParseJson("{\n  \"a\": [1,]\n}", "m.json");
  EXPECT_THAT(bad.status().message(),
              HasSubstr("m.json: invalid JSON at line 2"));
  EXPECT_FALSE(ParseJson("{\"a\": 1} // comment", "t").ok());
}

// nlohmann-json keeps the last of repeated keys and nests without limit;
// ParseJson refuses both, at any depth.
TEST(JsonTest, RepeatedKeysAndDeepNestingAreRefused) {
  EXPECT_THAT(ParseJson(R"({"a": 1, "a": 2})", "t").status().message(),
              HasSubstr("the key \"a\" appears twice"));
  EXPECT_THAT(ParseJson(R"({"x": [{"b": {}, "c": 1, "b": 3}], "b": 0})", "t")
                  .status()
                  .message(),
              HasSubstr("the key \"b\" appears twice"));
  EXPECT_TRUE(
      ParseJson(R"({"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]})", "t")
          .ok());
  EXPECT_THAT(ParseJson(std::string(100, '['), "t").status().message(),
              HasSubstr("nesting deeper than 64"));
  EXPECT_TRUE(ParseJson(std::string(60, '[') + std::string(60, ']'), "t").ok());
}

TEST(LayerReaderTest, FusedFp8WeightAndScaleBecomeOneRowAcrossShardFiles) {
  TempDir dir;
  auto a = testing::MakeFusedFp8Layer(3, {7, 11, 13}, 16, 2);
  auto b = testing::MakeFusedFp8Layer(4, {5, 3}, 8, 1);
  testing::WriteShardedCheckpoint(dir.path(), {a, b});
  for (const auto* l : {&a, &b}) {
    auto reader =
        OpenOne(testing::Manifest({testing::ManifestLayer(*l)}), dir.path());
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ(ReadAll(**reader), l->tables);
    EXPECT_EQ((*reader)->source_bytes(),
              l->weight_bytes.size() + l->scale_bytes.size());
  }
  // The same layer named by files instead of the index.
  std::string by_files = testing::ManifestLayer(a);
  by_files.replace(
      by_files.find("\"index\": \"model.safetensors.index.json\""),
      std::string("\"index\": \"model.safetensors.index.json\"").size(),
      "\"files\": [\"model-00001-of-00002.safetensors\", "
      "\"model-00002-of-00002.safetensors\"]");
  auto reader = OpenOne(testing::Manifest({by_files}), dir.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(ReadAll(**reader), a.tables);
}

TEST(LayerReaderTest, Float32SourcesLoadAsBFloat16RoundedToNearestEven) {
  TempDir dir;
  const std::vector<float> values = {1.0f,
                                     1.00390625f /* tie: to even */,
                                     1.01171875f /* tie: up */,
                                     -3.5f,
                                     65504.0f,
                                     1e-3f};
  std::string bytes(reinterpret_cast<const char*>(values.data()),
                    values.size() * 4);
  ASSERT_TRUE(WriteSafetensors(dir.path() + "/t.safetensors",
                               {{"emb", {"F32", {3, 2}, 0, 0}}},
                               {{"emb", bytes}})
                  .ok());
  auto reader = OpenOne(
      R"({"layers": [{"layer_id": 1, "dtype": "bfloat16", "embedding_dim": 2,
          "table_vocab_sizes": [2, 1], "source": {"format": "safetensors",
          "files": ["t.safetensors"], "tensors": ["emb"]}}]})",
      dir.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto tables = ReadAll(**reader);
  std::vector<uint16_t> want;
  for (float f : values) want.push_back(FloatToBFloat16(f));
  EXPECT_EQ(want[1], 0x3f80);  // 1 + 2^-8 rounds down to even
  EXPECT_EQ(want[2], 0x3f82);  // 1 + 3 * 2^-8 rounds up to even
  std::vector<uint8_t> got = tables[0];
  got.insert(got.end(), tables[1].begin(), tables[1].end());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), 12), 0);
}

TEST(LayerReaderTest, NpyFilesOnePerHead) {
  TempDir dir;
  std::vector<float> h0 = {1, 2, 3, 4, 5, 6}, h1 = {7, 8};
  ASSERT_TRUE(
      WriteNpy(dir.path() + "/h0.npy", "<f4", {3, 2}, h0.data(), 24).ok());
  ASSERT_TRUE(
      WriteNpy(dir.path() + "/h1.npy", "<f4", {1, 2}, h1.data(), 8).ok());
  const std::string manifest =
      R"({"layers": [{"layer_id": 2, "dtype": "float32", "embedding_dim": 2,
          "table_vocab_sizes": [3, 1], "source": {"format": "npy",
          "files": ["h0.npy", "h1.npy"]}}]})";
  auto reader = OpenOne(manifest, dir.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto tables = ReadAll(**reader);
  EXPECT_EQ(std::memcmp(tables[0].data(), h0.data(), 24), 0);
  EXPECT_EQ(std::memcmp(tables[1].data(), h1.data(), 8), 0);
  // A head file with the wrong row count names the head and both numbers.
  ASSERT_TRUE(
      WriteNpy(dir.path() + "/h1.npy", "<f4", {2, 1}, h1.data(), 8).ok());
  auto bad = OpenOne(manifest, dir.path());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(),
              HasSubstr("layer 2: head 1 (" + dir.path() +
                        "/h1.npy) has shape [2, 1]; head 1 needs [1, D]"));
}

// Every refusal names the layer, the tensor or file, and the numbers.
TEST(LayerReaderTest, MismatchesAreRefusedWithTheNumbers) {
  TempDir dir;
  auto l = testing::MakeFusedFp8Layer(5, {7, 11}, 16, 2);
  testing::WriteShardedCheckpoint(dir.path(), {l});
  auto refuse = [&](std::string entry) {
    auto r = OpenOne(testing::Manifest({entry}), dir.path());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
        << r.status();
    return std::string(r.status().message());
  };
  std::string entry = testing::ManifestLayer(l);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string e = entry;
    e.replace(e.find(from), from.size(), to);
    return e;
  };
  // A wrong name lists the names there most like it (a typo shows its fix).
  const std::string missing =
      refuse(with(".engram.embed.scale", ".engram.embed.bias"));
  EXPECT_THAT(
      missing,
      HasSubstr("layer 5: tensor layers.5.engram.embed.bias is not in"));
  EXPECT_THAT(missing, HasSubstr("; tensors there like it: "
                                 "layers.5.engram.embed.scale, "
                                 "layers.5.engram.embed.weight"));
  EXPECT_THAT(refuse(with("[7, 11]", "[7, 12]")),
              HasSubstr("layer 5: tensor layers.5.engram.embed.weight has "
                        "shape [18, 16] (F8_E4M3); table_vocab_sizes add up "
                        "to 19 rows"));
  EXPECT_THAT(refuse(with("\"embedding_dim\": 18", "\"embedding_dim\": 17")),
              HasSubstr("layer 5: the tensors add up to 18-byte rows "
                        "(layers.5.engram.embed.weight 16 + "
                        "layers.5.engram.embed.scale 2); the layer's rows "
                        "are 17 bytes"));
  EXPECT_THAT(refuse(with("\"dtype\": \"uint8\", \"embedding_dim\": 18",
                          "\"dtype\": \"bfloat16\", \"embedding_dim\": 9")),
              HasSubstr("holds F8_E4M3 elements; a bfloat16 layer takes"));
  // A file shorter than its header says.
  const std::string shard = dir.path() + "/model-00002-of-00002.safetensors";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 3);
  EXPECT_THAT(refuse(entry), HasSubstr("(truncated?)"));
}

TEST(ManifestTest, AQuantMemberDeclaresQuantizedRows) {
  TempDir dir;
  testing::WriteText(dir.path() + "/a.npy", "x");
  auto parse = [&](const std::string& quant, const std::string& dim = "264") {
    return ParseLoadManifest(
        absl::StrCat(R"({"layers": [{"layer_id": 4, "dtype": "uint8",
                     "embedding_dim": )",
                     dim, R"(, "table_vocab_sizes": [3], "quant": )", quant,
                     R"(, "source": {"format": "npy", "files": ["a.npy"]}}]})"),
        dir.path(), dir.path());
  };
  auto good = parse(R"({"format": "fp8_e4m3", "scale": "ue8m0", "block": 32})");
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->layers[0].layout.quant,
            (Quant{QuantFormat::kFp8E4M3Ue8m0, 32}));
  auto refused = [&](const std::string& quant, const std::string& dim = "264") {
    auto m = parse(quant, dim);
    EXPECT_FALSE(m.ok()) << quant;
    return std::string(m.status().message());
  };
  EXPECT_THAT(refused("32"), HasSubstr("\"quant\" must be {"));
  EXPECT_THAT(refused(R"({"format": "fp8_e4m3", "scale": "ue8m0"})"),
              HasSubstr("\"quant\" must be {"));
  EXPECT_THAT(refused(R"({"format": "fp8_e4m3", "scale": "ue8m0", "block": 32,
                  "zero_point": 0})"),
              HasSubstr("quant has an unknown member \"zero_point\""));
  EXPECT_THAT(refused(R"({"format": "fp8_e5m2", "scale": "ue8m0",
                          "block": 32})"),
              HasSubstr("layer 4: quantization format \"fp8_e5m2\""));
  EXPECT_THAT(refused(R"({"format": "fp8_e4m3", "scale": "ue8m0",
                          "block": 1.5})"),
              HasSubstr("quant.block"));
  EXPECT_THAT(refused(R"({"format": "fp8_e4m3", "scale": "ue8m0",
                          "block": 32})",
                      "256"),
              HasSubstr("a multiple of 33"));
}

TEST(ManifestTest, AModelSectionNamesTheHashFiles) {
  TempDir dir;
  testing::WriteText(dir.path() + "/a.npy", "x");
  testing::WriteText(dir.path() + "/config.json", "{}");
  testing::WriteText(dir.path() + "/map.npy", "x");
  auto parse = [&](const std::string& model) {
    return ParseLoadManifest(
        absl::StrCat(
            R"({"layers": [{"layer_id": 4, "dtype": "uint8", "embedding_dim": 2,
                     "table_vocab_sizes": [3],
                     "source": {"format": "npy", "files": ["a.npy"]}}],
                     "model": )",
            model, "}"),
        dir.path(), dir.path());
  };
  auto good = parse(R"({"config": "config.json", "token_map": "map.npy",
                        "engram_layers": {"14": 4}})");
  ASSERT_TRUE(good.ok()) << good.status();
  ASSERT_TRUE(good->model.has_value());
  EXPECT_EQ(good->model->config, dir.path() + "/config.json");
  EXPECT_EQ(good->model->token_map, dir.path() + "/map.npy");
  EXPECT_EQ(good->model->engram_layers, (std::map<int64_t, int64_t>{{14, 4}}));
  auto refused = [&](const std::string& model) {
    auto m = parse(model);
    EXPECT_FALSE(m.ok()) << model;
    return std::string(m.status().message());
  };
  EXPECT_THAT(refused(R"({"config": "config.json"})"),
              HasSubstr("model: needs config (config.json) and token_map"));
  EXPECT_THAT(refused(R"({"config": "config.json", "token_map": "map.npy",
                          "tokenizer": "t.json"})"),
              HasSubstr("model: unknown member \"tokenizer\""));
  EXPECT_THAT(refused(R"({"config": "config.json", "token_map": "map.npy",
                          "engram_layers": {"14": 5}})"),
              HasSubstr("maps Engram layer 14 to layer 5, which the manifest "
                        "does not list"));
  EXPECT_THAT(
      refused(R"({"config": "../config.json", "token_map": "map.npy"})"),
      HasSubstr("outside"));
  EXPECT_FALSE(
      parse(R"({"config": "missing.json", "token_map": "map.npy"})").ok());
}

TEST(ManifestTest, RefusesMalformedEntriesAndPathsOutsideTheRoot) {
  TempDir dir;
  auto bad = [&](const std::string& json, const std::string& root = "") {
    auto m = ParseLoadManifest(json, dir.path(), root);
    EXPECT_FALSE(m.ok());
    return m.status();
  };
  EXPECT_THAT(bad(R"({"layer": []})").message(),
              HasSubstr("non-empty \"layers\" list"));
  const std::string good_source =
      R"("source": {"format": "npy", "files": ["a.npy"]})";
  testing::WriteText(dir.path() + "/a.npy", "x");
  EXPECT_TRUE(
      ParseLoadManifest(
          absl::StrCat(R"({"layers": [{"layer_id": 1, "dtype": "float32",
                      "embedding_dim": 4, "table_vocab_sizes": [3], )",
                       good_source, "}]}"),
          dir.path(), dir.path())
          .ok());
  EXPECT_THAT(
      bad(absl::StrCat(R"({"layers": [{"layer_id": 1, "dtype": "float32",
                      "embedding_dim": 4, "table_vocab_sizes": [3],
                      "replcae": true, )",
                       good_source, "}]}"))
          .message(),
      HasSubstr("layer 1: has an unknown member \"replcae\""));
  EXPECT_THAT(bad(absl::StrCat(R"({"layers": [{"layer_id": 1, "dtype": "fp8",
                      "embedding_dim": 4, "table_vocab_sizes": [3], )",
                               good_source, "}]}"))
                  .message(),
              HasSubstr("dtype \"fp8\" is not one of"));
  EXPECT_THAT(bad(R"({"layers": [{"layer_id": 1, "dtype": "float32",
                      "embedding_dim": 4, "table_vocab_sizes": [3, 4],
                      "source": {"format": "npy", "files": ["a.npy"]}}]})")
                  .message(),
              HasSubstr("one file per head: 2 heads, 1 files"));
  // Paths outside the root: by "..", absolute, or through a symbolic link.
  TempDir outside;
  testing::WriteText(outside.path() + "/x.npy", "x");
  for (const std::string& path :
       {std::string("../") + outside.path().substr(5) + "/x.npy",
        outside.path() + "/x.npy"}) {
    absl::Status s = bad(
        absl::StrCat(
            R"({"layers": [{"layer_id": 1, "dtype": "float32", "embedding_dim": 4,
            "table_vocab_sizes": [3], "source": {"format": "npy", "files": [")",
            path, "\"]}}]}"),
        dir.path());
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  }
  std::filesystem::create_symlink(outside.path() + "/x.npy",
                                  dir.path() + "/link.npy");
  absl::Status s = bad(
      R"({"layers": [{"layer_id": 1, "dtype": "float32", "embedding_dim": 4,
          "table_vocab_sizes": [3], "source": {"format": "npy",
          "files": ["link.npy"]}}]})",
      dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("symbolic link"));
}

}  // namespace
}  // namespace engram::checkpoint
