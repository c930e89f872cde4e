// Checkpoint files written by tests: fused FP8 Engram layers (weight +
// scale tensors, as recent DeepSeek checkpoints ship them) in sharded
// safetensors files with an index, and load manifests naming them.
#ifndef ENGRAM_TESTS_TESTING_CHECKPOINT_FILES_H_
#define ENGRAM_TESTS_TESTING_CHECKPOINT_FILES_H_

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/safetensors.h"
#include "common/layout.h"

namespace engram::testing {

// One layer as a checkpoint holds it: a fused [sum N_h, W] F8_E4M3 weight
// and a [sum N_h, S] F8_E8M0 scale; served as uint8 rows of W + S bytes.
// `tables` are the rows the server must answer with, per head.
struct FusedFp8Layer {
  int64_t id = 0;
  LayerLayout layout;
  std::string weight, scale;              // tensor names
  std::string weight_bytes, scale_bytes;  // tensor data
  std::vector<std::vector<uint8_t>> tables;
};

inline FusedFp8Layer MakeFusedFp8Layer(int64_t id, std::vector<int64_t> vocab,
                                       int weight_cols, int scale_cols) {
  FusedFp8Layer l;
  l.id = id;
  l.layout = {vocab, weight_cols + scale_cols, DType::kUInt8};
  l.weight = absl::StrCat("layers.", id, ".engram.embed.weight");
  l.scale = absl::StrCat("layers.", id, ".engram.embed.scale");
  std::mt19937 rng(static_cast<uint32_t>(id) * 7919u + 1);
  for (int64_t n : vocab) {
    std::vector<uint8_t> table;
    for (int64_t r = 0; r < n; ++r) {
      std::string w(weight_cols, '\0'), s(scale_cols, '\0');
      for (char& c : w) c = static_cast<char>(rng());
      for (char& c : s) c = static_cast<char>(rng());
      l.weight_bytes += w;
      l.scale_bytes += s;
      table.insert(table.end(), w.begin(), w.end());
      table.insert(table.end(), s.begin(), s.end());
    }
    l.tables.push_back(std::move(table));
  }
  return l;
}

inline int64_t TotalRows(const LayerLayout& layout) {
  int64_t n = 0;
  for (int64_t v : layout.table_vocab_sizes) n += v;
  return n;
}

// Writes `layers` into `dir` as model-0000{1,2}-of-00002.safetensors (a
// layer's weight in one file, its scale in the other, so every layer spans
// both) and model.safetensors.index.json.
inline void WriteShardedCheckpoint(const std::string& dir,
                                   const std::vector<FusedFp8Layer>& layers) {
  using checkpoint::SafetensorInfo;
  std::vector<std::pair<std::string, SafetensorInfo>> t[2];
  std::map<std::string, std::string> data[2];
  std::vector<std::string> map_entries;
  const std::string files[2] = {"model-00001-of-00002.safetensors",
                                "model-00002-of-00002.safetensors"};
  for (size_t i = 0; i < layers.size(); ++i) {
    const FusedFp8Layer& l = layers[i];
    const int64_t rows = TotalRows(l.layout);
    const int w = static_cast<int>(i % 2), s = 1 - w;
    const int64_t weight_cols =
        static_cast<int64_t>(l.weight_bytes.size()) / rows;
    t[w].push_back({l.weight, {"F8_E4M3", {rows, weight_cols}, 0, 0}});
    data[w][l.weight] = l.weight_bytes;
    t[s].push_back({l.scale,
                    {"F8_E8M0",
                     {rows, static_cast<int64_t>(l.scale_bytes.size()) / rows},
                     0,
                     0}});
    data[s][l.scale] = l.scale_bytes;
    map_entries.push_back(
        absl::StrCat("\"", l.weight, "\": \"", files[w], "\""));
    map_entries.push_back(
        absl::StrCat("\"", l.scale, "\": \"", files[s], "\""));
  }
  for (int f = 0; f < 2; ++f) {
    (void)checkpoint::WriteSafetensors(dir + "/" + files[f], t[f], data[f]);
  }
  std::ofstream(dir + "/model.safetensors.index.json")
      << "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {"
      << absl::StrJoin(map_entries, ", ") << "}}";
}

// The manifest entry that loads `l` from the index in the same folder.
inline std::string ManifestLayer(
    const FusedFp8Layer& l,
    const std::string& index = "model.safetensors.index.json") {
  return absl::StrCat(
      "{\"layer_id\": ", l.id,
      ", \"dtype\": \"uint8\", \"embedding_dim\": ", l.layout.embedding_dim,
      ", \"table_vocab_sizes\": [",
      absl::StrJoin(l.layout.table_vocab_sizes, ", "),
      "], \"source\": {\"format\": \"safetensors\", \"index\": \"", index,
      "\", \"tensors\": [\"", l.weight, "\", \"", l.scale, "\"]}}");
}

inline std::string Manifest(const std::vector<std::string>& layer_entries) {
  return absl::StrCat("{\"layers\": [", absl::StrJoin(layer_entries, ", "),
                      "]}");
}

inline void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// Writes `dir`/`name`.safetensors (one float32 tensor "t" of [rows, 32],
// every byte 1: big and quick to make) and `dir`/`name`.json, a manifest
// loading it as layer `layer_id`. For loads that take a while.
inline void WriteBigLayer(const std::string& dir, const std::string& name,
                          int64_t layer_id, int64_t rows) {
  const std::string header =
      absl::StrCat("{\"t\": {\"dtype\": \"F32\", \"shape\": [", rows,
                   ", 32], \"data_offsets\": [0, ", rows * 128, "]}}");
  std::string bytes(8, '\0');
  const uint64_t len = header.size();
  std::memcpy(bytes.data(), &len, 8);
  bytes += header;
  bytes.resize(bytes.size() + rows * 128, '\1');
  WriteText(absl::StrCat(dir, "/", name, ".safetensors"), bytes);
  WriteText(absl::StrCat(dir, "/", name, ".json"),
            absl::StrCat("{\"layers\": [{\"layer_id\": ", layer_id,
                         ", \"dtype\": \"float32\", \"embedding_dim\": 32, "
                         "\"table_vocab_sizes\": [",
                         rows,
                         "], \"source\": {\"format\": \"safetensors\", "
                         "\"files\": [\"",
                         name, ".safetensors\"], \"tensors\": [\"t\"]}}]}"));
}

// A fresh folder under /tmp, removed with the object.
class TempDir {
 public:
  TempDir() {
    char t[] = "/tmp/engram_ckpt_XXXXXX";
    path_ = mkdtemp(t);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace engram::testing

#endif  // ENGRAM_TESTS_TESTING_CHECKPOINT_FILES_H_
