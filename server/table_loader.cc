#include "server/table_loader.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cluster/populate_fanout.h"
#include "common/status_context.h"
#include "proto/convert.h"
#include "server/log.h"
#include "store/layer_stager.h"

namespace engram {
namespace {

// Rows read per step: big enough for sequential reads, small enough that a
// cancel or a forced Remove is noticed soon.
constexpr uint64_t kStepBytes = 16 << 20;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

TableLoader::TableLoader(PopulateEnv env, ClusterContext* cluster,
                         std::string root, TokenHashes* hashes,
                         double max_bytes_per_second)
    : env_(env),
      cluster_(cluster),
      root_(std::move(root)),
      hashes_(hashes),
      pacer_(max_bytes_per_second) {}

TableLoader::~TableLoader() { stopping_ = true; }

void TableLoader::Submit(std::function<absl::StatusOr<Layers>()> work,
                         Done done) {
  ++pending_;
  worker_.Submit([this, work = std::move(work), done = std::move(done)] {
    absl::StatusOr<Layers> result =
        stopping_ ? absl::UnavailableError("the server is shutting down")
                  : work();
    {
      MutexLock lock(&progress_mu_);
      progress_.reset();
    }
    --pending_;
    done(std::move(result));
  });
}

namespace {

// DEADLINE_EXCEEDED once the caller's deadline passed: nothing more is read
// or committed for a caller that has given up.
absl::Status CheckDeadline(std::chrono::system_clock::time_point deadline,
                           int64_t layer_id) {
  if (std::chrono::system_clock::now() < deadline) return absl::OkStatus();
  return absl::DeadlineExceededError(
      absl::StrCat("the caller's deadline passed before layer ", layer_id,
                   " was committed; it was not loaded"));
}

}  // namespace

void TableLoader::BeginProgress(
    std::string manifest,
    const std::vector<std::unique_ptr<checkpoint::LayerReader>>& readers) {
  Progress p;
  p.manifest = std::move(manifest);
  p.layers_total = static_cast<int>(readers.size());
  for (const auto& reader : readers) {
    const LayerLayout& layout = reader->layout();
    if (cluster_ == nullptr) {
      p.bytes_total += layout.total_bytes();
      continue;
    }
    for (const std::vector<RowRange>& head :
         cluster_->OwnedRanges(reader->layer_id(), layout)) {
      for (RowRange r : head)
        p.bytes_total += (r.end - r.begin) * layout.row_bytes();
    }
  }
  layers_done_ = 0;
  MutexLock lock(&progress_mu_);
  progress_ = std::move(p);
  progress_base_bytes_ = bytes_loaded_.load();
  progress_start_ = std::chrono::steady_clock::now();
}

std::optional<TableLoader::Progress> TableLoader::progress() const {
  MutexLock lock(&progress_mu_);
  if (!progress_.has_value()) return std::nullopt;
  Progress p = *progress_;
  p.layers_done = layers_done_.load();
  p.bytes_done = bytes_loaded_.load() - progress_base_bytes_;
  p.seconds = SecondsSince(progress_start_);
  return p;
}

void TableLoader::LoadRequested(std::string manifest_path,
                                std::string manifest_json,
                                std::chrono::system_clock::time_point deadline,
                                Done done) {
  Submit(
      [this, path = std::move(manifest_path), json = std::move(manifest_json),
       deadline]() -> absl::StatusOr<Layers> {
        absl::StatusOr<checkpoint::LoadManifest> manifest =
            ReadRequested(path, json);
        if (!manifest.ok()) return manifest.status();
        // Every source is checked here first (headers only), so a bad
        // manifest loads nothing anywhere.
        auto readers = OpenAll(*manifest, root_);
        if (!readers.ok()) return readers.status();
        BeginProgress(path.empty() ? "(inline manifest)" : path, *readers);
        auto hashes = TokenHashes::Prepare(*manifest);
        if (!hashes.ok()) return hashes.status();
        absl::StatusOr<Layers> loaded =
            cluster_ != nullptr
                ? LoadAcrossCluster(*manifest, path, json, deadline)
                : LoadAll(*readers, deadline);
        if (loaded.ok() && hashes_ != nullptr) {
          hashes_->Register(*hashes, *loaded);
        }
        return loaded;
      },
      std::move(done));
}

absl::StatusOr<std::set<int64_t>> TableLoader::PrepareStartLoad(
    const std::string& manifest_path) {
  absl::StatusOr<checkpoint::LoadManifest> manifest =
      checkpoint::ReadLoadManifest(manifest_path, "");
  if (!manifest.ok()) return manifest.status();
  auto readers = OpenAll(*manifest, "");
  if (!readers.ok()) {
    return WithContext(readers.status(), manifest_path);
  }
  auto hashes = TokenHashes::Prepare(*manifest);
  if (!hashes.ok()) return WithContext(hashes.status(), manifest_path);
  start_hashes_ = *std::move(hashes);
  start_manifest_ = manifest_path;
  uint64_t bytes = 0;
  std::set<int64_t> ids;
  std::vector<std::unique_ptr<checkpoint::LayerReader>> kept;
  for (auto& r : *readers) {
    if (restored_ids_.count(r->layer_id()) && !r->replace()) {
      LogInfo(absl::StrCat("--load: layer ", r->layer_id(),
                           " is stored in --data_dir; the stored version "
                           "serves (use \"replace\" to load it again)"));
      continue;
    }
    bytes += r->source_bytes();
    ids.insert(r->layer_id());
    kept.push_back(std::move(r));
  }
  *readers = std::move(kept);
  if (readers->empty()) {
    LogInfo(absl::StrCat("--load ", manifest_path,
                         ": nothing to read, every layer is stored in "
                         "--data_dir"));
  } else {
    LogInfo(absl::StrCat("--load ", manifest_path, ": ", readers->size(),
                         readers->size() == 1 ? " layer, " : " layers, ", bytes,
                         " bytes in checkpoint files; "
                         "not ready until they are in"));
  }
  start_readers_ = *std::move(readers);
  return ids;
}

absl::StatusOr<std::set<int64_t>> TableLoader::PrepareRestore(
    const std::string& dir, bool verify) {
  absl::StatusOr<DataDirScan> scan =
      ScanDataDir(dir, cluster_ != nullptr ? cluster_->shape() : ShardShape{});
  if (!scan.ok()) return scan.status();
  for (const std::string& line : scan->removed) LogInfo("--data_dir: " + line);
  for (const std::string& line : scan->refused) LogError("--data_dir: " + line);
  verify_ = verify;
  for (StoredLayer& stored : scan->layers) {
    auto ticket = env_.layers->BeginPopulate(stored.layer_id);
    if (!ticket.ok()) {
      LogError(absl::StrCat("--data_dir: layer ", stored.layer_id, ": ",
                            ticket.status().message()));
      continue;
    }
    restored_ids_.insert(stored.layer_id);
    restores_.push_back({std::move(stored), *std::move(ticket)});
  }
  if (!restores_.empty()) {
    LogInfo(absl::StrCat(
        "--data_dir ", dir, ": ", restores_.size(),
        restores_.size() == 1 ? " stored layer" : " stored layers",
        " to serve again", verify ? " (checksums verified first)" : ""));
  }
  return restored_ids_;
}

TableLoader::Layers TableLoader::RestoreAll() {
  Layers restored;
  for (Restore& r : restores_) {
    const auto start = std::chrono::steady_clock::now();
    const int64_t id = r.stored.layer_id;
    bool upgraded = false;
    absl::StatusOr<std::shared_ptr<Layer>> layer =
        stopping_
            ? absl::UnavailableError("shutting down")
            : OpenStoredLayer(r.stored,
                              cluster_ != nullptr
                                  ? cluster_->OwnedRanges(id, r.stored.layout)
                                  : std::vector<std::vector<RowRange>>{},
                              env_.budget, env_.pin_memory, verify_, &upgraded);
    if (upgraded) {
      LogInfo(absl::StrCat("--data_dir: layer ", id, " v", r.stored.version,
                           ": verified with its format-1 checksums; meta "
                           "upgraded to format 2 (XXH3)"));
    } else if (layer.ok() && r.stored.checksum_kind != ChecksumKind::kXxh3) {
      LogInfo(absl::StrCat("--data_dir: layer ", id, " v", r.stored.version,
                           " is stored in meta format 1; start once with "
                           "--verify_data_dir to verify and upgrade it"));
    }
    absl::Status s = layer.status();
    if (layer.ok()) {
      std::shared_ptr<const Layer> committed = *layer;
      env_.layers->SeedVersion(id, r.stored.version);
      s = MirrorAndCommit(env_.gpu, env_.layers, r.ticket, *std::move(layer));
      if (s.ok()) {
        LogInfo(absl::StrCat(
            "--data_dir: layer ", id, " v", r.stored.version, " serves again (",
            r.stored.path, ", ", committed->data_bytes(),
            " bytes, pinned: ", PinModeName(committed->pin_mode()), ", in ",
            SecondsSince(start), " s)"));
        restored.push_back(std::move(committed));
        continue;
      }
    }
    env_.layers->Abandon(r.ticket);
    if (s.code() == absl::StatusCode::kDataLoss) {  // damaged: moved aside
      const std::filesystem::path path(r.stored.path);
      std::error_code ec;
      std::filesystem::rename(
          path, path.parent_path() / (".refused-" + path.filename().string()),
          ec);
    }
    LogError(absl::StrCat("--data_dir: layer ", id, " v", r.stored.version,
                          " is not served: ", s.ToString()));
  }
  restores_.clear();
  return restored;
}

void TableLoader::StartPreparedLoad(Done done) {
  auto readers =
      std::make_shared<std::vector<std::unique_ptr<checkpoint::LayerReader>>>(
          std::move(start_readers_));
  Submit(
      [this, readers]() -> absl::StatusOr<Layers> {
        BeginProgress(start_manifest_.empty()
                          ? std::string("--data_dir")
                          : absl::StrCat("--load ", start_manifest_),
                      *readers);
        Layers all = RestoreAll();
        absl::StatusOr<Layers> loaded = LoadAll(*readers);
        if (!loaded.ok()) return loaded.status();
        all.insert(all.end(), loaded->begin(), loaded->end());
        if (hashes_ != nullptr) hashes_->Register(start_hashes_, all);
        return all;
      },
      std::move(done));
}

absl::StatusOr<std::vector<std::unique_ptr<checkpoint::LayerReader>>>
TableLoader::OpenAll(const checkpoint::LoadManifest& manifest,
                     const std::string& root) const {
  std::vector<std::unique_ptr<checkpoint::LayerReader>> readers;
  for (const checkpoint::LayerSpec& spec : manifest.layers) {
    auto reader = checkpoint::LayerReader::Open(spec, root);
    if (!reader.ok()) return reader.status();
    readers.push_back(*std::move(reader));
  }
  return readers;
}

absl::StatusOr<TableLoader::Layers> TableLoader::LoadAll(
    const std::vector<std::unique_ptr<checkpoint::LayerReader>>& readers,
    std::chrono::system_clock::time_point deadline) {
  Layers loaded;
  for (const auto& reader : readers) {
    absl::StatusOr<std::shared_ptr<const Layer>> layer =
        LoadLayer(*reader, deadline);
    if (!layer.ok()) {
      std::vector<int64_t> ids;
      for (const auto& l : loaded) ids.push_back(l->id());
      return absl::Status(
          layer.status().code(),
          absl::StrCat(layer.status().message(),
                       ids.empty()
                           ? std::string(" (no layer was loaded)")
                           : absl::StrCat(" (loaded before it: layers ",
                                          absl::StrJoin(ids, ", "), ")")));
    }
    loaded.push_back(*std::move(layer));
    ++layers_done_;
  }
  return loaded;
}

absl::StatusOr<TableLoader::Staged> TableLoader::StageLayer(
    const checkpoint::LayerReader& reader) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t id = reader.layer_id();
  const LayerLayout& layout = reader.layout();
  LayerStager::Options options;
  options.pin_memory = env_.pin_memory;
  options.exporter = env_.exporter;
  options.replace = reader.replace();
  options.files.dir = env_.data_dir;
  if (cluster_ != nullptr) {
    options.owned = cluster_->OwnedRanges(id, layout);
    options.files.shape = cluster_->shape();
  }
  std::vector<std::vector<RowRange>> ranges = options.owned;
  auto with_layer = [id](const absl::Status& s) {
    return WithContext(s, "layer ", id);
  };
  Staged staged;
  auto stager = LayerStager::Begin(env_.layers, env_.budget, id, layout,
                                   std::move(options));
  if (!stager.ok()) return with_layer(stager.status());
  staged.stager = *std::move(stager);
  const int64_t step = std::max<int64_t>(
      1, static_cast<int64_t>(kStepBytes / layout.row_bytes()));
  struct Step {
    int head;
    int64_t row, rows;
  };
  std::vector<Step> steps;
  for (int h = 0; h < layout.num_heads(); ++h) {
    const std::vector<RowRange> head_ranges =
        ranges.empty() ? std::vector<RowRange>{{0, layout.table_vocab_sizes[h]}}
                       : ranges[h];
    for (RowRange r : head_ranges) {
      for (int64_t row = r.begin; row < r.end; row += step)
        steps.push_back({h, row, std::min(step, r.end - row)});
    }
  }
  // Steps run on every core: the copy (or interleave, or conversion) and
  // the first touch of the table's pages are CPU work, which a single
  // thread left half idle on two cores.
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> done_bytes{0};
  Mutex error_mu;
  absl::Status error;
  auto last_log = start;
  auto work = [&](bool log_progress) {
    for (size_t i; (i = next++) < steps.size();) {
      {
        MutexLock lock(&error_mu);
        if (!error.ok()) return;
      }
      const Step& st = steps[i];
      if (!pacer_.Wait(st.rows * layout.row_bytes(), stopping_)) {
        MutexLock lock(&error_mu);
        error = absl::UnavailableError(absl::StrCat(
            "layer ", id, ": the server is shutting down; nothing kept"));
        return;
      }
      if (i + 1 < steps.size()) {
        reader.Prefetch(steps[i + 1].head, steps[i + 1].row, steps[i + 1].rows);
      }
      absl::Status s =
          staged.stager->FillRows(st.head, st.row, st.rows, [&](uint8_t* dst) {
            return reader.ReadRows(st.head, st.row, st.rows, dst);
          });
      if (!s.ok()) {
        MutexLock lock(&error_mu);
        if (error.ok()) error = with_layer(s);
        return;
      }
      done_bytes += st.rows * layout.row_bytes();
      bytes_loaded_ += st.rows * layout.row_bytes();
      if (log_progress && SecondsSince(last_log) > 5) {
        last_log = std::chrono::steady_clock::now();
        LogInfo(absl::StrCat("load: layer ", id, ": ", done_bytes.load() >> 20,
                             " of ", reader.layout().total_bytes() >> 20,
                             " MiB in ", SecondsSince(start), " s"));
      }
    }
  };
  const int threads = std::max(
      1, std::min<int>(static_cast<int>(std::thread::hardware_concurrency()),
                       static_cast<int>(steps.size())));
  std::vector<std::thread> helpers;
  for (int t = 1; t < threads; ++t) helpers.emplace_back(work, false);
  work(true);
  for (std::thread& t : helpers) t.join();
  {
    MutexLock lock(&error_mu);
    if (!error.ok()) return error;
  }
  staged.bytes = done_bytes;
  absl::StatusOr<std::shared_ptr<Layer>> layer = staged.stager->Finish();
  if (!layer.ok()) return with_layer(layer.status());
  staged.layer = *std::move(layer);
  staged.seconds = SecondsSince(start);
  return staged;
}

absl::StatusOr<std::shared_ptr<const Layer>> TableLoader::LoadLayer(
    const checkpoint::LayerReader& reader,
    std::chrono::system_clock::time_point deadline) {
  const int64_t id = reader.layer_id();
  if (absl::Status s = CheckDeadline(deadline, id); !s.ok()) return s;
  absl::StatusOr<Staged> staged = StageLayer(reader);
  if (!staged.ok()) return staged.status();
  // The staged rows are dropped (with their claim) on the way out.
  if (absl::Status s = CheckDeadline(deadline, id); !s.ok()) return s;
  std::shared_ptr<const Layer> committed = staged->layer;
  if (absl::Status s =
          MirrorAndCommit(env_.gpu, env_.layers, staged->stager->ticket(),
                          std::move(staged->layer));
      !s.ok()) {
    return WithContext(s, "layer ", id);
  }
  const double seconds = staged->seconds;
  LogInfo(absl::StrCat(
      "layer ", id, " loaded: ", staged->bytes, " bytes in ", seconds, " s (",
      staged->bytes / 1e6 / std::max(seconds, 1e-9),
      " MB/s), pinned: ", PinModeName(committed->pin_mode()),
      committed->gpu_mirror() != nullptr ? ", on the GPU" : ""));
  return committed;
}

absl::StatusOr<checkpoint::LoadManifest> TableLoader::ReadRequested(
    const std::string& path, const std::string& json) const {
  if (root_.empty()) {
    return absl::FailedPreconditionError(
        "this server loads no files on request: start engramd with "
        "--load_root=DIR to allow manifests under DIR");
  }
  if (path.empty() == json.empty()) {
    return absl::InvalidArgumentError(
        "a LoadRequest sets exactly one of manifest_path and manifest_json");
  }
  // A relative manifest_path is under the load root (an absolute one stays).
  return json.empty()
             ? checkpoint::ReadLoadManifest(
                   (std::filesystem::path(root_) / path).string(), root_)
             : checkpoint::ParseLoadManifest(json, root_, root_);
}

void TableLoader::StageForPeer(
    std::string manifest_path, std::string manifest_json, int64_t layer_id,
    std::function<void(absl::StatusOr<Staged>)> done) {
  peer_worker_.Submit([this, path = std::move(manifest_path),
                       json = std::move(manifest_json), layer_id,
                       done = std::move(done)] {
    auto staged = [&]() -> absl::StatusOr<Staged> {
      if (stopping_) return absl::UnavailableError("shutting down");
      absl::StatusOr<checkpoint::LoadManifest> manifest =
          ReadRequested(path, json);
      if (!manifest.ok()) return manifest.status();
      for (const checkpoint::LayerSpec& spec : manifest->layers) {
        if (spec.layer_id != layer_id) continue;
        auto reader = checkpoint::LayerReader::Open(spec, root_);
        if (!reader.ok()) return reader.status();
        auto hashes = TokenHashes::Prepare(*manifest);
        if (!hashes.ok()) return hashes.status();
        absl::StatusOr<Staged> staged = StageLayer(**reader);
        auto model = hashes->find(layer_id);
        if (staged.ok() && hashes_ != nullptr && model != hashes->end()) {
          staged->on_commit = [registry = hashes_, layer_id,
                               entry = model->second](
                                  const std::shared_ptr<const Layer>& layer) {
            registry->Register({{layer_id, entry}}, {layer});
          };
        }
        return staged;
      }
      return absl::NotFoundError(
          absl::StrCat("layer ", layer_id, " is not in the manifest on shard ",
                       cluster_ != nullptr ? cluster_->self() : 0));
    }();
    done(std::move(staged));
  });
}

absl::StatusOr<TableLoader::Layers> TableLoader::LoadAcrossCluster(
    const checkpoint::LoadManifest& manifest, const std::string& path,
    const std::string& json, std::chrono::system_clock::time_point deadline) {
  Layers loaded;
  for (const checkpoint::LayerSpec& spec : manifest.layers) {
    const auto start = std::chrono::steady_clock::now();
    std::vector<internal::v1::EngramPeer::Stub*> stubs;
    for (int s = 0; s < cluster_->size(); ++s)
      stubs.push_back(cluster_->stub(s));
    PopulateFanout fanout(std::move(stubs), cluster_->placement(),
                          [c = cluster_](int s) { c->MarkDown(s); });
    absl::StatusOr<std::string> begun =
        fanout.BeginPrepared(spec.layer_id, spec.replace);
    if (!begun.ok()) return begun.status();
    const std::string txn = *begun;
    // Phase one: every shard reads its own rows from the files, in
    // parallel; any failure drops the transaction everywhere.
    std::vector<absl::Status> results(cluster_->size());
    std::vector<std::thread> calls;
    for (int s = 0; s < cluster_->size(); ++s) {
      calls.emplace_back([&, s] {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() +
                             std::chrono::hours(2));
        internal::v1::StageFilesRequest request;
        request.set_txn_id(txn);
        request.set_layer_id(spec.layer_id);
        request.set_manifest_path(path);
        request.set_manifest_json(json);
        internal::v1::StageResponse response;
        results[s] = FromGrpcStatus(
            cluster_->stub(s)->StageFiles(&context, request, &response),
            absl::StrCat("shard ", s));
      });
    }
    for (std::thread& t : calls) t.join();
    for (const absl::Status& s : results) {
      if (!s.ok()) {
        fanout.Abort();
        return s;
      }
    }
    if (absl::Status s = CheckDeadline(deadline, spec.layer_id); !s.ok()) {
      fanout.Abort();
      return s;
    }
    if (absl::Status s = fanout.Commit(); !s.ok()) return s;
    std::shared_ptr<const Layer> layer = env_.layers->Find(spec.layer_id);
    if (layer == nullptr) {
      return absl::UnavailableError(absl::StrCat(
          "layer ", spec.layer_id, " committed but removed meanwhile"));
    }
    LogInfo(absl::StrCat("layer ", spec.layer_id, " loaded on all ",
                         cluster_->size(), " shards (txn ", txn, ") in ",
                         SecondsSince(start), " s"));
    loaded.push_back(std::move(layer));
    ++layers_done_;
  }
  return loaded;
}

}  // namespace engram
