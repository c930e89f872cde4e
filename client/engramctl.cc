// engramctl: command-line client of engramd.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/layer_reader.h"
#include "checkpoint/manifest.h"
#include "checkpoint/npy.h"
#include "client/client.h"
#include "common/malloc_tuning.h"
#include "proto/channel_security.h"
#include "proto/channel_tuning.h"

namespace engram {
namespace {

using checkpoint::NpyArray;
using checkpoint::ReadNpy;
using checkpoint::WriteNpy;

constexpr char kUsage[] = R"(engramctl: talk to an engramd server

Usage: engramctl [--address=HOST:PORT] [--timeout_s=N] [--populate_timeout_s=N]
                 [--tls | --tls_ca_file=F] [--tls_cert_file=F --tls_key_file=F]
                 [--token_file=F] COMMAND [flags] [files]

  health                                  exit 0 when the server is SERVING
  list                                    all layers, one line each
  describe --layer=N                      one layer in detail
  remove   --layer=N [--force]            drop a layer (--force also aborts
                                          a populate in progress)
  populate --layer=N [--dtype=T] [--replace] H0.npy H1.npy ...
  populate --manifest=MANIFEST [--replace]
                                          create a layer: one [N_h, D] .npy
                                          per head (float32, float16, uint8;
                                          --dtype=bfloat16 for uint16 bits);
                                          --replace swaps out an existing
                                          layer at commit; --manifest pushes
                                          a load manifest's layers read here
                                          (for servers that cannot see the
                                          files)
  load     MANIFEST                       the server loads a load manifest's
                                          layers from checkpoint files it
                                          reads (MANIFEST is on the server,
                                          under its --load_root)
  lookup   --layer=N (--ids=1,2,.. --shape=B,L,H | --ids_npy=ids.npy)
           [--output_dtype=T] [--out=rows.npy]
                                          gather rows; prints them, or
                                          writes a [B, L, H, D] .npy

Security: --tls (system roots) or --tls_ca_file=CA.pem verifies the server;
--tls_cert_file/--tls_key_file present a client certificate (mTLS);
--tls_server_name overrides the name checked; --token_file=F (or
$ENGRAM_TOKEN_FILE) sends F's first line as a bearer token.

--address defaults to $ENGRAM_ADDRESS, else 127.0.0.1:50051; a comma-separated
list (a cluster's shards) uses the first shard that answers. --timeout_s
(default 60) bounds each call; a populate stream gets --populate_timeout_s
(default 7200).
)";

struct Args {
  std::string command;
  std::map<std::string, std::string> flags;
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
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (a.rfind("--", 0) == 0) {
      std::string name = a.substr(2), value = "true";
      if (size_t eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      args.flags[name] = value;
    } else if (args.command.empty()) {
      args.command = a;
    } else {
      args.files.push_back(a);
    }
  }
  if (args.command.empty())
    Die(absl::StrCat("no command given\n\n", kUsage), 2);
  return args;
}

int64_t IntFlag(const Args& args, const std::string& name) {
  auto it = args.flags.find(name);
  if (it == args.flags.end()) Die(absl::StrCat("missing --", name), 2);
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    Die(absl::StrCat("--", name, "=", it->second, " is not an integer"), 2);
  }
  return v;
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

void PrintLayer(const LayerDescription& d) {
  std::cout << "layer " << d.layer_id << ": " << d.layout.num_heads()
            << " heads, D = " << d.layout.embedding_dim << " "
            << DTypeName(d.layout.dtype) << ", vocab sizes ["
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
  if (tty) {
    progress = [&](uint64_t sent, uint64_t total) {
      int percent = static_cast<int>(100 * sent / std::max<uint64_t>(total, 1));
      if (percent == last_percent) return;
      last_percent = percent;
      std::fprintf(stderr, "\rpopulate layer %lld: %3d%% (%.1f of %.1f MiB)",
                   static_cast<long long>(layer), percent, sent / 1048576.0,
                   total / 1048576.0);
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
  const bool replace = args.flags.count("replace") > 0;
  if (auto m = args.flags.find("manifest"); m != args.flags.end()) {
    absl::StatusOr<checkpoint::LoadManifest> manifest =
        checkpoint::ReadLoadManifest(m->second, "");
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
  spec.layer_id = IntFlag(args, "layer");
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
    if (auto it = args.flags.find("dtype"); it != args.flags.end()) {
      dtype = ParseDType(it->second);
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
  Check(ValidateLayout(layout));
  auto reader = checkpoint::LayerReader::Open(spec, "");
  Check(reader.status());
  PushLayer(client, **reader, replace);
  return 0;
}

int Lookup(Client& client, const Args& args) {
  const int64_t layer = IntFlag(args, "layer");
  std::vector<int64_t> ids, shape;
  if (auto it = args.flags.find("ids_npy"); it != args.flags.end()) {
    absl::StatusOr<NpyArray> a = ReadNpy(it->second);
    Check(a.status());
    if (a->descr != "<i8")
      Die(absl::StrCat(it->second, ": ids must be int64 (<i8)"));
    ids.resize(a->num_elements());
    std::memcpy(ids.data(), a->data.data(), a->data.size());
    shape = a->shape;
  } else {
    auto ids_flag = args.flags.find("ids");
    if (ids_flag == args.flags.end()) Die("lookup needs --ids or --ids_npy", 2);
    ids = IntList("ids", ids_flag->second);
    auto shape_flag = args.flags.find("shape");
    shape = shape_flag == args.flags.end()
                ? std::vector<int64_t>{1, 1, static_cast<int64_t>(ids.size())}
                : IntList("shape", shape_flag->second);
  }
  absl::StatusOr<LayerDescription> d = client.DescribeLayer(layer);
  Check(d.status());
  std::optional<DType> out_dtype;
  if (auto it = args.flags.find("output_dtype"); it != args.flags.end()) {
    out_dtype = ParseDType(it->second);
  }
  const DType dtype = out_dtype.value_or(d->layout.dtype);
  const int64_t dim = d->layout.embedding_dim;
  std::vector<uint8_t> rows(ids.size() * dim * DTypeSize(dtype));
  Check(client.Lookup(layer, ids, shape, rows, out_dtype));

  std::vector<int64_t> out_shape = shape;
  out_shape.push_back(dim);
  if (auto it = args.flags.find("out"); it != args.flags.end()) {
    Check(WriteNpy(it->second, NpyDescr(dtype), out_shape, rows.data(),
                   rows.size()));
    std::cout << "wrote [" << absl::StrJoin(out_shape, ", ") << "] "
              << DTypeName(dtype) << " to " << it->second << "\n";
    return 0;
  }
  const int64_t heads = shape.empty() ? 1 : shape.back();
  std::cout.precision(9);  // every float32 prints exactly (max_digits10)
  const size_t row_bytes = dim * DTypeSize(dtype);
  std::vector<float> values(dim);
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint8_t* row = rows.data() + i * row_bytes;
    std::cout << "[" << i / heads << ", h" << i % heads << "] id " << ids[i]
              << ":";
    if (dtype == DType::kUInt8) {
      for (int64_t e = 0; e < dim; ++e) std::printf(" %02x", row[e]);
      std::fflush(stdout);
    } else {
      ConvertElements(row, dtype, values.data(), DType::kFloat32, dim);
      for (float v : values) std::cout << " " << v;
    }
    std::cout << "\n";
  }
  return 0;
}

// TLS and credentials from the flags (and the environment for the token
// file, so that it stays out of shell history and `ps`).
ClientOptions SecurityOptions(const Args& args) {
  ClientOptions options;
  auto flag = [&args](const char* name) {
    auto it = args.flags.find(name);
    return it == args.flags.end() ? std::string() : it->second;
  };
  options.tls = args.flags.count("tls") > 0;
  options.tls_ca_file = flag("tls_ca_file");
  options.tls_cert_file = flag("tls_cert_file");
  options.tls_key_file = flag("tls_key_file");
  options.tls_server_name = flag("tls_server_name");
  std::string token_file = flag("token_file");
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

int Run(int argc, char** argv) {
  TuneMallocForLargeMessages();
  Args args = ParseArgs(argc, argv);
  std::string address = "127.0.0.1:50051";
  if (const char* env = std::getenv("ENGRAM_ADDRESS")) address = env;
  if (auto it = args.flags.find("address"); it != args.flags.end()) {
    address = it->second;
  }
  ClientOptions options = SecurityOptions(args);
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
  if (args.flags.count("timeout_s")) {
    options.timeout = absl::Seconds(IntFlag(args, "timeout_s"));
  }
  if (args.flags.count("populate_timeout_s")) {
    options.populate_timeout =
        absl::Seconds(IntFlag(args, "populate_timeout_s"));
  }
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(address, options);
  Check(client.status());
  Client& c = **client;
  const std::string& cmd = args.command;
  if (cmd == "health") {
    Check(c.CheckHealth());
    std::cout << "SERVING\n";
    return 0;
  }
  if (cmd == "list") {
    absl::StatusOr<std::vector<LayerDescription>> layers = c.ListLayers();
    Check(layers.status());
    if (layers->empty()) std::cout << "no layers\n";
    for (const LayerDescription& d : *layers) PrintLayer(d);
    return 0;
  }
  if (cmd == "describe") {
    absl::StatusOr<LayerDescription> d =
        c.DescribeLayer(IntFlag(args, "layer"));
    Check(d.status());
    PrintLayer(*d);
    for (const std::string& key : d->store_keys)
      std::cout << "  " << key << "\n";
    return 0;
  }
  if (cmd == "remove") {
    absl::StatusOr<int> n =
        c.Remove(IntFlag(args, "layer"), args.flags.count("force") > 0);
    Check(n.status());
    std::cout << "removed " << *n << " tables\n";
    return 0;
  }
  if (cmd == "load") {
    if (args.files.size() != 1) Die("load takes one manifest path", 2);
    absl::StatusOr<std::vector<LayerDescription>> layers =
        c.Load(args.files[0]);
    Check(layers.status());
    for (const LayerDescription& d : *layers) PrintLayer(d);
    return 0;
  }
  if (cmd == "populate") return Populate(c, args);
  if (cmd == "lookup") return Lookup(c, args);
  Die(absl::StrCat("unknown command '", cmd, "'\n\n", kUsage), 2);
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) { return engram::Run(argc, argv); }
