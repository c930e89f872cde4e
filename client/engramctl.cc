// engramctl: command-line client of engramd.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/layer_reader.h"
#include "checkpoint/manifest.h"
#include "checkpoint/npy.h"
#include "client/client.h"
#include "client/engramctl_status.h"
#include "common/command_line.h"
#include "common/files.h"
#include "common/malloc_tuning.h"
#include "common/status_context.h"
#include "common/version.h"
#include "hash/engram_hash.h"
#include "proto/channel_security.h"
#include "proto/channel_tuning.h"

ABSL_FLAG(std::string, address, "",
          "HOST:PORT of engramd, or a cluster's shards comma-separated (the "
          "first that answers); default $ENGRAM_ADDRESS, else "
          "127.0.0.1:50051");
ABSL_FLAG(std::string, port_file, "",
          "take the address from engramd's --port_file instead (health: its "
          "plaintext --health_listen when it has one)");
ABSL_FLAG(double, interval_s, 1,
          "status / top: seconds between the two answers rates come from "
          "(status) or between screens (top); status --interval_s=0: totals "
          "only, at once");
ABSL_FLAG(int, count, 0, "top: screens to show (0: until interrupted)");
ABSL_FLAG(int64_t, timeout_s, 60, "seconds each call may take");
ABSL_FLAG(int64_t, populate_timeout_s, 7200,
          "seconds a populate stream or a load may take");
ABSL_FLAG(bool, tls, false, "TLS, verifying the server with system roots");
ABSL_FLAG(std::string, tls_ca_file, "",
          "TLS, verifying the server with this CA (PEM)");
ABSL_FLAG(std::string, tls_cert_file, "",
          "client certificate to present (mTLS), PEM");
ABSL_FLAG(std::string, tls_key_file, "", "the key of --tls_cert_file (PEM)");
ABSL_FLAG(std::string, tls_server_name, "",
          "the name checked in the server's certificate (default: the host)");
ABSL_FLAG(std::string, token_file, "",
          "send this file's first line as a bearer token (default "
          "$ENGRAM_TOKEN_FILE)");
ABSL_FLAG(std::optional<int64_t>, layer, std::nullopt,
          "layer id (describe, remove, populate from .npy files, lookup)");
ABSL_FLAG(std::string, dtype, "",
          "populate: the tables' dtype (float32, bfloat16, float16, uint8); "
          "default from the .npy files");
ABSL_FLAG(std::string, quant, "",
          "populate: the uint8 rows are quantized numbers, FORMAT:SCALE:BLOCK "
          "(DeepSeek's 264-byte rows: fp8_e4m3:ue8m0:32)");
ABSL_FLAG(bool, replace, false,
          "populate: swap out an existing layer at commit");
ABSL_FLAG(bool, force, false, "remove: also abort a populate in progress");
ABSL_FLAG(std::string, manifest, "",
          "populate: push a load manifest's layers, read here");
ABSL_FLAG(std::string, ids, "", "lookup: row ids, comma-separated");
ABSL_FLAG(std::string, shape, "",
          "lookup: B,L,H of --ids (default 1,1,number of ids)");
ABSL_FLAG(std::string, ids_npy, "", "lookup: ids from an int64 .npy [B, L, H]");
ABSL_FLAG(std::string, id_form, "per_head",
          "lookup: per_head (ids [B, L, H]), fused (ids in the layer's fused "
          "id space, [B, L, H]) or entries (any fused ids [n]: rows [n, D])");
ABSL_FLAG(std::string, heads, "",
          "lookup: only heads H0:H1 (a tensor-parallel rank's slice; "
          "--shape's H is H1 - H0)");
ABSL_FLAG(std::string, config, "",
          "hash: the model's config.json (engram_* keys)");
ABSL_FLAG(std::string, token_map, "",
          "hash: raw id -> compressed id (.npy int32/int64, or .i32)");
ABSL_FLAG(std::string, tokens, "",
          "hash, lookup: raw token ids of one sequence, comma-separated");
ABSL_FLAG(
    std::string, history, "",
    "hash, lookup: the sequence's previous raw ids, oldest first (at most "
    "N - 1; none: the sequence starts at --tokens)");
ABSL_FLAG(bool, fused, false, "hash: ids in the layer's fused table");
ABSL_FLAG(std::string, output_dtype, "",
          "lookup: rows converted to this dtype (default: the layer's)");
ABSL_FLAG(std::string, out, "",
          "lookup: write rows to this .npy [B, L, H, D] instead of printing");

namespace engram {
namespace {

using checkpoint::NpyArray;
using checkpoint::ReadNpy;
using checkpoint::WriteNpy;

constexpr char kUsage[] = R"(engramctl: talk to an engramd server

Usage: engramctl [--address=HOST:PORT | --port_file=F] [--timeout_s=N] [--populate_timeout_s=N]
                 [--tls | --tls_ca_file=F] [--tls_cert_file=F --tls_key_file=F]
                 [--token_file=F] COMMAND [flags] [files]

  health   [SERVICE]                      exit 0 when the server is SERVING
                                          (ready; SERVICE engram.liveness:
                                          the process serves)
  list                                    all layers, one line each
  describe --layer=N                      one layer in detail
  remove   --layer=N [--force]            drop a layer (--force also aborts
                                          a populate in progress)
  populate --layer=N [--dtype=T] [--quant=Q] [--replace] H0.npy H1.npy ...
  populate --manifest=MANIFEST [--replace]
                                          create a layer: one [N_h, D] .npy
                                          per head (float32, float16, uint8;
                                          --dtype=bfloat16 for uint16 bits;
                                          --quant=fp8_e4m3:ue8m0:32 for
                                          quantized uint8 rows);
                                          --replace swaps out an existing
                                          layer at commit; --manifest pushes
                                          a load manifest's layers read here
                                          (for servers that cannot see the
                                          files)
  load     MANIFEST                       the server loads a load manifest's
                                          layers from checkpoint files it
                                          reads (MANIFEST is on the server,
                                          under its --load_root)
  status   [--interval_s=1]               one screen: readiness and why not,
                                          memory, calls and errors (totals,
                                          per second), lookup p50/p99, loads
                                          in progress, layers, process
  top      [--interval_s=1] [--count=N]   the status screen, redrawn
  version                                 this engramctl's version and the
                                          server's (build, uptime, layers)
  lookup   --layer=N (--ids=1,2,.. --shape=B,L,H | --ids_npy=ids.npy)
           [--output_dtype=T] [--out=rows.npy]
           [--id_form=fused|entries] [--heads=H0:H1]
                                          gather rows; prints them, or
                                          writes a [B, L, H, D] .npy
  lookup   --layer=N --tokens=1,2,.. [--history=..] [--output_dtype=T]
                                          token ids in: the server hashes
                                          them with the layer's model
                                          (loaded with a "model" manifest)
  hash     --config=config.json --token_map=map.npy --layer=N
           --tokens=1,2,.. [--history=..] [--fused]
                                          DeepSeek's Engram hash of the
                                          tokens, here (no server): each
                                          position's (N-1)*H table ids

Security: --tls (system roots) or --tls_ca_file=CA.pem verifies the server;
--tls_cert_file/--tls_key_file present a client certificate (mTLS);
--tls_server_name overrides the name checked; --token_file=F (or
$ENGRAM_TOKEN_FILE) sends F's first line as a bearer token.

A cluster's --address list (comma-separated) uses the first shard that
answers. --port_file=F reads the address from the file engramd --port_file=F
writes (the image's HEALTHCHECK: `engramctl --port_file=F health` follows
whatever --listen / --health_listen engramd was given).
)";

// The command and the files after it; the flags are the ABSL_FLAGs above.
struct Args {
  std::string command;
  std::vector<std::string> files;
};

[[noreturn]] void Die(const std::string& message, int code = 1) {
  std::cerr << "engramctl: " << message << "\n";
  std::exit(code);
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    Die(absl::StrCat(absl::StatusCodeToString(s.code()), ": ", s.message()));
  }
}

Args ParseArgs(int argc, char** argv) {
  absl::StatusOr<CommandLine> line = ParseCommandLine(argc, argv);
  if (!line.ok()) Die(std::string(line.status().message()), 2);
  if (line->help) {
    std::cout << FlagsHelp(kUsage);
    std::exit(0);
  }
  if (line->version) {
    std::cout << "engramctl " << Version() << "\n";
    std::exit(0);
  }
  if (line->positional.empty()) {
    Die(absl::StrCat("no command given\n\n", kUsage), 2);
  }
  Args args;
  args.command = line->positional.front();
  args.files.assign(line->positional.begin() + 1, line->positional.end());
  return args;
}

int64_t LayerFlag() {
  std::optional<int64_t> layer = absl::GetFlag(FLAGS_layer);
  if (!layer.has_value()) Die("missing --layer", 2);
  return *layer;
}

std::vector<int64_t> IntList(const std::string& name, const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view part :
       absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      Die(absl::StrCat("--", name, ": '", part, "' is not an integer"), 2);
    }
    out.push_back(v);
  }
  return out;
}

DType ParseDType(const std::string& text) {
  if (text == "float32" || text == "f32") return DType::kFloat32;
  if (text == "bfloat16" || text == "bf16") return DType::kBFloat16;
  if (text == "float16" || text == "f16") return DType::kFloat16;
  if (text == "uint8" || text == "u8") return DType::kUInt8;
  Die(absl::StrCat("unknown dtype '", text,
                   "' (float32, bfloat16, float16, uint8)"),
      2);
}

std::string NpyDescr(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "<f4";
    case DType::kFloat16:
      return "<f2";
    case DType::kBFloat16:
      return "<u2";  // NumPy has no bfloat16: raw bits
    case DType::kUInt8:
      return "|u1";
  }
  return "|u1";
}

// " (fp8_e4m3 weights, ue8m0 scales per 32: 256 values)" or "".
std::string QuantNote(const LayerLayout& layout) {
  if (!layout.quant.enabled()) return "";
  return absl::StrCat(" (", QuantFormatName(layout.quant.format), " weights, ",
                      QuantScaleName(layout.quant.format), " scales per ",
                      layout.quant.block, ": ", layout.values_per_row(),
                      " values)");
}

void PrintLayer(const LayerDescription& d) {
  std::cout << "layer " << d.layer_id << ": " << d.layout.num_heads()
            << " heads, D = " << d.layout.embedding_dim << " "
            << DTypeName(d.layout.dtype) << QuantNote(d.layout)
            << ", vocab sizes ["
            << absl::StrJoin(d.layout.table_vocab_sizes, ", ") << "], "
            << d.bytes << " bytes, version " << d.version << "\n";
}

// Streams one layer from its files through Populate (or Replace), chunk
// by chunk: the tables are read straight from the mapped files, never held
// whole in memory. Prints the layer.
void PushLayer(Client& client, const checkpoint::LayerReader& reader,
               bool replace) {
  const int64_t layer = reader.layer_id();
  const bool tty = isatty(STDERR_FILENO);
  PopulateProgress progress = nullptr;
  int last_percent = -1;
  const auto start = std::chrono::steady_clock::now();
  if (tty) {
    progress = [&](uint64_t sent, uint64_t total) {
      int percent = static_cast<int>(100 * sent / std::max<uint64_t>(total, 1));
      if (percent == last_percent) return;
      last_percent = percent;
      const double seconds = std::chrono::duration<double>(
                                 std::chrono::steady_clock::now() - start)
                                 .count();
      std::fprintf(stderr, "\r%s   ",
                   ProgressLine(absl::StrCat("populate layer ", layer), sent,
                                total, seconds)
                       .c_str());
    };
  }
  absl::StatusOr<LayerDescription> d = client.PopulateFrom(
      layer, reader.layout(),
      [&reader](int head, int64_t row, int64_t rows, uint8_t* dst) {
        return reader.ReadRows(head, row, rows, dst);
      },
      progress, replace);
  if (tty) std::fprintf(stderr, "\n");
  Check(d.status());
  PrintLayer(*d);
}

int Populate(Client& client, const Args& args) {
  const bool replace = absl::GetFlag(FLAGS_replace);
  if (const std::string m = absl::GetFlag(FLAGS_manifest); !m.empty()) {
    absl::StatusOr<checkpoint::LoadManifest> manifest =
        checkpoint::ReadLoadManifest(m, "");
    Check(manifest.status());
    // Every layer checked before the first row is sent.
    std::vector<std::unique_ptr<checkpoint::LayerReader>> readers;
    for (const checkpoint::LayerSpec& spec : manifest->layers) {
      auto reader = checkpoint::LayerReader::Open(spec, "");
      Check(reader.status());
      readers.push_back(*std::move(reader));
    }
    for (size_t i = 0; i < readers.size(); ++i) {
      PushLayer(client, *readers[i], replace || manifest->layers[i].replace);
    }
    return 0;
  }
  if (args.files.empty()) {
    Die("populate needs one .npy file per head, or --manifest", 2);
  }
  checkpoint::LayerSpec spec;
  spec.layer_id = LayerFlag();
  spec.source.format = checkpoint::LayerSource::Format::kNpy;
  LayerLayout& layout = spec.layout;
  for (size_t h = 0; h < args.files.size(); ++h) {
    // Only the header is read here; the rows are read as they are sent.
    auto file = checkpoint::CheckpointFile::Open(args.files[h]);
    Check(file.status());
    auto a = checkpoint::ReadNpyHeader(**file);
    Check(a.status());
    if (a->shape.size() != 2) {
      Die(absl::StrCat(args.files[h], ": head table must be 2-D [N_h, D]; got ",
                       a->shape.size(), "-D"));
    }
    DType dtype;
    if (const std::string d = absl::GetFlag(FLAGS_dtype); !d.empty()) {
      dtype = ParseDType(d);
    } else if (a->descr == "<f4") {
      dtype = DType::kFloat32;
    } else if (a->descr == "<f2") {
      dtype = DType::kFloat16;
    } else if (a->descr == "|u1" || a->descr == "<u1") {
      dtype = DType::kUInt8;
    } else {
      Die(absl::StrCat(
          args.files[h], ": dtype ", a->descr,
          " needs --dtype (e.g. --dtype=bfloat16 for uint16 bits)"));
    }
    if (a->item_size != DTypeSize(dtype)) {
      Die(absl::StrCat(args.files[h], ": ", a->descr, " elements are ",
                       a->item_size, " bytes; ", DTypeName(dtype), " needs ",
                       DTypeSize(dtype)));
    }
    if (h == 0) {
      layout.embedding_dim = a->shape[1];
      layout.dtype = dtype;
    } else if (a->shape[1] != layout.embedding_dim || dtype != layout.dtype) {
      Die(absl::StrCat(args.files[h], ": D = ", a->shape[1], " ",
                       DTypeName(dtype),
                       " differs from head 0 (D = ", layout.embedding_dim, " ",
                       DTypeName(layout.dtype), ")"));
    }
    layout.table_vocab_sizes.push_back(a->shape[0]);
    spec.source.files.push_back(args.files[h]);
  }
  if (const std::string q = absl::GetFlag(FLAGS_quant); !q.empty()) {
    const std::vector<std::string> parts = absl::StrSplit(q, ':');
    int64_t block = 0;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[2], &block)) {
      Die(absl::StrCat("--quant=", q, " is not FORMAT:SCALE:BLOCK (e.g. ",
                       "fp8_e4m3:ue8m0:32)"),
          2);
    }
    absl::StatusOr<Quant> quant = QuantFromNames(parts[0], parts[1], block);
    Check(quant.status());
    layout.quant = *quant;
  }
  Check(ValidateLayout(layout));
  auto reader = checkpoint::LayerReader::Open(spec, "");
  Check(reader.status());
  PushLayer(client, **reader, replace);
  return 0;
}

// One row's values after its label: bytes as hex, floats exactly
// (max_digits10), then a newline.
void PrintRow(const uint8_t* row, DType dtype, int64_t dim) {
  if (dtype == DType::kUInt8) {
    for (int64_t e = 0; e < dim; ++e) std::printf(" %02x", row[e]);
    std::fflush(stdout);
  } else {
    std::vector<float> values(dim);
    ConvertElements(row, dtype, values.data(), DType::kFloat32, dim);
    std::cout.precision(9);
    for (float v : values) std::cout << " " << v;
  }
  std::cout << "\n";
}

// engramctl lookup --tokens: the server hashes one sequence's tokens with
// the layer's model and returns each position's rows.
int LookupTokens(Client& client, int64_t layer) {
  const std::vector<int64_t> tokens =
      IntList("tokens", absl::GetFlag(FLAGS_tokens));
  std::vector<int64_t> history;
  if (const std::string h = absl::GetFlag(FLAGS_history); !h.empty()) {
    history = IntList("history", h);
  }
  absl::StatusOr<LayerDescription> d = client.DescribeLayer(layer);
  Check(d.status());
  std::optional<DType> out_dtype;
  if (const std::string name = absl::GetFlag(FLAGS_output_dtype);
      !name.empty()) {
    out_dtype = ParseDType(name);
  }
  const DType dtype = out_dtype.value_or(d->layout.dtype);
  const int64_t dim = dtype == DType::kUInt8 ? d->layout.embedding_dim
                                             : d->layout.values_per_row();
  const int64_t heads = d->layout.num_heads();
  const size_t row_bytes = dim * DTypeSize(dtype);
  std::vector<uint8_t> rows(tokens.size() * heads * row_bytes);
  const int64_t layers[] = {layer};
  const int64_t shape[] = {1, static_cast<int64_t>(tokens.size())};
  const std::span<uint8_t> outs[] = {rows};
  Check(client.LookupTokens(layers, tokens, shape, history, outs, out_dtype));
  for (size_t i = 0; i < tokens.size() * heads; ++i) {
    const uint8_t* row = rows.data() + i * row_bytes;
    std::cout << "[t" << i / heads << ", h" << i % heads << "] token "
              << tokens[i / heads] << ":";
    PrintRow(row, dtype, dim);
  }
  return 0;
}

int Lookup(Client& client) {
  const int64_t layer = LayerFlag();
  if (!absl::GetFlag(FLAGS_tokens).empty()) return LookupTokens(client, layer);
  std::vector<int64_t> ids, shape;
  if (const std::string ids_npy = absl::GetFlag(FLAGS_ids_npy);
      !ids_npy.empty()) {
    absl::StatusOr<NpyArray> a = ReadNpy(ids_npy);
    Check(a.status());
    if (a->descr != "<i8") {
      Die(absl::StrCat(ids_npy, ": ids must be int64 (<i8)"));
    }
    ids.resize(a->num_elements());
    std::memcpy(ids.data(), a->data.data(), a->data.size());
    shape = a->shape;
  } else {
    const std::string ids_flag = absl::GetFlag(FLAGS_ids);
    if (ids_flag.empty()) Die("lookup needs --ids or --ids_npy", 2);
    ids = IntList("ids", ids_flag);
    const std::string shape_flag = absl::GetFlag(FLAGS_shape);
    shape = shape_flag.empty()
                ? std::vector<int64_t>{1, 1, static_cast<int64_t>(ids.size())}
                : IntList("shape", shape_flag);
  }
  LookupOptions options;
  if (const std::string form = absl::GetFlag(FLAGS_id_form); form == "fused") {
    options.id_form = IdForm::kFused;
  } else if (form == "entries") {
    options.id_form = IdForm::kEntries;
    shape = {static_cast<int64_t>(ids.size())};
  } else if (form != "per_head") {
    Die(absl::StrCat("--id_form must be per_head, fused or entries; got ",
                     form),
        2);
  }
  if (const std::string heads = absl::GetFlag(FLAGS_heads); !heads.empty()) {
    std::vector<std::string> parts = absl::StrSplit(heads, ':');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &options.head_begin) ||
        !absl::SimpleAtoi(parts[1], &options.head_end)) {
      Die(absl::StrCat("--heads must be H0:H1; got ", heads), 2);
    }
  }
  absl::StatusOr<LayerDescription> d = client.DescribeLayer(layer);
  Check(d.status());
  std::optional<DType> out_dtype;
  if (const std::string d = absl::GetFlag(FLAGS_output_dtype); !d.empty()) {
    out_dtype = ParseDType(d);
  }
  options.output_dtype = out_dtype;
  const DType dtype = out_dtype.value_or(d->layout.dtype);
  // A quantized layer's float rows are its dequantized values.
  const int64_t dim = dtype == DType::kUInt8 ? d->layout.embedding_dim
                                             : d->layout.values_per_row();
  std::vector<uint8_t> rows(ids.size() * dim * DTypeSize(dtype));
  Check(client.Lookup(layer, ids, shape, rows, options));

  std::vector<int64_t> out_shape = shape;
  out_shape.push_back(dim);
  if (const std::string out = absl::GetFlag(FLAGS_out); !out.empty()) {
    Check(WriteNpy(out, NpyDescr(dtype), out_shape, rows.data(), rows.size()));
    std::cout << "wrote [" << absl::StrJoin(out_shape, ", ") << "] "
              << DTypeName(dtype) << " to " << out << "\n";
    return 0;
  }
  const bool entries = options.id_form == IdForm::kEntries;
  const int64_t heads = entries || shape.empty() ? 1 : shape.back();
  const size_t row_bytes = dim * DTypeSize(dtype);
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint8_t* row = rows.data() + i * row_bytes;
    if (entries) {
      std::cout << "[" << i << "] id " << ids[i] << ":";
    } else {
      std::cout << "[" << i / heads << ", h"
                << options.head_begin + static_cast<int64_t>(i) % heads
                << "] id " << ids[i] << ":";
    }
    PrintRow(row, dtype, dim);
  }
  return 0;
}

// TLS and credentials from the flags (and the environment for the token
// file, so that it stays out of shell history and `ps`).
ClientOptions SecurityOptions() {
  ClientOptions options;
  options.tls = absl::GetFlag(FLAGS_tls);
  options.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  std::string token_file = absl::GetFlag(FLAGS_token_file);
  if (token_file.empty()) {
    if (const char* env = std::getenv("ENGRAM_TOKEN_FILE")) token_file = env;
  }
  if (!token_file.empty()) {
    absl::StatusOr<std::string> token = ReadSecretFile(token_file);
    Check(token.status());
    options.token = *std::move(token);
  }
  return options;
}

// engramctl hash: the hash of one sequence, computed here.
int Hash() {
  const std::string config = absl::GetFlag(FLAGS_config);
  const std::string map = absl::GetFlag(FLAGS_token_map);
  const std::string tokens_flag = absl::GetFlag(FLAGS_tokens);
  if (config.empty() || map.empty() || tokens_flag.empty()) {
    Die("hash needs --config, --token_map and --tokens", 2);
  }
  absl::StatusOr<EngramHasher> hasher = EngramHasher::Load(config, map);
  Check(hasher.status());
  const std::vector<int64_t> tokens = IntList("tokens", tokens_flag);
  std::vector<int64_t> history;
  if (const std::string h = absl::GetFlag(FLAGS_history); !h.empty()) {
    history = IntList("history", h);
  }
  const int per = hasher->ids_per_position();
  std::vector<int64_t> ids(tokens.size() * per);
  Check(hasher->Hash(LayerFlag(), tokens, 1, history,
                     absl::GetFlag(FLAGS_fused), ids));
  for (size_t t = 0; t < tokens.size(); ++t) {
    std::cout << "[" << t << "] token " << tokens[t] << ":";
    for (int c = 0; c < per; ++c) std::cout << " " << ids[t * per + c];
    std::cout << "\n";
  }
  return 0;
}

int Run(int argc, char** argv) {
  TuneMallocForLargeMessages();
  Args args = ParseArgs(argc, argv);
  if (args.command == "hash") return Hash();  // no server
  std::string address = "127.0.0.1:50051";
  if (const char* env = std::getenv("ENGRAM_ADDRESS")) address = env;
  if (std::string flag = absl::GetFlag(FLAGS_address); !flag.empty()) {
    address = std::move(flag);
  }
  ClientOptions options = SecurityOptions();
  // A cluster's status: every shard's line, then the first one's screen.
  if ((args.command == "status" || args.command == "top") &&
      address.find(',') != std::string::npos) {
    ClientOptions each = options;
    each.timeout =
        absl::Seconds(std::min<int64_t>(absl::GetFlag(FLAGS_timeout_s), 5));
    return RunClusterStatus(absl::StrSplit(address, ',', absl::SkipEmpty()),
                            each, absl::GetFlag(FLAGS_interval_s),
                            absl::GetFlag(FLAGS_count), args.command == "top");
  }
  if (std::string path = absl::GetFlag(FLAGS_port_file); !path.empty()) {
    absl::StatusOr<std::string> text = ReadWholeFile(path);
    Check(WithContext(text.status(), "--port_file"));
    std::map<std::string, std::string> values;
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      std::pair<std::string, std::string> kv = absl::StrSplit(line, '=');
      values[kv.first] = kv.second;
    }
    const bool probe_listener = args.command == "health" &&
                                values["health_port"] != "" &&
                                values["health_port"] != "0";
    address = values[probe_listener ? "health_address" : "grpc_address"];
    if (address.empty()) {
      Check(absl::InvalidArgumentError(absl::StrCat(
          "--port_file=", path, " names no address (written by engramd ",
          "--port_file of this version?)")));
    }
    // The probe listener is plaintext and asks for no token.
    if (probe_listener) options = ClientOptions();
  }
  // A cluster's address list: talk to the first shard that is alive.
  if (address.find(',') != std::string::npos) {
    std::vector<std::string> shards =
        absl::StrSplit(address, ',', absl::SkipEmpty());
    address = shards.front();
    for (const std::string& shard : shards) {
      ClientOptions probe = options;
      probe.timeout = absl::Seconds(2);
      auto c = Client::Connect(shard, probe);
      if (c.ok() && (*c)->CheckHealth("engram.liveness").ok()) {
        address = shard;
        break;
      }
    }
  }
  options.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  options.populate_timeout =
      absl::Seconds(absl::GetFlag(FLAGS_populate_timeout_s));
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(address, options);
  Check(client.status());
  Client& c = **client;
  const std::string& cmd = args.command;
  if (cmd == "health") {
    if (args.files.size() > 1) Die("health takes at most one SERVICE", 2);
    Check(c.CheckHealth(args.files.empty() ? "" : args.files[0]));
    std::cout << "SERVING\n";
    return 0;
  }
  if (cmd == "version") {
    std::cout << "engramctl " << Version() << "\n";
    absl::StatusOr<Client::ServerInfo> info = c.GetServerInfo();
    Check(info.status());
    std::cout << "engramd   " << info->version << " at " << address << ", up "
              << static_cast<int64_t>(info->uptime_seconds) << " s, "
              << info->layers << (info->layers == 1 ? " layer" : " layers");
    if (info->shards > 0) {
      std::cout << ", shard " << info->shard_index << " of " << info->shards;
    }
    std::cout << "\n";
    return 0;
  }
  if (cmd == "status" || cmd == "top") {
    return RunStatus(c, address, absl::GetFlag(FLAGS_interval_s),
                     cmd == "top" ? absl::GetFlag(FLAGS_count) : 1,
                     cmd == "top");
  }
  if (cmd == "list") {
    absl::StatusOr<std::vector<LayerDescription>> layers = c.ListLayers();
    Check(layers.status());
    if (layers->empty()) std::cout << "no layers\n";
    for (const LayerDescription& d : *layers) PrintLayer(d);
    return 0;
  }
  if (cmd == "describe") {
    absl::StatusOr<LayerDescription> d = c.DescribeLayer(LayerFlag());
    Check(d.status());
    PrintLayer(*d);
    for (const std::string& key : d->store_keys)
      std::cout << "  " << key << "\n";
    return 0;
  }
  if (cmd == "remove") {
    absl::StatusOr<int> n = c.Remove(LayerFlag(), absl::GetFlag(FLAGS_force));
    Check(n.status());
    std::cout << "removed " << *n << " tables\n";
    return 0;
  }
  if (cmd == "load") {
    if (args.files.size() != 1) Die("load takes one manifest path", 2);
    absl::StatusOr<std::vector<LayerDescription>> layers =
        LoadWithProgress(c, args.files[0]);
    Check(layers.status());
    for (const LayerDescription& d : *layers) PrintLayer(d);
    return 0;
  }
  if (cmd == "populate") return Populate(c, args);
  if (cmd == "lookup") return Lookup(c);
  Die(absl::StrCat("unknown command '", cmd, "'\n\n", kUsage), 2);
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) { return engram::Run(argc, argv); }
