#include "store/table_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "store/layer.h"

namespace engram {
namespace {

using Ranges = std::vector<std::pair<size_t, size_t>>;

// `resident`, or the whole of `bytes` when it is empty.
Ranges RangesOrAll(const Ranges& resident, size_t bytes) {
  return resident.empty() ? Ranges{{0, bytes}} : resident;
}

constexpr char kMetaMagic[8] = {'E', 'N', 'G', 'R', 'A', 'M', 'M', '1'};
// The format written; format 1 (ChecksumKind::kLanes) is still read. The
// format number is the checksum kind of the meta and of its heads.
constexpr uint32_t kMetaFormat = static_cast<uint32_t>(ChecksumKind::kXxh3);

std::string HeadFile(const std::string& folder, int head) {
  return absl::StrCat(folder, "/head-", head, ".bin");
}

std::string Errno(const std::string& what) {
  return absl::StrCat(what, ": ", std::strerror(errno));
}

// Syncs a folder's entries (a rename or unlink in it) to disk.
absl::Status SyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::DataLossError(Errno("cannot open " + dir));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0 && errno != EINVAL) {
    return absl::DataLossError(Errno("cannot sync " + dir));
  }
  return absl::OkStatus();
}

std::string Nonce() {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  return absl::StrCat(::getpid(), "-", counter.fetch_add(1), "-",
                      rd() % 100000);
}

void Append(std::string* out, const void* p, size_t n) {
  out->append(static_cast<const char*>(p), n);
}

std::string EncodeMeta(int64_t id, uint64_t version, const LayerLayout& l,
                       const ShardShape& shape,
                       const std::vector<uint64_t>& checksums) {
  std::string m(kMetaMagic, 8);
  const uint32_t format = kMetaFormat, heads = l.num_heads();
  const int32_t dtype = static_cast<int32_t>(l.dtype), pad = 0;
  // Once padding: 0, or the quantization format | block << 8 (an engramd
  // from before quantized layers reads the same rows as plain uint8).
  const uint32_t quant = static_cast<uint32_t>(l.quant.format) |
                         (static_cast<uint32_t>(l.quant.block) << 8);
  Append(&m, &format, 4);
  Append(&m, &heads, 4);
  Append(&m, &id, 8);
  Append(&m, &version, 8);
  Append(&m, &dtype, 4);
  Append(&m, &quant, 4);
  Append(&m, &l.embedding_dim, 8);
  Append(&m, &shape.shards, 4);
  Append(&m, &shape.replication, 4);
  Append(&m, &shape.index, 4);
  Append(&m, &pad, 4);
  for (int h = 0; h < l.num_heads(); ++h) {
    Append(&m, &l.table_vocab_sizes[h], 8);
    Append(&m, &checksums[h], 8);
  }
  const uint64_t sum =
      TableChecksum::Of(ChecksumKind::kXxh3,
                        reinterpret_cast<const uint8_t*>(m.data()), m.size());
  Append(&m, &sum, 8);
  return m;
}

// Parses meta; INVALID_ARGUMENT saying what is wrong.
absl::StatusOr<StoredLayer> DecodeMeta(const std::string& m) {
  auto bad = [](const std::string& why) {
    return absl::InvalidArgumentError("meta " + why);
  };
  if (m.size() < 72 || std::memcmp(m.data(), kMetaMagic, 8) != 0) {
    return bad(
        absl::StrCat("is not an engram layer meta (", m.size(), " bytes)"));
  }
  auto read = [&](size_t at, void* out, size_t n) {
    std::memcpy(out, m.data() + at, n);
  };
  uint32_t format, heads;
  read(8, &format, 4);
  read(12, &heads, 4);
  if (format != static_cast<uint32_t>(ChecksumKind::kLanes) &&
      format != static_cast<uint32_t>(ChecksumKind::kXxh3)) {
    return bad(absl::StrCat("format ", format, " (this engramd reads 1 and ",
                            kMetaFormat, ")"));
  }
  const ChecksumKind kind = static_cast<ChecksumKind>(format);
  if (heads == 0 || heads > static_cast<uint32_t>(kMaxHeads) ||
      m.size() != 64 + 16 * static_cast<size_t>(heads) + 8) {
    return bad(absl::StrCat("is truncated or damaged (", m.size(),
                            " bytes for ", heads, " heads)"));
  }
  uint64_t sum;
  read(m.size() - 8, &sum, 8);
  if (sum != TableChecksum::Of(kind, reinterpret_cast<const uint8_t*>(m.data()),
                               m.size() - 8)) {
    return bad("checksum does not match (damaged)");
  }
  StoredLayer s;
  s.checksum_kind = kind;
  int32_t dtype;
  uint32_t quant;
  read(16, &s.layer_id, 8);
  read(24, &s.version, 8);
  read(32, &dtype, 4);
  read(36, &quant, 4);
  s.layout.quant.format = static_cast<QuantFormat>(quant & 0xffu);
  s.layout.quant.block = static_cast<int32_t>(quant >> 8);
  read(40, &s.layout.embedding_dim, 8);
  read(48, &s.shape.shards, 4);
  read(52, &s.shape.replication, 4);
  read(56, &s.shape.index, 4);
  s.layout.dtype = static_cast<DType>(dtype);
  for (uint32_t h = 0; h < heads; ++h) {
    int64_t vocab;
    uint64_t check;
    read(64 + 16 * h, &vocab, 8);
    read(72 + 16 * h, &check, 8);
    s.layout.table_vocab_sizes.push_back(vocab);
    s.checksums.push_back(check);
  }
  if (absl::Status v = ValidateLayout(s.layout); !v.ok()) {
    return bad(std::string(v.message()));
  }
  return s;
}

absl::Status WriteFileSynced(const std::string& path, const std::string& data) {
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::DataLossError(Errno("cannot create " + path));
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return absl::DataLossError(Errno("cannot write " + path));
    }
    done += static_cast<size_t>(n);
  }
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return absl::DataLossError(Errno("cannot sync " + path));
  return absl::OkStatus();
}

// "layer-<id>.v<version>" -> (id, version).
bool ParseFolderName(const std::string& name, int64_t* id, uint64_t* version) {
  if (!absl::StartsWith(name, "layer-")) return false;
  const size_t dot = name.find(".v");
  return dot != std::string::npos &&
         absl::SimpleAtoi(name.substr(6, dot - 6), id) &&
         absl::SimpleAtoi(name.substr(dot + 2), version);
}

// Reads the head file with pread in big blocks (no page-table work, unlike
// touching a fresh mapping page by page) and compares its checksum of
// `kind`. Sets *xxh3 to the file's XXH3 (the format-2 checksum), computed in
// the same pass when `kind` is another.
absl::Status VerifyHead(int fd, const Ranges& ranges, ChecksumKind kind,
                        uint64_t want, const std::string& path,
                        uint64_t* xxh3) {
  TableChecksum stored(kind);
  TableChecksum current(ChecksumKind::kXxh3);
  std::vector<uint8_t> buffer(8 << 20);
  for (auto [begin, end] : ranges) {
    for (uint64_t at = begin; at < end;) {
      const size_t n =
          static_cast<size_t>(std::min<uint64_t>(buffer.size(), end - at));
      const ssize_t got = ::pread(fd, buffer.data(), n, static_cast<off_t>(at));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        return absl::DataLossError(
            got == 0 ? absl::StrCat(path, " ended at byte ", at)
                     : Errno("cannot read " + path));
      }
      stored.Add(buffer.data(), static_cast<size_t>(got));
      if (kind != ChecksumKind::kXxh3) {
        current.Add(buffer.data(), static_cast<size_t>(got));
      }
      at += static_cast<uint64_t>(got);
    }
  }
  if (stored.Finish() != want) {
    return absl::DataLossError(absl::StrCat(
        path, ": checksum does not match its meta (the file is damaged)"));
  }
  *xxh3 = kind == ChecksumKind::kXxh3 ? want : current.Finish();
  return absl::OkStatus();
}

// VerifyHead for every head, heads spread over the cores; the first error,
// or every head's XXH3.
absl::StatusOr<std::vector<uint64_t>> VerifyHeads(
    const StoredLayer& stored, const std::vector<Ranges>& resident) {
  const int heads = stored.layout.num_heads();
  const int threads = std::max(
      1, std::min<int>(heads,
                       static_cast<int>(std::thread::hardware_concurrency())));
  std::vector<absl::Status> results(heads);
  std::vector<uint64_t> xxh3(heads);
  std::atomic<int> next{0};
  auto work = [&] {
    for (int h; (h = next++) < heads;) {
      const std::string path = HeadFile(stored.path, h);
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        results[h] = absl::DataLossError(Errno("cannot open " + path));
        continue;
      }
      results[h] =
          VerifyHead(fd, RangesOrAll(resident[h], stored.layout.table_bytes(h)),
                     stored.checksum_kind, stored.checksums[h], path, &xxh3[h]);
      ::close(fd);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  for (const absl::Status& s : results) {
    if (!s.ok()) return s;
  }
  return xxh3;
}

// Rewrites a verified older-format meta in the current format (new
// checksums of the same verified bytes): a temporary, synced, renamed over.
absl::Status UpgradeMeta(const StoredLayer& stored,
                         const std::vector<uint64_t>& xxh3) {
  const std::string tmp = absl::StrCat(stored.path, "/.meta-", Nonce());
  if (absl::Status s =
          WriteFileSynced(tmp, EncodeMeta(stored.layer_id, stored.version,
                                          stored.layout, stored.shape, xxh3));
      !s.ok()) {
    return s;
  }
  const std::string meta = stored.path + "/meta";
  if (::rename(tmp.c_str(), meta.c_str()) != 0) {
    const std::string why = Errno("cannot rename " + tmp + " to " + meta);
    ::unlink(tmp.c_str());
    return absl::DataLossError(why);
  }
  return SyncDir(stored.path);
}

}  // namespace

void Layer::ReleaseStorage() const {
  if (files_ != nullptr) files_->Delete();
}

absl::StatusOr<std::shared_ptr<LayerFiles>> LayerFiles::Create(
    const TableFilesTarget& target, int64_t layer_id, const LayerLayout& layout,
    std::vector<Ranges> resident, std::vector<HostBuffer>* tables) {
  const std::string& dir = target.dir;
  const std::string folder =
      absl::StrCat(dir, "/.tmp-layer-", layer_id, "-", Nonce());
  if (::mkdir(folder.c_str(), 0700) != 0) {
    return absl::FailedPreconditionError(
        Errno("--data_dir: cannot create " + folder));
  }
  if (resident.empty()) resident.resize(layout.num_heads());
  std::shared_ptr<LayerFiles> files(new LayerFiles(
      dir, folder, layer_id, layout, target.shape, std::move(resident)));
  for (int h = 0; h < layout.num_heads(); ++h) {
    const std::string path = HeadFile(folder, h);
    const int fd =
        ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::FailedPreconditionError(Errno("cannot create " + path));
    }
    if (::ftruncate(fd, static_cast<off_t>(layout.table_bytes(h))) != 0) {
      const std::string why = Errno("cannot size " + path);
      ::close(fd);
      return absl::ResourceExhaustedError(why);
    }
    absl::StatusOr<HostBuffer> table =
        HostBuffer::MapFile(fd, layout.table_bytes(h), /*writable=*/true);
    ::close(fd);
    if (!table.ok()) return table.status();
    tables->push_back(*std::move(table));
  }
  return files;
}

absl::Status LayerFiles::Seal(uint64_t version,
                              const std::vector<HostBuffer>& tables) {
  MutexLock lock(&mu_);
  if (sealed_ || deleted_) {
    return absl::InternalError("a layer folder is sealed once");
  }
  std::vector<uint64_t> checksums;
  for (int h = 0; h < layout_.num_heads(); ++h) {
    const HostBuffer& t = tables[h];
    TableChecksum sum(ChecksumKind::kXxh3);
    for (auto [begin, end] : RangesOrAll(resident_[h], t.size())) {
      sum.Add(t.data() + begin, end - begin);
    }
    checksums.push_back(sum.Finish());
    if (::msync(const_cast<uint8_t*>(t.data()), t.size(), MS_SYNC) != 0) {
      return absl::DataLossError(Errno("cannot sync " + HeadFile(path_, h)));
    }
  }
  if (absl::Status s = WriteFileSynced(
          path_ + "/meta",
          EncodeMeta(layer_id_, version, layout_, shape_, checksums));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = SyncDir(path_); !s.ok()) return s;
  const std::string final_path =
      absl::StrCat(dir_, "/layer-", layer_id_, ".v", version);
  if (::rename(path_.c_str(), final_path.c_str()) != 0) {
    return absl::DataLossError(
        Errno("cannot rename " + path_ + " to " + final_path));
  }
  path_ = final_path;
  sealed_ = true;
  return SyncDir(dir_);
}

void LayerFiles::Delete() {
  MutexLock lock(&mu_);
  if (deleted_) return;
  deleted_ = true;
  // Renamed first: a crash before the files are gone leaves a .trash-*
  // folder, which the next start removes instead of serving.
  const std::string trash =
      absl::StrCat(dir_, "/.trash-layer-", layer_id_, "-", Nonce());
  if (::rename(path_.c_str(), trash.c_str()) == 0) {
    (void)SyncDir(dir_);
    path_ = trash;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

LayerFiles::~LayerFiles() {
  bool sealed;
  {
    MutexLock lock(&mu_);
    sealed = sealed_;
  }
  if (!sealed) Delete();
}

std::string LayerFiles::path() const {
  MutexLock lock(&mu_);
  return path_;
}

// Why `path` (lstat) cannot be this process's own stored entry (a folder
// when `folder`, else a file); empty when it can: not a link, of that kind,
// owned by this user and writable by nobody else.
std::string NotOurs(const std::string& path, bool folder) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return Errno("cannot stat " + path);
  if (S_ISLNK(st.st_mode)) return "a symbolic link";
  if (folder ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
    return folder ? "not a folder" : "not a regular file";
  }
  if (st.st_uid != ::geteuid()) {
    return absl::StrCat("owned by uid ", st.st_uid, ", not engramd's (uid ",
                        ::geteuid(), ")");
  }
  if ((st.st_mode & 022) != 0) return "writable by group or others";
  return "";
}

absl::StatusOr<DataDirScan> ScanDataDir(const std::string& dir,
                                        const ShardShape& shape) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data_dir ", dir, ": ", ec.message()));
  }
  // Anyone who can create entries here could plant layers (or have the
  // genuine ones deleted as superseded): a world-writable folder (e.g.
  // /dev/shm itself) is refused. A group-writable one (a volume with an
  // fsGroup) is accepted: entries not owned by engramd's user are ignored.
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data_dir ", dir, " is not a folder"));
  }
  if ((st.st_mode & S_IWOTH) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--data_dir ", dir,
        " is writable by every user: anyone could plant layers in it. Use a "
        "folder only engramd's user can write (e.g. mkdir -m 700 ",
        dir == "/" ? "" : dir, "/engram)"));
  }
  DataDirScan scan;
  std::map<int64_t, StoredLayer> newest;
  auto refuse = [&](const std::string& path, const std::string& why) {
    const std::string name = std::filesystem::path(path).filename();
    const std::string moved =
        absl::StrCat(dir, "/.refused-", name, "-", Nonce());
    std::filesystem::rename(path, moved, ec);
    scan.refused.push_back(
        absl::StrCat(path, ": ", why, "; not served (moved to ", moved, ")"));
  };
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename();
    const std::string path = entry.path();
    const bool leftover = absl::StartsWith(name, ".tmp-layer-") ||
                          absl::StartsWith(name, ".trash-layer-");
    int64_t id = 0;
    uint64_t version = 0;
    const bool layer = ParseFolderName(name, &id, &version);
    if (!leftover && !layer) continue;  // not ours (e.g. .refused-*)
    // Only entries this user made are trusted, refused or deleted.
    if (std::string why = NotOurs(path, true); !why.empty()) {
      scan.refused.push_back(
          absl::StrCat(path, ": ", why, "; ignored (not served, not touched)"));
      continue;
    }
    if (leftover) {
      std::filesystem::remove_all(path, ec);
      scan.removed.push_back(
          absl::StrCat(path, ": an interrupted write or delete; removed"));
      continue;
    }
    if (std::string why = NotOurs(path + "/meta", false); !why.empty()) {
      refuse(path, absl::StrCat(path, "/meta: ", why));
      continue;
    }
    absl::StatusOr<std::string> meta =
        ReadWholeFile(path + "/meta", {.no_follow = true});
    if (!meta.ok()) {
      refuse(path, std::string(meta.status().message()));
      continue;
    }
    absl::StatusOr<StoredLayer> stored = DecodeMeta(*meta);
    if (!stored.ok()) {
      refuse(path, std::string(stored.status().message()));
      continue;
    }
    if (stored->shape != shape) {
      refuse(path,
             absl::StrCat("stored by shard ", stored->shape.index, " of ",
                          stored->shape.shards,
                          " (R = ", stored->shape.replication,
                          "); this engramd is shard ", shape.index, " of ",
                          shape.shards, " (R = ", shape.replication, ")"));
      continue;
    }
    if (stored->layer_id != id || stored->version != version) {
      refuse(path, absl::StrCat("meta names layer ", stored->layer_id, " v",
                                stored->version));
      continue;
    }
    std::string size_error;
    for (int h = 0; h < stored->layout.num_heads(); ++h) {
      const std::string head = HeadFile(path, h);
      if (std::string why = NotOurs(head, false); !why.empty()) {
        size_error = absl::StrCat(head, ": ", why);
        break;
      }
      const uint64_t want = stored->layout.table_bytes(h);
      const auto got = std::filesystem::file_size(head, ec);
      if (ec || got != want) {
        size_error = absl::StrCat(head, " has ", ec ? 0 : got, " bytes, not ",
                                  want, " (truncated?)");
        break;
      }
    }
    if (!size_error.empty()) {
      refuse(path, size_error);
      continue;
    }
    stored->path = path;
    auto it = newest.find(id);
    if (it == newest.end() || it->second.version < version) {
      if (it != newest.end()) {
        scan.removed.push_back(absl::StrCat(
            it->second.path, ": superseded by v", version, "; removed"));
        std::filesystem::remove_all(it->second.path, ec);
      }
      newest[id] = *std::move(stored);
    } else {
      scan.removed.push_back(absl::StrCat(path, ": superseded by v",
                                          it->second.version, "; removed"));
      std::filesystem::remove_all(path, ec);
    }
  }
  for (auto& [id, layer] : newest) scan.layers.push_back(std::move(layer));
  return scan;
}

absl::StatusOr<std::shared_ptr<Layer>> OpenStoredLayer(
    const StoredLayer& stored, std::vector<std::vector<RowRange>> owned,
    MemoryBudget* budget, bool pin, bool verify, bool* upgraded) {
  if (upgraded != nullptr) *upgraded = false;
  const LayerLayout& layout = stored.layout;
  const size_t row_bytes = layout.row_bytes();
  // Per head: the stored byte ranges (empty: the whole table).
  std::vector<Ranges> resident(layout.num_heads());
  uint64_t data_bytes = owned.empty() ? layout.total_bytes() : 0;
  if (!owned.empty()) {
    for (int h = 0; h < layout.num_heads(); ++h) {
      for (RowRange r : owned[h]) {
        resident[h].emplace_back(r.begin * row_bytes, r.end * row_bytes);
        data_bytes += r.size() * row_bytes;
      }
    }
  }
  std::vector<HostBuffer> tables;
  for (int h = 0; h < layout.num_heads(); ++h) {
    const std::string path = HeadFile(stored.path, h);
    // Never through a link (the scan refused them; this is the open).
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return absl::DataLossError(Errno("cannot open " + path));
    absl::StatusOr<HostBuffer> table =
        HostBuffer::MapFile(fd, layout.table_bytes(h), /*writable=*/false);
    ::close(fd);
    if (!table.ok()) return table.status();
    tables.push_back(*std::move(table));
  }
  if (verify) {
    absl::StatusOr<std::vector<uint64_t>> xxh3 = VerifyHeads(stored, resident);
    if (!xxh3.ok()) return xxh3.status();
    if (stored.checksum_kind != ChecksumKind::kXxh3) {
      if (absl::Status s = UpgradeMeta(stored, *xxh3); !s.ok()) return s;
      if (upgraded != nullptr) *upgraded = true;
    }
  }
  uint64_t bytes = 0;
  for (int h = 0; h < layout.num_heads(); ++h) {
    bytes += HostBuffer::ResidentBytes(
        layout.table_bytes(h), RangesOrAll(resident[h], layout.table_bytes(h)));
  }
  // Pinned and charged when it fits; a bigger table is served from the
  // page cache (stored, not resident).
  MemoryReservation reservation;
  if (budget->TryReserve(bytes)) {
    reservation = MemoryReservation(budget, bytes);
    if (pin) {
      for (int h = 0; h < layout.num_heads(); ++h) tables[h].Pin(resident[h]);
    }
  }
  auto layer =
      std::make_shared<Layer>(stored.layer_id, layout, std::move(tables),
                              std::move(reservation), data_bytes);
  std::shared_ptr<LayerFiles> files(new LayerFiles(
      std::filesystem::path(stored.path).parent_path(), stored.path,
      stored.layer_id, layout, stored.shape, std::move(resident)));
  {
    MutexLock lock(&files->mu_);
    files->sealed_ = true;
  }
  layer->AttachFiles(std::move(files));
  return layer;
}

}  // namespace engram
