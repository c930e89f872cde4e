// _engram_store: the C++ client (engram::client) for Python. A thin layer:
// argument checking and numpy handling live in the pure-Python package
// (engram_store/__init__.py); this module moves bytes between the caller's
// buffers and the client with the GIL released, and turns a non-OK status
// into engram_store._engram_store.StatusError(code, message).
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "client/client.h"

namespace py = pybind11;

namespace engram {
namespace {

// A non-OK status on its way to Python.
struct StatusException {
  absl::Status status;
};

[[noreturn]] void Raise(const absl::Status& status) {
  throw StatusException{status};
}

template <typename T>
T Unwrap(absl::StatusOr<T> v) {
  if (!v.ok()) Raise(v.status());
  return *std::move(v);
}

std::optional<DType> ParseDType(const std::optional<std::string>& name) {
  if (!name) return std::nullopt;
  if (*name == "float32") return DType::kFloat32;
  if (*name == "bfloat16") return DType::kBFloat16;
  if (*name == "float16") return DType::kFloat16;
  if (*name == "uint8") return DType::kUInt8;
  throw py::value_error(
      "dtype must be float32, bfloat16, float16 or uint8; got " + *name);
}

py::dict Describe(const LayerDescription& d) {
  py::dict info;
  info["layer_id"] = d.layer_id;
  info["table_vocab_sizes"] = d.layout.table_vocab_sizes;
  info["embedding_dim"] = d.layout.embedding_dim;
  info["dtype"] = std::string(DTypeName(d.layout.dtype));
  info["store_keys"] = d.store_keys;
  info["bytes"] = d.bytes;
  info["version"] = d.version;
  return info;
}

// Contiguous bytes of a buffer the caller keeps alive.
std::span<uint8_t> Bytes(const py::buffer& b, bool writable) {
  py::buffer_info info = b.request(writable);
  return {static_cast<uint8_t*>(info.ptr),
          static_cast<size_t>(info.size * info.itemsize)};
}

ClientOptions Options(double timeout_s, int num_channels, bool direct_reads) {
  ClientOptions o;
  o.timeout = absl::Seconds(timeout_s);
  o.num_channels = num_channels;
  o.direct_reads = direct_reads;
  return o;
}

// What an async lookup holds until its callback has run: the Python
// objects whose memory the client reads and writes, and the callback.
struct AsyncLookup {
  py::object ids, out, callback;
  std::vector<int64_t> shape;
};

}  // namespace
}  // namespace engram

PYBIND11_MODULE(_engram_store, m) {
  using namespace engram;
  m.doc() = "engram-store C++ client binding (use the engram_store package)";
  static py::exception<StatusException> status_error(m, "StatusError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusException& e) {
      py::tuple args = py::make_tuple(static_cast<int>(e.status.code()),
                                      std::string(e.status.message()));
      PyErr_SetObject(status_error.ptr(), args.ptr());
    }
  });

  py::class_<Client>(m, "Client")
      .def_static(
          "connect",
          [](const std::string& address, double timeout_s, int num_channels,
             bool direct_reads) {
            return Unwrap(Client::Connect(
                address, Options(timeout_s, num_channels, direct_reads)));
          },
          py::arg("address"), py::arg("timeout_s"), py::arg("num_channels"),
          py::arg("direct_reads"))
      .def_static(
          "connect_cluster",
          [](const std::vector<std::string>& shards, int replication,
             double timeout_s, int num_channels, bool direct_reads) {
            return Unwrap(Client::ConnectCluster(
                shards, replication,
                Options(timeout_s, num_channels, direct_reads)));
          },
          py::arg("shards"), py::arg("replication"), py::arg("timeout_s"),
          py::arg("num_channels"), py::arg("direct_reads"))
      .def(
          "populate",
          [](Client& c, int64_t layer_id, const std::vector<py::buffer>& tables,
             const std::vector<int64_t>& vocab, int64_t dim,
             const std::string& dtype, bool replace,
             std::optional<py::function> progress) {
            LayerLayout layout{vocab, dim, *ParseDType(dtype)};
            std::vector<std::span<const uint8_t>> spans;
            for (const py::buffer& t : tables) spans.push_back(Bytes(t, false));
            PopulateProgress on_progress = nullptr;
            if (progress) {
              on_progress = [&progress](uint64_t sent, uint64_t total) {
                py::gil_scoped_acquire gil;
                (*progress)(sent, total);
              };
            }
            absl::StatusOr<LayerDescription> d;
            {
              py::gil_scoped_release nogil;
              d = replace ? c.Replace(layer_id, layout, spans, on_progress)
                          : c.Populate(layer_id, layout, spans, on_progress);
            }
            return Describe(Unwrap(std::move(d)));
          },
          py::arg("layer_id"), py::arg("tables"), py::arg("vocab"),
          py::arg("dim"), py::arg("dtype"), py::arg("replace"),
          py::arg("progress"))
      .def(
          "lookup_into",
          [](Client& c, int64_t layer_id, const py::buffer& ids,
             const std::vector<int64_t>& shape, const py::buffer& out,
             std::optional<std::string> output_dtype) {
            std::span<uint8_t> id_bytes = Bytes(ids, false);
            std::span<uint8_t> out_bytes = Bytes(out, true);
            const std::optional<DType> dtype = ParseDType(output_dtype);
            absl::Status s;
            {
              py::gil_scoped_release nogil;
              s = c.Lookup(layer_id,
                           {reinterpret_cast<const int64_t*>(id_bytes.data()),
                            id_bytes.size() / sizeof(int64_t)},
                           shape, out_bytes, dtype);
            }
            if (!s.ok()) Raise(s);
          },
          py::arg("layer_id"), py::arg("ids"), py::arg("shape"), py::arg("out"),
          py::arg("output_dtype"))
      .def(
          "lookup_into_async",
          [](Client& c, int64_t layer_id, py::buffer ids,
             std::vector<int64_t> shape, py::buffer out,
             std::optional<std::string> output_dtype, py::function callback) {
            std::span<uint8_t> id_bytes = Bytes(ids, false);
            std::span<uint8_t> out_bytes = Bytes(out, true);
            const std::optional<DType> dtype = ParseDType(output_dtype);
            auto* call = new AsyncLookup{ids, out, callback, std::move(shape)};
            py::gil_scoped_release nogil;
            c.LookupAsync(
                layer_id,
                {reinterpret_cast<const int64_t*>(id_bytes.data()),
                 id_bytes.size() / sizeof(int64_t)},
                call->shape, out_bytes, dtype, [call](absl::Status s) {
                  // An interpreter on its way out has no callback to run.
                  if (!Py_IsInitialized() || _Py_IsFinalizing()) return;
                  py::gil_scoped_acquire gil;
                  try {
                    call->callback(static_cast<int>(s.code()),
                                   std::string(s.message()));
                  } catch (py::error_already_set& e) {
                    e.discard_as_unraisable("engram_store lookup_async");
                  }
                  delete call;  // drops the references, under the GIL
                });
          },
          py::arg("layer_id"), py::arg("ids"), py::arg("shape"), py::arg("out"),
          py::arg("output_dtype"), py::arg("callback"))
      .def(
          "bench_lookups",
          [](Client& c, int64_t layer_id, const py::buffer& ids,
             const std::vector<int64_t>& shape, const py::buffer& out,
             double seconds) {
            // The C++ client's own loop, for benchmarks: the floor the
            // Python call path is measured against in the same run.
            std::span<uint8_t> id_bytes = Bytes(ids, false);
            std::span<uint8_t> out_bytes = Bytes(out, true);
            const std::span<const int64_t> id_span(
                reinterpret_cast<const int64_t*>(id_bytes.data()),
                id_bytes.size() / sizeof(int64_t));
            py::gil_scoped_release nogil;
            int64_t calls = 0;
            const absl::Time end = absl::Now() + absl::Seconds(seconds);
            while (absl::Now() < end) {
              if (absl::Status s =
                      c.Lookup(layer_id, id_span, shape, out_bytes);
                  !s.ok()) {
                Raise(s);
              }
              ++calls;
            }
            return calls;
          },
          py::arg("layer_id"), py::arg("ids"), py::arg("shape"), py::arg("out"),
          py::arg("seconds"))
      .def(
          "remove",
          [](Client& c, int64_t layer_id, bool force) {
            py::gil_scoped_release nogil;
            return Unwrap(c.Remove(layer_id, force));
          },
          py::arg("layer_id"), py::arg("force"))
      .def("describe",
           [](Client& c, int64_t layer_id) {
             absl::StatusOr<LayerDescription> d;
             {
               py::gil_scoped_release nogil;
               d = c.DescribeLayer(layer_id);
             }
             return Describe(Unwrap(std::move(d)));
           })
      .def("list_layers",
           [](Client& c) {
             absl::StatusOr<std::vector<LayerDescription>> l;
             {
               py::gil_scoped_release nogil;
               l = c.ListLayers();
             }
             py::list out;
             for (const LayerDescription& d : Unwrap(std::move(l)))
               out.append(Describe(d));
             return out;
           })
      .def("load",
           [](Client& c, const std::string& manifest) {
             absl::StatusOr<std::vector<LayerDescription>> l;
             {
               py::gil_scoped_release nogil;
               l = c.Load(manifest);
             }
             py::list out;
             for (const LayerDescription& d : Unwrap(std::move(l)))
               out.append(Describe(d));
             return out;
           })
      .def(
          "health",
          [](Client& c, const std::string& service) {
            py::gil_scoped_release nogil;
            return c.CheckHealth(service).ok();
          },
          py::arg("service") = "");
}
