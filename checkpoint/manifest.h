// Load manifests: which layers to load from which checkpoint files
// (docs/tables.md has the format).
#ifndef ENGRAM_CHECKPOINT_MANIFEST_H_
#define ENGRAM_CHECKPOINT_MANIFEST_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/layout.h"

namespace engram::checkpoint {

// Where a layer's rows are, as the manifest names them; paths resolved.
struct LayerSource {
  enum class Format { kSafetensors, kNpy };
  Format format = Format::kSafetensors;
  // safetensors: the files to search for `tensors` (empty with `index`);
  // npy: one [N_h, D] file per head, in head order.
  std::vector<std::string> files;
  std::string index;  // safetensors: a model.safetensors.index.json
  // safetensors: fused [sum N_h, d_i] tables; row r of the layer is row r
  // of each, concatenated in this order.
  std::vector<std::string> tensors;
};

// One layer of a manifest. A plain value type.
struct LayerSpec {
  int64_t layer_id = 0;
  LayerLayout layout;
  bool replace = false;  // build beside an existing layer and swap at commit
  LayerSource source;
};

// The model a manifest's layers come from, for token lookups: its
// config.json and token map (paths resolved) and which served layer holds
// which Engram layer of the model.
struct ModelSpec {
  std::string config;
  std::string token_map;
  // Engram layer id (engram_layer_ids) -> the manifest layer_id serving it;
  // by default each Engram layer id the manifest lists as a layer_id.
  std::map<int64_t, int64_t> engram_layers;
};

struct LoadManifest {
  std::string path;  // where it was read from ("" when given inline)
  std::vector<LayerSpec> layers;
  std::optional<ModelSpec> model;
};

// Resolves `path` (relative ones against `base_dir`) and, when `root` is
// not empty, checks that it lies under `root` after resolving "..",
// symbolic links included: PERMISSION_DENIED if not, NOT_FOUND if it does
// not exist. Returns the resolved absolute path.
absl::StatusOr<std::string> ResolvePath(const std::string& path,
                                        const std::string& base_dir,
                                        const std::string& root);

// The largest load manifest read or parsed (inline or a file); it lists
// layers and files, a few KB for any real model.
inline constexpr uint64_t kMaxManifestBytes = 4ull << 20;

// Parses a manifest's JSON text; relative paths are resolved against
// `base_dir` and every path must lie under `root` (when not empty).
// INVALID_ARGUMENT naming the layer and member for anything malformed
// (unknown members included, so that a typo is not silently ignored).
absl::StatusOr<LoadManifest> ParseLoadManifest(absl::string_view json,
                                               const std::string& base_dir,
                                               const std::string& root);

// Reads and parses the manifest file at `path` (itself under `root` when
// root is not empty); relative paths are relative to the manifest's folder.
absl::StatusOr<LoadManifest> ReadLoadManifest(const std::string& path,
                                              const std::string& root);

}  // namespace engram::checkpoint

#endif  // ENGRAM_CHECKPOINT_MANIFEST_H_
