#include "checkpoint/manifest.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint_file.h"
#include "checkpoint/json.h"
#include "common/status_context.h"

namespace engram::checkpoint {
namespace {

namespace fs = std::filesystem;

// "/a/./b/../c/" -> "/a/c", without touching the disk.
fs::path Normal(const fs::path& path) {
  fs::path normal = path.lexically_normal();
  if (!normal.has_filename() && normal != normal.root_path()) {
    normal = normal.parent_path();  // the trailing separator
  }
  return normal;
}

// Whether `path` is `root` or beneath it, component by component (both
// absolute and normal): "/a/bc" is not under "/a/b".
bool Under(const fs::path& path, const fs::path& root) {
  return std::mismatch(root.begin(), root.end(), path.begin(), path.end())
             .first == root.end();
}

// The path with every link resolved (realpath).
absl::StatusOr<fs::path> RealPath(const fs::path& path) {
  std::error_code error;
  fs::path real = fs::canonical(path, error);
  if (error) {
    const std::string why =
        absl::StrCat("cannot resolve ", path.string(), ": ", error.message());
    return error == std::errc::no_such_file_or_directory ||
                   error == std::errc::not_a_directory
               ? absl::NotFoundError(why)
               : absl::FailedPreconditionError(why);
  }
  return real;
}

const char* const kDTypes[] = {"float32", "bfloat16", "float16", "uint8"};
constexpr DType kDTypeValues[] = {DType::kFloat32, DType::kBFloat16,
                                  DType::kFloat16, DType::kUInt8};

// Reads one layer object; `where` prefixes every message.
class LayerParser {
 public:
  LayerParser(const Json& v, std::string where, const std::string& base,
              const std::string& root)
      : v_(v), where_(std::move(where)), base_(base), root_(root) {}

  absl::StatusOr<LayerSpec> Parse() {
    if (!v_.is_object()) return Bad("is not an object");
    LayerSpec spec;
    auto id = Int("layer_id");
    if (!id.ok()) return id.status();
    spec.layer_id = *id;
    where_ = absl::StrCat("layer ", spec.layer_id);
    for (const auto& [name, value] : v_.items()) {
      static const std::set<std::string> kKnown = {
          "layer_id", "dtype",  "embedding_dim", "table_vocab_sizes",
          "replace",  "source", "quant"};
      if (!kKnown.count(name)) {
        return Bad(absl::StrCat("has an unknown member \"", name,
                                "\" (known: layer_id, dtype, embedding_dim, "
                                "table_vocab_sizes, quant, replace, "
                                "source)"));
      }
    }
    const Json* dtype = JsonMember(v_, "dtype");
    if (dtype == nullptr || !dtype->is_string()) {
      return Bad("needs \"dtype\": one of float32, bfloat16, float16, uint8");
    }
    bool known = false;
    for (int i = 0; i < 4; ++i) {
      if (dtype->get<std::string>() == kDTypes[i]) {
        spec.layout.dtype = kDTypeValues[i];
        known = true;
      }
    }
    if (!known) {
      return Bad(absl::StrCat("dtype \"", dtype->get<std::string>(),
                              "\" is not one of float32, bfloat16, float16, "
                              "uint8"));
    }
    auto dim = Int("embedding_dim");
    if (!dim.ok()) return dim.status();
    spec.layout.embedding_dim = *dim;
    const Json* sizes = JsonMember(v_, "table_vocab_sizes");
    if (sizes == nullptr || !sizes->is_array()) {
      return Bad("needs \"table_vocab_sizes\": rows per head, in head order");
    }
    for (const Json& n : *sizes) {
      auto rows = JsonInt64(n);
      if (!rows.ok()) {
        return Bad(
            absl::StrCat("table_vocab_sizes: ", rows.status().message()));
      }
      spec.layout.table_vocab_sizes.push_back(*rows);
    }
    if (const Json* q = JsonMember(v_, "quant"); q != nullptr) {
      auto quant = Quant(*q);
      if (!quant.ok()) return quant.status();
      spec.layout.quant = *quant;
    }
    if (absl::Status s = ValidateLayout(spec.layout); !s.ok()) {
      return Bad(s.message());
    }
    if (const Json* r = JsonMember(v_, "replace"); r != nullptr) {
      if (!r->is_boolean()) return Bad("\"replace\" must be true or false");
      spec.replace = r->get<bool>();
    }
    auto source = Source(spec.layout.num_heads());
    if (!source.ok()) return source.status();
    spec.source = *std::move(source);
    return spec;
  }

 private:
  absl::Status Bad(absl::string_view why) const {
    return absl::InvalidArgumentError(absl::StrCat(where_, ": ", why));
  }
  absl::StatusOr<int64_t> Int(const char* name) const {
    const Json* n = JsonMember(v_, name);
    if (n == nullptr) return Bad(absl::StrCat("needs \"", name, "\""));
    auto v = JsonInt64(*n);
    if (!v.ok()) return Bad(absl::StrCat(name, ": ", v.status().message()));
    return *v;
  }
  // {"format": "fp8_e4m3", "scale": "ue8m0", "block": 32}
  absl::StatusOr<engram::Quant> Quant(const Json& q) const {
    constexpr absl::string_view kShape =
        "\"quant\" must be {\"format\": \"fp8_e4m3\", \"scale\": \"ue8m0\", "
        "\"block\": 32}";
    if (!q.is_object()) return Bad(kShape);
    for (const auto& [name, value] : q.items()) {
      if (name != "format" && name != "scale" && name != "block") {
        return Bad(absl::StrCat("quant has an unknown member \"", name,
                                "\" (known: format, scale, block)"));
      }
    }
    const Json* format = JsonMember(q, "format");
    const Json* scale = JsonMember(q, "scale");
    const Json* block = JsonMember(q, "block");
    if (format == nullptr || !format->is_string() || scale == nullptr ||
        !scale->is_string() || block == nullptr) {
      return Bad(kShape);
    }
    auto block_size = JsonInt64(*block);
    if (!block_size.ok()) {
      return Bad(absl::StrCat("quant.block: ", block_size.status().message()));
    }
    auto quant =
        QuantFromNames(format->get_ref<const std::string&>(),
                       scale->get_ref<const std::string&>(), *block_size);
    if (!quant.ok()) return Bad(quant.status().message());
    return *quant;
  }
  absl::StatusOr<std::vector<std::string>> Strings(const Json& s,
                                                   const char* name) const {
    const Json* list = JsonMember(s, name);
    std::vector<std::string> out;
    if (list == nullptr) return out;
    if (!list->is_array()) return Bad(absl::StrCat(name, " must be a list"));
    for (const Json& item : *list) {
      if (!item.is_string() || item.get_ref<const std::string&>().empty()) {
        return Bad(absl::StrCat(name, " must list non-empty strings"));
      }
      out.push_back(item.get<std::string>());
    }
    return out;
  }
  absl::StatusOr<std::string> Path(const std::string& path) const {
    auto resolved = ResolvePath(path, base_, root_);
    if (!resolved.ok()) {
      return WithContext(resolved.status(), where_);
    }
    return resolved;
  }
  absl::StatusOr<LayerSource> Source(int heads) const {
    const Json* s = JsonMember(v_, "source");
    if (s == nullptr || !s->is_object()) {
      return Bad("needs a \"source\" object");
    }
    for (const auto& [name, value] : s->items()) {
      if (name != "format" && name != "files" && name != "index" &&
          name != "tensors") {
        return Bad(absl::StrCat("source has an unknown member \"", name,
                                "\" (known: format, files, index, tensors)"));
      }
    }
    LayerSource source;
    const Json* format = JsonMember(*s, "format");
    if (format == nullptr || !format->is_string() ||
        (*format != "safetensors" && *format != "npy")) {
      return Bad("source.format must be \"safetensors\" or \"npy\"");
    }
    auto files = Strings(*s, "files");
    if (!files.ok()) return files.status();
    auto tensors = Strings(*s, "tensors");
    if (!tensors.ok()) return tensors.status();
    const Json* index = JsonMember(*s, "index");
    if (index != nullptr &&
        (!index->is_string() || index->get_ref<const std::string&>().empty())) {
      return Bad("source.index must be a file name");
    }
    for (const std::string& f : *files) {
      auto p = Path(f);
      if (!p.ok()) return p.status();
      source.files.push_back(*std::move(p));
    }
    if (*format == "npy") {
      source.format = LayerSource::Format::kNpy;
      if (index != nullptr || !tensors->empty()) {
        return Bad("an npy source names files only (one per head)");
      }
      if (static_cast<int>(source.files.size()) != heads) {
        return Bad(
            absl::StrCat("an npy source needs one file per head: ", heads,
                         " heads, ", source.files.size(), " files"));
      }
      return source;
    }
    source.format = LayerSource::Format::kSafetensors;
    if ((index == nullptr) == source.files.empty()) {
      return Bad("a safetensors source names either \"files\" or \"index\"");
    }
    if (index != nullptr) {
      auto p = Path(index->get<std::string>());
      if (!p.ok()) return p.status();
      source.index = *std::move(p);
    }
    if (tensors->empty()) {
      return Bad(
          "a safetensors source lists its \"tensors\" (e.g. the "
          "weight, then the scale)");
    }
    source.tensors = *std::move(tensors);
    return source;
  }

  const Json& v_;
  std::string where_;
  const std::string& base_;
  const std::string& root_;
};

}  // namespace

absl::StatusOr<std::string> ResolvePath(const std::string& path,
                                        const std::string& base_dir,
                                        const std::string& root) {
  std::error_code error;
  fs::path absolute = path;
  if (absolute.is_relative()) {
    fs::path base = base_dir;
    if (base.is_relative()) {
      const fs::path cwd = fs::current_path(error);
      if (error) {
        return absl::InternalError(absl::StrCat(
            "cannot read the working directory: ", error.message()));
      }
      base = cwd / base;
    }
    absolute = base / path;
  }
  absolute = Normal(absolute);
  fs::path real_root;
  if (!root.empty()) {
    absl::StatusOr<fs::path> r = RealPath(root);
    if (!r.ok()) return r.status();
    real_root = *std::move(r);
    // Checked before the file is looked at, so that nothing is learnt about
    // paths outside the root.
    const fs::path given_root = Normal(fs::absolute(root, error));
    if (!Under(absolute, given_root) && !Under(absolute, real_root)) {
      return absl::PermissionDeniedError(absl::StrCat(
          path, " is outside the load root ", root, " (--load_root)"));
    }
  }
  absl::StatusOr<fs::path> real = RealPath(absolute);
  if (!real.ok()) return real.status();
  if (!root.empty() && !Under(*real, real_root)) {
    return absl::PermissionDeniedError(
        absl::StrCat(path, " leads outside the load root ", root,
                     " (through a symbolic link)"));
  }
  return real->string();
}

static absl::StatusOr<ModelSpec> ParseModel(const Json& model,
                                            const std::string& base_dir,
                                            const std::string& root) {
  auto bad = [](std::string message) {
    return absl::InvalidArgumentError(
        absl::StrCat("load manifest: model: ", message));
  };
  if (!model.is_object()) return bad("must be an object");
  ModelSpec spec;
  for (const auto& [name, value] : model.items()) {
    if (name == "config" || name == "token_map") {
      if (!value.is_string()) return bad(absl::StrCat(name, " must be a path"));
      absl::StatusOr<std::string> path =
          ResolvePath(value.get<std::string>(), base_dir, root);
      if (!path.ok()) return WithContext(path.status(), "load manifest: model");
      (name == "config" ? spec.config : spec.token_map) = *path;
    } else if (name == "engram_layers") {
      if (!value.is_object()) {
        return bad(
            "engram_layers maps Engram layer ids (as strings) to "
            "layer_ids");
      }
      for (const auto& [engram, served] : value.items()) {
        int64_t e;
        absl::StatusOr<int64_t> s = JsonInt64(served);
        if (!absl::SimpleAtoi(engram, &e) || !s.ok()) {
          return bad(absl::StrCat("engram_layers[\"", engram,
                                  "\"] must map an integer to a layer_id"));
        }
        spec.engram_layers[e] = *s;
      }
    } else {
      return bad(absl::StrCat("unknown member \"", name,
                              "\" (known: config, token_map, engram_layers)"));
    }
  }
  if (spec.config.empty() || spec.token_map.empty()) {
    return bad("needs config (config.json) and token_map");
  }
  return spec;
}

absl::StatusOr<LoadManifest> ParseLoadManifest(absl::string_view json,
                                               const std::string& base_dir,
                                               const std::string& root) {
  if (json.size() > kMaxManifestBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a load manifest of ", json.size(),
                     " bytes is over the limit of ", kMaxManifestBytes));
  }
  auto doc = ParseJson(json, "load manifest");
  if (!doc.ok()) return doc.status();
  const Json* layers = JsonMember(*doc, "layers");
  if (layers == nullptr || !layers->is_array() || layers->empty()) {
    return absl::InvalidArgumentError(
        "a load manifest is an object with a non-empty \"layers\" list");
  }
  for (const auto& [name, value] : doc->items()) {
    if (name != "layers" && name != "model") {
      return absl::InvalidArgumentError(
          absl::StrCat("load manifest: unknown member \"", name,
                       "\" (known: layers, model)"));
    }
  }
  LoadManifest manifest;
  if (const Json* model = JsonMember(*doc, "model"); model != nullptr) {
    absl::StatusOr<ModelSpec> spec = ParseModel(*model, base_dir, root);
    if (!spec.ok()) return spec.status();
    manifest.model = *std::move(spec);
  }
  std::set<int64_t> ids;
  for (size_t i = 0; i < layers->size(); ++i) {
    auto spec = LayerParser((*layers)[i], absl::StrCat("layers[", i, "]"),
                            base_dir, root)
                    .Parse();
    if (!spec.ok()) return spec.status();
    if (!ids.insert(spec->layer_id).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "load manifest: layer ", spec->layer_id, " is listed twice"));
    }
    manifest.layers.push_back(*std::move(spec));
  }
  for (const auto& [engram, served] : manifest.model
                                          ? manifest.model->engram_layers
                                          : std::map<int64_t, int64_t>{}) {
    if (!ids.contains(served)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "load manifest: model.engram_layers maps Engram layer ", engram,
          " to layer ", served, ", which the manifest does not list"));
    }
  }
  return manifest;
}

absl::StatusOr<LoadManifest> ReadLoadManifest(const std::string& path,
                                              const std::string& root) {
  auto resolved = ResolvePath(path, "", root);
  if (!resolved.ok()) return resolved.status();
  absl::StatusOr<std::string> text = CheckpointFile::ReadWhole(
      *resolved, kMaxManifestBytes, "load manifest", root);
  if (!text.ok()) return text.status();
  auto manifest = ParseLoadManifest(
      *text, fs::path(*resolved).parent_path().string(), root);
  if (!manifest.ok()) {
    return WithContext(manifest.status(), path);
  }
  manifest->path = *resolved;
  return manifest;
}

}  // namespace engram::checkpoint
